//! Google Secret Manager for the `gcp` provider tests: the real gRPC emulator
//! (`github.com/blackwell-systems/gcp-secret-manager-emulator`, built by scripts/cluster-build)
//! behind a recording gRPC proxy that checks every call's bearer token against the tokens the
//! test's own token service issued, enforces per-secret access, and injects failures. The
//! emulator has no STS or IAM, so [`Google`] also serves the token exchange (it decodes the
//! pod's Kubernetes token and checks its audience and subject) and `generateAccessToken`
//! (checking who may impersonate whom). Under `CI=true` a missing emulator fails the test.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde_json::{Value, json};
use tonic::transport::Channel;

/// The project of the fixtures.
pub const PROJECT: &str = "test-project";
/// The workload identity pool of `PROJECT`, the audience kubelet mints tokens for.
pub const POOL: &str = "test-project.svc.id.goog";
/// The cluster the identity provider names.
pub const CLUSTER: (&str, &str) = ("us-central1", "test-cluster");

/// The STS audience the driver must send for `POOL` and `CLUSTER`.
pub fn audience(provider_base: &str) -> String {
    format!(
        "identitynamespace:{POOL}:{provider_base}/projects/{PROJECT}/locations/{}/clusters/{}",
        CLUSTER.0, CLUSTER.1
    )
}

fn binary() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools/cluster/current/bin/gcp-secret-manager-emulator");
    path.is_file().then_some(path)
}

/// A failure the proxy answers instead of forwarding.
#[derive(Debug, Clone)]
pub struct Fault {
    /// gRPC status code.
    pub code: tonic::Code,
    /// Calls it applies to; `None` for all.
    pub times: Option<usize>,
    /// Only calls for this resource name, if set.
    pub resource: Option<String>,
}

/// What one Secret Manager call carried.
#[derive(Debug, Clone)]
pub struct Call {
    /// The gRPC method.
    pub method: String,
    /// The principal its token belongs to (`None`: unknown token).
    pub principal: Option<String>,
    /// The routing header.
    pub routing: String,
}

#[derive(Default)]
struct Ledger {
    /// Issued access tokens → the principal they stand for.
    tokens: HashMap<String, String>,
    calls: Vec<Call>,
    exchanges: Vec<String>,
    impersonations: Vec<(String, String)>,
    faults: Vec<Fault>,
    /// Resource (secret) name → principals allowed to read it; absent means anyone.
    access: BTreeMap<String, Vec<String>>,
    /// GSA → Kubernetes subjects allowed to impersonate it.
    impersonators: BTreeMap<String, Vec<String>>,
    issued: usize,
    expected_audience: String,
}

