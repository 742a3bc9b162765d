//! Access tokens for Key Vault, as the Azure plugin gets them: workload identity (the pod's
//! kubelet token for `api://AzureADTokenExchange` as the client assertion of the class's
//! `clientID`) or a service principal from the volume's `nodePublishSecretRef`, at the
//! tenant's Entra ID token endpoint. Tokens are shared by every pod of one identity until
//! five minutes before they expire.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::NAME;
use super::client::{CallError, Client, form};
use super::config::{Cloud, Login};
use crate::pod::PodInfo;
use crate::provider::shared_cache::SharedCache;
use crate::provider::{ProviderError, TokenError, pod_token};
use crate::redact::{Secret, SecretString};

/// The audience of the pod's token, as Entra ID federation expects it.
pub const TOKEN_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Tokens are not handed out in their last minutes.
const EXPIRY_MARGIN: Duration = Duration::from_secs(300);
/// Nor for longer than this, whatever the answer says.
const MAX_TOKEN_REUSE: Duration = Duration::from_secs(3600);
/// Longest service-principal credential read from a Secret.
const MAX_CREDENTIAL_LEN: usize = 4096;

/// Where tokens come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Each pod's workload identity, or its volume's service principal.
    Pod,
    /// One access token for every mount (`mount` on an operator's machine).
    AccessToken(SecretString),
}

/// Who a mount reads as: the key of shared tokens and reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's service account.
    pub service_account: String,
    /// The Entra ID tenant.
    pub tenant: String,
    /// The cloud.
    pub cloud: Cloud,
    /// The application's client ID.
    pub client_id: String,
    /// For a service principal, a digest of its secret: pods with different secrets never
    /// share a token.
    pub secret_digest: Option<String>,
}

/// An access token and how long it may still be used.
#[derive(Debug, Clone)]
pub struct Token {
    /// The bearer token.
    pub access: SecretString,
    /// When it stops being handed out.
    pub usable_until: Instant,
}

/// What one mount logs in with, checked before any request.
pub struct Credential {
    /// Who it is.
    pub identity: Identity,
    secret: Option<SecretString>,
}

/// Tokens per identity, shared and bounded.
pub struct Auth {
    source: Source,
    tokens: SharedCache<Identity, Token>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("identities", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Tokens from `source`, for at most `cache_size` identities.
    pub fn new(source: Source, cache_size: usize) -> Self {
        Self {
            source,
            tokens: SharedCache::new(cache_size),
        }
    }

    /// The identity of a mount: its pod, tenant, cloud and login.
    pub fn credential(
        &self,
        pod: &PodInfo,
        tenant: &str,
        cloud: Cloud,
        login: &Login,
        secrets: Option<&std::collections::BTreeMap<String, SecretString>>,
    ) -> Result<Credential, ProviderError> {
        let mut identity = Identity {
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
            tenant: tenant.to_owned(),
            cloud,
            client_id: String::new(),
            secret_digest: None,
        };
        let mut secret = None;
        match (&self.source, login) {
            (Source::AccessToken(_), _) => {}
            (Source::Pod, Login::Workload { client_id }) => identity.client_id = client_id.clone(),
            (Source::Pod, Login::ServicePrincipal) => {
                let (client_id, client_secret) = service_principal(secrets)?;
                identity.client_id = client_id;
                identity.secret_digest = Some(digest(&client_secret));
                secret = Some(client_secret);
            }
        }
        Ok(Credential { identity, secret })
    }

    /// A token for `credential`: shared while usable, else requested with this pod's
    /// token or secret. The flag says it was requested by this call.
    pub async fn token(
        &self,
        client: &Client,
        credential: &Credential,
        pod_tokens: Option<&SecretString>,
        deadline: Instant,
    ) -> Result<(Token, bool), ProviderError> {
        if let Source::AccessToken(token) = &self.source {
            if token.expose().is_empty() {
                return Err(ProviderError::Unauthenticated {
                    provider: NAME.to_owned(),
                    message: "no Azure access token: set AZURE_ACCESS_TOKEN, e.g. to $(az account \
                              get-access-token --resource https://vault.azure.net --query \
                              accessToken -o tsv)"
                        .to_owned(),
                });
            }
            let token = Token {
                access: token.clone(),
                usable_until: Instant::now() + MAX_TOKEN_REUSE,
            };
            return Ok((token, false));
        }
        self.tokens.drop_expired();
        self.tokens
            .get_or_fetch(&credential.identity, |_| async {
                let token = request(client, credential, pod_tokens, deadline).await?;
                let fresh_for = token.usable_until.saturating_duration_since(Instant::now());
                Ok::<_, ProviderError>((token, fresh_for))
            })
            .await
    }

    /// Forgets `token` after Key Vault refused it, so the next mount asks again.
    pub async fn refused(&self, identity: &Identity, token: &SecretString) {
        self.tokens
            .invalidate_if(identity, |held| held.access.expose() == token.expose())
            .await;
    }
}

/// The plugin's `clientid` and `clientsecret` keys of the `nodePublishSecretRef` Secret.
fn service_principal(
    secrets: Option<&std::collections::BTreeMap<String, SecretString>>,
) -> Result<(String, SecretString), ProviderError> {
    let missing = |key: &str| ProviderError::Unauthenticated {
        provider: NAME.to_owned(),
        message: format!(
            "failed to get credentials, could not find {key} in the nodePublishSecretRef Secret; \
             use workload identity (set clientID in the SecretProviderClass) or give the \
             volume a nodePublishSecretRef whose Secret has clientid and clientsecret"
        ),
    };
    let get = |key: &str| {
        secrets
            .and_then(|s| s.get(key))
            .filter(|v| !v.expose().trim().is_empty())
            .ok_or_else(|| missing(key))
    };
    let client_id = get("clientid")?.expose().trim().to_owned();
    let client_secret = get("clientsecret")?;
    if client_id.len() > MAX_CREDENTIAL_LEN
        || client_secret.expose().len() > MAX_CREDENTIAL_LEN
        || client_id.chars().any(char::is_control)
    {
        return Err(ProviderError::Unauthenticated {
            provider: NAME.to_owned(),
            message: format!(
                "the nodePublishSecretRef Secret's clientid or clientsecret is not a credential \
                 (longer than {MAX_CREDENTIAL_LEN} bytes, or holds control characters)"
            ),
        });
    }
    Ok((
        client_id,
        Secret::new(client_secret.expose().trim().to_owned()),
    ))
}

fn digest(secret: &SecretString) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, secret.expose().as_bytes());
    hex::encode(&hash.as_ref()[..16])
}

