//! Shared test fixtures: the fake API server, a fake provider plugin, and a harness that runs
//! the real driver binary on a real unix socket.

#![allow(dead_code)]

pub mod apiserver;
pub mod azure;
pub mod cluster;
pub mod gcp;
pub mod moto;
pub mod openbao;
pub mod pki;
pub mod provider;
pub mod redis;
pub mod sync_controller;
pub mod upstream;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use secrets_store_csi_driver::proto::csi::v1 as csi;
use serde_json::{Value, json};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

#[allow(unused_imports)]
pub use apiserver::FakeApiServer;
#[allow(unused_imports)]
pub use cluster::ApiServer;

/// What tests ask of an API server, real (`ApiServer`) or fake (`FakeApiServer`, only for
/// faults a real one cannot produce on demand). Objects are JSON; `group` is `""` for core.
pub trait TestApi {
    /// A kubeconfig for the driver.
    fn kubeconfig(&self) -> String;
    /// The server's URL.
    fn url(&self) -> String;
    /// Creates an object (its namespace too, if missing) and returns it as stored.
    fn insert(&self, group: &str, resource: &str, object: Value) -> Value;
    /// The object, if it exists.
    fn get(&self, group: &str, resource: &str, namespace: &str, name: &str) -> Option<Value>;
    /// Every object of a resource, in all namespaces.
    fn list(&self, group: &str, resource: &str) -> Vec<Value>;
    /// Deletes an object; the garbage collector takes its dependents.
    fn delete(&self, group: &str, resource: &str, namespace: &str, name: &str);
    /// Merge-patches an object, as `kubectl patch --type=merge`.
    fn patch(&self, group: &str, resource: &str, namespace: &str, name: &str, patch: &Value);
    /// A service-account token for `audience`, as kubelet requests for a pod.
    fn issue_token(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        pod: (&str, &str),
    ) -> String;
    /// The PEM public key that verifies the tokens (for JWT auth methods).
    fn token_public_key_pem(&self) -> String;
}

/// The driver binary under test.
pub const DRIVER: &str = env!("CARGO_BIN_EXE_secrets-store-csi-driver");
/// The node name the harness gives the driver.
pub const NODE: &str = "node-a";

/// Whether tests that mount tmpfs can run. Under `CI=true` missing root fails the test.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but not root: tmpfs tests must run"
    );
    eprintln!("skipping: needs root to mount tmpfs");
    false
}

/// A gRPC channel over a unix socket, with authority `localhost`.
pub fn uds_channel(socket: &Path) -> Channel {
    let socket = socket.to_owned();
    Endpoint::from_static("http://localhost").connect_with_connector_lazy(service_fn(
        move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        },
    ))
}

