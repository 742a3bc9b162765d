//! The built-in `azure` provider: Azure Key Vault, taking
//! secrets-store-csi-driver-provider-azure's SecretProviderClass parameters unchanged,
//! in-process.
//!
//! Per mount: parse the parameters ([`config`]), get a token for the pod's workload identity
//! or the volume's service principal ([`auth`], shared by that identity's pods), read each
//! distinct object once and concurrently ([`client`]), shared between pods of one identity
//! for a short window, and write what the plugin writes ([`format`]: public keys and
//! certificates as PEM, a certificate's secret as its key and chain). Versions are Key
//! Vault's version ids; object ids are `TYPE/NAME`, as the plugin reports them.

pub mod auth;
pub mod client;
pub mod config;
pub mod format;
pub mod pkcs12;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use serde::Deserialize;

use self::auth::{Auth, Credential, Identity, Source};
use self::client::{CallError, Client, Endpoints};
use self::config::{Cloud, Encoding, KeyVaultObject, ObjectRef, ObjectType};
use super::shared_cache::SharedCache;
use super::{MountRequest, MountResponse, ObjectVersion, Provider, ProviderError, ProviderFile};
use crate::limits::{ByteBudget, MAX_SHARED_READ_BYTES};
use crate::redact::{Secret, SecretString};

/// The provider name in a SecretProviderClass.
pub const NAME: &str = "azure";

/// Deadline of a mount whose caller gave none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest version id accepted from Key Vault (they are 32 hex digits).
const MAX_VERSION_LEN: usize = 128;

/// How the provider runs on this node or host.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where Entra ID and the vaults are.
    pub endpoints: Endpoints,
    /// The cloud of classes that name none (the plugin's `--cloud-name`).
    pub cloud: Cloud,
    /// Where tokens come from.
    pub source: Source,
    /// Also write a certificate secret's chain to `NAME.crt` and key to `NAME.key`.
    pub separate_cert_and_key: bool,
    /// How long a read is shared between pods of one identity; zero disables sharing.
    pub read_cache_ttl: Duration,
    /// Requests in flight per mount.
    pub concurrency: usize,
    /// Identities (and shared reads) kept.
    pub cache_size: usize,
}

/// One object as Key Vault returned it.
struct Fetched {
    /// The version id Key Vault resolved.
    version: String,
    body: Body,
}

enum Body {
    Secret {
        value: SecretString,
        content_type: String,
        /// The secret backs a certificate.
        certificate: bool,
    },
    /// A key's public PEM.
    Key(String),
    /// A certificate's PEM.
    Cert(String),
}

impl Fetched {
    fn weight(&self) -> usize {
        match &self.body {
            Body::Secret { value, .. } => value.expose().len(),
            Body::Key(text) | Body::Cert(text) => text.len(),
        }
    }
}

type Read = Result<Arc<Fetched>, ProviderError>;

/// Reads objects from Azure Key Vault.
#[derive(Debug)]
pub struct AzureProvider {
    settings: Settings,
    client: Client,
    auth: Auth,
    reads: SharedCache<(Identity, String, ObjectRef), Arc<Fetched>>,
}

/// One mount's session with a vault.
struct Session<'a> {
    credential: Credential,
    pod_tokens: Option<&'a SecretString>,
    token: SecretString,
    /// Obtained by this mount, so a refusal of it is final.
    fresh: bool,
    vault: &'a str,
    deadline: Instant,
    budget: &'a ByteBudget,
    fresh_since: Option<Instant>,
}

impl AzureProvider {
    /// A provider with `settings`.
    pub fn new(settings: Settings) -> Self {
        Self {
            client: Client::new(settings.endpoints.clone()),
            auth: Auth::new(settings.source.clone(), settings.cache_size),
            reads: SharedCache::weighed(settings.cache_size, MAX_SHARED_READ_BYTES, |f| f.weight()),
            settings,
        }
    }

    async fn read(&self, session: &Session<'_>, object: &ObjectRef) -> Read {
        if self.settings.read_cache_ttl.is_zero() {
            return self.send_read(session, object).await;
        }
        let key = (
            session.credential.identity.clone(),
            session.vault.to_owned(),
            object.clone(),
        );
        let ttl = self.settings.read_cache_ttl;
        self.reads
            .get_or_fetch_since(&key, session.fresh_since, |_| async {
                Ok((self.send_read(session, object).await?, ttl))
            })
            .await
            .map(|(fetched, _)| fetched)
    }

