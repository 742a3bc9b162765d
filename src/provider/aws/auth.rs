//! AWS credentials for a pod's workload identity: IRSA (the pod's `sts.amazonaws.com` token
//! exchanged with STS `AssumeRoleWithWebIdentity` for the service account's role) or EKS Pod
//! Identity (the `pods.eks.amazonaws.com` token sent to the node's agent). Outside a cluster,
//! the SDK's default chain (environment, profile).
//!
//! Credentials are cached per identity (namespace, service account, role) until five minutes
//! before they expire, so a rollout makes one STS call, and never handed to another identity.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_sts::error::ProvideErrorMetadata as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::NAME;
use super::client::Endpoints;
use super::cluster::Cluster;
use super::config::{AddressType, VolumeConfig};
use crate::limits::MAX_AGENT_ANSWER_BYTES;
use crate::provider::shared_cache::SharedCache;
use crate::provider::{ProviderError, TokenError, pod_token};
use crate::redact::SecretString;

/// Token audience of IRSA.
pub const IRSA_AUDIENCE: &str = "sts.amazonaws.com";
/// Token audience of EKS Pod Identity.
pub const POD_IDENTITY_AUDIENCE: &str = "pods.eks.amazonaws.com";
/// The Pod Identity agent's IPv4 address.
pub const POD_IDENTITY_IPV4: &str = "http://169.254.170.23/v1/credentials";
/// The Pod Identity agent's IPv6 address.
pub const POD_IDENTITY_IPV6: &str = "http://[fd00:ec2::23]/v1/credentials";

/// Credentials are renewed this long before they expire.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Where credentials come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The pod's service-account tokens (node mode and the served provider).
    Pod {
        /// Pod Identity agent URL instead of the link-local addresses (tests, custom agents).
        pod_identity_endpoint: Option<String>,
        /// Time limit of one agent request.
        pod_identity_timeout: Duration,
    },
    /// The SDK's default chain (the `mount` command outside a cluster).
    DefaultChain,
}

/// Whose credentials these are: the key under which they are cached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// IRSA: a service account and the role it may assume.
    Irsa {
        /// Pod namespace.
        namespace: String,
        /// Service account.
        service_account: String,
        /// The role assumed.
        role_arn: String,
    },
    /// EKS Pod Identity for a service account.
    PodIdentity {
        /// Pod namespace.
        namespace: String,
        /// Service account.
        service_account: String,
    },
    /// The host's own credentials (SDK default chain).
    Host,
}

/// An identity's current credentials.
#[derive(Debug, Clone)]
pub struct Signer {
    /// Whose they are.
    pub identity: Identity,
    /// What the SDK signs with.
    pub credentials: SharedCredentialsProvider,
    /// Changes when the credentials are renewed (empty for the host's refreshing chain), so
    /// clients built with them are rebuilt.
    pub key_id: String,
}

