//! A real single-node Kubernetes cluster for end-to-end tests: etcd, kube-apiserver (real
//! service-account issuer, `Node,RBAC` authorization, default admission plugins plus
//! NodeRestriction), kube-controller-manager (garbage collector, namespaces, service accounts,
//! Deployments and ReplicaSets), kube-scheduler and kubelet with a CRI runtime that only
//! pretends to run containers, all built from `tests/cluster` by `scripts/cluster-build`.
//!
//! The driver runs as its DaemonSet would: registered with kubelet through the plugin
//! registration directory, authenticated as the ServiceAccount of `deploy/`, with the CRDs,
//! CSIDriver object and RBAC applied from the files in `deploy/`. One cluster serves every test
//! of a test binary (namespaces isolate them); it is started by the first test that asks.
//!
//! Every component runs under `tether`, which ends it (and unmounts what is left below the
//! kubelet root) when the test process exits, however it exits; a janitor deletes the
//! cluster's directory after them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::api::storage::v1::CSINode;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

/// The node's name.
pub const NODE: &str = "e2e-node";
/// The driver name kubelet knows the driver by.
pub const DRIVER_NAME: &str = "secrets-store.csi.k8s.io";
/// The field manager of what the harness applies.
const MANAGER: &str = "e2e-harness";
/// How long any component may take to become ready.
const STARTUP: Duration = Duration::from_secs(60);

/// One component and the stdin that keeps its tether holding on.
struct Tethered {
    child: Child,
    _stdin: ChildStdin,
}

impl Tethered {
    /// Releases the tether (it ends the component) and waits for it.
    fn stop(mut self) {
        drop(self._stdin);
        let _ = self.child.wait();
    }
}

/// The running cluster.
pub struct Cluster {
    /// The cluster's directory (logs, certificates, kubelet root).
    pub dir: PathBuf,
    bin: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub api_url: String,
    /// The cluster CA, PEM.
    pub ca_pem: String,
    /// An admin (system:masters) kubeconfig.
    pub admin_kubeconfig: PathBuf,
    /// Kubelet's `--root-dir`.
    pub kubelet_root: PathBuf,
    /// The driver's CSI socket, as registered with kubelet.
    pub driver_socket: PathBuf,
    /// Where provider plugins put their sockets for the driver.
    pub provider_dir: PathBuf,
    /// The root of the driver's `local` provider.
    pub local_root: PathBuf,
    /// The driver's metrics port.
    pub metrics_port: u16,
    /// The port the driver's `--aws-endpoint-url` names, for a test's moto proxy.
    pub aws_port: u16,
    driver_kubeconfig: PathBuf,
    driver_args: Mutex<Vec<String>>,
    driver: Mutex<Option<Tethered>>,
    _components: Vec<Tethered>,
    /// Tests that change what others rely on (driver restarts, RBAC) take it exclusively.
    disruption: tokio::sync::RwLock<()>,
    /// How long the cluster took to start, for the notes.
    pub started_in: Duration,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();

/// Where `scripts/cluster-build` put the components.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/cluster/current/bin")
}

/// The shared cluster, started on first use; `None` where it cannot run (not root, or the
/// components are not built), which under `CI=true` is a failure.
pub fn cluster() -> Option<&'static Cluster> {
    CLUSTER
        .get_or_init(|| {
            if !super::require_root() {
                return None;
            }
            let bin = bin_dir();
            if !bin.join("kubelet").exists() {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true but the test cluster is not built: run scripts/cluster-build"
                );
                eprintln!("skipping: the test cluster is not built (scripts/cluster-build)");
                return None;
            }
            // Started on a thread of its own: it needs a runtime, and tests have theirs.
            let started = std::thread::spawn(move || Cluster::start(bin));
            Some(
                started
                    .join()
                    .unwrap_or_else(|_| panic!("the test cluster failed to start")),
            )
        })
        .as_ref()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn kubeconfig(server: &str, ca_pem: &str, user: Value) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "user"}}],
        "current-context": "e2e",
    })
    .to_string()
}