async fn request(
    client: &Client,
    credential: &Credential,
    pod_tokens: Option<&SecretString>,
    deadline: Instant,
) -> Result<Token, ProviderError> {
    #[derive(Deserialize)]
    struct Answer {
        access_token: String,
        #[serde(default)]
        expires_in: Option<serde_json::Value>,
    }
    let identity = &credential.identity;
    let scope = credential.identity.cloud.vault_scope();
    let assertion;
    let body = match &credential.secret {
        Some(secret) => form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &identity.client_id),
            ("client_secret", secret.expose()),
            ("scope", &scope),
        ]),
        None => {
            assertion = workload_token(pod_tokens)?;
            form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &identity.client_id),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion.expose()),
                ("scope", &scope),
            ])
        }
    };
    let url = client
        .endpoints()
        .token_url(identity.cloud, &identity.tenant);
    let started = Instant::now();
    let answer = client
        .post_form(&url, &body, deadline)
        .await
        .map_err(|err| token_error(err, credential, &url))?;
    let answer: Answer =
        serde_json::from_slice(answer.expose()).map_err(|_| ProviderError::Backend {
            provider: NAME.to_owned(),
            message: format!("{url} answered without an access_token"),
            source: None,
        })?;
    let lifetime = match answer.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .map_or(Duration::from_secs(3600), Duration::from_secs);
    let reuse = lifetime.saturating_sub(EXPIRY_MARGIN).min(MAX_TOKEN_REUSE);
    Ok(Token {
        access: Secret::new(answer.access_token),
        usable_until: started + reuse,
    })
}

/// The pod's token for Entra ID federation (kubelet mints it for `tokenRequests`).
fn workload_token(pod_tokens: Option<&SecretString>) -> Result<SecretString, ProviderError> {
    pod_token(pod_tokens, TOKEN_AUDIENCE).map_err(|err| {
        let why = match err {
            TokenError::NotProvided => "kubelet sent no service account tokens",
            TokenError::Malformed => "the serviceAccount.tokens attribute is not valid JSON",
            TokenError::Missing => "no token has the audience api://AzureADTokenExchange",
            TokenError::Empty => "the token for api://AzureADTokenExchange is empty",
        };
        ProviderError::Unauthenticated {
            provider: NAME.to_owned(),
            message: format!(
                "failed to parse workload identity tokens: {why}; add {{audience: \
                 {TOKEN_AUDIENCE}}} to the CSIDriver's tokenRequests (Helm: tokenRequests)"
            ),
        }
    })
}

fn token_error(err: CallError, credential: &Credential, url: &str) -> ProviderError {
    let provider = NAME.to_owned();
    let identity = &credential.identity;
    let who = match &credential.secret {
        Some(_) => format!("service principal {}", identity.client_id),
        None => format!(
            "client {} as system:serviceaccount:{}:{}",
            identity.client_id, identity.namespace, identity.service_account
        ),
    };
    let doing = format!(
        "failed to get an access token for {who} from {url} (tenant {})",
        identity.tenant
    );
    match err {
        CallError::Http {
            status,
            code,
            message,
        } if (400..500).contains(&status) && status != 408 && status != 429 => {
            let hint = if credential.secret.is_none() {
                "; check the identity's federated credential: issuer = this cluster's service \
                 account issuer, subject = system:serviceaccount:NAMESPACE:SERVICE_ACCOUNT, \
                 audience = api://AzureADTokenExchange"
            } else {
                ""
            };
            ProviderError::Unauthenticated {
                provider,
                message: format!("{doing}: HTTP {status} {code}: {message}{hint}"),
            }
        }
        CallError::Timeout => ProviderError::BackendTimeout {
            provider,
            message: format!("{doing}: {err}"),
            source: None,
        },
        CallError::Http { .. } | CallError::Unreachable(_) => ProviderError::BackendUnavailable {
            provider,
            message: format!("{doing}: {err}"),
            source: None,
        },
        CallError::TooLarge(_) | CallError::Invalid(_) => ProviderError::Backend {
            provider,
            message: format!("{doing}: {err}"),
            source: None,
        },
    }
}