/// The emulator, its proxy and the token service; everything stops on drop.
pub struct Google {
    /// gRPC URL of the proxy (what the driver is pointed at).
    pub secret_manager: String,
    /// Base URL of the token service (STS at `/v1/identitybindingtoken`, IAM Credentials).
    pub tokens: String,
    emulator: Channel,
    ledger: Arc<Mutex<Ledger>>,
    child: Child,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Google {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Google {
    /// Starts everything, or returns `None` (skip) outside CI when the emulator is not built.
    /// `provider_base` is the identity provider base the driver is configured with.
    pub async fn start(provider_base: &str) -> Option<Self> {
        let Some(bin) = binary() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but the Secret Manager emulator is not built: run scripts/test"
            );
            eprintln!("skipping: the Secret Manager emulator is not built; scripts/test builds it");
            return None;
        };
        let port = super::free_port();
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the emulator did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let emulator = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        let ledger = Arc::new(Mutex::new(Ledger {
            expected_audience: audience(provider_base),
            ..Ledger::default()
        }));

        let proxy = Proxy {
            upstream: emulator.clone(),
            ledger: ledger.clone(),
        };
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_port = grpc.local_addr().unwrap().port();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
        let proxy_task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(proxy)
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });

        let app = axum::Router::new()
            .fallback(token_service)
            .with_state(ledger.clone());
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_port = http.local_addr().unwrap().port();
        let token_task = tokio::spawn(async move {
            axum::serve(http, app).await.unwrap();
        });
        Some(Self {
            secret_manager: format!("http://127.0.0.1:{grpc_port}"),
            tokens: format!("http://127.0.0.1:{http_port}"),
            emulator,
            ledger,
            child,
            tasks: vec![proxy_task, token_task],
        })
    }

    /// The flags that point the `gcp` provider here (`--builtin-providers` not included).
    pub fn flags(&self, provider_base: &str) -> Vec<String> {
        vec![
            format!("--gcp-secret-manager-endpoint={}", self.secret_manager),
            format!(
                "--gcp-regional-secret-manager-endpoint={}",
                self.secret_manager
            ),
            format!(
                "--gcp-token-exchange-endpoint={}/v1/identitybindingtoken",
                self.tokens
            ),
            format!("--gcp-iam-credentials-endpoint={}", self.tokens),
            format!("--gcp-project={PROJECT}"),
            format!("--gcp-cluster-location={}", CLUSTER.0),
            format!("--gcp-cluster-name={}", CLUSTER.1),
            format!("--gcp-workload-identity-endpoint={provider_base}"),
            format!("--gcp-metadata-host={}", self.tokens),
        ]
    }

    /// Google's host names in front of the Secret Manager proxy (gRPC), for the upstream
    /// plugin, which cannot be pointed elsewhere.
    pub async fn front(&self) -> super::pki::Front {
        super::pki::Front::start(
            &[
                "secretmanager.googleapis.com",
                "secretmanager.us-central1.rep.googleapis.com",
                "secretmanager.europe-west1.rep.googleapis.com",
            ],
            self.secret_manager.trim_start_matches("http://"),
            true,
        )
        .await
    }

    /// Creates secret `parent/secrets/id` (`parent` is `projects/P` or
    /// `projects/P/locations/L`) with `versions`, returning the version names.
    pub async fn secret(&self, parent: &str, id: &str, versions: &[&[u8]]) -> Vec<String> {
        let create = CreateSecretRequest {
            parent: parent.to_owned(),
            secret_id: id.to_owned(),
            secret: Some(SecretMeta::default()),
        };
        let _: SecretMeta = self.call("CreateSecret", create).await.unwrap();
        let mut names = Vec::new();
        for data in versions {
            names.push(
                self.add_version(&format!("{parent}/secrets/{id}"), data)
                    .await,
            );
        }
        names
    }

    /// Adds a version to `secret`, returning its name.
    pub async fn add_version(&self, secret: &str, data: &[u8]) -> String {
        let add = AddSecretVersionRequest {
            parent: secret.to_owned(),
            payload: Some(Payload {
                data: data.to_vec(),
            }),
        };
        let version: SecretVersion = self.call("AddSecretVersion", add).await.unwrap();
        version.name
    }

    async fn call<Req, Resp>(&self, method: &str, request: Req) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.emulator.clone());
        grpc.ready().await.unwrap();
        let path = format!("/google.cloud.secretmanager.v1.SecretManagerService/{method}");
        grpc.unary(
            tonic::Request::new(request),
            path.parse().unwrap(),
            tonic_prost::ProstCodec::<Req, Resp>::default(),
        )
        .await
        .map(tonic::Response::into_inner)
    }

    /// Lets only `principals` read `secret` (`projects/P/secrets/S`); others get
    /// PERMISSION_DENIED, as IAM would answer.
    pub fn restrict(&self, secret: &str, principals: &[&str]) {
        self.ledger().access.insert(
            secret.to_owned(),
            principals.iter().map(|p| (*p).to_owned()).collect(),
        );
    }

    /// Lets the Kubernetes service account `namespace/name` impersonate `gsa`.
    pub fn allow_impersonation(&self, gsa: &str, namespace: &str, name: &str) {
        self.ledger()
            .impersonators
            .entry(gsa.to_owned())
            .or_default()
            .push(subject(namespace, name));
    }

    /// Answers matching calls with `fault` instead of forwarding them.
    pub fn inject(&self, fault: Fault) {
        self.ledger().faults.push(fault);
    }

    /// Drops every injected failure.
    pub fn heal(&self) {
        self.ledger().faults.clear();
    }

    /// The Secret Manager calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.ledger().calls.clone()
    }

    /// `AccessSecretVersion` calls so far.
    pub fn reads(&self) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.method == "AccessSecretVersion")
            .count()
    }

    /// The Kubernetes subjects whose tokens were exchanged, one per exchange.
    pub fn exchanges(&self) -> Vec<String> {
        self.ledger().exchanges.clone()
    }

    /// The (GSA, federated principal) of each impersonation.
    pub fn impersonations(&self) -> Vec<(String, String)> {
        self.ledger().impersonations.clone()
    }

    /// Every access token issued, to scan logs for.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.ledger().tokens.keys().cloned().collect()
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap()
    }
}

