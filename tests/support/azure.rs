//! Azure Key Vault and Entra ID for the `azure` provider tests. No Key Vault emulator is
//! served by the registries this project can reach (lowkey-vault's server is not on Maven
//! Central, only its client and its Testcontainers module, which need Docker; no npm, PyPI
//! or Go module of one resolves), so [`Azure`] serves Key Vault's REST API for secrets, keys
//! and certificates (versions, disabled versions, per-object access, Key Vault's error
//! bodies) and Entra ID's token endpoint: it decodes the pod's Kubernetes token and checks
//! its audience and subject against the identity's federated credentials, or checks a
//! service principal's secret, and Key Vault accepts only the tokens it issued. Certificates
//! are made by the system's `openssl` ([`Pki`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use base64::Engine as _;
use serde_json::{Value, json};

use super::pki::{Front, ca, issue, openssl};

/// The tenant of the fixtures.
/// (The plugin's examples name this tenant.)
pub const TENANT: &str = "tid";
/// The audience kubelet mints the pods' tokens for.
pub const AUDIENCE: &str = "api://AzureADTokenExchange";

/// A failure Key Vault answers instead of the object.
#[derive(Debug, Clone)]
pub struct Fault {
    /// HTTP status.
    pub status: u16,
    /// Calls it applies to; `None` for all.
    pub times: Option<usize>,
    /// Only calls for this object name, if set.
    pub object: Option<String>,
}

/// One Key Vault call.
#[derive(Debug, Clone)]
pub struct Call {
    /// `/VAULT/COLLECTION/NAME/VERSION`.
    pub path: String,
    /// The client ID its token was issued to (`None`: unknown token).
    pub client: Option<String>,
}

struct Version {
    id: String,
    bundle: Value,
    enabled: bool,
}

#[derive(Default)]
struct Ledger {
    /// (vault, collection, name) → versions, oldest first.
    objects: BTreeMap<(String, String, String), Vec<Version>>,
    /// Issued access tokens → client ID.
    tokens: HashMap<String, String>,
    /// Client ID → Kubernetes subjects federated with it.
    federated: BTreeMap<String, Vec<String>>,
    /// Client ID → service principal secret.
    principals: BTreeMap<String, String>,
    /// (vault, name) → client IDs allowed; absent means any.
    access: BTreeMap<(String, String), Vec<String>>,
    faults: Vec<Fault>,
    calls: Vec<Call>,
    /// (client ID, how: the Kubernetes subject, or `secret`).
    exchanges: Vec<(String, String)>,
    issued: usize,
    versions: usize,
}

