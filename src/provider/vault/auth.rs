//! Logging in to Vault as the pod's workload identity, with one shared, renewed token per
//! identity (Vault address and namespace, auth mount, role, audience, pod namespace and service
//! account) and never across identities.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::NAME;
use super::client::{Call, Reply, Transport, TransportError};
use super::config::{TlsConfig, VolumeConfig};
use crate::limits::ByteBudget;
use crate::provider::shared_cache::SharedCache;
use crate::provider::{ProviderError, TokenError, pod_token};
use crate::redact::{Secret, SecretString};

/// Where a volume's Vault token comes from.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Log in with the pod's service-account token for the class's audience (node mode).
    PodToken,
    /// A Vault token given to `mount` outside a cluster (`VAULT_TOKEN`, `--vault-token-file`).
    Token(SecretString),
    /// A JWT file given to `mount` outside a cluster, for JWT or Kubernetes auth.
    JwtFile(PathBuf),
    /// `mount` was given none of the above.
    Missing,
}

/// Who a token belongs to; the sharing key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    address: String,
    namespace: Option<String>,
    auth_mount: String,
    role: String,
    audience: String,
    pod_namespace: String,
    service_account: String,
    // A class with other TLS settings must reach Vault itself, not reuse another's result.
    tls: TlsConfig,
}

impl Identity {
    /// The identity a volume logs in as.
    pub fn of(config: &VolumeConfig) -> Self {
        Self {
            address: config.address.clone(),
            namespace: config.namespace.clone(),
            auth_mount: config.auth_mount.clone(),
            role: config.role.clone().unwrap_or_default(),
            audience: config.audience.clone(),
            pod_namespace: config.pod.namespace.clone(),
            service_account: config.pod.service_account.clone(),
            tls: config.tls.clone(),
        }
    }
}

/// A Vault client token and its lease.
#[derive(Debug, Clone)]
pub struct VaultToken {
    /// The token.
    pub token: SecretString,
    renewable: bool,
    expires_at: Option<Instant>,
}

/// Obtains and caches Vault tokens.
#[derive(Debug)]
pub struct Auth {
    credentials: Credentials,
    transport: Arc<Transport>,
    tokens: SharedCache<Identity, VaultToken>,
}

#[derive(Deserialize)]
struct AuthReply {
    auth: Option<AuthInfo>,
}

#[derive(Deserialize)]
struct AuthInfo {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

impl Auth {
    /// `capacity` bounds the number of identities whose tokens are kept.
    pub fn new(credentials: Credentials, transport: Arc<Transport>, capacity: usize) -> Self {
        Self {
            credentials,
            transport,
            tokens: SharedCache::new(capacity),
        }
    }

    /// A token for the volume, and whether it was obtained by this call (so a 403 with it is
    /// final, while a 403 with an older token is worth one fresh login).
    pub async fn token(
        &self,
        config: &VolumeConfig,
        identity: &Identity,
        pod_tokens: Option<&SecretString>,
        deadline: Instant,
        budget: &ByteBudget,
    ) -> Result<(SecretString, bool), ProviderError> {
        if let Credentials::Token(token) = &self.credentials {
            return Ok((token.clone(), true));
        }
        // A shared token is only handed to a pod that could have logged in itself: kubelet
        // sent it a token for the audience.
        let jwt = self.jwt(config, pod_tokens)?;
        let (token, fetched) = self
            .tokens
            .get_or_fetch(identity, |stale| {
                self.renew_or_login(config, &jwt, stale, deadline, budget)
            })
            .await?;
        Ok((token.token, fetched))
    }

    /// Forgets `token` after Vault refused it, unless another mount already replaced it.
    pub async fn refused(&self, identity: &Identity, token: &SecretString) {
        self.tokens
            .invalidate_if(identity, |cached| cached.token.expose() == token.expose())
            .await;
    }

