//! Workload identity as the GCP plugin does it: the pod's Kubernetes token for the workload
//! identity pool is exchanged at Google's STS for a federated access token, which, when the
//! service account is annotated `iam.gke.io/gcp-service-account`, is exchanged again for
//! that Google service account's token (`generateAccessToken`, with the optional delegates
//! annotation). Tokens are shared by every pod of one identity until shortly before they
//! expire; the pool is found once (flags, else the metadata server).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::NAME;
use super::client::{CallError, Clients};
use crate::pod::PodInfo;
use crate::provider::shared_cache::SharedCache;
use crate::provider::{ProviderError, TokenError, pod_token};
use crate::redact::{Secret, SecretString};

/// The service-account annotation naming the Google service account to act as.
pub const GSA_ANNOTATION: &str = "iam.gke.io/gcp-service-account";
/// The annotation listing the delegation chain to it (a JSON list of emails).
pub const DELEGATES_ANNOTATION: &str = "iam.gke.io/gcp-service-account-delegates";

/// The scope every token is asked for, as the plugin asks.
const CLOUD_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// A token is not handed out when it has less than this left.
const EXPIRY_MARGIN: Duration = Duration::from_secs(300);
/// How long a token is reused at most, whatever Google says.
const MAX_TOKEN_REUSE: Duration = Duration::from_secs(3600);
/// How long a service account's annotations are reused: an edit takes effect this fast.
const ANNOTATIONS_TTL: Duration = Duration::from_secs(30);
/// Most delegates accepted in the annotation.
const MAX_DELEGATES: usize = 16;

/// Where tokens come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Each pod's own workload identity (the plugin's `pod-adc`).
    Pod(Pool),
    /// One access token for every mount (`mount` on an operator's machine).
    AccessToken(SecretString),
}

/// How the workload identity pool is found.
#[derive(Debug, Clone, Default)]
pub struct Pool {
    /// The whole STS audience (a fleet or federated pool); else built from the rest.
    pub audience: Option<String>,
    /// The project, else the metadata server's.
    pub project: Option<String>,
    /// The cluster's location, else the metadata server's `cluster-location`.
    pub cluster_location: Option<String>,
    /// The cluster's name, else the metadata server's `cluster-name`.
    pub cluster_name: Option<String>,
    /// The identity provider's base (the plugin's `GKE_WORKLOAD_IDENTITY_ENDPOINT`).
    pub provider_endpoint: String,
}

/// The pool in use: the token audience kubelet must mint, and the STS audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `PROJECT.svc.id.goog`, the audience of the pod's token (may be empty for a
    /// federated pool, whose token audience is the whole STS audience).
    pub pool: String,
    /// `identitynamespace:POOL:PROVIDER`, or the configured audience.
    pub audience: String,
}

impl Resolved {
    /// The audience kubelet's `tokenRequests` must include.
    pub fn token_audience(&self) -> &str {
        if self.pool.is_empty() {
            &self.audience
        } else {
            &self.pool
        }
    }
}

/// Who a mount reads as: the key of shared tokens and reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's Kubernetes service account.
    pub service_account: String,
    /// The Google service account acted as, if annotated.
    pub gsa: Option<String>,
    /// Its delegation chain.
    pub delegates: Vec<String>,
}

/// An access token and how long it may still be used.
#[derive(Debug, Clone)]
pub struct Token {
    /// The bearer token.
    pub access: SecretString,
    /// When it stops being handed out.
    pub usable_until: Instant,
}

#[derive(Debug, Clone, Default)]
struct Annotations {
    gsa: Option<String>,
    delegates: Option<String>,
}

/// Tokens per identity, shared and bounded.
pub struct Auth {
    source: Source,
    kube: Option<kube::Client>,
    resolved: OnceCell<Resolved>,
    annotations: SharedCache<(String, String), Annotations>,
    tokens: SharedCache<Identity, Token>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("kube", &self.kube.is_some())
            .field("resolved", &self.resolved.get())
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Tokens from `source`; `kube` reads service-account annotations.
    pub fn new(source: Source, kube: Option<kube::Client>, cache_size: usize) -> Self {
        Self {
            source,
            kube,
            resolved: OnceCell::new(),
            annotations: SharedCache::new(cache_size),
            tokens: SharedCache::new(cache_size),
        }
    }

    /// The pool, found once: configured, else read from the metadata server (GKE).
    async fn pool(
        &self,
        pool: &Pool,
        clients: &Clients,
        deadline: Instant,
    ) -> Result<Resolved, ProviderError> {
        self.resolved
            .get_or_try_init(|| resolve_pool(pool, clients, deadline))
            .await
            .cloned()
    }