    /// One read, asking for a new token once if Key Vault refuses one obtained earlier.
    async fn send_read(&self, session: &Session<'_>, object: &ObjectRef) -> Read {
        let url = self.client.endpoints().object_url(
            session.credential.identity.cloud,
            session.vault,
            object,
        );
        let (mut token, mut fresh) = (session.token.clone(), session.fresh);
        loop {
            let answer = self
                .client
                .get(&url, &token, session.budget.limit(), session.deadline)
                .await;
            match answer {
                Err(CallError::Http { status: 401, .. }) if !fresh => {
                    tracing::debug!(object = %object.name, "key vault refused a cached token, asking again");
                    self.auth
                        .refused(&session.credential.identity, &token)
                        .await;
                    let (renewed, _) = self
                        .auth
                        .token(
                            &self.client,
                            &session.credential,
                            session.pod_tokens,
                            session.deadline,
                        )
                        .await?;
                    token = renewed.access;
                    fresh = true;
                }
                Ok(body) => return parse(object, body.expose()).map(Arc::new),
                Err(err) => return Err(read_error(session, object, &url, err)),
            }
        }
    }
}

#[async_trait]
impl Provider for AzureProvider {
    fn class_parameters(&self) -> &'static [&'static str] {
        config::PARAMETERS
    }

    fn token_audiences(&self, _parameters: &BTreeMap<String, String>) -> Option<Vec<String>> {
        Some(vec![auth::TOKEN_AUDIENCE.to_owned()])
    }

    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError> {
        let started = Instant::now();
        self.reads.drop_expired();
        let deadline = started + request.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let budget = ByteBudget::new(request.max_bytes);
        let config = config::parse(&request.parameters)?;
        if config.objects.is_empty() {
            return Ok(MountResponse::default());
        }
        let cloud = config.cloud.unwrap_or(self.settings.cloud);
        let credential = self.auth.credential(
            &request.pod,
            &config.tenant,
            cloud,
            &config.login,
            request.secrets.as_ref(),
        )?;
        let pod_tokens = request.service_account_tokens.as_ref();
        let (token, fresh) = self
            .auth
            .token(&self.client, &credential, pod_tokens, deadline)
            .await?;
        let session = Session {
            credential,
            pod_tokens,
            token: token.access,
            fresh,
            vault: &config.vault,
            deadline,
            budget: &budget,
            fresh_since: request.fresh_since,
        };
        let session = &session;
        let distinct: BTreeSet<ObjectRef> =
            config.objects.iter().map(|o| o.object.clone()).collect();
        let mut results =
            super::read_distinct(distinct, self.settings.concurrency, |object| async move {
                self.read(session, &object).await
            })
            .await;

        let mut files = Vec::with_capacity(config.objects.len());
        let mut versions = Vec::with_capacity(config.objects.len());
        for entry in &config.objects {
            let fetched = super::take_read(&mut results, &entry.object)?;
            for (suffix, contents) in self.contents(entry, &fetched)? {
                budget
                    .charge(contents.len())
                    .map_err(|e| too_large(None, e.limit))?;
                files.push(ProviderFile {
                    path: format!("{}{suffix}", entry.path),
                    mode: entry.mode.unwrap_or(request.default_mode),
                    contents: Secret::new(contents),
                });
            }
            versions.push(ObjectVersion {
                id: format!("{}/{}", entry.object.kind.as_str(), entry.object.name),
                version: fetched.version.clone(),
            });
        }
        tracing::debug!(
            objects = config.objects.len(),
            reads = results.len(),
            vault = %config.vault,
            namespace = %request.pod.namespace,
            service_account = %request.pod.service_account,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "azure objects fetched"
        );
        Ok(MountResponse { versions, files })
    }
}

impl AzureProvider {
    /// The files of one entry: (name suffix, bytes), the main file last as the plugin orders
    /// them.
    fn contents(
        &self,
        entry: &KeyVaultObject,
        fetched: &Fetched,
    ) -> Result<Vec<(&'static str, Vec<u8>)>, ProviderError> {
        let object = &entry.object;
        let failed = |message: String| ProviderError::Backend {
            provider: NAME.to_owned(),
            message: format!(
                "failed to get objectType:{}, objectName:{}, objectVersion:{}: {message}",
                object.kind.as_str(),
                object.name,
                object.version
            ),
            source: None,
        };
        let (value, content_type, certificate) = match &fetched.body {
            Body::Key(pem) | Body::Cert(pem) => return Ok(vec![("", pem.clone().into_bytes())]),
            Body::Secret {
                value,
                content_type,
                certificate,
            } => (value, content_type, *certificate),
        };
        let mut out = Vec::new();
        let text = if certificate {
            let text = format::certificate_secret(value.expose(), content_type, entry.pfx)
                .map_err(failed)?;
            if self.settings.separate_cert_and_key {
                let (certs, keys) = format::split_cert_and_key(&text);
                out.push((".crt", certs.into_bytes()));
                out.push((".key", keys.into_bytes()));
            }
            Secret::new(text)
        } else {
            value.clone()
        };
        let bytes = decode(text.expose(), entry.encoding).map_err(|message| {
            ProviderError::InvalidParameters {
                provider: NAME.to_owned(),
                message: format!("{}: {message}; check objectEncoding", object.name),
            }
        })?;
        out.push(("", bytes));
        Ok(out)
    }
}