    async fn renew_or_login(
        &self,
        config: &VolumeConfig,
        jwt: &SecretString,
        stale: Option<VaultToken>,
        deadline: Instant,
        budget: &ByteBudget,
    ) -> Result<(VaultToken, Duration), ProviderError> {
        let still_valid = |t: &VaultToken| {
            t.expires_at
                .is_some_and(|at| at > Instant::now() + Duration::from_secs(1))
        };
        if let Some(stale) = stale.filter(|t| t.renewable && still_valid(t)) {
            match self.renew(config, &stale.token, deadline, budget).await {
                Ok(renewed) => return Ok(renewed),
                Err(why) => {
                    tracing::debug!(error = %why, "vault token renewal failed, logging in again")
                }
            }
        }
        self.login(config, jwt, deadline, budget).await
    }

    async fn renew(
        &self,
        config: &VolumeConfig,
        token: &SecretString,
        deadline: Instant,
        budget: &ByteBudget,
    ) -> Result<(VaultToken, Duration), String> {
        let call = Call {
            method: "POST",
            address: &config.address,
            path_and_query: "/v1/auth/token/renew-self",
            token: Some(token),
            namespace: config.namespace.as_deref(),
            body: None,
        };
        let reply = self
            .transport
            .send(&config.tls, &call, deadline, budget)
            .await
            .map_err(|err| err.to_string())?;
        if reply.status != 200 {
            return Err(reply.errors());
        }
        lease(&reply).map_err(|err| err.to_string())
    }

    async fn login(
        &self,
        config: &VolumeConfig,
        jwt: &SecretString,
        deadline: Instant,
        budget: &ByteBudget,
    ) -> Result<(VaultToken, Duration), ProviderError> {
        let role = config
            .role
            .as_deref()
            .ok_or_else(|| ProviderError::InvalidParameters {
                provider: NAME.to_owned(),
                message:
                    "missing 'roleName' in SecretProviderClass definition: name the Vault role \
                      the pod's service account logs in as"
                        .to_owned(),
            })?;
        let body =
            Secret::new(serde_json::json!({ "jwt": jwt.expose(), "role": role }).to_string());
        let path = format!("/v1/auth/{}/login", config.auth_mount);
        let call = Call {
            method: "POST",
            address: &config.address,
            path_and_query: &path,
            token: None,
            namespace: config.namespace.as_deref(),
            body: Some(&body),
        };
        let reply = self
            .transport
            .send(&config.tls, &call, deadline, budget)
            .await
            .map_err(|err| {
                transport_error(
                    config,
                    &format!("logging in at auth/{}", config.auth_mount),
                    err,
                )
            })?;
        match reply.status {
            200 => {}
            500.. => {
                return Err(ProviderError::BackendUnavailable {
                    provider: NAME.to_owned(),
                    message: format!(
                        "Vault at {} failed the login at auth/{}: {}",
                        config.address,
                        config.auth_mount,
                        reply.errors()
                    ),
                    source: None,
                });
            }
            404 | 405 => {
                return Err(ProviderError::Unauthenticated {
                    provider: NAME.to_owned(),
                    message: format!(
                        "no auth method is mounted at auth/{} on {} ({}); set vaultAuthMountPath \
                         to the mount of your Kubernetes or JWT auth method",
                        config.auth_mount,
                        config.address,
                        reply.errors()
                    ),
                });
            }
            _ => {
                return Err(ProviderError::Unauthenticated {
                    provider: NAME.to_owned(),
                    message: format!(
                        "failed to login to auth/{} as role {role:?} for service account {}/{}: {}; \
                         check that the role exists and binds this service account and namespace \
                         (and audience {:?})",
                        config.auth_mount,
                        config.pod.namespace,
                        config.pod.service_account,
                        reply.errors(),
                        config.audience
                    ),
                });
            }
        }
        tracing::debug!(
            auth_mount = %config.auth_mount,
            role,
            namespace = %config.pod.namespace,
            service_account = %config.pod.service_account,
            "logged in to vault"
        );
        lease(&reply)
    }