    /// The identity of `pod` (its service account's annotations read, briefly cached).
    pub async fn identity(&self, pod: &PodInfo) -> Result<Identity, ProviderError> {
        let mut identity = Identity {
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
            gsa: None,
            delegates: Vec::new(),
        };
        if matches!(self.source, Source::AccessToken(_)) {
            return Ok(identity);
        }
        let annotations = self.annotations(pod).await?;
        identity.gsa = annotations.gsa.filter(|g| !g.trim().is_empty());
        if let (Some(_), Some(delegates)) = (&identity.gsa, annotations.delegates) {
            identity.delegates = serde_json::from_str::<Vec<String>>(&delegates)
                .ok()
                .filter(|list| list.len() <= MAX_DELEGATES)
                .ok_or_else(|| ProviderError::Unauthenticated {
                    provider: NAME.to_owned(),
                    message: format!(
                        "unable to parse delegates annotation on SA {}/{}: {DELEGATES_ANNOTATION} \
                         must be a JSON list of at most {MAX_DELEGATES} service account emails",
                        pod.namespace, pod.service_account
                    ),
                })?;
        }
        for email in identity.gsa.iter().chain(&identity.delegates) {
            check_email(email, pod)?;
        }
        Ok(identity)
    }

    async fn annotations(&self, pod: &PodInfo) -> Result<Annotations, ProviderError> {
        let Some(client) = &self.kube else {
            return Ok(Annotations::default());
        };
        let key = (pod.namespace.clone(), pod.service_account.clone());
        let (found, _) = self
            .annotations
            .get_or_fetch(&key, |_| async {
                let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &pod.namespace);
                let account = api.get_opt(&pod.service_account).await.map_err(|err| {
                    let doing = format!(
                        "unable to fetch SA info {}/{}",
                        pod.namespace, pod.service_account
                    );
                    crate::provider::service_account_error(NAME, &doing, &err)
                })?;
                let mut annotations = account
                    .and_then(|a| a.metadata.annotations)
                    .unwrap_or_default();
                let found = Annotations {
                    gsa: annotations.remove(GSA_ANNOTATION),
                    delegates: annotations.remove(DELEGATES_ANNOTATION),
                };
                Ok::<_, ProviderError>((found, ANNOTATIONS_TTL))
            })
            .await?;
        Ok(found)
    }

    /// A token for `identity`: shared while usable, else exchanged from this pod's token.
    pub async fn token(
        &self,
        clients: &Clients,
        identity: &Identity,
        pod_tokens: Option<&SecretString>,
        deadline: Instant,
    ) -> Result<(Token, bool), ProviderError> {
        let pool = match &self.source {
            Source::AccessToken(token) if token.expose().is_empty() => {
                return Err(ProviderError::Unauthenticated {
                    provider: NAME.to_owned(),
                    message: "no Google access token: set GOOGLE_OAUTH_ACCESS_TOKEN, e.g. to \
                              $(gcloud auth print-access-token)"
                        .to_owned(),
                });
            }
            Source::AccessToken(token) => {
                let token = Token {
                    access: token.clone(),
                    usable_until: Instant::now() + MAX_TOKEN_REUSE,
                };
                return Ok((token, false));
            }
            Source::Pod(pool) => self.pool(pool, clients, deadline).await?,
        };
        self.tokens.drop_expired();
        let (token, fetched) = self
            .tokens
            .get_or_fetch(identity, |_| async {
                let token = exchange(clients, identity, &pool, pod_tokens, deadline).await?;
                let fresh_for = token.usable_until.saturating_duration_since(Instant::now());
                Ok::<_, ProviderError>((token, fresh_for))
            })
            .await?;
        Ok((token, fetched))
    }

    /// Forgets `token` after Secret Manager refused it, so the next mount exchanges again.
    pub async fn refused(&self, identity: &Identity, token: &SecretString) {
        self.tokens
            .invalidate_if(identity, |held| held.access.expose() == token.expose())
            .await;
    }
}

fn check_email(email: &str, pod: &PodInfo) -> Result<(), ProviderError> {
    let ok = email.len() <= 254
        && email.contains('@')
        && email
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'@' | b'.' | b'-' | b'_'));
    if ok {
        return Ok(());
    }
    Err(ProviderError::Unauthenticated {
        provider: NAME.to_owned(),
        message: format!(
            "service account {}/{}: {email:?} in {GSA_ANNOTATION} or {DELEGATES_ANNOTATION} is \
             not a service account email",
            pod.namespace, pod.service_account
        ),
    })
}