/// The real driver running `node` against a fake API server.
pub struct Driver {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub provider_dir: PathBuf,
    pub local_root: PathBuf,
    pub kubelet_root: PathBuf,
    pub metrics_port: u16,
    logs: Arc<Mutex<Vec<u8>>>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// Starts the driver binary with `args`, appending its stderr to `logs`, and waits until it
/// serves `socket` (a stale socket from a killed run does not count).
async fn spawn_driver(
    args: &[String],
    env: &[(String, String)],
    socket: &Path,
    logs: &Arc<Mutex<Vec<u8>>>,
) -> Child {
    let mut child = Command::new(DRIVER)
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let sink = logs.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let started = Instant::now();
    while UnixStream::connect(socket).await.is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "driver exited with {status}: {}",
                String::from_utf8_lossy(&logs.lock().unwrap())
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "driver socket never appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

impl Driver {
    /// Starts the driver and waits for its socket.
    pub async fn start(api: &dyn TestApi, extra_args: &[&str]) -> Self {
        Self::start_with_env(api, extra_args, &[]).await
    }

    /// Starts the driver with environment variables set (e.g. `RUST_LOG`).
    /// A driver pointed at a test backend by `flags`, with the opt-in built-in `name` enabled
    /// beside the defaults, unless `extra` sets `--builtin-providers` itself.
    pub async fn with_builtin(
        api: &dyn TestApi,
        name: &str,
        flags: &[String],
        extra: &[&str],
    ) -> Self {
        let builtins = format!("--builtin-providers=vault,aws,{name}");
        let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
        if !extra.iter().any(|a| a.starts_with("--builtin-providers")) {
            args.push(&builtins);
        }
        args.extend_from_slice(extra);
        Self::start(api, &args).await
    }

    pub async fn start_with_env(
        api: &dyn TestApi,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("csi/csi.sock");
        let provider_dir = dir.path().join("providers");
        let local_root = dir.path().join("local");
        let kubelet_root = dir.path().join("kubelet");
        std::fs::create_dir_all(&provider_dir).unwrap();
        std::fs::create_dir_all(&local_root).unwrap();
        std::fs::create_dir_all(&kubelet_root).unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let args: Vec<String> = [
            format!("--endpoint=unix://{}", socket.display()),
            format!("--nodeid={NODE}"),
            format!("--provider-volume={}", provider_dir.display()),
            "--additional-provider-volume-paths=".to_owned(),
            format!("--metrics-addr=127.0.0.1:{metrics_port}"),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--local-provider-root={}", local_root.display()),
            format!("--kubelet-root-dir={}", kubelet_root.display()),
            "-v=5".to_owned(),
        ]
        .into_iter()
        .chain(extra_args.iter().map(|a| (*a).to_owned()))
        .collect();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let child = spawn_driver(&args, &env, &socket, &logs).await;
        Self {
            child,
            dir,
            socket,
            provider_dir,
            local_root,
            kubelet_root,
            metrics_port,
            logs,
            args,
            env,
        }
    }

    /// Kills the driver with SIGKILL (no cleanup at all, as a node crash or OOM kill) and
    /// starts it again with the same arguments, directories and mounts.
    pub async fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_driver(&self.args, &self.env, &self.socket, &self.logs).await;
    }

    pub fn node(&self) -> csi::node_client::NodeClient<Channel> {
        csi::node_client::NodeClient::new(uds_channel(&self.socket))
    }

    pub fn identity(&self) -> csi::identity_client::IdentityClient<Channel> {
        csi::identity_client::IdentityClient::new(uds_channel(&self.socket))
    }

    pub fn controller(&self) -> csi::controller_client::ControllerClient<Channel> {
        csi::controller_client::ControllerClient::new(uds_channel(&self.socket))
    }

    /// Everything the driver logged so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock().unwrap()).into_owned()
    }

    /// Asserts that no log line contains any of `values`.
    pub fn assert_logs_free_of(&self, values: &[&str]) {
        let logs = self.logs();
        for value in values {
            assert!(
                !logs.contains(value),
                "the driver logged a secret value {value:?}:\n{logs}"
            );
        }
    }

    /// A pod target path under this driver's temp dir, as kubelet would pass it.
    pub fn target(&self, pod_uid: &str, volume: &str) -> PathBuf {
        self.dir.path().join(format!(
            "kubelet/pods/{pod_uid}/volumes/kubernetes.io~csi/{volume}/mount"
        ))
    }

    /// Publishes `pod`'s `volume` of `class` as kubelet would, expecting success; returns the
    /// target.
    pub async fn publish_ok(&self, pod: &Pod, volume: &str, class: &str) -> PathBuf {
        let target = self.target(&pod.uid, volume);
        self.node()
            .node_publish_volume(pod.publish(&target, class))
            .await
            .unwrap();
        target
    }

    /// Stores each pod (kubelet mounts only pods that exist), publishes a volume `secrets` of
    /// `class` for each, ten at a time as a rollout would, then unpublishes them; any failure
    /// panics. Pod names must be new to the API server.
    pub async fn publish_rollout(
        &self,
        api: &dyn TestApi,
        pods: &[Pod],
        class: &str,
        audiences: &[&str],
    ) {
        let mut pods = pods.to_vec();
        for pod in &mut pods {
            pod.register(api, class);
        }
        for wave in pods.chunks(10) {
            let publishes = wave.iter().map(|pod| {
                let target = self.target(&pod.uid, "secrets");
                let request = pod.publish_with_tokens(&target, class, api, audiences);
                let mut node = self.node();
                async move {
                    node.node_publish_volume(request).await.unwrap();
                    node.node_unpublish_volume(unpublish(&target))
                        .await
                        .unwrap();
                }
            });
            futures::future::join_all(publishes).await;
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().unwrap()
    }

    /// The process's resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_field("VmRSS:")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap()
    }