/// The principal of a Kubernetes service account's federated token.
pub fn subject(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The principal a GSA's token stands for.
pub fn gsa_principal(gsa: &str) -> String {
    format!("serviceAccount:{gsa}")
}

#[derive(Clone)]
struct Proxy {
    upstream: Channel,
    ledger: Arc<Mutex<Ledger>>,
}

impl tonic::server::NamedService for Proxy {
    const NAME: &'static str = "google.cloud.secretmanager.v1.SecretManagerService";
}

type GrpcRequest = http::Request<tonic::body::Body>;
type GrpcResponse = http::Response<tonic::body::Body>;

impl tower::Service<GrpcRequest> for Proxy {
    type Response = GrpcResponse;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<GrpcResponse, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: GrpcRequest) -> Self::Future {
        let mut upstream = self.upstream.clone();
        let ledger = self.ledger.clone();
        Box::pin(async move {
            let method = request
                .uri()
                .path()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            let (bearer, routing) = {
                let header = |name: &str| {
                    request
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let bearer = header("authorization")
                    .strip_prefix("Bearer ")
                    .unwrap_or_default()
                    .to_owned();
                (bearer, header("x-goog-request-params"))
            };
            let resource = decode_routing(&routing);
            let refusal = {
                let mut ledger = ledger.lock().unwrap();
                let principal = ledger.tokens.get(&bearer).cloned();
                ledger.calls.push(Call {
                    method: method.clone(),
                    principal: principal.clone(),
                    routing: routing.clone(),
                });
                let fault = ledger.faults.iter_mut().find(|f| {
                    f.times != Some(0) && f.resource.as_ref().is_none_or(|r| *r == resource)
                });
                if let Some(fault) = fault {
                    if let Some(times) = &mut fault.times {
                        *times -= 1;
                    }
                    Some(tonic::Status::new(
                        fault.code,
                        format!("injected by the test proxy for {resource}"),
                    ))
                } else if principal.is_none() {
                    Some(tonic::Status::unauthenticated(
                        "Request had invalid authentication credentials",
                    ))
                } else {
                    let secret = resource.split("/versions/").next().unwrap_or_default();
                    let allowed = ledger
                        .access
                        .get(secret)
                        .is_none_or(|who| who.iter().any(|w| Some(w) == principal.as_ref()));
                    (!allowed).then(|| {
                        tonic::Status::permission_denied(format!(
                            "Permission 'secretmanager.versions.access' denied for resource '{resource}'"
                        ))
                    })
                }
            };
            if let Some(status) = refusal {
                return Ok(status.into_http());
            }
            use tower::ServiceExt as _;
            let answer = match upstream.ready().await {
                Ok(ready) => ready.call(request).await,
                Err(err) => Err(err),
            };
            Ok(
                answer
                    .unwrap_or_else(|err| tonic::Status::unavailable(err.to_string()).into_http()),
            )
        })
    }
}

fn decode_routing(routing: &str) -> String {
    let value = routing.strip_prefix("name=").unwrap_or(routing);
    let mut out = Vec::new();
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(&value[i + 1..i + 3], 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn token_service(
    State(ledger): State<Arc<Mutex<Ledger>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let path = uri.path();
    let error = |status: StatusCode, message: &str| {
        (
            status,
            json!({"error": {"code": status.as_u16(), "message": message}}).to_string(),
        )
    };
    // The GCE metadata server, for a plugin that reads the project and cluster there.
    if let Some(key) = path.strip_prefix("/computeMetadata/v1/") {
        if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
            return error(
                StatusCode::FORBIDDEN,
                "Missing Metadata-Flavor:Google header.",
            );
        }
        let value = match key {
            "project/project-id" => PROJECT,
            "instance/attributes/cluster-location" => CLUSTER.0,
            "instance/attributes/cluster-name" => CLUSTER.1,
            _ => return error(StatusCode::NOT_FOUND, "not defined"),
        };
        return (StatusCode::OK, value.to_owned());
    }
    if path == "/v1/identitybindingtoken" {
        let Ok(request) = serde_json::from_slice::<Value>(&body) else {
            return error(StatusCode::BAD_REQUEST, "not JSON");
        };
        let mut ledger = ledger.lock().unwrap();
        let expected = [
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            (
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("scope", "https://www.googleapis.com/auth/cloud-platform"),
            ("audience", ledger.expected_audience.as_str()),
        ];
        for (field, value) in expected {
            if request[field] != value {
                let message = format!("{field} is {}, expected {value}", request[field]);
                return (
                    StatusCode::BAD_REQUEST,
                    json!({"error": "invalid_request", "error_description": message}).to_string(),
                );
            }
        }
        let token = request["subject_token"].as_str().unwrap_or_default();
        let Some(claims) = super::jwt_claims(token) else {
            return (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_grant", "error_description": "The subject token is not a JWT"}).to_string(),
            );
        };
        let audiences = match &claims["aud"] {
            Value::String(one) => vec![one.clone()],
            Value::Array(many) => many
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        if !audiences.iter().any(|a| a == POOL) {
            return (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_grant", "error_description": format!("The audience {audiences:?} of the subject token does not match {POOL}")}).to_string(),
            );
        }
        let Some(subject) = claims["sub"]
            .as_str()
            .filter(|s| s.starts_with("system:serviceaccount:"))
        else {
            return (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_grant", "error_description": "no Kubernetes subject"})
                    .to_string(),
            );
        };
        ledger.issued += 1;
        let access = format!(
            "ya29.federated-{}-{}",
            ledger.issued,
            uuid_like(ledger.issued)
        );
        ledger.tokens.insert(access.clone(), subject.to_owned());
        ledger.exchanges.push(subject.to_owned());
        return (
            StatusCode::OK,
            json!({"access_token": access, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer", "expires_in": 3600}).to_string(),
        );
    }
    if let Some(rest) = path.strip_prefix("/v1/projects/-/serviceAccounts/") {
        let Some(gsa) = rest.strip_suffix(":generateAccessToken") else {
            return error(StatusCode::NOT_FOUND, "no such method");
        };
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let mut ledger = ledger.lock().unwrap();
        let Some(principal) = ledger.tokens.get(bearer).cloned() else {
            return error(
                StatusCode::UNAUTHORIZED,
                "Request had invalid authentication credentials.",
            );
        };
        let request: Value = serde_json::from_slice(&body).unwrap_or_default();
        if request["scope"] != json!(["https://www.googleapis.com/auth/cloud-platform"]) {
            return error(StatusCode::BAD_REQUEST, "scope must be cloud-platform");
        }
        let allowed = ledger
            .impersonators
            .get(gsa)
            .is_some_and(|who| who.contains(&principal));
        if !allowed {
            return error(
                StatusCode::FORBIDDEN,
                "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
            );
        }
        ledger.issued += 1;
        let access = format!("ya29.gsa-{}-{}", ledger.issued, uuid_like(ledger.issued));
        ledger.tokens.insert(access.clone(), gsa_principal(gsa));
        ledger.impersonations.push((gsa.to_owned(), principal));
        let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
        return (
            StatusCode::OK,
            json!({"accessToken": access, "expireTime": expires.to_string()}).to_string(),
        );
    }
    error(
        StatusCode::NOT_FOUND,
        "not served here (no metadata server in the tests)",
    )
}

fn uuid_like(n: usize) -> String {
    format!("{:016x}", (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[derive(Clone, PartialEq, prost::Message)]
struct CreateSecretRequest {
    #[prost(string, tag = "1")]
    parent: String,
    #[prost(string, tag = "2")]
    secret_id: String,
    #[prost(message, optional, tag = "3")]
    secret: Option<SecretMeta>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SecretMeta {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AddSecretVersionRequest {
    #[prost(string, tag = "1")]
    parent: String,
    #[prost(message, optional, tag = "2")]
    payload: Option<Payload>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Payload {
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SecretVersion {
    #[prost(string, tag = "1")]
    name: String,
}
