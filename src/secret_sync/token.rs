//! Service-account tokens the controller requests for the workloads it serves: one
//! TokenRequest per service account and audience (upstream's admission policy allows one
//! audience and 600 s), reused until two thirds of its life, never logged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use crate::error::kube_message;
use crate::lock::lock;
use crate::redact::{Secret, SecretString};

/// The lifetime requested, as upstream's controller and admission policy fix it.
pub const TOKEN_SECONDS: i64 = 600;
/// Most tokens kept; the oldest are dropped beyond it.
const MAX_CACHED: usize = 16_384;

#[derive(Clone)]
struct Cached {
    token: SecretString,
    expires: String,
    refresh_at: Instant,
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenRequestError {
    /// The service account does not exist.
    #[error(
        "service account {namespace}/{name} not found; create it or set spec.serviceAccountName to an existing one"
    )]
    NotFound {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The API server refused (RBAC or an admission policy).
    #[error(
        "requesting a token for service account {namespace}/{name} (audience {audience:?}) failed: {message}"
    )]
    Refused {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Audience.
        audience: String,
        /// The API server's message.
        message: String,
    },
}

/// Tokens by namespace, service account and audience.
pub struct Tokens {
    client: kube::Client,
    cache: Mutex<HashMap<(String, String, String), Cached>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

impl Tokens {
    /// Tokens requested with `client` (the controller's own identity).
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The tokens of `namespace/name` for `audiences`, in the JSON shape kubelet passes to
    /// providers (`{"<audience>": {"token": ..., "expirationTimestamp": ...}}`).
    pub async fn for_account(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[String],
    ) -> Result<SecretString, TokenRequestError> {
        let mut tokens = serde_json::Map::new();
        for audience in audiences {
            let cached = self.token(namespace, name, audience).await?;
            tokens.insert(
                audience.clone(),
                json!({"token": cached.token.expose(), "expirationTimestamp": cached.expires}),
            );
        }
        Ok(Secret::new(serde_json::Value::Object(tokens).to_string()))
    }

    /// One token: from the cache while it has a third of its life left, else requested.
    async fn token(
        &self,
        namespace: &str,
        name: &str,
        audience: &str,
    ) -> Result<Cached, TokenRequestError> {
        let key = (namespace.to_owned(), name.to_owned(), audience.to_owned());
        if let Some(cached) = lock(&self.cache).get(&key)
            && cached.refresh_at > Instant::now()
        {
            return Ok(cached.clone());
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![audience.to_owned()]),
                expiration_seconds: Some(TOKEN_SECONDS),
                ..Default::default()
            }),
            ..Default::default()
        };
        let answer = api
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .map_err(|err| match &err {
                kube::Error::Api(status) if status.code == 404 => TokenRequestError::NotFound {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                },
                _ => TokenRequestError::Refused {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    audience: audience.to_owned(),
                    message: kube_message(&err),
                },
            })?;
        let status = answer.status.unwrap_or_default();
        let expires = status
            .expiration_timestamp
            .map_or_else(jiff::Timestamp::now, |t| t.0);
        let lifetime = Duration::try_from(jiff::Timestamp::now().duration_until(expires))
            .unwrap_or_default()
            .min(Duration::from_secs(TOKEN_SECONDS.unsigned_abs()));
        let cached = Cached {
            token: Secret::new(status.token.unwrap_or_default()),
            expires: expires.to_string(),
            refresh_at: Instant::now() + lifetime * 2 / 3,
        };
        let mut cache = lock(&self.cache);
        if cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, c| c.refresh_at > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, cached.clone());
        Ok(cached)
    }
}
