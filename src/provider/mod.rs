//! Where secret bytes come from: the `Provider` trait, its domain types, and the registry that
//! resolves a provider name to a built-in provider or an external plugin socket.
//!
//! Nothing here knows about protobuf; `external` converts at the socket edge.

pub mod aws;
pub mod azure;
pub mod external;
pub mod gcp;
pub mod https;
pub mod local;
mod registry;
pub mod serve;
pub mod shared_cache;
pub mod vault;
pub mod version_key;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;

pub use registry::{Registry, RegistryConfig};

use crate::pod::PodInfo;
use crate::redact::{SecretBytes, SecretString};

/// The lower error behind a provider failure, kept for the message chain; shared, as the
/// read-sharing caches hand one failure to every pod waiting on it.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A cause that is only a sentence.
pub fn cause(message: impl Into<String>) -> Cause {
    Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(
        message.into(),
    ))
}

/// Default file mode told to providers, as upstream (`"420"` on the wire).
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// A source of secret objects for one volume.
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// Fetches every object of one volume.
    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError>;

    /// Parameters a pod's volume attributes may not override: a built-in provider runs inside
    /// the privileged driver, so only the class (a namespace admin) chooses where it
    /// connects, which files it reads and what it fetches. Plugins get upstream's merge.
    fn class_parameters(&self) -> &'static [&'static str] {
        &[]
    }

    /// The service-account token audiences a class with these parameters logs in with, for a
    /// caller that requests tokens itself (the sync controller), so it mints no others;
    /// `None` when the provider cannot tell (a plugin): the caller offers all it may.
    fn token_audiences(&self, _parameters: &BTreeMap<String, String>) -> Option<Vec<String>> {
        None
    }

    /// Called once the volume at `target` is unpublished, for a provider that holds
    /// something for it (the Vault provider's leases). Must not block.
    async fn unpublished(&self, _target: &std::path::Path) {}
}

/// A parameter as upstream providers read it: trimmed, and absent when empty.
pub fn parameter<'a>(parameters: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    parameters
        .get(key)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

/// Everything a provider is told about one volume.
#[derive(Debug, Clone, Default)]
pub struct MountRequest {
    /// The pod, as kubelet identified it; never taken from the parameters.
    pub pod: PodInfo,
    /// SecretProviderClass parameters merged with the pod's other volume attributes (no
    /// tokens, no identity).
    pub parameters: BTreeMap<String, String>,
    /// The pod's service-account tokens as kubelet sent them (a JSON object per audience).
    pub service_account_tokens: Option<SecretString>,
    /// The `nodePublishSecretRef` Secret's data, if the volume names one.
    pub secrets: Option<BTreeMap<String, SecretString>>,
    /// Kubelet's target path; some external providers still write there themselves.
    pub target_path: PathBuf,
    /// Default file mode for providers that do not set one per file.
    pub default_mode: u32,
    /// Versions currently mounted, so a provider can skip unchanged objects.
    pub current_versions: Vec<ObjectVersion>,
    /// The mounted files of those versions, for a provider that reuses unchanged ones.
    pub mounted: MountedFiles,
    /// Time left before the caller gives up.
    pub timeout: Option<Duration>,
    /// Set on a rotation to when it began: a built-in provider shares no backend read that
    /// started earlier, so the rotation interval alone bounds how late a change arrives.
    pub fresh_since: Option<std::time::Instant>,
    /// Bytes the answer may hold, and a built-in provider may read from its backend.
    pub max_bytes: usize,
}

/// Reads back a file of the volume as mounted now, by its path in the volume. The pipeline
/// builds it, so a provider never opens a path of its own making; empty on a first mount.
#[derive(Clone, Default)]
pub struct MountedFiles(Option<Arc<MountedReader>>);

type MountedReader = dyn Fn(&str) -> Option<Vec<u8>> + Send + Sync;

impl MountedFiles {
    /// Files read by `read`, which answers `None` for anything missing or refused.
    pub fn new(read: impl Fn(&str) -> Option<Vec<u8>> + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(read)))
    }

    /// The mounted contents of `name`, if there are any to trust.
    pub fn read(&self, name: &str) -> Option<Vec<u8>> {
        self.0.as_ref().and_then(|read| read(name))
    }
}

impl fmt::Debug for MountedFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "MountedFiles"
        } else {
            "MountedFiles(none)"
        })
    }
}

/// What a provider returns for one volume.
#[derive(Debug, Clone, Default)]
pub struct MountResponse {
    /// One entry per object; used for rotation and the SecretProviderClassPodStatus.
    pub versions: Vec<ObjectVersion>,
    /// Files to write into the volume; empty for legacy providers that wrote their own.
    pub files: Vec<ProviderFile>,
}

/// One object's id and version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectVersion {
    /// Provider-defined unique id.
    pub id: String,
    /// Changes exactly when the content changes; never the content itself.
    pub version: String,
}

/// A file as returned by a provider, before any validation.
#[derive(Debug, Clone)]
pub struct ProviderFile {
    /// Path relative to the volume root, as sent (validated by `volume::payload`).
    pub path: String,
    /// Permission bits as sent (validated by `volume::payload`); a plugin's negative wire
    /// value arrives as its bit pattern, beyond any valid mode.
    pub mode: u32,
    /// The secret bytes.
    pub contents: SecretBytes,
}