    fn jwt(
        &self,
        config: &VolumeConfig,
        pod_tokens: Option<&SecretString>,
    ) -> Result<SecretString, ProviderError> {
        let unauthenticated = |message: String| ProviderError::Unauthenticated {
            provider: NAME.to_owned(),
            message,
        };
        match &self.credentials {
            Credentials::JwtFile(path) => std::fs::read_to_string(path)
                .map(|jwt| Secret::new(jwt.trim().to_owned()))
                .map_err(|err| {
                    unauthenticated(format!("reading the JWT file {}: {err}", path.display()))
                }),
            Credentials::Token(token) => Ok(token.clone()),
            Credentials::Missing => Err(unauthenticated(
                "no Vault credentials: outside a cluster set VAULT_TOKEN, --vault-token-file or \
                 --vault-jwt-file"
                    .to_owned(),
            )),
            Credentials::PodToken => {
                let missing = || {
                    unauthenticated(format!(
                        "kubelet sent no service-account token for audience {:?}; add it to the \
                         CSIDriver's tokenRequests (Helm value tokenRequests[].audience) or set the \
                         SecretProviderClass parameter `audience` to an audience listed there",
                        config.audience
                    ))
                };
                pod_token(pod_tokens, &config.audience).map_err(|err| match err {
                    TokenError::Malformed => unauthenticated(
                        "the service-account tokens from kubelet are not the expected JSON object"
                            .to_owned(),
                    ),
                    TokenError::NotProvided | TokenError::Missing | TokenError::Empty => missing(),
                })
            }
        }
    }
}

/// The token and lease in a login or renewal answer; the token is treated as fresh for two
/// thirds of its lease, then renewed.
fn lease(reply: &Reply) -> Result<(VaultToken, Duration), ProviderError> {
    let parsed: AuthReply =
        serde_json::from_slice(reply.body.expose()).map_err(|_| ProviderError::Backend {
            provider: NAME.to_owned(),
            message: "Vault's login answer is not JSON with an `auth` section".to_owned(),
            source: None,
        })?;
    let auth = parsed
        .auth
        .filter(|a| !a.client_token.is_empty())
        .ok_or_else(|| ProviderError::Backend {
            provider: NAME.to_owned(),
            message: "Vault's login answer has no auth.client_token".to_owned(),
            source: None,
        })?;
    let (expires_at, fresh_for) = if auth.lease_duration == 0 {
        // A token without a TTL (e.g. a root token): keep it for a while, re-check after.
        (None, Duration::from_secs(300))
    } else {
        let lease = Duration::from_secs(auth.lease_duration);
        (Some(Instant::now() + lease), lease * 2 / 3)
    };
    Ok((
        VaultToken {
            token: Secret::new(auth.client_token),
            renewable: auth.renewable,
            expires_at,
        },
        fresh_for,
    ))
}

/// A transport failure, named with what was being done and where to look.
pub fn transport_error(config: &VolumeConfig, doing: &str, err: TransportError) -> ProviderError {
    match err {
        TransportError::Tls(message) => ProviderError::InvalidParameters {
            provider: NAME.to_owned(),
            message: format!("TLS settings for {}: {message}", config.address),
        },
        TransportError::InvalidRequest(message) => ProviderError::InvalidParameters {
            provider: NAME.to_owned(),
            message,
        },
        TransportError::Unreachable(cause) => ProviderError::BackendUnavailable {
            provider: NAME.to_owned(),
            message: format!(
                "Vault at {} is unreachable ({doing}); check vaultAddress, DNS and network \
                 policies between the node and Vault",
                config.address
            ),
            source: Some(cause),
        },
        TransportError::TooLarge { limit } => ProviderError::ResponseTooLarge {
            provider: NAME.to_owned(),
            limit,
            message: format!(
                "Vault at {} answered more than that ({doing})",
                config.address
            ),
        },
        TransportError::Timeout => ProviderError::BackendTimeout {
            provider: NAME.to_owned(),
            message: format!(
                "Vault at {} did not answer before the mount deadline ({doing})",
                config.address
            ),
            source: None,
        },
    }
}