async fn resolve_pool(
    pool: &Pool,
    clients: &Clients,
    deadline: Instant,
) -> Result<Resolved, ProviderError> {
    if let Some(audience) = pool.audience.clone().filter(|a| !a.is_empty()) {
        // `identitynamespace:POOL:PROVIDER` names its pool; any other audience is a federated
        // pool's, and the pod's token carries the whole audience.
        let parts: Vec<&str> = audience.splitn(3, ':').collect();
        let pool = if parts.len() == 3 {
            parts[1].to_owned()
        } else {
            String::new()
        };
        return Ok(Resolved { pool, audience });
    }
    let metadata = |what: &'static str, path: &'static str, flag: &'static str| async move {
        clients
            .metadata(path, deadline)
            .await
            .map_err(|err| ProviderError::Unauthenticated {
                provider: NAME.to_owned(),
                message: format!(
                    "unable to determine {what} from the metadata server at {} ({err}); \
                     outside GKE set {flag} on the driver (Helm: gcp.project, gcp.clusterLocation, \
                     gcp.clusterName, or gcp.workloadIdentityAudience)",
                    clients.endpoints().metadata
                ),
            })
    };
    let project = match pool.project.clone().filter(|p| !p.is_empty()) {
        Some(project) => project,
        None => metadata("the project id", "project/project-id", "--gcp-project").await?,
    };
    let location = match pool.cluster_location.clone().filter(|p| !p.is_empty()) {
        Some(location) => location,
        None => {
            metadata(
                "the cluster location",
                "instance/attributes/cluster-location",
                "--gcp-cluster-location",
            )
            .await?
        }
    };
    let name = match pool.cluster_name.clone().filter(|p| !p.is_empty()) {
        Some(name) => name,
        None => {
            metadata(
                "the cluster name",
                "instance/attributes/cluster-name",
                "--gcp-cluster-name",
            )
            .await?
        }
    };
    let pool_name = format!("{project}.svc.id.goog");
    let provider = format!(
        "{}/projects/{project}/locations/{location}/clusters/{name}",
        pool.provider_endpoint.trim_end_matches('/')
    );
    tracing::info!(pool = %pool_name, provider = %provider, "gcp workload identity pool");
    Ok(Resolved {
        audience: format!("identitynamespace:{pool_name}:{provider}"),
        pool: pool_name,
    })
}

/// The pod's token for the pool (kubelet mints it for the audience in `tokenRequests`).
fn kube_token(
    pool: &Resolved,
    pod_tokens: Option<&SecretString>,
) -> Result<SecretString, ProviderError> {
    let wanted = pool.token_audience();
    let mut last = TokenError::Missing;
    for audience in [pool.pool.as_str(), pool.audience.as_str()] {
        if audience.is_empty() {
            continue;
        }
        match pod_token(pod_tokens, audience) {
            Ok(token) => return Ok(token),
            Err(err) => last = err,
        }
    }
    let why = match last {
        TokenError::NotProvided => "kubelet sent no service account tokens",
        TokenError::Malformed => "the serviceAccount.tokens attribute is not valid JSON",
        TokenError::Missing => "no token has audience value of idPool",
        TokenError::Empty => "the token for the pool's audience is empty",
    };
    Err(ProviderError::Unauthenticated {
        provider: NAME.to_owned(),
        message: format!(
            "unable to obtain workload identity auth: {why}; add {{audience: {wanted}}} to the \
             CSIDriver's tokenRequests (Helm: tokenRequests)"
        ),
    })
}

