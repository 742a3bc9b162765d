//! A real moto server (`moto_server`, AWS Secrets Manager, SSM and STS) on a free loopback
//! port, behind a recording proxy that counts each AWS operation per region and can inject
//! failures (server errors, throttling, refusals) for chosen operations or regions. Under
//! `CI=true` a missing moto fails the test instead of skipping it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_secretsmanager::primitives::Blob;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Response, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The account moto answers for.
pub const ACCOUNT: &str = "123456789012";
/// Credentials the fixtures use (moto accepts any).
pub const ACCESS_KEY: &str = "AKIAMOTOFIXTURES0001";
/// The fixtures' secret key; asserted absent from logs.
pub const SECRET_KEY: &str = "moto-fixture-secret-key-7d1e";

/// The `moto_server` binary: `$MOTO_SERVER`, else the README's tools directory, else `PATH`.
pub fn moto_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/moto_server");
    if tools.is_file() {
        return Some(tools);
    }
    let found = Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then(|| PathBuf::from("moto_server"))
}

/// An injected failure for matching calls.
#[derive(Debug, Clone)]
pub struct Fault {
    operation: Option<String>,
    region: Option<String>,
    effect: Effect,
    remaining: Option<usize>,
}

#[derive(Debug, Clone)]
enum Effect {
    /// Answer with this HTTP status and AWS error code.
    Fail(u16, String),
    /// Forward the call this much later.
    Delay(Duration),
}

impl Fault {
    /// Every matching call is answered with `status` and AWS error `code`.
    pub fn fail(status: u16, code: &str) -> Self {
        Self {
            operation: None,
            region: None,
            effect: Effect::Fail(status, code.to_owned()),
            remaining: None,
        }
    }

    /// Every matching call is answered `delay` late.
    pub fn delay(delay: Duration) -> Self {
        Self {
            effect: Effect::Delay(delay),
            ..Self::fail(0, "")
        }
    }

    /// Only calls to this operation, e.g. `BatchGetSecretValue`.
    pub fn operation(mut self, operation: &str) -> Self {
        self.operation = Some(operation.to_owned());
        self
    }

    /// Only calls signed for this region.
    pub fn region(mut self, region: &str) -> Self {
        self.region = Some(region.to_owned());
        self
    }

    /// Only the next `n` matching calls.
    pub fn times(mut self, n: usize) -> Self {
        self.remaining = Some(n);
        self
    }
}

#[derive(Default)]
struct Recorder {
    calls: Vec<Call>,
    faults: Vec<Fault>,
}

/// One AWS call as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The operation, e.g. `BatchGetSecretValue`.
    pub operation: String,
    /// The region in the signature (empty for unsigned calls such as STS web identity).
    pub region: String,
}

/// moto and its proxy; the server is killed on drop.
pub struct Moto {
    /// The proxy's URL: what the driver's `--aws-endpoint-url` points at.
    pub url: String,
    /// moto's own URL, for fixtures that should not be counted.
    pub direct_url: String,
    child: Child,
    recorder: Arc<Mutex<Recorder>>,
    proxy: tokio::task::JoinHandle<()>,
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.proxy.abort();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts moto and the proxy, or returns `None` (skip) when moto is not installed outside CI.
    pub async fn start() -> Option<Self> {
        Self::start_proxy_on(0).await
    }