/// The Key Vault and token endpoint server; it stops on drop.
pub struct Azure {
    /// Base URL.
    pub url: String,
    ledger: Arc<Mutex<Ledger>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Azure {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Azure {
    /// Starts the server on a loopback port.
    pub async fn start() -> Self {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(ledger.clone());
        use axum::serve::ListenerExt as _;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, ledger, task }
    }

    /// The driver flags pointing the `azure` provider here.
    pub fn flags(&self) -> Vec<String> {
        vec![
            format!("--azure-authority-host={}/aad/", self.url),
            format!("--azure-keyvault-endpoint={}/kv/{{vault}}", self.url),
        ]
    }

    fn add(&self, vault: &str, collection: &str, name: &str, bundle: Value) -> String {
        let mut ledger = self.ledger.lock().unwrap();
        ledger.versions += 1;
        let version = format!("{:032x}", 0xa2u128 << 64 | ledger.versions as u128);
        drop(ledger);
        self.add_as(vault, collection, name, bundle, &version)
    }

    fn add_as(
        &self,
        vault: &str,
        collection: &str,
        name: &str,
        bundle: Value,
        version: &str,
    ) -> String {
        let mut ledger = self.ledger.lock().unwrap();
        let id = format!("https://{vault}.vault.azure.net/{collection}/{name}/{version}");
        ledger
            .objects
            .entry((vault.to_owned(), collection.to_owned(), name.to_owned()))
            .or_default()
            .push(Version {
                id,
                bundle,
                enabled: true,
            });
        version.to_owned()
    }

    /// Adds a version of a plain secret; returns its version id.
    pub fn secret(&self, vault: &str, name: &str, value: &str) -> String {
        self.add(vault, "secrets", name, json!({"value": value}))
    }

    /// Adds a version of a plain secret with the version id `version`.
    pub fn secret_version(&self, vault: &str, name: &str, value: &str, version: &str) {
        self.add_as(vault, "secrets", name, json!({"value": value}), version);
    }

    /// Adds a version of a certificate: its secret (`content_type`, with `kid` as Key Vault
    /// sets it), its key's public JWK and its DER, under one version id as Key Vault keeps
    /// them.
    pub fn certificate(
        &self,
        vault: &str,
        name: &str,
        secret: &str,
        content_type: &str,
        jwk: Value,
        der: &[u8],
    ) -> String {
        let version = {
            let mut ledger = self.ledger.lock().unwrap();
            ledger.versions += 1;
            format!("{:032x}", 0xc3u128 << 64 | ledger.versions as u128)
        };
        let mut ledger = self.ledger.lock().unwrap();
        let base = format!("https://{vault}.vault.azure.net");
        let kid = format!("{base}/keys/{name}/{version}");
        let mut jwk = jwk;
        jwk["kid"] = json!(kid);
        let entries = [
            (
                "secrets",
                json!({"value": secret, "contentType": content_type, "kid": kid, "managed": true}),
            ),
            ("keys", json!({"key": jwk, "managed": true})),
            (
                "certificates",
                json!({"cer": base64::engine::general_purpose::STANDARD.encode(der),
                       "kid": kid, "x5t": "dGVzdA"}),
            ),
        ];
        for (collection, bundle) in entries {
            ledger
                .objects
                .entry((vault.to_owned(), collection.to_owned(), name.to_owned()))
                .or_default()
                .push(Version {
                    id: format!("{base}/{collection}/{name}/{version}"),
                    bundle,
                    enabled: true,
                });
        }
        version
    }

    /// Adds a version of a key (a public JWK without `kid`).
    pub fn key(&self, vault: &str, name: &str, jwk: Value) -> String {
        let version = self.add(vault, "keys", name, json!({}));
        let mut ledger = self.ledger.lock().unwrap();
        let entry = ledger
            .objects
            .get_mut(&(vault.to_owned(), "keys".to_owned(), name.to_owned()))
            .unwrap()
            .last_mut()
            .unwrap();
        let mut jwk = jwk;
        jwk["kid"] = json!(entry.id);
        entry.bundle = json!({"key": jwk});
        version
    }

    /// Disables one version of a secret.
    pub fn disable(&self, vault: &str, name: &str, version: &str) {
        let mut ledger = self.ledger.lock().unwrap();
        for found in ledger
            .objects
            .get_mut(&(vault.to_owned(), "secrets".to_owned(), name.to_owned()))
            .unwrap()
        {
            if found.id.ends_with(version) {
                found.enabled = false;
            }
        }
    }

    /// Federates `client_id` with the service account `namespace/name`.
    pub fn federate(&self, client_id: &str, namespace: &str, name: &str) {
        self.ledger
            .lock()
            .unwrap()
            .federated
            .entry(client_id.to_owned())
            .or_default()
            .push(format!("system:serviceaccount:{namespace}:{name}"));
    }

    /// Registers a service principal.
    pub fn service_principal(&self, client_id: &str, secret: &str) {
        self.ledger
            .lock()
            .unwrap()
            .principals
            .insert(client_id.to_owned(), secret.to_owned());
    }

    /// Lets only `clients` read objects named `name` in `vault`.
    pub fn restrict(&self, vault: &str, name: &str, clients: &[&str]) {
        self.ledger.lock().unwrap().access.insert(
            (vault.to_owned(), name.to_owned()),
            clients.iter().map(|c| (*c).to_owned()).collect(),
        );
    }

    /// Answers `fault` to matching calls.
    pub fn inject(&self, fault: Fault) {
        self.ledger.lock().unwrap().faults.push(fault);
    }

    /// Clears the faults.
    pub fn heal(&self) {
        self.ledger.lock().unwrap().faults.clear();
    }

    /// Forgets every issued token, as a revocation would.
    pub fn revoke_tokens(&self) {
        self.ledger.lock().unwrap().tokens.clear();
    }

    /// Key Vault calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.ledger.lock().unwrap().calls.clone()
    }

    /// How many Key Vault calls so far.
    pub fn reads(&self) -> usize {
        self.ledger.lock().unwrap().calls.len()
    }

    /// Token requests granted so far: (client ID, subject or `secret`).
    pub fn exchanges(&self) -> Vec<(String, String)> {
        self.ledger.lock().unwrap().exchanges.clone()
    }