impl Cluster {
    fn start(bin: PathBuf) -> Cluster {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("sscsi-e2e-")
            .tempdir()
            .unwrap()
            .keep();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut components = Vec::new();
        let spawn = |name: &str, program: &Path, args: &[String], unmount: Option<&Path>| {
            let log = File::create(dir.join(format!("{name}.log"))).unwrap();
            let mut command = Command::new(bin.join("tether"));
            command.arg("--grace=5s");
            if let Some(below) = unmount {
                command.arg(format!("--unmount-below={}", below.display()));
            }
            let mut child = command
                .arg("--")
                .arg(program)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {name}: {e}"));
            let stdin = child.stdin.take().unwrap();
            Tethered {
                child,
                _stdin: stdin,
            }
        };
        // The janitor: once every tether let go, unmount what is left and delete the dir.
        let mut janitor = Command::new(bin.join("tether"))
            .args([
                "--settle=8s".to_owned(),
                format!("--unmount-below={}", dir.display()),
                format!("--remove={}", dir.display()),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        components.push(Tethered {
            _stdin: janitor.stdin.take().unwrap(),
            child: janitor,
        });

        let pki = dir.join("pki");
        let status = Command::new(bin.join("pki"))
            .args([format!("--dir={}", pki.display()), format!("--node={NODE}")])
            .status()
            .unwrap();
        assert!(status.success(), "pki failed");
        let pem = |name: &str| pki.join(name).display().to_string();
        let ca_pem = std::fs::read_to_string(pki.join("ca.pem")).unwrap();

        // etcd.
        let (etcd_port, peer_port) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        components.push(spawn(
            "etcd",
            &bin.join("etcd"),
            &[
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync".to_owned(),
                "--log-level=warn".to_owned(),
            ],
            None,
        ));
        wait_tcp(etcd_port, "etcd", &dir);

        // kube-apiserver.
        let api_port = free_port();
        let api_url = format!("https://127.0.0.1:{api_port}");
        components.push(spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--secure-port={api_port}"),
                "--bind-address=127.0.0.1".to_owned(),
                "--advertise-address=127.0.0.1".to_owned(),
                format!("--tls-cert-file={}", pem("apiserver.pem")),
                format!("--tls-private-key-file={}", pem("apiserver-key.pem")),
                format!("--client-ca-file={}", pem("ca.pem")),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
                format!("--service-account-key-file={}", pem("sa.pub")),
                format!("--service-account-signing-key-file={}", pem("sa.key")),
                "--authorization-mode=Node,RBAC".to_owned(),
                "--enable-admission-plugins=NodeRestriction".to_owned(),
                "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
                "--allow-privileged=true".to_owned(),
                format!("--kubelet-client-certificate={}", pem("admin.pem")),
                format!("--kubelet-client-key={}", pem("admin-key.pem")),
                "--profiling=false".to_owned(),
                "--v=1".to_owned(),
            ],
            None,
        ));
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        std::fs::write(
            &admin_kubeconfig,
            kubeconfig(
                &api_url,
                &ca_pem,
                json!({"client-certificate": pem("admin.pem"), "client-key": pem("admin-key.pem")}),
            ),
        )
        .unwrap();
        let client = runtime.block_on(wait_api(&admin_kubeconfig, &dir));

        // What users apply: CRDs, CSIDriver, RBAC, the driver's ServiceAccount.
        runtime.block_on(async {
            for file in deploy_files() {
                apply_file(&client, &file).await;
            }
            wait_crds(&client).await;
            // Rotation through kubelet's own republish.
            patch(
                &client,
                "storage.k8s.io/v1",
                "CSIDriver",
                None,
                DRIVER_NAME,
                json!({"spec": {"requiresRepublish": true}}),
            )
            .await;
        });

        for (name, args) in [
            (
                "kube-controller-manager",
                vec![
                    format!("--kubeconfig={}", admin_kubeconfig.display()),
                    "--controllers=garbage-collector-controller,namespace-controller,\
                     serviceaccount-controller,serviceaccount-token-controller,\
                     root-ca-certificate-publisher-controller,replicaset-controller,\
                     deployment-controller,pod-garbage-collector-controller,\
                     node-lifecycle-controller"
                        .to_owned(),
                    format!("--service-account-private-key-file={}", pem("sa.key")),
                    format!("--root-ca-file={}", pem("ca.pem")),
                    "--leader-elect=false".to_owned(),
                    "--secure-port=0".to_owned(),
                    "--concurrent-gc-syncs=5".to_owned(),
                    "--v=1".to_owned(),
                ],
            ),
            (
                "kube-scheduler",
                vec![
                    format!("--kubeconfig={}", admin_kubeconfig.display()),
                    "--leader-elect=false".to_owned(),
                    "--secure-port=0".to_owned(),
                    "--v=1".to_owned(),
                ],
            ),
        ] {
            components.push(spawn(name, &bin.join(name), &args, None));
        }

        // The node: a CRI runtime, kubelet.
        let cri = dir.join("cri.sock");
        components.push(spawn(
            "fakecri",
            &bin.join("fakecri"),
            &[format!("--socket={}", cri.display())],
            None,
        ));
        let kubelet_root = dir.join("kubelet");
        std::fs::create_dir_all(kubelet_root.join("plugins_registry")).unwrap();
        std::fs::create_dir_all(kubelet_root.join("plugins/csi-secrets-store")).unwrap();
        let kubelet_kubeconfig = dir.join("kubelet.kubeconfig");
        std::fs::write(
            &kubelet_kubeconfig,
            kubeconfig(
                &api_url,
                &ca_pem,
                json!({"client-certificate": pem("kubelet-client.pem"), "client-key": pem("kubelet-client-key.pem")}),
            ),
        )
        .unwrap();
        let kubelet_config = dir.join("kubelet-config.json");
        std::fs::write(
            &kubelet_config,
            kubelet_configuration(&dir, &cri, &pem("ca.pem")).to_string(),
        )
        .unwrap();
        components.push(spawn(
            "kubelet",
            &bin.join("kubelet"),
            &[
                format!("--config={}", kubelet_config.display()),
                format!("--kubeconfig={}", kubelet_kubeconfig.display()),
                format!("--root-dir={}", kubelet_root.display()),
                format!("--cert-dir={}", dir.join("kubelet-pki").display()),
                format!("--hostname-override={NODE}"),
                "--v=2".to_owned(),
            ],
            Some(&kubelet_root),
        ));
        runtime.block_on(wait_node_ready(&client, &dir));

        // The driver, as the DaemonSet runs it: the ServiceAccount's token, the plugin socket.
        let driver_kubeconfig = dir.join("driver.kubeconfig");
        let token = runtime.block_on(service_account_token(
            &client,
            "kube-system",
            "secrets-store-csi-driver",
        ));
        std::fs::write(
            &driver_kubeconfig,
            kubeconfig(&api_url, &ca_pem, json!({"token": token})),
        )
        .unwrap();
        let driver_socket = kubelet_root.join("plugins/csi-secrets-store/csi.sock");
        let provider_dir = dir.join("providers");
        let local_root = dir.join("local");
        std::fs::create_dir_all(&provider_dir).unwrap();
        std::fs::create_dir_all(&local_root).unwrap();
        let metrics_port = free_port();
        let aws_port = free_port();
        let driver_args = vec![
            "node".to_owned(),
            format!("--endpoint=unix://{}", driver_socket.display()),
            format!("--nodeid={NODE}"),
            format!("--kubelet-root-dir={}", kubelet_root.display()),
            format!("--kubeconfig={}", driver_kubeconfig.display()),
            format!("--provider-volume={}", provider_dir.display()),
            "--additional-provider-volume-paths=".to_owned(),
            format!("--metrics-addr=127.0.0.1:{metrics_port}"),
            format!("--local-provider-root={}", local_root.display()),
            "--enable-secret-rotation=true".to_owned(),
            "--rotation-poll-interval=2s".to_owned(),
            "--secret-sync-resync-interval=2s".to_owned(),
            format!("--aws-endpoint-url=http://127.0.0.1:{aws_port}"),
            "--aws-region=us-east-1".to_owned(),
            "-v=5".to_owned(),
        ];
        let driver = spawn("driver", Path::new(super::DRIVER), &driver_args, None);
        wait_socket(&driver_socket, "the driver", &dir);
        components.push(spawn(
            "registrar",
            &bin.join("registrar"),
            &[
                format!("--kubelet-registration-path={}", driver_socket.display()),
                format!(
                    "--plugin-registration-dir={}",
                    kubelet_root.join("plugins_registry").display()
                ),
            ],
            None,
        ));
        runtime.block_on(wait_driver_registered(&client, &dir));
        let cluster = Cluster {
            dir: dir.clone(),
            bin,
            api_url,
            ca_pem,
            admin_kubeconfig,
            kubelet_root,
            driver_socket,
            provider_dir,
            local_root,
            metrics_port,
            aws_port,
            driver_kubeconfig,
            driver_args: Mutex::new(driver_args),
            driver: Mutex::new(Some(driver)),
            _components: components,
            disruption: tokio::sync::RwLock::new(()),
            started_in: started.elapsed(),
        };
        eprintln!(
            "test cluster up in {:.1} s ({})",
            cluster.started_in.as_secs_f64(),
            dir.display()
        );
        cluster
    }