    /// The same with the proxy on `port` (a driver started earlier was told that URL).
    pub async fn start_proxy_on(proxy_port: u16) -> Option<Self> {
        let Some(bin) = moto_binary() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but moto_server is not installed: run scripts/test"
            );
            eprintln!("skipping: moto_server not installed (run scripts/test)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "moto_server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let direct_url = format!("http://127.0.0.1:{port}");
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", proxy_port))
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Proxy {
            upstream: direct_url.clone(),
            recorder: recorder.clone(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        let proxy = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Some(Self {
            url,
            direct_url,
            child,
            recorder,
            proxy,
        })
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Calls of `operation` so far.
    pub fn count(&self, operation: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.operation == operation)
            .count()
    }

    /// Forgets the calls so far.
    pub fn reset_calls(&self) {
        self.lock().calls.clear();
    }

    /// Adds a failure.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Removes every failure.
    pub fn heal(&self) {
        self.lock().faults.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorder> {
        self.recorder.lock().unwrap()
    }

    /// The fixtures' configuration for `region`, straight to moto (not counted).
    fn sdk_config(&self, region: &str) -> aws_types::SdkConfig {
        aws_types::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_types::region::Region::new(region.to_owned()))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                ACCESS_KEY, SECRET_KEY, None, None, "fixtures",
            )))
            .endpoint_url(&self.direct_url)
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https(),
            )
            .build()
    }

    /// A Secrets Manager client for fixtures in `region`.
    pub fn secrets(&self, region: &str) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.sdk_config(region))
    }

    /// An SSM client for fixtures in `region`.
    pub fn parameters(&self, region: &str) -> aws_sdk_ssm::Client {
        aws_sdk_ssm::Client::new(&self.sdk_config(region))
    }

    /// Creates a string secret; returns its ARN and first VersionId.
    pub async fn create_secret(&self, region: &str, name: &str, value: &str) -> (String, String) {
        let out = self
            .secrets(region)
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .unwrap();
        (
            out.arn().unwrap().to_owned(),
            out.version_id().unwrap().to_owned(),
        )
    }

    /// Creates a binary secret.
    pub async fn create_binary_secret(&self, region: &str, name: &str, value: &[u8]) {
        self.secrets(region)
            .create_secret()
            .name(name)
            .secret_binary(Blob::new(value))
            .send()
            .await
            .unwrap();
    }

    /// Stores a new current value (the old one becomes AWSPREVIOUS); returns its VersionId.
    pub async fn put_secret(&self, region: &str, name: &str, value: &str) -> String {
        self.secrets(region)
            .put_secret_value()
            .secret_id(name)
            .secret_string(value)
            .send()
            .await
            .unwrap()
            .version_id()
            .unwrap()
            .to_owned()
    }

    /// Stores an SSM parameter (`String`, `SecureString` or `StringList`), overwriting.
    pub async fn put_parameter(&self, region: &str, name: &str, kind: &str, value: &str) -> i64 {
        self.parameters(region)
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(kind.into())
            .overwrite(true)
            .send()
            .await
            .unwrap()
            .version()
    }
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    recorder: Arc<Mutex<Recorder>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The operation: `X-Amz-Target: secretsmanager.GetSecretValue` (JSON protocols) or
/// `Action=...` in a query-protocol body (STS).
fn operation(headers: &HeaderMap, body: &[u8]) -> String {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return target.rsplit('.').next().unwrap_or(target).to_owned();
    }
    String::from_utf8_lossy(body)
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .unwrap_or("unknown")
        .to_owned()
}

/// The region from `Credential=AKID/date/<region>/service/aws4_request`.
fn region(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|auth| auth.split("Credential=").nth(1))
        .and_then(|scope| scope.split('/').nth(2))
        .unwrap_or_default()
        .to_owned()
}

async fn forward(
    State(proxy): State<Proxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let call = Call {
        operation: operation(&headers, &body),
        region: region(&headers),
    };
    let fault = {
        let mut recorder = proxy.recorder.lock().unwrap();
        recorder.calls.push(call.clone());
        let fault = recorder.faults.iter_mut().find(|f| {
            f.operation.as_ref().is_none_or(|o| *o == call.operation)
                && f.region.as_ref().is_none_or(|r| *r == call.region)
                && f.remaining != Some(0)
        });
        fault.map(|f| {
            if let Some(n) = f.remaining.as_mut() {
                *n -= 1;
            }
            f.effect.clone()
        })
    };
    match fault {
        Some(Effect::Fail(status, code)) => {
            let body = serde_json::json!({"__type": code, "message": format!("injected {code}")});
            return Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .header("content-type", "application/x-amz-json-1.1")
                .header("x-amzn-errortype", code.as_str())
                .body(Body::from(body.to_string()))
                .unwrap();
        }
        Some(Effect::Delay(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    let mut request = http::Request::builder().method(method).uri(format!(
        "{}{}",
        proxy.upstream,
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    ));
    for (name, value) in &headers {
        if name != "host" {
            request = request.header(name, value);
        }
    }
    let reply = proxy
        .client
        .request(request.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let (parts, body) = reply.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Response::from_parts(parts, Body::from(body))
}