/// A secret's text as bytes in its `objectEncoding`; errors never quote the value.
fn decode(text: &str, encoding: Encoding) -> Result<Vec<u8>, String> {
    match encoding {
        Encoding::Utf8 => Ok(text.as_bytes().to_vec()),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| "the secret's value is not base64".to_owned()),
        Encoding::Hex => hex::decode(text).map_err(|_| "the secret's value is not hex".to_owned()),
    }
}

/// Key Vault's answer for `object`, reduced to what is written.
fn parse(object: &ObjectRef, body: &[u8]) -> Result<Fetched, ProviderError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct SecretBundle {
        value: Option<String>,
        id: Option<String>,
        #[serde(default)]
        content_type: Option<String>,
        #[serde(default)]
        kid: Option<String>,
    }
    #[derive(Deserialize)]
    struct KeyBundle {
        key: Option<KeyWithId>,
    }
    #[derive(Deserialize)]
    struct KeyWithId {
        kid: Option<String>,
        #[serde(flatten)]
        jwk: format::Jwk,
    }
    #[derive(Deserialize)]
    struct CertificateBundle {
        id: Option<String>,
        cer: Option<String>,
    }
    let failed = |message: &str| ProviderError::Backend {
        provider: NAME.to_owned(),
        message: format!(
            "failed to get objectType:{}, objectName:{}: Key Vault answered {message}",
            object.kind.as_str(),
            object.name
        ),
        source: None,
    };
    // Parse errors are not quoted: the answer holds the secret.
    let bad_json = || failed("with JSON that is not a Key Vault bundle");
    let (id, body) = match object.kind {
        ObjectType::Secret => {
            let bundle: SecretBundle = serde_json::from_slice(body).map_err(|_| bad_json())?;
            let value = bundle
                .value
                .ok_or_else(|| failed("a secret value that is nil"))?;
            let id = bundle.id.ok_or_else(|| failed("a secret id that is nil"))?;
            let body = Body::Secret {
                value: Secret::new(value),
                content_type: bundle.content_type.unwrap_or_default(),
                certificate: bundle.kid.is_some_and(|k| !k.is_empty()),
            };
            (id, body)
        }
        ObjectType::Key => {
            let bundle: KeyBundle = serde_json::from_slice(body).map_err(|_| bad_json())?;
            let key = bundle
                .key
                .ok_or_else(|| failed("a key value that is nil"))?;
            let id = key.kid.ok_or_else(|| failed("a key id that is nil"))?;
            let pem = format::public_key_pem(&key.jwk).map_err(|why| failed(&why))?;
            (id, Body::Key(pem))
        }
        ObjectType::Cert => {
            let bundle: CertificateBundle = serde_json::from_slice(body).map_err(|_| bad_json())?;
            let cer = bundle
                .cer
                .ok_or_else(|| failed("a certificate value that is nil"))?;
            let der = base64::engine::general_purpose::STANDARD
                .decode(cer)
                .map_err(|_| failed("a certificate that is not base64"))?;
            let id = bundle
                .id
                .ok_or_else(|| failed("a certificate id that is nil"))?;
            (id, Body::Cert(format::certificate_pem(&der)))
        }
    };
    let version = version_of(&id)
        .ok_or_else(|| failed("an id that is not https://VAULT/COLLECTION/NAME/VERSION"))?;
    Ok(Fetched { version, body })
}

/// The version segment of a Key Vault object id, as the SDK's `ID.Version()` reads it.
fn version_of(id: &str) -> Option<String> {
    let path = id.split_once("://").map_or(id, |(_, rest)| rest);
    let path = path.split(['?', '#']).next()?;
    let mut segments = path.split('/').skip(1).filter(|s| !s.is_empty());
    let (_collection, _name) = (segments.next()?, segments.next()?);
    let version = segments.next().unwrap_or_default();
    (version.len() <= MAX_VERSION_LEN && version.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| version.to_owned())
}

