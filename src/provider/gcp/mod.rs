//! The built-in `gcp` provider: Google Secret Manager, taking
//! secrets-store-csi-driver-provider-gcp's SecretProviderClass parameters unchanged,
//! in-process.
//!
//! Per mount: parse the `secrets` list ([`config`]), get a token for the pod's workload
//! identity ([`auth`], shared by that identity's pods), read each distinct secret version
//! once and concurrently over gRPC ([`client`]), shared between pods of one identity for a
//! short window, and extract a JSON or YAML key where asked. Versions are the version names
//! Secret Manager resolved (`.../versions/3` for `latest`), as the plugin reports them.

pub mod auth;
pub mod client;
pub mod config;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use self::auth::{Auth, Identity, Source};
use self::client::{Accessed, CallError, Clients, Endpoints};
use self::config::{Extract, Resource, SecretEntry};
use super::shared_cache::SharedCache;
use super::{MountRequest, MountResponse, ObjectVersion, Provider, ProviderError, ProviderFile};
use crate::limits::{ByteBudget, MAX_SHARED_READ_BYTES};
use crate::redact::{Secret, SecretString};

/// The provider name in a SecretProviderClass.
pub const NAME: &str = "gcp";

/// Deadline of a mount whose caller gave none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How the provider runs on this node or host.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the Google APIs are.
    pub endpoints: Endpoints,
    /// Where tokens come from.
    pub source: Source,
    /// How long a read is shared between pods of one identity; zero disables sharing.
    pub read_cache_ttl: Duration,
    /// Requests in flight per mount.
    pub concurrency: usize,
    /// Identities (and shared reads) kept.
    pub cache_size: usize,
}

/// Reads secrets from Google Secret Manager.
#[derive(Debug)]
pub struct GcpProvider {
    settings: Settings,
    clients: Clients,
    auth: Auth,
    reads: SharedCache<(Identity, Resource), Arc<Accessed>>,
}

type Fetched = Result<Arc<Accessed>, ProviderError>;

/// One mount's session with Secret Manager.
struct Session<'a> {
    identity: Identity,
    pod_tokens: Option<&'a SecretString>,
    token: SecretString,
    /// Obtained by this mount, so a refusal of it is final.
    fresh: bool,
    deadline: Instant,
    budget: &'a ByteBudget,
    fresh_since: Option<Instant>,
}

impl GcpProvider {
    /// A provider; `kube` reads the service accounts' impersonation annotations.
    pub fn new(settings: Settings, kube: Option<kube::Client>) -> Self {
        Self {
            clients: Clients::new(settings.endpoints.clone()),
            auth: Auth::new(settings.source.clone(), kube, settings.cache_size),
            reads: SharedCache::weighed(settings.cache_size, MAX_SHARED_READ_BYTES, |a| {
                a.data.expose().len()
            }),
            settings,
        }
    }

    async fn read(&self, session: &Session<'_>, resource: &Resource) -> Fetched {
        if self.settings.read_cache_ttl.is_zero() {
            return self.send_read(session, resource).await;
        }
        let key = (session.identity.clone(), resource.clone());
        let ttl = self.settings.read_cache_ttl;
        self.reads
            .get_or_fetch_since(&key, session.fresh_since, |_| async {
                Ok((self.send_read(session, resource).await?, ttl))
            })
            .await
            .map(|(accessed, _)| accessed)
    }

    /// One read, with one fresh token exchange and retry if a token obtained earlier is
    /// refused as expired or revoked.
    async fn send_read(&self, session: &Session<'_>, resource: &Resource) -> Fetched {
        let (mut token, mut fresh) = (session.token.clone(), session.fresh);
        loop {
            let result = self
                .clients
                .access(resource, &token, session.deadline, session.budget.limit())
                .await;
            match result {
                Err(CallError::Status {
                    code: tonic::Code::Unauthenticated,
                    ..
                }) if !fresh => {
                    tracing::debug!(resource = %resource.name, "secret manager refused a cached token, exchanging again");
                    self.auth.refused(&session.identity, &token).await;
                    let (renewed, _) = self
                        .auth
                        .token(
                            &self.clients,
                            &session.identity,
                            session.pod_tokens,
                            session.deadline,
                        )
                        .await?;
                    token = renewed.access;
                    fresh = true;
                }
                Ok(accessed) => return Ok(Arc::new(accessed)),
                Err(err) => return Err(self.read_error(session, resource, err)),
            }
        }
    }