    /// A client with admin rights.
    pub async fn client(&self) -> kube::Client {
        client_from(&self.admin_kubeconfig).await
    }

    /// A client authenticated as the driver (its ServiceAccount of `deploy/`).
    pub async fn driver_client(&self) -> kube::Client {
        client_from(&self.driver_kubeconfig).await
    }

    /// Shares the cluster with other tests that leave it as they found it.
    pub async fn shared(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.disruption.read().await
    }

    /// Has the cluster alone (restarts, RBAC changes).
    pub async fn exclusive(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.disruption.write().await
    }

    /// A fresh namespace named after `prefix`.
    pub async fn namespace(&self, prefix: &str) -> String {
        let client = self.client().await;
        let name = format!(
            "{prefix}-{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
                % 0xffff_ffff
        );
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
            )
            .await
            .unwrap();
        // Pods need the namespace's default ServiceAccount, which a controller creates.
        let accounts: Api<ServiceAccount> = Api::namespaced(client, &name);
        let started = Instant::now();
        while accounts.get_opt("default").await.unwrap().is_none() {
            assert!(
                started.elapsed() < STARTUP,
                "no default ServiceAccount in {name}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        name
    }

    /// Everything the driver logged so far.
    pub fn driver_logs(&self) -> String {
        self.log("driver")
    }

    /// A component's log.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Kills the driver with SIGKILL (no cleanup, as an OOM kill or node crash) and starts
    /// it again with the same arguments; mounts stay.
    pub fn crash_and_restart_driver(&self) {
        let mut driver = self.driver.lock().unwrap();
        if let Some(mut old) = driver.take() {
            // The tether's child is the driver: kill the tether's whole process group.
            let pid = nix::unistd::Pid::from_raw(i32::try_from(old.child.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = old.child.wait();
            let _ = std::fs::remove_file(&self.driver_socket);
            // The tether's SIGKILL reaches the driver through its parent-death signal.
            let started = Instant::now();
            while driver_running() && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let args = self.driver_args.lock().unwrap().clone();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("driver.log"))
            .unwrap();
        let mut child = Command::new(self.bin.join("tether"))
            .arg("--grace=5s")
            .arg("--")
            .arg(super::DRIVER)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        *driver = Some(Tethered {
            child,
            _stdin: stdin,
        });
        wait_socket(&self.driver_socket, "the restarted driver", &self.dir);
    }

    /// The path kubelet mounts `volume` of the pod `uid` at (what the container sees).
    pub fn volume_path(&self, uid: &str, volume: &str) -> PathBuf {
        self.kubelet_root.join(format!(
            "pods/{uid}/volumes/kubernetes.io~csi/{volume}/mount"
        ))
    }

    /// Where the components are.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Stops the driver for good (tests that must see a driver missing).
    pub fn stop_driver(&self) {
        if let Some(driver) = self.driver.lock().unwrap().take() {
            driver.stop();
        }
    }
}

fn driver_running() -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            std::fs::read_link(entry.path().join("exe"))
                .is_ok_and(|exe| exe == Path::new(super::DRIVER))
        })
}

