//! The built-in `vault` provider: HashiCorp Vault and OpenBao, taking vault-csi-provider's
//! SecretProviderClass parameters unchanged, in-process.
//!
//! Per mount: parse the parameters ([`config`]), get a token for the pod's workload identity
//! ([`auth`], shared and renewed across that identity's pods), send each distinct request once
//! and concurrently ([`client`]), and turn responses into files and keyed-hash versions
//! ([`read`]). Static reads (no lease) are also shared for a short window between pods of the
//! same identity, so a rollout of 50 pods costs one login and one read per object.

pub mod auth;
pub mod client;
pub mod config;
pub mod gojson;
pub mod read;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt as _;

use self::auth::{Auth, Credentials, Identity};
use self::client::{Call, Transport};
use self::config::{Defaults, ReadRequest, VolumeConfig};
use self::read::{ReadFailure, Response};
use super::shared_cache::SharedCache;
use super::version_key::VersionKey;
use super::{MountRequest, MountResponse, ObjectVersion, Provider, ProviderError, ProviderFile};
use crate::limits::{ByteBudget, MAX_SHARED_READ_BYTES};
use crate::redact::{Secret, SecretString};

/// The provider name in a SecretProviderClass.
pub const NAME: &str = "vault";

/// Deadline of a mount whose caller gave none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How the provider runs on this node or host.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Defaults for what a class leaves out.
    pub defaults: Defaults,
    /// Where tokens come from.
    pub credentials: Credentials,
    /// How long a static read is shared between pods of one identity; zero disables sharing.
    pub read_cache_ttl: Duration,
    /// Requests in flight per mount.
    pub concurrency: usize,
    /// Identities (and shared reads) kept.
    pub cache_size: usize,
    /// Key of the object versions.
    pub version_key: VersionKey,
}

/// Reads secrets from Vault or OpenBao.
#[derive(Debug)]
pub struct VaultProvider {
    settings: Settings,
    transport: Arc<Transport>,
    auth: Auth,
    reads: SharedCache<(Identity, ReadRequest), Arc<Response>>,
}

type Fetched = Result<Arc<Response>, ReadFailure>;

/// One mount's session with Vault.
struct Login<'a> {
    config: &'a VolumeConfig,
    /// Who the mount reads as: the key of the shared token and reads.
    identity: Identity,
    pod_tokens: Option<&'a SecretString>,
    token: SecretString,
    /// Obtained by this mount, so a 403 with it is final.
    fresh: bool,
    deadline: Instant,
    /// What this mount may still read from Vault.
    budget: &'a ByteBudget,
    /// Shared reads must have started at or after this (rotations).
    fresh_since: Option<Instant>,
}

impl VaultProvider {
    /// A provider with its own HTTP clients and caches.
    pub fn new(settings: Settings) -> Self {
        let transport = Arc::new(Transport::new(settings.defaults.tls_policy.clone()));
        let auth = Auth::new(
            settings.credentials.clone(),
            transport.clone(),
            settings.cache_size,
        );
        Self {
            reads: SharedCache::weighed(settings.cache_size, MAX_SHARED_READ_BYTES, |r| r.len()),
            settings,
            transport,
            auth,
        }
    }

    async fn fetch(&self, login: &Login<'_>, request: &ReadRequest) -> Fetched {
        let share = request.method == "GET" && !self.settings.read_cache_ttl.is_zero();
        if !share {
            return self.send_read(login, request).await;
        }
        let key = (login.identity.clone(), request.clone());
        let ttl = self.settings.read_cache_ttl;
        self.reads
            .get_or_fetch_since(&key, login.fresh_since, |_| async {
                let response = self.send_read(login, request).await?;
                let fresh_for = if response.leased { Duration::ZERO } else { ttl };
                Ok((response, fresh_for))
            })
            .await
            .map(|(response, _)| response)
    }