    fn read_error(
        &self,
        session: &Session<'_>,
        resource: &Resource,
        err: CallError,
    ) -> ProviderError {
        let provider = NAME.to_owned();
        let name = &resource.name;
        let url = self.clients.secret_manager_url(resource);
        let who = match &session.identity.gsa {
            Some(gsa) => format!("serviceAccount:{gsa}"),
            None => format!(
                "the workload identity of {}/{}",
                session.identity.namespace, session.identity.service_account
            ),
        };
        match err {
            CallError::Status { code, message } => match code {
                tonic::Code::NotFound => ProviderError::ObjectNotFound {
                    provider,
                    message: format!("{name}: {message}"),
                },
                tonic::Code::PermissionDenied => ProviderError::PermissionDenied {
                    provider,
                    message: format!(
                        "{name}: {message}; grant roles/secretmanager.secretAccessor on the secret to {who}"
                    ),
                },
                tonic::Code::Unauthenticated => ProviderError::Unauthenticated {
                    provider,
                    message: format!(
                        "{name}: Secret Manager refused the token of {who}: {message}"
                    ),
                },
                tonic::Code::InvalidArgument => ProviderError::InvalidParameters {
                    provider,
                    message: format!("{name}: {message}"),
                },
                tonic::Code::Unavailable | tonic::Code::ResourceExhausted => {
                    ProviderError::BackendUnavailable {
                        provider,
                        message: format!(
                            "{name}: Secret Manager at {url} is failing: {code:?}: {message}"
                        ),
                        source: None,
                    }
                }
                tonic::Code::DeadlineExceeded => ProviderError::BackendTimeout {
                    provider,
                    message: format!("{name}: Secret Manager at {url}: {message}"),
                    source: None,
                },
                code => ProviderError::Rpc {
                    provider,
                    code,
                    message: format!("{name}: {message}"),
                },
            },
            CallError::Unreachable(why) => ProviderError::BackendUnavailable {
                provider,
                message: format!(
                    "{name}: Secret Manager at {url} is unreachable ({why}); check the node's egress \
                     to it, or --gcp-secret-manager-endpoint"
                ),
                source: None,
            },
            CallError::Timeout => ProviderError::BackendTimeout {
                provider,
                message: format!(
                    "{name}: Secret Manager at {url} did not answer before the mount's deadline"
                ),
                source: None,
            },
            CallError::TooLarge(limit) => too_large(Some(name), limit),
            other @ (CallError::Http { .. } | CallError::Invalid(_)) => ProviderError::Backend {
                provider,
                message: format!("{name}: {other}"),
                source: None,
            },
        }
    }
}

#[async_trait]
impl Provider for GcpProvider {
    fn class_parameters(&self) -> &'static [&'static str] {
        config::PARAMETERS
    }

    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError> {
        let started = Instant::now();
        self.reads.drop_expired();
        let deadline = started + request.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let budget = ByteBudget::new(request.max_bytes);
        let config = config::parse(&request.parameters)?;
        let identity = self.auth.identity(&request.pod).await?;
        let pod_tokens = request.service_account_tokens.as_ref();
        let (token, fresh) = self
            .auth
            .token(&self.clients, &identity, pod_tokens, deadline)
            .await?;
        let session = Session {
            identity,
            pod_tokens,
            token: token.access,
            fresh,
            deadline,
            budget: &budget,
            fresh_since: request.fresh_since,
        };
        let session = &session;
        let distinct: BTreeSet<Resource> =
            config.secrets.iter().map(|s| s.resource.clone()).collect();
        let mut results =
            super::read_distinct(distinct, self.settings.concurrency, |resource| async move {
                self.read(session, &resource).await
            })
            .await;

        let mut files = Vec::with_capacity(config.secrets.len());
        let mut versions = Vec::with_capacity(config.secrets.len());
        for entry in &config.secrets {
            let accessed = super::take_read(&mut results, &entry.resource)?;
            let contents = contents(entry, &accessed)?;
            budget
                .charge(contents.len())
                .map_err(|e| too_large(None, e.limit))?;
            versions.push(ObjectVersion {
                id: entry.resource.name.clone(),
                version: accessed.name.clone(),
            });
            files.push(ProviderFile {
                path: entry.path.clone(),
                mode: entry.mode.unwrap_or(request.default_mode),
                contents: Secret::new(contents),
            });
        }
        tracing::debug!(
            objects = config.secrets.len(),
            reads = results.len(),
            namespace = %request.pod.namespace,
            service_account = %request.pod.service_account,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "gcp secrets fetched"
        );
        Ok(MountResponse { versions, files })
    }
}

/// The file's bytes: the payload, or the string at one top-level key of it.
fn contents(entry: &SecretEntry, accessed: &Accessed) -> Result<Vec<u8>, ProviderError> {
    let payload = accessed.data.expose();
    let Some(extract) = &entry.extract else {
        return Ok(payload.clone());
    };
    let name = &entry.resource.name;
    let failed = |message: String| ProviderError::InvalidParameters {
        provider: NAME.to_owned(),
        message: format!("{name}: {message}"),
    };
    // Parse errors give a position only: the payload is secret.
    let (key, map, format) = match extract {
        Extract::Json(key) => {
            let map = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(payload)
                .map_err(|err| {
                    failed(format!(
                        "failed to unmarshal JSON at line {} column {}. Invalid JSON format for \
                         key extraction (extractJSONKey {key:?})",
                        err.line(),
                        err.column()
                    ))
                })?;
            (key, map, "JSON")
        }
        Extract::Yaml(key) => {
            let text = std::str::from_utf8(payload).map_err(|_| {
                failed("failed to unmarshal YAML: the payload is not UTF-8".to_owned())
            })?;
            let map =
                crate::provider::yaml::from_str::<serde_json::Map<String, serde_json::Value>>(
                    text, false,
                )
                .map_err(|_| {
                    failed(format!(
                        "failed to unmarshal YAML. Invalid YAML format for key extraction \
                     (extractYAMLKey {key:?})"
                    ))
                })?;
            (key, map, "YAML")
        }
    };
    match map.get(key.as_str()) {
        Some(serde_json::Value::String(value)) => Ok(value.as_bytes().to_vec()),
        Some(_) => Err(failed(format!(
            "unsupported value type for key '{key}': only a string value can be extracted"
        ))),
        None => Err(failed(format!("key '{key}' not found in {format}"))),
    }
}

/// The volume's budget ran out (`name`: while reading that secret).
fn too_large(name: Option<&str>, limit: usize) -> ProviderError {
    let at = name.map(|n| format!("{n}: ")).unwrap_or_default();
    ProviderError::Exhausted {
        provider: NAME.to_owned(),
        message: format!(
            "{at}the volume's secrets are larger than {limit} bytes; raise \
             --max-call-recv-msg-size (and the driver's memory limit) to mount them"
        ),
    }
}
