//! The built-in `vault` provider: HashiCorp Vault and OpenBao, taking vault-csi-provider's
//! SecretProviderClass parameters unchanged, in-process.
//!
//! Per mount: parse the parameters ([`config`]), get a token for the pod's workload identity
//! ([`auth`], shared and renewed across that identity's pods), send each distinct request once
//! and concurrently ([`client`]), and turn responses into files and keyed-hash versions
//! ([`read`]). Static reads (no lease) are also shared for a short window between pods of the
//! same identity, so a rollout of 50 pods costs one login and one read per object. Leased
//! reads are each volume's own and are renewed on rotation rather than issued again
//! ([`lease`]).

pub mod auth;
pub mod client;
pub mod config;
pub mod gojson;
pub mod lease;
pub mod read;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt as _;

use self::auth::{Auth, Credentials, Identity};
use self::client::{Call, Transport};
use self::config::{Defaults, ReadRequest, VolumeConfig};
use self::lease::{Leases, Plan};
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

/// Deadline of the revocations of an unpublished volume's leases.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Renew a mounted dynamic secret's lease on rotation instead of reading a new one.
    pub renew_leases: bool,
    /// Revoke a volume's leases when it is unpublished.
    pub revoke_leases: bool,
}

/// Reads secrets from Vault or OpenBao.
#[derive(Debug)]
pub struct VaultProvider {
    settings: Settings,
    transport: Arc<Transport>,
    auth: Auth,
    reads: SharedCache<(Identity, ReadRequest), Arc<Response>>,
    leases: Arc<Leases>,
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
    /// The volume, whose leased reads are held for it alone.
    target: &'a Path,
    /// The volume is mounted, so a held lease may serve it again.
    mounted: bool,
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
            leases: Arc::default(),
        }
    }

    async fn fetch(&self, login: &Login<'_>, request: &ReadRequest) -> Fetched {
        let key = (
            login.target.to_path_buf(),
            login.identity.clone(),
            request.clone(),
        );
        if login.mounted
            && self.settings.renew_leases
            && let Some(held) = self.held(login, &key).await
        {
            return Ok(held);
        }
        let fetched = self.read(login, request).await;
        if let Ok(response) = &fetched
            && response.is_leased()
        {
            self.leases.issued(key, response.clone(), site(login));
        }
        fetched
    }

    /// The answer held with a lease that is young or has just been renewed.
    async fn held(&self, login: &Login<'_>, key: &lease::Key) -> Option<Arc<Response>> {
        let path = &key.2.path;
        match self.leases.plan(key) {
            Plan::Issue => None,
            Plan::Reuse(response) => Some(response),
            Plan::Renew(renewal) => {
                let site = site(login);
                let at = Instant::now();
                match lease::renew(&self.transport, &site, &renewal, login.deadline).await {
                    Ok(granted) if granted >= renewal.increment => {
                        tracing::debug!(path, granted_s = granted.as_secs(), "vault lease renewed");
                        self.leases.renewed(key, at, granted, site.token);
                        Some(renewal.response)
                    }
                    Ok(granted) => {
                        tracing::info!(
                            path,
                            granted_s = granted.as_secs(),
                            "vault lease is near its max TTL, reading a new credential"
                        );
                        None
                    }
                    Err(why) => {
                        tracing::info!(path, error = %why, "vault lease renewal failed, reading a new credential");
                        None
                    }
                }
            }
        }
    }

    async fn read(&self, login: &Login<'_>, request: &ReadRequest) -> Fetched {
        let share = request.method == "GET" && !self.settings.read_cache_ttl.is_zero();
        if !share {
            return self.send_read(login, request).await;
        }
        let key = (login.identity.clone(), request.clone());
        let ttl = self.settings.read_cache_ttl;
        self.reads
            .get_or_fetch_since(&key, login.fresh_since, |_| async {
                let response = self.send_read(login, request).await?;
                let fresh_for = if response.is_leased() {
                    Duration::ZERO
                } else {
                    ttl
                };
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
            target: &request.target_path,
            mounted: !request.current_versions.is_empty(),
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

    async fn unpublished(&self, target: &Path) {
        let released = self.leases.release(target);
        if released.is_empty() || !self.settings.revoke_leases {
            return;
        }
        // Off the unpublish path: a slow or unreachable Vault must not hold up pod deletion.
        let transport = self.transport.clone();
        let volume = target.display().to_string();
        tokio::spawn(async move {
            let deadline = Instant::now() + REVOKE_TIMEOUT;
            for (lease_id, site) in released {
                match lease::revoke(&transport, &site, &lease_id, deadline).await {
                    Ok(()) => tracing::debug!(target = %volume, "vault lease revoked"),
                    Err(why) => tracing::warn!(
                        target = %volume,
                        error = %why,
                        "could not revoke a vault lease of an unpublished volume; it expires at its TTL"
                    ),
                }
            }
        });
    }
}

/// Where a login's leases are renewed and revoked.
fn site(login: &Login<'_>) -> lease::Site {
    lease::Site {
        address: login.config.address.clone(),
        namespace: login.config.namespace.clone(),
        tls: login.config.tls.clone(),
        token: login.token.clone(),
    }
}