async fn client_from(path: &Path) -> kube::Client {
    let file = kube::config::Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// The kubelet configuration for a node without real containers: no cgroup management (this
/// machine has cgroup v1 only: `failCgroupV1: false`, no QoS cgroups, no node allocatable
/// enforcement), swap tolerated, everything kubelet writes under `dir`, and a short sync
/// period so that `requiresRepublish` volumes are republished every few seconds.
fn kubelet_configuration(dir: &Path, cri: &Path, client_ca: &str) -> Value {
    let port = free_port();
    json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": false},
            "x509": {"clientCAFile": client_ca},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": format!("unix://{}", cri.display()),
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": false,
        "enforceNodeAllocatable": [],
        "failCgroupV1": false,
        "failSwapOn": false,
        "protectKernelDefaults": false,
        "makeIPTablesUtilChains": false,
        "syncFrequency": "5s",
        "fileCheckFrequency": "5s",
        "nodeStatusUpdateFrequency": "5s",
        "serializeImagePulls": false,
        "registerNode": true,
        "podLogsDir": dir.join("pod-logs").display().to_string(),
        "volumePluginDir": dir.join("volume-plugins").display().to_string(),
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "localStorageCapacityIsolation": false,
        "resolvConf": "",
    })
}

fn deploy_files() -> Vec<PathBuf> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    // The DaemonSet and its Service need real containers; the harness runs the driver itself.
    [
        "secretproviderclasses.yaml",
        "secretproviderclasspodstatuses.yaml",
        "csidriver.yaml",
        "serviceaccount.yaml",
        "rbac-secretproviderclass.yaml",
        "rbac-secretprovidersyncing.yaml",
        "roles-aggregated.yaml",
    ]
    .iter()
    .map(|name| deploy.join(name))
    .collect()
}