fn read_error(
    session: &Session<'_>,
    object: &ObjectRef,
    url: &str,
    err: CallError,
) -> ProviderError {
    let provider = NAME.to_owned();
    let identity = &session.credential.identity;
    let what = format!(
        "failed to get objectType:{}, objectName:{}, objectVersion:{}",
        object.kind.as_str(),
        object.name,
        object.version
    );
    let base = url.split('?').next().unwrap_or(url);
    match err {
        CallError::Http {
            status,
            code,
            message,
        } => match status {
            404 => ProviderError::ObjectNotFound {
                provider,
                message: format!("{what}: {code}: {message}"),
            },
            401 => ProviderError::Unauthenticated {
                provider,
                message: format!(
                    "{what}: Key Vault refused the token of client {}: {code}: {message}",
                    identity.client_id
                ),
            },
            403 if code.contains("Disabled") => ProviderError::Rpc {
                provider,
                code: tonic::Code::FailedPrecondition,
                message: format!(
                    "{what}: {code}: {message}; enable the object or pin an enabled objectVersion"
                ),
            },
            403 => ProviderError::PermissionDenied {
                provider,
                message: format!(
                    "{what}: {code}: {message}; grant client {} the Key Vault {} User role (or \
                     a get access policy) on vault {}",
                    identity.client_id,
                    match object.kind {
                        ObjectType::Secret => "Secrets",
                        ObjectType::Key => "Crypto",
                        ObjectType::Cert => "Certificate",
                    },
                    session.vault
                ),
            },
            400 => ProviderError::InvalidParameters {
                provider,
                message: format!("{what}: {code}: {message}"),
            },
            _ => ProviderError::BackendUnavailable {
                provider,
                message: format!(
                    "{what}: Key Vault at {base} is failing: HTTP {status} {code}: {message}"
                ),
                source: None,
            },
        },
        CallError::Unreachable(why) => ProviderError::BackendUnavailable {
            provider,
            message: format!(
                "{what}: Key Vault at {base} is unreachable ({why}); check the node's egress to \
                 it, or --azure-keyvault-endpoint"
            ),
            source: None,
        },
        CallError::Timeout => ProviderError::BackendTimeout {
            provider,
            message: format!(
                "{what}: Key Vault at {base} did not answer before the mount's deadline"
            ),
            source: None,
        },
        CallError::TooLarge(limit) => too_large(Some(&object.name), limit),
        CallError::Invalid(why) => ProviderError::Backend {
            provider,
            message: format!("{what}: {why}"),
            source: None,
        },
    }
}

/// The volume's budget ran out (`name`: while reading that object).
fn too_large(name: Option<&str>, limit: usize) -> ProviderError {
    let at = name.map(|n| format!("{n}: ")).unwrap_or_default();
    ProviderError::Exhausted {
        provider: NAME.to_owned(),
        message: format!(
            "{at}the volume's objects are larger than {limit} bytes; raise \
             --max-call-recv-msg-size (and the driver's memory limit) to mount them"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_secrets_can_also_be_split_into_chain_and_key_files() {
        let provider = AzureProvider::new(Settings {
            endpoints: Endpoints::default(),
            cloud: Cloud::Public,
            source: Source::Pod,
            separate_cert_and_key: true,
            read_cache_ttl: Duration::ZERO,
            concurrency: 1,
            cache_size: 1,
        });
        let pem = format!(
            "{}{}",
            format::pem("PRIVATE KEY", b"k"),
            format::pem("CERTIFICATE", b"c")
        );
        let fetched = Fetched {
            version: "v".to_owned(),
            body: Body::Secret {
                value: Secret::new(pem.clone()),
                content_type: format::CONTENT_TYPE_PEM.to_owned(),
                certificate: true,
            },
        };
        let entry = KeyVaultObject {
            object: ObjectRef {
                kind: ObjectType::Secret,
                name: "web".to_owned(),
                version: String::new(),
            },
            path: "web".to_owned(),
            pfx: false,
            encoding: Encoding::Utf8,
            mode: None,
        };
        let files = provider.contents(&entry, &fetched).unwrap();
        let names: Vec<&str> = files.iter().map(|(suffix, _)| *suffix).collect();
        assert_eq!(names, [".crt", ".key", ""], "the plugin's order");
        assert_eq!(files[0].1, format::pem("CERTIFICATE", b"c").into_bytes());
        assert_eq!(files[1].1, format::pem("PRIVATE KEY", b"k").into_bytes());
        assert_eq!(files[2].1, pem.into_bytes());
    }

    #[test]
    fn versions_are_the_id_segment_the_sdk_reads() {
        assert_eq!(
            version_of("https://kv.vault.azure.net/secrets/s1/0123abcd").as_deref(),
            Some("0123abcd")
        );
        assert_eq!(
            version_of("https://kv.vault.azure.net/keys/k1/ff?x=1").as_deref(),
            Some("ff")
        );
        assert_eq!(
            version_of("https://kv.vault.azure.net/secrets/s1").as_deref(),
            Some("")
        );
        assert_eq!(version_of("https://kv/secrets/s1/v\u{202e}x"), None);
        assert_eq!(version_of("garbage"), None);
    }
}