/// Obtains and caches credentials.
#[derive(Debug)]
pub struct Auth {
    source: Source,
    endpoints: Endpoints,
    cluster: std::sync::Arc<Cluster>,
    cache: SharedCache<Identity, Credentials>,
    default_chain: tokio::sync::OnceCell<SharedCredentialsProvider>,
    agent: Client<HttpConnector, Empty<Bytes>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentCredentials {
    access_key_id: String,
    secret_access_key: String,
    token: String,
    expiration: String,
}

impl Auth {
    /// Credentials from `source`; `cluster` answers IRSA's role lookups.
    pub fn new(
        source: Source,
        endpoints: Endpoints,
        cluster: std::sync::Arc<Cluster>,
        capacity: usize,
    ) -> Self {
        Self {
            source,
            endpoints,
            cluster,
            cache: SharedCache::new(capacity),
            default_chain: tokio::sync::OnceCell::new(),
            agent: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The identity a volume reads as, and its credentials.
    pub async fn credentials(
        &self,
        config: &VolumeConfig,
        pod_tokens: Option<&SecretString>,
    ) -> Result<Signer, ProviderError> {
        let Source::Pod {
            pod_identity_endpoint,
            pod_identity_timeout,
        } = &self.source
        else {
            let chain = self
                .default_chain
                .get_or_init(|| async {
                    let chain = aws_config::default_provider::credentials::Builder::default()
                        .configure(
                            aws_config::provider_config::ProviderConfig::default()
                                .with_http_client(self.endpoints.http.clone()),
                        )
                        .build()
                        .await;
                    SharedCredentialsProvider::new(chain)
                })
                .await;
            return Ok(Signer {
                identity: Identity::Host,
                credentials: chain.clone(),
                key_id: String::new(),
            });
        };
        let (identity, token) = if config.use_pod_identity {
            let token = token(pod_tokens, POD_IDENTITY_AUDIENCE, "Pod Identity")?;
            let identity = Identity::PodIdentity {
                namespace: config.namespace.clone(),
                service_account: config.service_account.clone(),
            };
            (identity, token)
        } else {
            let token = token(pod_tokens, IRSA_AUDIENCE, "IRSA")?;
            let role_arn = self
                .cluster
                .role_arn(&config.namespace, &config.service_account)
                .await?;
            let identity = Identity::Irsa {
                namespace: config.namespace.clone(),
                service_account: config.service_account.clone(),
                role_arn,
            };
            (identity, token)
        };
        let (credentials, _) = self
            .cache
            .get_or_fetch(&identity, |_| async {
                let credentials = match &identity {
                    Identity::Irsa { role_arn, .. } => {
                        self.assume_role(config, role_arn, &token).await?
                    }
                    _ => {
                        self.pod_identity(
                            config.address_type,
                            pod_identity_endpoint.as_deref(),
                            *pod_identity_timeout,
                            &token,
                        )
                        .await?
                    }
                };
                let fresh_for = credentials
                    .expiry()
                    .and_then(|at| at.duration_since(SystemTime::now()).ok())
                    .map_or(Duration::ZERO, |left| left.saturating_sub(REFRESH_MARGIN));
                Ok::<_, ProviderError>((credentials, fresh_for))
            })
            .await?;
        Ok(Signer {
            identity,
            key_id: credentials.access_key_id().to_owned(),
            credentials: SharedCredentialsProvider::new(credentials),
        })
    }

    /// Forgets `identity`'s credentials after AWS refused them, so the next mount gets new ones.
    pub async fn refused(&self, identity: &Identity) {
        self.cache.invalidate_if(identity, |_| true).await;
    }

    async fn assume_role(
        &self,
        config: &VolumeConfig,
        role_arn: &str,
        token: &SecretString,
    ) -> Result<Credentials, ProviderError> {
        let sts = self.endpoints.sts(&config.region);
        let session = session_name(&config.namespace, &config.service_account);
        let reply = sts
            .assume_role_with_web_identity()
            .role_arn(role_arn)
            .role_session_name(session)
            .web_identity_token(token.expose())
            .send()
            .await
            .map_err(|err| {
                let doing = format!(
                    "IRSA: assuming role {role_arn} with the token of service account {}/{}",
                    config.namespace, config.service_account
                );
                match err.as_service_error() {
                    Some(service) => ProviderError::Unauthenticated {
                        provider: NAME.to_owned(),
                        message: format!(
                            "{doing} was refused: {}: {}; check the role's trust policy names this \
                             cluster's OIDC provider and system:serviceaccount:{}:{}",
                            service.code().unwrap_or("error"),
                            service.message().unwrap_or_default(),
                            config.namespace,
                            config.service_account
                        ),
                    },
                    None => ProviderError::BackendUnavailable {
                        provider: NAME.to_owned(),
                        message: format!("{doing} failed: {}", super::client::describe(&err)),
                        source: None,
                    },
                }
            })?;
        let issued = reply.credentials().ok_or_else(|| ProviderError::Backend {
            provider: NAME.to_owned(),
            message: format!("STS returned no credentials for role {role_arn}"),
            source: None,
        })?;
        let expiry = SystemTime::try_from(*issued.expiration()).ok();
        tracing::debug!(
            namespace = %config.namespace,
            service_account = %config.service_account,
            role_arn,
            "assumed IAM role with web identity"
        );
        Ok(Credentials::new(
            issued.access_key_id(),
            issued.secret_access_key(),
            Some(issued.session_token().to_owned()),
            expiry,
            "irsa",
        ))
    }

    async fn pod_identity(
        &self,
        address_type: AddressType,
        endpoint: Option<&str>,
        timeout: Duration,
        token: &SecretString,
    ) -> Result<Credentials, ProviderError> {
        let endpoints: Vec<&str> = match (endpoint, address_type) {
            (Some(endpoint), _) => vec![endpoint],
            (None, AddressType::Ipv4) => vec![POD_IDENTITY_IPV4],
            (None, AddressType::Ipv6) => vec![POD_IDENTITY_IPV6],
            (None, AddressType::Auto) => vec![POD_IDENTITY_IPV4, POD_IDENTITY_IPV6],
        };
        let mut failures = Vec::new();
        for url in endpoints {
            match self.ask_agent(url, timeout, token).await {
                Ok(credentials) => return Ok(credentials),
                Err(err) => failures.push(format!("{url}: {err}")),
            }
        }
        Err(ProviderError::Unauthenticated {
            provider: NAME.to_owned(),
            message: format!(
                "failed to get AWS config from pod identity agent: {}; check that the EKS Pod \
                 Identity Agent add-on runs on this node and an association exists for the \
                 service account",
                failures.join("; ")
            ),
        })
    }

    async fn ask_agent(
        &self,
        url: &str,
        timeout: Duration,
        token: &SecretString,
    ) -> Result<Credentials, String> {
        let request = http::Request::get(url)
            .header(http::header::AUTHORIZATION, token.expose())
            .body(Empty::new())
            .map_err(|err| err.to_string())?;
        let call = async {
            let response = self
                .agent
                .request(request)
                .await
                .map_err(|err| err.to_string())?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_AGENT_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|err| {
                    format!("reading the answer (at most {MAX_AGENT_ANSWER_BYTES} bytes): {err}")
                })?
                .to_bytes();
            if !status.is_success() {
                // The agent's error bodies are short JSON messages, never credentials.
                let text = String::from_utf8_lossy(&body);
                return Err(format!(
                    "HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                ));
            }
            let parsed: AgentCredentials = serde_json::from_slice(&body)
                .map_err(|_| "the agent's answer is not the expected JSON".to_owned())?;
            let expiry = jiff::Timestamp::strptime("%Y-%m-%dT%H:%M:%S%.fZ", &parsed.expiration)
                .or_else(|_| parsed.expiration.parse::<jiff::Timestamp>())
                .map_err(|_| "the agent's Expiration is not a timestamp".to_owned())?;
            Ok(Credentials::new(
                parsed.access_key_id,
                parsed.secret_access_key,
                Some(parsed.token),
                Some(SystemTime::from(expiry)),
                "pod-identity",
            ))
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
    }
}

fn token(
    tokens: Option<&SecretString>,
    audience: &str,
    method: &str,
) -> Result<SecretString, ProviderError> {
    pod_token(tokens, audience).map_err(|err| {
        let message = match err {
            TokenError::NotProvided => format!(
                "{method} token extraction failed: CSI token error: serviceAccount.tokens not \
                 provided - ensure tokenRequests is configured in CSIDriver with audience \
                 {audience:?} (Helm value tokenRequests)"
            ),
            TokenError::Malformed => format!(
                "{method} token extraction failed: the service-account tokens from kubelet are \
                 not the expected JSON object"
            ),
            TokenError::Missing => format!(
                "{method} token extraction failed: token for audience {audience:?} not found; \
                 add it to the CSIDriver's tokenRequests (Helm value tokenRequests)"
            ),
            TokenError::Empty => {
                format!(
                    "{method} token extraction failed: token for audience {audience:?} is empty"
                )
            }
        };
        ProviderError::Unauthenticated {
            provider: NAME.to_owned(),
            message,
        }
    })
}

/// An STS session name (`[\w+=,.@-]{2,64}`) that says whose it is in CloudTrail.
fn session_name(namespace: &str, service_account: &str) -> String {
    let name: String = format!("secrets-store-csi-{namespace}-{service_account}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_are_valid_for_sts() {
        let name = session_name("team-a", "app");
        assert_eq!(name, "secrets-store-csi-team-a-app");
        let long = session_name(&"n".repeat(63), "sa");
        assert_eq!(long.len(), 64);
    }

    #[test]
    fn token_errors_say_what_to_configure() {
        let tokens = crate::redact::Secret::new(
            r#"{"vault":{"token":"t","expirationTimestamp":"x"},"sts.amazonaws.com":{"token":""}}"#
                .to_owned(),
        );
        let message = |tokens, audience| token(tokens, audience, "IRSA").unwrap_err().to_string();
        assert!(message(None, IRSA_AUDIENCE).contains("serviceAccount.tokens not provided"));
        assert!(
            message(Some(&tokens), POD_IDENTITY_AUDIENCE)
                .contains("token for audience \"pods.eks.amazonaws.com\" not found")
        );
        assert!(message(Some(&tokens), IRSA_AUDIENCE).contains("is empty"));
    }
}