/// The documents of a YAML file.
pub fn yaml_documents(text: &str) -> Vec<Value> {
    text.split("\n---")
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect()
}

/// Server-side applies every document of `path`.
pub async fn apply_file(client: &kube::Client, path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    for document in yaml_documents(&text) {
        apply(client, document).await;
    }
}

async fn dynamic_api(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("no API for {api_version} {kind}: {e}"));
    match (capabilities.scope, namespace) {
        (kube::discovery::Scope::Namespaced, Some(ns)) => {
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        (kube::discovery::Scope::Namespaced, None) => {
            Api::default_namespaced_with(client.clone(), &resource)
        }
        (kube::discovery::Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
    }
}

/// Server-side applies one object (any kind); returns it as stored.
pub async fn apply(client: &kube::Client, object: Value) -> Value {
    let api_version = object["apiVersion"].as_str().unwrap().to_owned();
    let kind = object["kind"].as_str().unwrap().to_owned();
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    let namespace = object["metadata"]["namespace"].as_str().map(str::to_owned);
    let api = dynamic_api(client, &api_version, &kind, namespace.as_deref()).await;
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
    serde_json::to_value(applied).unwrap()
}

/// Applies one object and returns the API server's error instead of panicking.
pub async fn try_apply(client: &kube::Client, object: &Value) -> Result<Value, kube::Error> {
    let api_version = object["apiVersion"].as_str().unwrap();
    let kind = object["kind"].as_str().unwrap();
    let name = object["metadata"]["name"].as_str().unwrap();
    let api = dynamic_api(
        client,
        api_version,
        kind,
        object["metadata"]["namespace"].as_str(),
    )
    .await;
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map(|o| serde_json::to_value(o).unwrap())
}

/// Creates one object at the collection `path` (e.g. `/api/v1/namespaces/x/pods`) with strict
/// field validation, as `kubectl apply` creates a new object.
pub async fn create_strict(
    client: &kube::Client,
    path: &str,
    object: &Value,
) -> Result<Value, kube::Error> {
    let request = http::Request::post(format!("{path}?fieldValidation=Strict"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(object).unwrap())
        .unwrap();
    client.request::<Value>(request).await
}

/// Merge-patches one object.
pub async fn patch(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    patch: Value,
) {
    let api = dynamic_api(client, api_version, kind, namespace).await;
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("patching {kind} {name}: {e}"));
}

/// Gets one object, if it exists.
pub async fn get(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
) -> Option<Value> {
    let api = dynamic_api(client, api_version, kind, namespace).await;
    api.get_opt(name)
        .await
        .unwrap()
        .map(|o| serde_json::to_value(o).unwrap())
}

/// Lists objects of a kind in a namespace.
pub async fn list(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    namespace: &str,
) -> Vec<Value> {
    let api = dynamic_api(client, api_version, kind, Some(namespace)).await;
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect()
}

/// Deletes one object (background propagation, as kubectl).
pub async fn delete(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
) {
    let api = dynamic_api(client, api_version, kind, namespace).await;
    let params = kube::api::DeleteParams::background();
    match api.delete(name, &params).await {
        Ok(_) | Err(kube::Error::Api(_)) => {}
        Err(e) => panic!("deleting {kind} {name}: {e}"),
    }
}

/// A token for a ServiceAccount, valid for a day.
pub async fn service_account_token(client: &kube::Client, namespace: &str, name: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 86400},
    });
    let created: Value = accounts
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .unwrap();
    created["status"]["token"].as_str().unwrap().to_owned()
}