async fn exchange(
    clients: &Clients,
    identity: &Identity,
    pool: &Resolved,
    pod_tokens: Option<&SecretString>,
    deadline: Instant,
) -> Result<Token, ProviderError> {
    #[derive(Deserialize)]
    struct Federated {
        access_token: String,
        #[serde(default)]
        expires_in: Option<u64>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Impersonated {
        access_token: String,
        #[serde(default)]
        expire_time: Option<String>,
    }
    let kube = kube_token(pool, pod_tokens)?;
    let started = Instant::now();
    let body = serde_json::json!({
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "subject_token": kube.expose(),
        "audience": pool.audience,
        "scope": CLOUD_SCOPE,
    });
    let url = &clients.endpoints().token_exchange;
    let answer = clients
        .post_json(url, None, &Secret::new(body.to_string()), deadline)
        .await
        .map_err(|err| {
            token_error(
                err,
                &format!(
                    "unable to fetch identitybindingtoken from {url} for {}/{} (audience {})",
                    identity.namespace, identity.service_account, pool.audience
                ),
            )
        })?;
    let federated: Federated =
        serde_json::from_slice(answer.expose()).map_err(|_| ProviderError::Backend {
            provider: NAME.to_owned(),
            message: format!("{url} answered without an access_token"),
            source: None,
        })?;
    let lifetime = Duration::from_secs(federated.expires_in.unwrap_or(3600));
    let federated_token = Secret::new(federated.access_token);
    let Some(gsa) = &identity.gsa else {
        return Ok(usable(federated_token, started, lifetime));
    };
    let prefixed = |email: &String| format!("projects/-/serviceAccounts/{email}");
    let body = serde_json::json!({
        "scope": [CLOUD_SCOPE],
        "delegates": identity.delegates.iter().map(prefixed).collect::<Vec<_>>(),
    });
    let url = format!(
        "{}/v1/{}:generateAccessToken",
        clients.endpoints().iam_credentials.trim_end_matches('/'),
        prefixed(gsa)
    );
    let answer = clients
        .post_json(
            &url,
            Some(&federated_token),
            &Secret::new(body.to_string()),
            deadline,
        )
        .await
        .map_err(|err| {
            token_error(
                err,
                &format!(
                    "unable to fetch gcp service account token for {gsa} as {}/{} (grant \
                     roles/iam.workloadIdentityUser on {gsa} to the Kubernetes service account)",
                    identity.namespace, identity.service_account
                ),
            )
        })?;
    let impersonated: Impersonated =
        serde_json::from_slice(answer.expose()).map_err(|_| ProviderError::Backend {
            provider: NAME.to_owned(),
            message: format!("{url} answered without an accessToken"),
            source: None,
        })?;
    let lifetime = impersonated
        .expire_time
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .and_then(|t| {
            let left = t.duration_since(jiff::Timestamp::now());
            Duration::try_from(left).ok()
        })
        .unwrap_or(Duration::from_secs(3600));
    Ok(usable(
        Secret::new(impersonated.access_token),
        started,
        lifetime,
    ))
}

fn usable(access: SecretString, started: Instant, lifetime: Duration) -> Token {
    let reuse = lifetime.saturating_sub(EXPIRY_MARGIN).min(MAX_TOKEN_REUSE);
    Token {
        access,
        usable_until: started + reuse,
    }
}

fn token_error(err: CallError, doing: &str) -> ProviderError {
    let provider = NAME.to_owned();
    match err {
        CallError::Http {
            status: 403,
            message,
        } => ProviderError::PermissionDenied {
            provider,
            message: format!("{doing}: {message}"),
        },
        CallError::Http { status, message } if (400..500).contains(&status) => {
            ProviderError::Unauthenticated {
                provider,
                message: format!("{doing}: HTTP {status}: {message}"),
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
        CallError::Status { .. } | CallError::TooLarge(_) | CallError::Invalid(_) => {
            ProviderError::Backend {
                provider,
                message: format!("{doing}: {err}"),
                source: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_audience_is_the_plugins() {
        let pool = Resolved {
            pool: "p1.svc.id.goog".to_owned(),
            audience: "identitynamespace:p1.svc.id.goog:https://container.googleapis.com/v1/projects/p1/locations/l/clusters/c".to_owned(),
        };
        assert_eq!(pool.token_audience(), "p1.svc.id.goog");
        let tokens = Secret::new(r#"{"p1.svc.id.goog":{"token":"t1"}}"#.to_owned());
        assert_eq!(kube_token(&pool, Some(&tokens)).unwrap().expose(), "t1");
        let other = Secret::new(r#"{"vault":{"token":"t1"}}"#.to_owned());
        let err = kube_token(&pool, Some(&other)).unwrap_err().to_string();
        assert!(err.contains("{audience: p1.svc.id.goog}"), "{err}");
        assert!(!err.contains("t1"));
    }

    #[test]
    fn tokens_are_reused_until_five_minutes_before_expiry() {
        let now = Instant::now();
        let token = usable(Secret::new(String::new()), now, Duration::from_secs(3599));
        assert_eq!(token.usable_until, now + Duration::from_secs(3299));
        let short = usable(Secret::new(String::new()), now, Duration::from_secs(60));
        assert_eq!(short.usable_until, now);
    }
}
