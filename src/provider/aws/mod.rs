//! The built-in `aws` provider: AWS Secrets Manager and SSM Parameter Store, taking the AWS
//! provider's (ASCP) SecretProviderClass parameters unchanged, in-process.
//!
//! Per mount: resolve the region and parse the objects ([`config`]), get credentials for the
//! pod's workload identity ([`auth`], cached per identity), read what is needed in as few
//! calls as the APIs allow ([`client`]: current secrets 20 per `BatchGetSecretValue`, SSM
//! names 10 per `GetParameters`), fail over to `failoverRegion` on server errors and
//! timeouts only, and extract `jmesPath` fields ([`jmes`]). A secret pinned by
//! `objectVersion` that is already mounted at that version is not read again.

pub mod auth;
pub mod client;
pub mod cluster;
pub mod config;
pub mod jmes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::environment::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileRegionProvider;
use futures::StreamExt as _;

use self::auth::{Auth, Identity, Signer};
use self::client::{Answers, CallError, Clients, Endpoints, Request, Value};
use self::cluster::Cluster;
use self::config::{Kind, Object, Read, VolumeConfig};
use super::shared_cache::SharedCache;
use super::{MountRequest, MountResponse, ObjectVersion, Provider, ProviderError, ProviderFile};
use crate::limits::MAX_SHARED_READ_BYTES;
use crate::lock::lock;
use crate::redact::Secret;

/// The provider name in a SecretProviderClass.
pub const NAME: &str = "aws";

/// How long an identity is not offered `BatchGetSecretValue` after its IAM policy refused it.
const BATCH_DENIED_FOR: Duration = Duration::from_secs(3600);
/// How long an identity's clients are kept unused (building them costs about 0.3 ms).
const CLIENTS_TTL: Duration = Duration::from_secs(3600);

/// How the provider runs on this node or host.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Region when a class sets none (`AWS_REGION`); else the node's region label.
    pub region: Option<String>,
    /// Client settings and the endpoint override.
    pub endpoints: Endpoints,
    /// Where credentials come from.
    pub source: auth::Source,
    /// How long a read is shared between pods of one identity; zero disables sharing.
    pub read_cache_ttl: Duration,
    /// Requests in flight per mount.
    pub concurrency: usize,
    /// Identities (and shared reads) kept.
    pub cache_size: usize,
}

/// Reads secrets from AWS Secrets Manager and SSM Parameter Store.
#[derive(Debug)]
pub struct AwsProvider {
    settings: Settings,
    cluster: Arc<Cluster>,
    auth: Auth,
    reads: SharedCache<(Identity, String, Request), Arc<Answers>>,
    /// Clients per identity and region, with the key id of the credentials they sign with.
    clients: SharedCache<(Identity, String), (String, Clients)>,
    batch_denied: Mutex<HashMap<Identity, Instant>>,
}

/// One mount's view of AWS: who it reads as, and with which clients.
struct Session<'a> {
    identity: &'a Identity,
    /// Shared reads must have started at or after this (rotations).
    fresh_since: Option<Instant>,
    primary: Clients,
    failover: Option<Clients>,
}

impl AwsProvider {
    /// A provider; `kube` answers IRSA role and node region lookups, `node_name` is this
    /// node's name when known.
    pub fn new(settings: Settings, kube: Option<kube::Client>, node_name: Option<String>) -> Self {
        let cluster = Arc::new(Cluster::new(kube, node_name));
        let auth = Auth::new(
            settings.source.clone(),
            settings.endpoints.clone(),
            cluster.clone(),
            settings.cache_size,
        );
        Self {
            reads: SharedCache::weighed(settings.cache_size, MAX_SHARED_READ_BYTES, |answers| {
                answers
                    .values()
                    .map(|v| v.as_ref().map_or(0, |v| v.bytes.expose().len()))
                    .sum()
            }),
            clients: SharedCache::new(settings.cache_size),
            settings,
            cluster,
            auth,
            batch_denied: Mutex::new(HashMap::new()),
        }
    }