    /// The process's highest resident set size so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_field("VmHWM:")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap()
    }

    /// The process's thread count.
    pub fn threads(&self) -> usize {
        self.status_field("Threads:").parse().unwrap()
    }

    /// The process's open file descriptors.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn status_field(&self, field: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .unwrap()
            .trim()
            .to_owned()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Never leave a tmpfs behind, whatever the test did.
        for point in mounts_under(self.dir.path()) {
            let _ = nix::mount::umount2(Path::new(&point), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    secrets_store_csi_driver::volume::mount::mount_points(&table)
        .filter(|p| Path::new(p).starts_with(&dir))
        .collect()
}

/// The mountinfo line of `target`, if mounted.
pub fn mount_line(target: &Path) -> Option<String> {
    let target = target.canonicalize().ok()?;
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    table
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(target.to_str().unwrap()))
        .map(str::to_owned)
}

/// A pod as kubelet describes it in volume attributes.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub service_account: String,
}

impl Pod {
    pub fn new(name: &str, namespace: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            uid: format!("uid-{name}-{namespace}"),
            service_account: "default".to_owned(),
        }
    }

    /// A NodePublishVolume request as kubelet sends it for an inline volume of class `spc`.
    pub fn publish(&self, target: &Path, spc: &str) -> csi::NodePublishVolumeRequest {
        let context = [
            ("secretProviderClass", spc),
            ("csi.storage.k8s.io/pod.name", &self.name),
            ("csi.storage.k8s.io/pod.namespace", &self.namespace),
            ("csi.storage.k8s.io/pod.uid", &self.uid),
            (
                "csi.storage.k8s.io/serviceAccount.name",
                &self.service_account,
            ),
            ("csi.storage.k8s.io/ephemeral", "true"),
        ];
        csi::NodePublishVolumeRequest {
            volume_id: format!("csi-{}", self.uid),
            target_path: target.display().to_string(),
            volume_capability: Some(csi::VolumeCapability {
                access_type: Some(csi::volume_capability::AccessType::Mount(Default::default())),
                access_mode: Some(csi::volume_capability::AccessMode { mode: 1 }),
            }),
            readonly: true,
            volume_context: context
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }
    }
}

impl Pod {
    /// The same request with the service-account tokens kubelet adds for the CSIDriver's
    /// `tokenRequests`, one per audience, minted by `api`.
    pub fn publish_with_tokens(
        &self,
        target: &Path,
        spc: &str,
        api: &dyn TestApi,
        audiences: &[&str],
    ) -> csi::NodePublishVolumeRequest {
        let mut request = self.publish(target, spc);
        request.volume_context.insert(
            "csi.storage.k8s.io/serviceAccount.tokens".to_owned(),
            self.tokens(api, audiences),
        );
        request
    }

    /// Kubelet's `serviceAccount.tokens` attribute for this pod.
    pub fn tokens(&self, api: &dyn TestApi, audiences: &[&str]) -> String {
        let tokens: serde_json::Map<String, Value> = audiences
            .iter()
            .map(|audience| {
                let token = api.issue_token(
                    &self.namespace,
                    &self.service_account,
                    audience,
                    (&self.name, &self.uid),
                );
                (
                    (*audience).to_owned(),
                    json!({"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"}),
                )
            })
            .collect();
        Value::Object(tokens).to_string()
    }
}