/// Reads each of `keys` once with `read`, `concurrency` at a time: the built-in providers'
/// fan-out, where one object named twice in a class is read once.
pub async fn read_distinct<K, V, F, Fut>(
    keys: std::collections::BTreeSet<K>,
    concurrency: usize,
    read: F,
) -> BTreeMap<K, Result<V, ProviderError>>
where
    K: Ord + Clone,
    F: Fn(K) -> Fut,
    Fut: std::future::Future<Output = Result<V, ProviderError>>,
{
    use futures::StreamExt as _;
    futures::stream::iter(keys)
        .map(|key| {
            let fetched = read(key.clone());
            async move { (key, fetched.await) }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

/// The read of `key` from [`read_distinct`]: a success as often as asked, a failure once
/// (the mount fails with it).
pub fn take_read<K: Ord, V: Clone>(
    reads: &mut BTreeMap<K, Result<V, ProviderError>>,
    key: &K,
) -> Result<V, ProviderError> {
    if let Some(Ok(value)) = reads.get(key) {
        return Ok(value.clone());
    }
    match reads.remove(key) {
        Some(Err(err)) => Err(err),
        _ => unreachable!("every distinct key was read, and a failure ends the mount"),
    }
}

/// Why a provider could not produce a volume's objects.
///
/// Every variant names the provider and says what to check, because the message ends up in
/// the pod's `FailedMount` event.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The name cannot be a provider name, so no path is built from it.
    #[error(
        "invalid provider name {name:?}: a provider name is 1 to 30 letters, digits, '_' or '-'"
    )]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// No built-in provider and no plugin socket has this name.
    #[error(
        "provider {name:?} not found: it is not built in and no {name}.sock exists in {searched}; \
         check spec.provider in the SecretProviderClass and that the provider's DaemonSet runs on this node"
    )]
    NotFound {
        /// The provider name.
        name: String,
        /// The directories searched, comma-separated.
        searched: String,
    },
    /// A built-in provider that this node has not enabled.
    #[error("provider {name:?} is disabled on this node: {hint}")]
    Disabled {
        /// The provider name.
        name: String,
        /// How to enable it.
        hint: String,
    },
    /// The SecretProviderClass parameters are malformed for this provider.
    #[error("provider {provider:?} rejected its parameters: {message}")]
    InvalidParameters {
        /// The provider name.
        provider: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// An object named in the parameters does not exist in the backend.
    #[error("provider {provider:?}: {message}")]
    ObjectNotFound {
        /// The provider name.
        provider: String,
        /// Which object and where it was looked for.
        message: String,
    },
    /// The backend refused access.
    #[error("provider {provider:?}: permission denied: {message}")]
    PermissionDenied {
        /// The provider name.
        provider: String,
        /// What was refused.
        message: String,
    },
    /// The plugin's socket exists but does not answer.
    #[error(
        "provider {provider:?} at {socket} is unavailable: {message}; check that the provider's pod is running"
    )]
    Unavailable {
        /// The provider name.
        provider: String,
        /// The socket dialed.
        socket: String,
        /// What the transport said.
        message: String,
        /// The error underneath, if there is one.
        #[source]
        source: Option<Cause>,
    },
    /// The call did not finish before the deadline.
    #[error("provider {provider:?} did not answer within {timeout:?}")]
    DeadlineExceeded {
        /// The provider name.
        provider: String,
        /// How long it was given.
        timeout: Duration,
    },
    /// The response was larger than `--max-call-recv-msg-size`.
    #[error(
        "provider {provider:?} sent a response larger than {limit} bytes: {message}; \
         raise --max-call-recv-msg-size (and the driver's memory limit) to mount this volume"
    )]
    ResponseTooLarge {
        /// The provider name.
        provider: String,
        /// The configured limit.
        limit: usize,
        /// The transport's message.
        message: String,
    },
    /// A volume would hold more (files, bytes, depth) than the driver's bounds allow.
    #[error("provider {provider:?}: {message}")]
    Exhausted {
        /// The provider name.
        provider: String,
        /// Which bound and how to stay within it.
        message: String,
    },
    /// The plugin answered with a gRPC error.
    #[error("provider {provider:?} failed: {code:?}: {message}")]
    Rpc {
        /// The provider name.
        provider: String,
        /// The gRPC code it returned.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The plugin answered with a non-empty `error.code`.
    #[error("mount request failed with provider error code {code} (provider {provider:?})")]
    ErrorCode {
        /// The provider name.
        provider: String,
        /// The code, also the metric's `error_type`.
        code: String,
    },
    /// The response had no object versions, which rotation and the pod status need.
    #[error(
        "provider {provider:?} returned no object versions (missing object versions); \
         every provider must report at least one"
    )]
    MissingObjectVersions {
        /// The provider name.
        provider: String,
    },
    /// The backend did not accept the pod's identity (login refused, no token for the audience).
    #[error("provider {provider:?}: {message}")]
    Unauthenticated {
        /// The provider name.
        provider: String,
        /// What was refused and what to check.
        message: String,
    },
    /// The backend could not be reached or is failing (after retries).
    #[error("provider {provider:?}: {message}")]
    BackendUnavailable {
        /// The provider name.
        provider: String,
        /// Where it was reached and what to check.
        message: String,
        /// The error underneath, if there is one.
        #[source]
        source: Option<Cause>,
    },
    /// The backend did not answer before the mount's deadline.
    #[error("provider {provider:?}: {message}")]
    BackendTimeout {
        /// The provider name.
        provider: String,
        /// What was being waited for.
        message: String,
        /// The error underneath, if there is one.
        #[source]
        source: Option<Cause>,
    },
    /// The backend failed in a way not covered above.
    #[error("provider {provider:?}: {message}")]
    Backend {
        /// The provider name.
        provider: String,
        /// What failed.
        message: String,
        /// The error underneath, if there is one.
        #[source]
        source: Option<Cause>,
    },
}