    async fn region(&self, request: &MountRequest) -> Result<String, ProviderError> {
        if let Some(region) = config::region_parameter(&request.parameters) {
            return Ok(region);
        }
        if let Some(region) = self.settings.region.clone().filter(|r| !r.is_empty()) {
            return Ok(region);
        }
        if let auth::Source::DefaultChain = self.settings.source {
            // Outside a cluster: `AWS_DEFAULT_REGION` or the profile's region, as the AWS CLI.
            let chain = RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
                .or_else(ProfileFileRegionProvider::new());
            return chain.region().await.map(|r| r.to_string()).ok_or_else(|| {
                ProviderError::InvalidParameters {
                    provider: NAME.to_owned(),
                    message: "Region not found: set the region parameter in the \
                              SecretProviderClass, AWS_REGION, or a region in the AWS profile"
                        .to_owned(),
                }
            });
        }
        self.cluster
            .node_region(&request.pod.namespace, &request.pod.name)
            .await
    }

    /// The identity's clients for `region`, rebuilt only when its credentials were renewed.
    async fn clients(&self, signer: &Signer, region: &str) -> Clients {
        let key = (signer.identity.clone(), region.to_owned());
        self.clients
            .invalidate_if(&key, |(key_id, _)| *key_id != signer.key_id)
            .await;
        let built = self
            .clients
            .get_or_fetch(&key, |_| async {
                let clients = self
                    .settings
                    .endpoints
                    .clients(region, signer.credentials.clone());
                Ok::<_, std::convert::Infallible>(((signer.key_id.clone(), clients), CLIENTS_TTL))
            })
            .await;
        let Ok(((_, clients), _)) = built;
        clients
    }

    fn batch_allowed(&self, identity: &Identity) -> bool {
        let denied = lock(&self.batch_denied);
        denied
            .get(identity)
            .is_none_or(|since| since.elapsed() > BATCH_DENIED_FOR)
    }

    fn deny_batch(&self, identity: &Identity) {
        let mut denied = lock(&self.batch_denied);
        if denied.len() >= self.settings.cache_size {
            denied.retain(|_, since| since.elapsed() <= BATCH_DENIED_FOR);
        }
        denied.insert(identity.clone(), Instant::now());
    }

    /// Reads `reads` in one region, batching where allowed; a batch the identity may not use
    /// is retried one secret at a time.
    async fn read_all(
        &self,
        session: &Session<'_>,
        clients: &Clients,
        reads: &BTreeSet<Read>,
    ) -> Answers {
        let batch = self.batch_allowed(session.identity);
        let requests = client::plan(reads, batch);
        let mut answers = Answers::new();
        let mut refused_batches = Vec::new();
        for (request, result) in self.send_all(session, clients, requests).await {
            match result {
                Ok(found) => answers.extend(found.iter().map(|(k, v)| (k.clone(), v.clone()))),
                Err(CallError::Client { code, .. })
                    if matches!(request, Request::SecretBatch(_))
                        && code == "AccessDeniedException" =>
                {
                    refused_batches.extend(request.reads());
                }
                Err(err) => {
                    answers.extend(request.reads().into_iter().map(|r| (r, Err(err.clone()))));
                }
            }
        }
        if !refused_batches.is_empty() {
            tracing::info!(
                identity = ?session.identity,
                "BatchGetSecretValue is not allowed for this identity; reading secrets one by one \
                 (grant secretsmanager:BatchGetSecretValue to make fewer calls)"
            );
            self.deny_batch(session.identity);
            let singles = client::plan(&refused_batches, false);
            for (request, result) in self.send_all(session, clients, singles).await {
                match result {
                    Ok(found) => answers.extend(found.iter().map(|(k, v)| (k.clone(), v.clone()))),
                    Err(err) => {
                        answers.extend(request.reads().into_iter().map(|r| (r, Err(err.clone()))))
                    }
                }
            }
        }
        answers
    }