    /// Every access token issued, for the log scans.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.ledger.lock().unwrap().tokens.keys().cloned().collect()
    }
}

impl Azure {
    /// Azure's host names in front of this server, for the upstream plugin.
    pub async fn front(&self) -> Front {
        Front::start(
            &["login.microsoftonline.com", "*.vault.azure.net"],
            self.url.trim_start_matches("http://"),
            false,
        )
        .await
    }
}

/// The upstream plugin (secrets-store-csi-driver-provider-azure v1.8.2), or `None` (skip)
/// outside CI when it is not built.
pub fn plugin_binary() -> Option<std::path::PathBuf> {
    super::plugin_binary("secrets-store-csi-driver-provider-azure")
}

/// Starts the upstream plugin on `socket`, reaching Azure through `front`, its log in `log`.
pub async fn start_plugin(socket: &Path, front: &Front, log: &Path) -> super::Plugin {
    let port = super::free_port;
    let args = [
        format!("--endpoint=unix://{}", socket.display()),
        format!("--healthz-port={}", port()),
        format!("--prometheus-port={}", port()),
    ];
    super::Plugin::start(
        &plugin_binary().expect("the Azure plugin is built"),
        &args,
        &[
            ("HTTPS_PROXY", front.proxy.clone()),
            ("SSL_CERT_FILE", front.ca_file.display().to_string()),
        ],
        socket,
        log,
    )
    .await
}

fn vault_error(status: StatusCode, code: &str, message: &str) -> (StatusCode, HeaderMap, String) {
    let mut headers = HeaderMap::new();
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            "www-authenticate",
            format!(
                "Bearer authorization=\"https://login.microsoftonline.com/{TENANT}\", resource=\"https://vault.azure.net\""
            )
            .parse()
            .unwrap(),
        );
    }
    (
        status,
        headers,
        json!({"error": {"code": code, "message": message}}).to_string(),
    )
}

async fn serve(
    State(ledger): State<Arc<Mutex<Ledger>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, String) {
    // Behind the TLS front, requests arrive for Azure's own host names.
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let host = host.split(':').next().unwrap_or_default();
    let path = if host == "login.microsoftonline.com" {
        format!("/aad{}", uri.path())
    } else if let Some(vault) = host.strip_suffix(".vault.azure.net") {
        format!("/kv/{vault}{}", uri.path())
    } else {
        uri.path().to_owned()
    };
    if let Some(rest) = path.strip_prefix("/aad/") {
        let (status, body) = token(&ledger, rest, &body);
        return (status, HeaderMap::new(), body);
    }
    let Some(rest) = path.strip_prefix("/kv/") else {
        return vault_error(StatusCode::NOT_FOUND, "NotFound", "no such endpoint");
    };
    let api_version = uri.query().unwrap_or_default();
    if method != Method::GET || !api_version.starts_with("api-version=7.") {
        return vault_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "expected GET with an api-version of 7.x",
        );
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let [vault, collection, name, version] = parts[..] else {
        return vault_error(StatusCode::NOT_FOUND, "NotFound", "no such path");
    };
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let mut ledger = ledger.lock().unwrap();
    let client = ledger.tokens.get(&bearer).cloned();
    ledger.calls.push(Call {
        path: format!("/{rest}"),
        client: client.clone(),
    });
    let fault = ledger
        .faults
        .iter_mut()
        .find(|f| f.times != Some(0) && f.object.as_deref().is_none_or(|o| o == name));
    if let Some(fault) = fault {
        if let Some(times) = &mut fault.times {
            *times -= 1;
        }
        let status = StatusCode::from_u16(fault.status).unwrap();
        return vault_error(status, "Injected", "injected by the test server");
    }
    let Some(client) = client else {
        return vault_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "AKV10000: Request is missing a Bearer or PoP token.",
        );
    };
    if let Some(allowed) = ledger.access.get(&(vault.to_owned(), name.to_owned()))
        && !allowed.contains(&client)
    {
        return vault_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "Caller is not authorized to perform action on resource. Caller: appid={client}"
            ),
        );
    }
    let kind = match collection {
        "secrets" => "Secret",
        "keys" => "Key",
        _ => "Certificate",
    };
    let not_found = || {
        vault_error(
            StatusCode::NOT_FOUND,
            &format!("{kind}NotFound"),
            &format!(
                "A {} with (name/id) {name} was not found in this key vault.",
                kind.to_lowercase()
            ),
        )
    };
    let Some(versions) =
        ledger
            .objects
            .get(&(vault.to_owned(), collection.to_owned(), name.to_owned()))
    else {
        return not_found();
    };
    let found = if version.is_empty() {
        versions.last()
    } else {
        versions
            .iter()
            .find(|v| v.id.ends_with(&format!("/{version}")))
    };
    let Some(found) = found else {
        return not_found();
    };
    if !found.enabled {
        let mut answer = vault_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Operation get is not allowed on a disabled secret.",
        );
        answer.2 = json!({"error": {"code": "Forbidden",
            "message": "Operation get is not allowed on a disabled secret.",
            "innererror": {"code": "SecretDisabled"}}})
        .to_string();
        return answer;
    }
    let mut bundle = found.bundle.clone();
    if collection != "keys" {
        bundle["id"] = json!(found.id);
    }
    bundle["attributes"] = json!({"enabled": true, "created": 1_700_000_000, "recoveryLevel": "Recoverable+Purgeable"});
    (StatusCode::OK, HeaderMap::new(), bundle.to_string())
}