fn failure(what: &str, dir: &Path) -> ! {
    let mut logs = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            logs.push_str(&format!(
                "\n==> {} <==\n{}\n",
                path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
    }
    panic!("{what}{logs}");
}

fn wait_tcp(port: u16, what: &str, dir: &Path) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > STARTUP {
            failure(&format!("{what} did not listen on {port}"), dir);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_socket(path: &Path, what: &str, dir: &Path) {
    let started = Instant::now();
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        if started.elapsed() > STARTUP {
            failure(&format!("{what} did not serve {}", path.display()), dir);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn wait_api(kubeconfig: &Path, dir: &Path) -> kube::Client {
    let started = Instant::now();
    loop {
        let client = client_from(kubeconfig).await;
        let ready = client
            .request_text(http::Request::get("/readyz").body(Vec::new()).unwrap())
            .await;
        if matches!(ready.as_deref(), Ok("ok")) {
            return client;
        }
        if started.elapsed() > STARTUP {
            failure(&format!("kube-apiserver not ready: {ready:?}"), dir);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_crds(client: &kube::Client) {
    let started = Instant::now();
    for name in [
        "secretproviderclasses.secrets-store.csi.x-k8s.io",
        "secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io",
    ] {
        loop {
            let crd = get(
                client,
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                None,
                name,
            )
            .await
            .unwrap();
            let established = crd["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Established" && c["status"] == "True");
            if established {
                break;
            }
            assert!(started.elapsed() < STARTUP, "CRD {name} not established");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn wait_node_ready(client: &kube::Client, dir: &Path) {
    let nodes: Api<Node> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        if let Ok(Some(node)) = nodes.get_opt(NODE).await {
            let ready = node
                .status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready {
                return;
            }
        }
        if started.elapsed() > STARTUP {
            failure("kubelet's node did not become Ready", dir);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_driver_registered(client: &kube::Client, dir: &Path) {
    let nodes: Api<CSINode> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        if let Ok(Some(node)) = nodes.get_opt(NODE).await
            && node.spec.drivers.iter().any(|d| d.name == DRIVER_NAME)
        {
            return;
        }
        if started.elapsed() > STARTUP {
            failure("kubelet did not register the driver (CSINode)", dir);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