impl ProviderError {
    /// The gRPC code kubelet sees, chosen so that retrying helps exactly when it can.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::InvalidName { .. } | Self::InvalidParameters { .. } => Code::InvalidArgument,
            Self::NotFound { .. } | Self::ObjectNotFound { .. } => Code::NotFound,
            Self::Disabled { .. } => Code::FailedPrecondition,
            Self::PermissionDenied { .. } => Code::PermissionDenied,
            Self::Unavailable { .. } | Self::BackendUnavailable { .. } => Code::Unavailable,
            Self::DeadlineExceeded { .. } | Self::BackendTimeout { .. } => Code::DeadlineExceeded,
            Self::Unauthenticated { .. } => Code::Unauthenticated,
            Self::ResponseTooLarge { .. } | Self::Exhausted { .. } => Code::ResourceExhausted,
            Self::Rpc { code, .. } => *code,
            Self::ErrorCode { .. } | Self::Backend { .. } => Code::Unknown,
            Self::MissingObjectVersions { .. } => Code::Internal,
        }
    }

    /// The upstream metric `error_type` for this failure.
    pub fn error_type(&self) -> String {
        match self {
            Self::ErrorCode { code, .. } => code.clone(),
            Self::InvalidName { .. } | Self::NotFound { .. } | Self::Disabled { .. } => {
                String::new()
            }
            _ => "GRPCProviderError".to_owned(),
        }
    }
}

/// Why the pod's token for an audience is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Kubelet sent no `serviceAccount.tokens` attribute at all.
    NotProvided,
    /// The attribute is not the JSON object kubelet sends.
    Malformed,
    /// No token for this audience (it is not in the CSIDriver's `tokenRequests`).
    Missing,
    /// The token for this audience is empty.
    Empty,
}

/// The pod's token for `audience` from kubelet's `serviceAccount.tokens` attribute
/// (`{"<audience>": {"token": "...", "expirationTimestamp": "..."}}`).
pub fn pod_token(
    tokens: Option<&SecretString>,
    audience: &str,
) -> Result<SecretString, TokenError> {
    #[derive(serde::Deserialize)]
    struct PodToken {
        token: String,
    }
    let tokens = tokens.ok_or(TokenError::NotProvided)?;
    let mut parsed: std::collections::HashMap<String, PodToken> =
        serde_json::from_str(tokens.expose()).map_err(|_| TokenError::Malformed)?;
    let token = parsed.remove(audience).ok_or(TokenError::Missing)?.token;
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    Ok(crate::redact::Secret::new(token))
}

/// The system's CA store, read once per process: the roots of every built-in provider's TLS
/// that no class or flag names a CA for.
pub fn native_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::warn!(
                    "no system CA certificates found; TLS to Vault (without vaultCACertPath) and Google will fail"
                );
            }
            Arc::new(roots)
        })
        .clone()
}

/// Why reading a pod's service account failed, for the built-in providers that read its
/// annotations (IRSA's role, GCP's impersonation).
pub fn service_account_error(provider: &str, doing: &str, err: &kube::Error) -> ProviderError {
    match err {
        kube::Error::Api(status) if status.code == 403 => ProviderError::PermissionDenied {
            provider: provider.to_owned(),
            message: format!(
                "{doing}: the driver may not get serviceaccounts; grant it in the driver's ClusterRole"
            ),
        },
        other => ProviderError::BackendUnavailable {
            provider: provider.to_owned(),
            message: format!("{doing}: {}", crate::error::kube_message(other)),
            source: None,
        },
    }
}

/// Go's `strconv.ParseBool`, which upstream providers use for boolean parameters.
pub fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Checks a provider name as upstream does (`^[a-zA-Z0-9_-]{0,30}$`, and not empty) before
/// any path is built from it.
pub fn validate_name(name: &str) -> Result<(), ProviderError> {
    let valid = !name.is_empty()
        && name.len() <= 30
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ProviderError::InvalidName {
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_are_checked_before_building_paths() {
        for good in ["vault", "aws", "e2e-provider", "a_b-1", &"x".repeat(30)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../etc",
            "a/b",
            "a.b",
            &"x".repeat(31),
            "name with space",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