/// A benchmark's iteration count (`BENCH_ITERATIONS`, else `default`), or `None` when it
/// cannot run here (not root: no tmpfs). Under `CI=true` not being root is a failure.
pub fn bench_iterations(bench: &str, default: usize) -> Option<usize> {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but not root"
        );
        println!("{bench} bench skipped: needs root to mount tmpfs");
        return None;
    }
    Some(
        std::env::var("BENCH_ITERATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// The `p` quantile (0.0 to 1.0) of sorted durations, for the benchmark tables.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// A duration as milliseconds for the benchmark tables.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// Stores a service account, as tokens can only be issued for existing ones.
pub fn service_account(api: &dyn TestApi, namespace: &str, name: &str) {
    api.insert(
        "",
        "serviceaccounts",
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}),
    );
}

/// An unpublish request for `target`.
pub fn unpublish(target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: "vol".into(),
        target_path: target.display().to_string(),
    }
}

/// A SecretProviderClass object.
pub fn spc(namespace: &str, name: &str, provider: &str, parameters: Value) -> Value {
    json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"provider": provider, "parameters": parameters},
    })
}

/// [`read_tree`] keyed by path: contents and mode.
pub fn files(target: &Path) -> std::collections::BTreeMap<String, (Vec<u8>, u32)> {
    read_tree(target)
        .into_iter()
        .map(|(path, contents, mode)| (path, (contents, mode)))
        .collect()
}

/// `id -> version` of a SecretProviderClassPodStatus's `status.objects`.
/// The object versions of `pod`'s SecretProviderClassPodStatus (it must exist).
pub fn pod_versions(api: &dyn TestApi, pod: &str) -> std::collections::BTreeMap<String, String> {
    let status = api
        .list(
            "secrets-store.csi.x-k8s.io",
            "secretproviderclasspodstatuses",
        )
        .into_iter()
        .find(|s| s["status"]["podName"] == pod)
        .unwrap();
    object_versions(&status)
}

pub fn object_versions(status: &Value) -> std::collections::BTreeMap<String, String> {
    status["status"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["id"].as_str().unwrap().to_owned(),
                o["version"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Visible files below a mounted target (following the `..data` links), path to contents.
pub fn read_tree(target: &Path) -> Vec<(String, Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = Vec::new();
    let mut stack = vec![(target.to_owned(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if prefix.is_empty() && name.starts_with("..") {
                continue;
            }
            let path = entry.path();
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let meta = std::fs::metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push((path, relative));
            } else {
                out.push((
                    relative,
                    std::fs::read(&path).unwrap(),
                    meta.permissions().mode() & 0o777,
                ));
            }
        }
    }
    out.sort();
    out
}

impl Pod {
    /// Stores this pod in the API server, as kubelet only mounts volumes of pods that exist
    /// (a real garbage collector removes a status record whose pod never existed), and takes
    /// the UID the server assigned.
    pub fn register(&mut self, api: &dyn TestApi, class: &str) {
        self.create_in(api, "secrets", class, None);
    }

    /// Stores this pod in the API server with one CSI volume `volume` of class `spc`, owned by
    /// `owner` (`kind`, object) when given, and takes the UID the server assigned.
    pub fn create_in(
        &mut self,
        api: &dyn TestApi,
        volume: &str,
        spc: &str,
        owner: Option<(&str, &Value)>,
    ) {
        let owners: Vec<Value> = owner
            .into_iter()
            .map(|(kind, object)| {
                json!({
                    "apiVersion": if kind == "ReplicaSet" || kind == "StatefulSet" { "apps/v1" } else { "v1" },
                    "kind": kind,
                    "name": object["metadata"]["name"],
                    "uid": object["metadata"]["uid"],
                    "controller": true,
                    "blockOwnerDeletion": true,
                })
            })
            .collect();
        let pod = api.insert(
            "",
            "pods",
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": self.name, "namespace": self.namespace, "ownerReferences": owners},
                "spec": {
                    "nodeName": NODE,
                    "serviceAccountName": self.service_account,
                    "containers": [{"name": "app", "image": "app"}],
                    "volumes": [{"name": volume, "csi": {
                        "driver": "secrets-store.csi.k8s.io",
                        "readOnly": true,
                        "volumeAttributes": {"secretProviderClass": spc},
                    }}],
                },
                "status": {"phase": "Running"},
            }),
        );
        self.uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    }
}

/// Stores an apps/v1 workload object (`replicasets`, `deployments`…) owned by `owner`.
pub fn workload(
    api: &dyn TestApi,
    resource: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    owner: Option<&Value>,
) -> Value {
    let owners: Vec<Value> = owner
        .into_iter()
        .map(|o| {
            json!({"apiVersion": "apps/v1", "kind": o["kind"], "name": o["metadata"]["name"],
                   "uid": o["metadata"]["uid"], "controller": true})
        })
        .collect();
    api.insert(
        "apps",
        resource,
        json!({
            "apiVersion": "apps/v1",
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace, "ownerReferences": owners},
            // Valid for a real API server; no controller acts on it there.
            "spec": {
                "replicas": 0,
                "serviceName": name,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": "app"}]},
                },
            },
        }),
    )
}