    /// Sends requests concurrently, within the per-mount bound.
    async fn send_all(
        &self,
        session: &Session<'_>,
        clients: &Clients,
        requests: Vec<Request>,
    ) -> Vec<(Request, Result<Arc<Answers>, CallError>)> {
        futures::stream::iter(requests)
            .map(|request| async move {
                let answer = self.send(session, clients, &request).await;
                (request, answer)
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await
    }

    /// One request, shared with concurrent and recent mounts of the same identity.
    async fn send(
        &self,
        session: &Session<'_>,
        clients: &Clients,
        request: &Request,
    ) -> Result<Arc<Answers>, CallError> {
        let ttl = self.settings.read_cache_ttl;
        if ttl.is_zero() {
            return clients.send(request).await.map(Arc::new);
        }
        let key = (
            session.identity.clone(),
            clients.region.clone(),
            request.clone(),
        );
        self.reads
            .get_or_fetch_since(&key, session.fresh_since, |_| async {
                let answers = clients.send(request).await?;
                // Failures are not shared: the next pod asks again.
                let fresh_for = if answers.values().all(Result::is_ok) {
                    ttl
                } else {
                    Duration::ZERO
                };
                Ok((Arc::new(answers), fresh_for))
            })
            .await
            .map(|(answers, _)| answers)
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn class_parameters(&self) -> &'static [&'static str] {
        config::PARAMETERS
    }

    fn token_audiences(&self, parameters: &BTreeMap<String, String>) -> Option<Vec<String>> {
        let pod_identity = crate::provider::parameter(parameters, "usePodIdentity")
            .and_then(crate::provider::parse_go_bool)
            .unwrap_or(false);
        let audience = if pod_identity {
            auth::POD_IDENTITY_AUDIENCE
        } else {
            auth::IRSA_AUDIENCE
        };
        Some(vec![audience.to_owned()])
    }

    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError> {
        let started = Instant::now();
        self.reads.drop_expired();
        self.clients.drop_expired();
        let region = self.region(&request).await?;
        let config = config::parse(&request.parameters, &region, &request.pod)?;
        let signer = self
            .auth
            .credentials(&config, request.service_account_tokens.as_ref())
            .await?;
        let identity = &signer.identity;
        let failover_clients = match config.failover_region.as_deref() {
            Some(region) => Some(self.clients(&signer, region).await),
            None => None,
        };
        let session = Session {
            identity,
            fresh_since: request.fresh_since,
            primary: self.clients(&signer, &config.region).await,
            failover: failover_clients,
        };

        let kept = mounted_values(&config, &request);
        let primary_reads: BTreeSet<Read> = config
            .objects
            .iter()
            .filter(|o| !kept.contains_key(&o.file))
            .map(|o| o.read.clone())
            .collect();
        let primary = self
            .read_all(&session, &session.primary, &primary_reads)
            .await;

        // Server errors and timeouts move the object to the failover region, if any.
        let mut failover = Answers::new();
        if let Some(clients) = &session.failover {
            let retry: BTreeSet<Read> = config
                .objects
                .iter()
                .filter(|o| matches!(primary.get(&o.read), Some(Err(CallError::Server(_)))))
                .filter_map(|o| o.failover.clone())
                .collect();
            if !retry.is_empty() {
                tracing::warn!(
                    region = %config.region,
                    failover_region = %clients.region,
                    objects = retry.len(),
                    "primary region failing, reading from the failover region"
                );
                failover = self.read_all(&session, clients, &retry).await;
            }
        }

        let mut files = Vec::new();
        let mut versions = Vec::new();
        for object in &config.objects {
            let value = match kept.get(&object.file) {
                Some(value) => value.clone(),
                None => {
                    self.outcome(&config, identity, object, &primary, &failover)
                        .await?
                }
            };
            push_object(
                object,
                &value,
                request.default_mode,
                &mut files,
                &mut versions,
            )?;
        }
        tracing::debug!(
            objects = config.objects.len(),
            reused = kept.len(),
            namespace = %config.namespace,
            service_account = %config.service_account,
            region = %config.region,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "aws objects fetched"
        );
        Ok(MountResponse { versions, files })
    }
}

impl AwsProvider {
    /// The object's value, or the error a user can act on.
    async fn outcome(
        &self,
        config: &VolumeConfig,
        identity: &Identity,
        object: &Object,
        primary: &Answers,
        failover: &Answers,
    ) -> Result<Value, ProviderError> {
        let first = primary
            .get(&object.read)
            .cloned()
            .unwrap_or_else(|| Err(CallError::Server("no answer for this object".to_owned())));
        let err = match first {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        let fallback = object.failover.as_ref().and_then(|r| failover.get(r));
        match (&err, fallback, &config.failover_region) {
            (CallError::Server(_), Some(Ok(value)), _) => Ok(value.clone()),
            (CallError::Server(primary_err), Some(Err(failover_err)), Some(failover_region)) => {
                if let CallError::Client { .. } = failover_err {
                    return Err(self
                        .final_error(failover_region, identity, object, failover_err)
                        .await);
                }
                let what = match object.read.kind {
                    Kind::SecretsManager => format!(
                        "Failed to fetch secret from all regions. Verify secret exists and \
                         required permissions are granted for: {}",
                        object.read.name
                    ),
                    Kind::Parameter => "Failed to fetch parameters from all regions.".to_owned(),
                };
                Err(ProviderError::BackendUnavailable {
                    provider: NAME.to_owned(),
                    message: format!(
                        "{what} ({}: {primary_err}; {failover_region}: {failover_err})",
                        config.region
                    ),
                    source: None,
                })
            }
            _ => Err(self
                .final_error(&config.region, identity, object, &err)
                .await),
        }
    }

    async fn final_error(
        &self,
        region: &str,
        identity: &Identity,
        object: &Object,
        err: &CallError,
    ) -> ProviderError {
        let provider = NAME.to_owned();
        let doing = match object.read.kind {
            Kind::SecretsManager => {
                format!("{region}: Failed fetching secret {}", object.read.name)
            }
            Kind::Parameter => {
                format!("{region}: Failed fetching parameters: {}", object.read.name)
            }
        };
        let CallError::Client { code, .. } = err else {
            return ProviderError::BackendUnavailable {
                provider,
                message: format!("{doing}: {err}"),
                source: None,
            };
        };
        if client::is_bad_credentials(code) {
            self.auth.refused(identity).await;
        }
        let message = format!("{doing}: {err}");
        if client::is_not_found(code) {
            ProviderError::ObjectNotFound {
                provider,
                message: format!(
                    "{message}; check objectName, objectVersion/objectVersionLabel and the region"
                ),
            }
        } else if code == "AccessDeniedException" || code == "AccessDenied" {
            ProviderError::PermissionDenied {
                provider,
                message: format!(
                    "{message}; the IAM role of service account {} needs read access to it",
                    match identity {
                        Identity::Irsa { role_arn, .. } => role_arn.as_str(),
                        _ => "(this identity)",
                    }
                ),
            }
        } else if client::is_bad_credentials(code) {
            ProviderError::Unauthenticated { provider, message }
        } else if client::is_throttling(code) {
            ProviderError::BackendUnavailable {
                provider,
                message: format!("{message}; AWS throttled the calls after retries with backoff"),
                source: None,
            }
        } else {
            ProviderError::Backend {
                provider,
                message,
                source: None,
            }
        }
    }
}

/// Values of secrets pinned by `objectVersion` that are already mounted at that version,
/// read back from the volume instead of from AWS.
fn mounted_values(config: &VolumeConfig, request: &MountRequest) -> BTreeMap<String, Value> {
    let current: BTreeMap<&str, &str> = request
        .current_versions
        .iter()
        .map(|v| (v.id.as_str(), v.version.as_str()))
        .collect();
    let pinned: Vec<&Object> = config
        .objects
        .iter()
        .filter(|o| {
            o.read.kind == Kind::SecretsManager
                && o.read.version.is_some()
                && current.get(o.file.as_str()).copied() == o.read.version.as_deref()
        })
        .collect();
    if pinned.is_empty() {
        return BTreeMap::new();
    }
    pinned
        .into_iter()
        .filter_map(|object| {
            let bytes = request.mounted.read(&object.file)?;
            let version = object.read.version.clone()?;
            Some((
                object.file.clone(),
                Value {
                    bytes: Secret::new(bytes),
                    version,
                },
            ))
        })
        .collect()
}

/// The object's file, its `jmesPath` files, and their versions (the children carry the
/// parent's).
fn push_object(
    object: &Object,
    value: &Value,
    default_mode: u32,
    files: &mut Vec<ProviderFile>,
    versions: &mut Vec<ObjectVersion>,
) -> Result<(), ProviderError> {
    let mode = object.mode.unwrap_or(default_mode);
    let fields =
        jmes::extract(&object.read.name, value.bytes.expose(), &object.jmes).map_err(|err| {
            ProviderError::InvalidParameters {
                provider: NAME.to_owned(),
                message: format!("{}: {err}", object.file),
            }
        })?;
    files.push(ProviderFile {
        path: object.file.clone(),
        mode,
        contents: value.bytes.clone(),
    });
    versions.push(ObjectVersion {
        id: object.file.clone(),
        version: value.version.clone(),
    });
    for (entry, field) in object.jmes.iter().zip(fields) {
        files.push(ProviderFile {
            path: entry.alias.clone(),
            mode: entry.mode.unwrap_or(mode),
            contents: Secret::new(field),
        });
        versions.push(ObjectVersion {
            id: entry.alias.clone(),
            version: value.version.clone(),
        });
    }
    Ok(())
}