    /// One read, with one fresh login and retry if Vault refuses a token obtained earlier.
    async fn send_read(&self, login: &Login<'_>, request: &ReadRequest) -> Fetched {
        let config = login.config;
        let deadline = login.deadline;
        let path = request.path_and_query();
        let body = request.body.clone().map(Secret::new);
        let (mut token, mut fresh) = (login.token.clone(), login.fresh);
        loop {
            let call = Call {
                method: &request.method,
                address: &config.address,
                path_and_query: &path,
                token: Some(&token),
                namespace: config.namespace.as_deref(),
                body: body.as_ref(),
            };
            let reply = self
                .transport
                .send(&config.tls, &call, deadline, login.budget)
                .await
                .map_err(|err| {
                    ReadFailure::Other(Arc::new(auth::transport_error(
                        config,
                        &format!("reading {path}"),
                        err,
                    )))
                })?;
            if reply.status == 403 && !fresh {
                tracing::debug!(path, "vault refused a cached token, logging in again");
                self.auth.refused(&login.identity, &token).await;
                (token, _) = self
                    .auth
                    .token(
                        config,
                        &login.identity,
                        login.pod_tokens,
                        deadline,
                        login.budget,
                    )
                    .await
                    .map_err(|err| ReadFailure::Other(Arc::new(err)))?;
                // Retry once: a refusal of the replacement token is final.
                fresh = true;
                continue;
            }
            return read::classify(reply).map(Arc::new);
        }
    }
}

#[async_trait]
impl Provider for VaultProvider {
    fn class_parameters(&self) -> &'static [&'static str] {
        config::PARAMETERS
    }

    fn token_audiences(&self, parameters: &BTreeMap<String, String>) -> Option<Vec<String>> {
        let audience = crate::provider::parameter(parameters, "audience").unwrap_or("vault");
        Some(vec![audience.to_owned()])
    }

    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError> {
        let started = Instant::now();
        self.reads.drop_expired();
        let deadline = started + request.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let budget = ByteBudget::new(request.max_bytes);
        let config = config::parse(&request.parameters, &request.pod, &self.settings.defaults)?;
        let pod_tokens = request.service_account_tokens.as_ref();
        let identity = Identity::of(&config);
        let (token, fresh) = self
            .auth
            .token(&config, &identity, pod_tokens, deadline, &budget)
            .await?;

        let distinct: BTreeSet<ReadRequest> =
            config.objects.iter().map(|o| o.request.clone()).collect();
        let login = Login {
            config: &config,
            identity,
            pod_tokens,
            token,
            fresh,
            deadline,
            budget: &budget,
            fresh_since: request.fresh_since,
        };
        let login = &login;
        let results: BTreeMap<ReadRequest, Fetched> = futures::stream::iter(distinct)
            .map(|read| async move {
                let fetched = self.fetch(login, &read).await;
                (read, fetched)
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;

        let role = config.role.as_deref().unwrap_or_default();
        let mut files = Vec::with_capacity(config.objects.len());
        let mut versions = Vec::with_capacity(config.objects.len());
        for object in &config.objects {
            let response = match &results[&object.request] {
                Ok(response) => response,
                Err(failure) => return Err(failure.for_object(object, &config.address, role)),
            };
            let contents = read::contents(object, response)?;
            let settings = format!(
                "{}\0{}\0{}\0{}\0{:?}\0{:?}",
                object.request.method,
                object.request.path_and_query(),
                object.request.body.as_deref().unwrap_or_default(),
                object.secret_key.as_deref().unwrap_or_default(),
                object.encoding,
                object.mode,
            );
            versions.push(ObjectVersion {
                id: object.name.clone(),
                version: self
                    .settings
                    .version_key
                    .version(settings.as_bytes(), &contents),
            });
            let mode = object.mode.unwrap_or(request.default_mode);
            files.push(ProviderFile {
                path: object.name.clone(),
                mode,
                contents: Secret::new(contents),
            });
        }
        tracing::debug!(
            objects = config.objects.len(),
            requests = results.len(),
            namespace = %config.pod.namespace,
            service_account = %config.pod.service_account,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "vault objects fetched"
        );
        Ok(MountResponse { versions, files })
    }
}