/// Entra ID's `/{tenant}/oauth2/v2.0/token` for client credentials: a federated assertion or
/// a client secret.
fn token(ledger: &Mutex<Ledger>, rest: &str, body: &[u8]) -> (StatusCode, String) {
    let error = |code: &str, description: &str| {
        (
            StatusCode::BAD_REQUEST,
            json!({"error": code, "error_description": description, "error_codes": [70021]})
                .to_string(),
        )
    };
    const AUTHORITY: &str = "https://login.microsoftonline.com";
    if rest.starts_with("common/discovery/instance") {
        let answer = json!({
            "tenant_discovery_endpoint": format!("{AUTHORITY}/{TENANT}/v2.0/.well-known/openid-configuration"),
            "api-version": "1.1",
            "metadata": [{"preferred_network": "login.microsoftonline.com",
                          "preferred_cache": "login.windows.net",
                          "aliases": ["login.microsoftonline.com", "login.windows.net"]}],
        });
        return (StatusCode::OK, answer.to_string());
    }
    if let Some(tenant) = rest.strip_suffix("/v2.0/.well-known/openid-configuration") {
        let answer = json!({
            "token_endpoint": format!("{AUTHORITY}/{tenant}/oauth2/v2.0/token"),
            "authorization_endpoint": format!("{AUTHORITY}/{tenant}/oauth2/v2.0/authorize"),
            "issuer": format!("{AUTHORITY}/{tenant}/v2.0"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            "response_types_supported": ["code", "id_token", "token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        return (StatusCode::OK, answer.to_string());
    }
    let Some(tenant) = rest.strip_suffix("/oauth2/v2.0/token") else {
        return (StatusCode::NOT_FOUND, "{}".to_owned());
    };
    if tenant != TENANT {
        return error(
            "invalid_tenant",
            &format!("AADSTS90002: Tenant '{tenant}' not found."),
        );
    }
    let form: BTreeMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("grant_type") != "client_credentials" {
        return error("unsupported_grant_type", "AADSTS70003: grant_type");
    }
    if !field("scope")
        .split(' ')
        .any(|scope| scope == "https://vault.azure.net/.default")
    {
        return error(
            "invalid_scope",
            &format!(
                "AADSTS70011: The provided value for scope {} is not valid.",
                field("scope")
            ),
        );
    }
    let client = field("client_id").to_owned();
    let mut ledger = ledger.lock().unwrap();
    let how = if let Some(secret) = form.get("client_secret") {
        if ledger.principals.get(&client) != Some(secret) {
            return error(
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided.",
            );
        }
        "secret".to_owned()
    } else {
        if field("client_assertion_type")
            != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        {
            return error("invalid_request", "AADSTS50027: client_assertion_type");
        }
        let Some(claims) = super::jwt_claims(field("client_assertion")) else {
            return error(
                "invalid_client",
                "AADSTS50027: JWT token is invalid or malformed.",
            );
        };
        let audiences = match &claims["aud"] {
            Value::String(one) => vec![one.clone()],
            Value::Array(list) => list
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        if !audiences.iter().any(|a| a == AUDIENCE) {
            return error(
                "invalid_client",
                "AADSTS700212: No matching federated identity record found for presented assertion audience.",
            );
        }
        let subject = claims["sub"].as_str().unwrap_or_default().to_owned();
        let federated = ledger
            .federated
            .get(&client)
            .is_some_and(|subjects| subjects.contains(&subject));
        if !federated {
            return error(
                "invalid_client",
                &format!(
                    "AADSTS700213: No matching federated identity record found for presented assertion subject '{subject}'."
                ),
            );
        }
        subject
    };
    ledger.issued += 1;
    let token = format!("kv-access-{}-{client}-{:08x}", ledger.issued, rand_word());
    ledger.tokens.insert(token.clone(), client.clone());
    ledger.exchanges.push((client, how));
    (
        StatusCode::OK,
        json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token})
            .to_string(),
    )
}

fn rand_word() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos ^ std::process::id()
}

/// A certificate chain made by `openssl`: a root, an intermediate and an RSA leaf, the
/// leaf's key, its PKCS#12 in the legacy algorithms Key Vault uses (3DES key, RC2-40
/// certificates, SHA-1 MAC, empty password), and an EC key.
pub struct Pki {
    /// Root, intermediate and leaf certificates, PEM.
    pub root: String,
    /// The intermediate.
    pub intermediate: String,
    /// The leaf.
    pub leaf: String,
    /// The leaf's DER.
    pub leaf_der: Vec<u8>,
    /// The leaf's private key, PKCS#8 PEM.
    pub leaf_key: String,
    /// The leaf's public key, PKIX PEM.
    pub leaf_public: String,
    /// The leaf's public key as a JWK.
    pub leaf_jwk: Value,
    /// The PKCS#12 of leaf, key and chain (chain added root first, so the file's order is
    /// leaf, root, intermediate), base64.
    pub pfx: String,
    /// An EC P-256 public key, PKIX PEM.
    pub ec_public: String,
    /// It as a JWK.
    pub ec_jwk: Value,
}

impl Pki {
    /// Makes everything in a temporary directory.
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        ca(d, "root", &[]);
        issue(d, "inter", "root", "ca");
        issue(d, "leaf", "inter", "leaf");
        let read = |name: &str| std::fs::read_to_string(d.join(name)).unwrap();
        std::fs::write(
            d.join("chain.pem"),
            format!("{}{}", read("root.pem"), read("inter.pem")),
        )
        .unwrap();
        openssl(
            d,
            &[
                "pkcs12",
                "-export",
                "-legacy",
                "-in",
                "leaf.pem",
                "-inkey",
                "leaf.key",
                "-certfile",
                "chain.pem",
                "-passout",
                "pass:",
                "-out",
                "leaf.pfx",
            ],
        );
        let leaf_key = String::from_utf8(openssl(d, &["pkey", "-in", "leaf.key"])).unwrap();
        let leaf_public =
            String::from_utf8(openssl(d, &["pkey", "-in", "leaf.key", "-pubout"])).unwrap();
        let modulus = String::from_utf8(openssl(
            d,
            &["rsa", "-in", "leaf.key", "-noout", "-modulus"],
        ))
        .unwrap();
        let modulus = hex::decode(modulus.trim().trim_start_matches("Modulus=")).unwrap();
        let b64url = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let leaf_jwk = json!({"kty": "RSA", "n": b64url(&modulus), "e": "AQAB",
                              "key_ops": ["sign", "verify"]});
        openssl(
            d,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "ec.key",
            ],
        );
        let ec_public =
            String::from_utf8(openssl(d, &["pkey", "-in", "ec.key", "-pubout"])).unwrap();
        let ec_der = openssl(d, &["pkey", "-in", "ec.key", "-pubout", "-outform", "DER"]);
        let point = &ec_der[ec_der.len() - 65..];
        let ec_jwk = json!({"kty": "EC", "crv": "P-256", "x": b64url(&point[1..33]),
                            "y": b64url(&point[33..])});
        let leaf_der = openssl(d, &["x509", "-in", "leaf.pem", "-outform", "DER"]);
        Self {
            root: read("root.pem"),
            intermediate: read("inter.pem"),
            leaf: read("leaf.pem"),
            leaf_der,
            leaf_key,
            leaf_public,
            leaf_jwk,
            pfx: base64::engine::general_purpose::STANDARD
                .encode(std::fs::read(d.join("leaf.pfx")).unwrap()),
            ec_public,
            ec_jwk,
        }
    }
}