/// Polls `check` until it returns `Some` or `timeout` passes (then panics with `what`).
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Decoded `data` of a stored Secret.
pub fn secret_data(secret: &Value) -> std::collections::BTreeMap<String, Vec<u8>> {
    use base64::Engine as _;
    secret["data"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap();
            (k.clone(), bytes)
        })
        .collect()
}

/// Events recorded on the pod `name` in `namespace`: `(type, reason, message)`.
pub fn pod_events(api: &dyn TestApi, namespace: &str, name: &str) -> Vec<(String, String, String)> {
    api.list("", "events")
        .into_iter()
        .filter(|e| {
            e["involvedObject"]["namespace"] == namespace && e["involvedObject"]["name"] == name
        })
        .map(|e| {
            let text = |f: &str| e[f].as_str().unwrap_or_default().to_owned();
            (text("type"), text("reason"), text("message"))
        })
        .collect()
}

/// The driver's `/metrics` text.
pub async fn metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

/// A YAML file of the repository (a class of `examples/` or `tests/fixtures/`), as JSON.
pub fn yaml_file(relative: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// A class of an upstream plugin's own (`tests/fixtures/DIR/FILE`), placed in namespace `team`.
pub fn plugin_class(dir: &str, file: &str) -> Value {
    let mut class = yaml_file(&format!("tests/fixtures/{dir}/{file}"));
    class["metadata"]["namespace"] = json!("team");
    class
}

/// An upstream plugin built by scripts/cluster-build from the Go module proxy, or `None`
/// (skip) outside CI when it is not built.
pub fn plugin_binary(name: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools/cluster/current/bin")
        .join(name);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {name} is not built: run scripts/test"
    );
    eprintln!("skipping: {name} is not built; scripts/test builds it");
    None
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An upstream provider plugin serving a socket; killed on drop.
pub struct Plugin(Child);

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Plugin {
    /// Starts `binary` with `args` and `env` (no proxy exceptions), its log in `log`, and
    /// waits for `socket`.
    pub async fn start(
        binary: &Path,
        args: &[String],
        env: &[(&str, String)],
        socket: &Path,
        log: &Path,
    ) -> Self {
        let child = Command::new(binary)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
            .spawn()
            .unwrap();
        let plugin = Self(child);
        wait_for_socket(socket).await;
        plugin
    }
}

/// The claims of a JWT, unverified (the test token services check what the real ones would
/// check of them).
pub fn jwt_claims(jwt: &str) -> Option<Value> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `der` as a PEM block with `label`, 64 characters per line.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// Runs `secrets-store-csi-driver provider <name>` on `socket` and waits for the socket.
pub async fn serve_provider(name: &str, socket: &Path, args: &[&str]) -> Child {
    let child = Command::new(DRIVER)
        .args([
            "provider",
            name,
            &format!("--endpoint=unix://{}", socket.display()),
        ])
        .args(args)
        .arg("-v=5")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_socket(socket).await;
    child
}

/// Waits (20 s at most) for a served provider's socket.
pub async fn wait_for_socket(socket: &Path) {
    let started = Instant::now();
    while !socket.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "provider socket never appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops a served provider with SIGTERM, checks that it exits cleanly and removes its socket,
/// and returns its logs.
pub fn stop_provider(mut child: Child, socket: &Path) -> String {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        !socket.exists(),
        "the provider removes its socket on shutdown"
    );
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    logs
}
