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

use super::TestApi as _;

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
    _plane: ControlPlane,
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

/// etcd, kube-apiserver and kube-controller-manager (plus kube-scheduler on request), in a
/// directory of their own, with `deploy/` applied.
pub struct ControlPlane {
    /// The directory (logs, certificates, data).
    pub dir: PathBuf,
    bin: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub api_url: String,
    /// The cluster CA, PEM.
    pub ca_pem: String,
    /// An admin (system:masters) kubeconfig.
    pub admin_kubeconfig: PathBuf,
    components: Vec<Tethered>,
}

/// The controllers of a control plane without a kubelet: what the driver's objects rely on.
const API_CONTROLLERS: &str = "garbage-collector-controller,namespace-controller,\
    serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller";

impl ControlPlane {
    /// Starts the control plane in a new temporary directory; a janitor deletes it when the
    /// test process goes. `scheduler` adds kube-scheduler; `controllers` are
    /// kube-controller-manager's besides [`API_CONTROLLERS`].
    fn start(
        bin: PathBuf,
        runtime: &tokio::runtime::Runtime,
        controllers: &str,
        scheduler: bool,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sscsi-e2e-")
            .tempdir()
            .unwrap()
            .keep();
        let mut plane = Self {
            dir: dir.clone(),
            bin: bin.clone(),
            api_url: String::new(),
            ca_pem: String::new(),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            components: Vec::new(),
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
        plane.components.push(Tethered {
            _stdin: janitor.stdin.take().unwrap(),
            child: janitor,
        });

        let status = Command::new(bin.join("pki"))
            .args([
                format!("--dir={}", plane.pki().display()),
                format!("--node={NODE}"),
            ])
            .status()
            .unwrap();
        assert!(status.success(), "pki failed");
        plane.ca_pem = std::fs::read_to_string(plane.pki().join("ca.pem")).unwrap();
        let pem = |name: &str| dir.join("pki").join(name).display().to_string();

        let (etcd_port, peer_port) = (super::free_port(), super::free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        plane.spawn(
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
        );
        wait_tcp(etcd_port, "etcd", &dir);

        let api_port = super::free_port();
        plane.api_url = format!("https://127.0.0.1:{api_port}");
        plane.spawn(
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
                format!("--service-account-issuer={ISSUER}"),
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
        );
        std::fs::write(
            &plane.admin_kubeconfig,
            kubeconfig(
                &plane.api_url,
                &plane.ca_pem,
                json!({"client-certificate": pem("admin.pem"), "client-key": pem("admin-key.pem")}),
            ),
        )
        .unwrap();
        let client = runtime.block_on(wait_api(&plane.admin_kubeconfig, &dir));

        // What users apply: CRDs, CSIDriver, RBAC, the driver's ServiceAccount.
        runtime.block_on(async {
            for file in deploy_files() {
                apply_file(&client, &file).await;
            }
            wait_crds(&client).await;
        });

        let controllers = if controllers.is_empty() {
            API_CONTROLLERS.to_owned()
        } else {
            format!("{API_CONTROLLERS},{controllers}")
        };
        let admin = plane.admin_kubeconfig.display().to_string();
        plane.spawn(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={admin}"),
                format!("--controllers={controllers}"),
                format!("--service-account-private-key-file={}", pem("sa.key")),
                format!("--root-ca-file={}", pem("ca.pem")),
                "--leader-elect=false".to_owned(),
                "--secure-port=0".to_owned(),
                "--concurrent-gc-syncs=5".to_owned(),
                "--v=1".to_owned(),
            ],
            None,
        );
        if scheduler {
            plane.spawn(
                "kube-scheduler",
                &bin.join("kube-scheduler"),
                &[
                    format!("--kubeconfig={admin}"),
                    "--leader-elect=false".to_owned(),
                    "--secure-port=0".to_owned(),
                    "--v=1".to_owned(),
                ],
                None,
            );
        }
        plane
    }

    fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// Starts `program` under a tether, logging to `<dir>/<name>.log`.
    fn spawn(&mut self, name: &str, program: &Path, args: &[String], unmount: Option<&Path>) {
        let tethered = tether(&self.bin, &self.dir, name, program, args, unmount, false);
        self.components.push(tethered);
    }

    /// A kubeconfig for the driver: the token of the ServiceAccount of `deploy/`, so that it
    /// works with exactly the RBAC users install.
    async fn driver_kubeconfig(&self, client: &kube::Client) -> PathBuf {
        let token = service_account_token(client, "kube-system", "secrets-store-csi-driver").await;
        let path = self.dir.join("driver.kubeconfig");
        std::fs::write(
            &path,
            kubeconfig(&self.api_url, &self.ca_pem, json!({"token": token})),
        )
        .unwrap();
        path
    }
}

/// Starts `program` under a tether that ends it when the test process goes.
fn tether(
    bin: &Path,
    dir: &Path,
    name: &str,
    program: &Path,
    args: &[String],
    unmount: Option<&Path>,
    append: bool,
) -> Tethered {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
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
}

/// The service-account issuer of every test cluster.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

impl Cluster {
    fn start(bin: PathBuf) -> Cluster {
        let started = Instant::now();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut plane = ControlPlane::start(
            bin.clone(),
            &runtime,
            "replicaset-controller,deployment-controller,pod-garbage-collector-controller,\
             node-lifecycle-controller",
            true,
        );
        let dir = plane.dir.clone();
        let api_url = plane.api_url.clone();
        let ca_pem = plane.ca_pem.clone();
        let admin_kubeconfig = plane.admin_kubeconfig.clone();
        let pem = |name: &str| dir.join("pki").join(name).display().to_string();
        let client = runtime.block_on(client_from(&admin_kubeconfig));
        // Rotation through kubelet's own republish.
        runtime.block_on(patch(
            &client,
            "storage.k8s.io/v1",
            "CSIDriver",
            None,
            DRIVER_NAME,
            json!({"spec": {"requiresRepublish": true}}),
        ));

        // The node: a CRI runtime, kubelet.
        let cri = dir.join("cri.sock");
        plane.spawn(
            "fakecri",
            &bin.join("fakecri"),
            &[format!("--socket={}", cri.display())],
            None,
        );
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
        plane.spawn(
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
        );
        runtime.block_on(wait_node_ready(&client, &dir));

        // The driver, as the DaemonSet runs it: the ServiceAccount's token, the plugin socket.
        let driver_kubeconfig = runtime.block_on(plane.driver_kubeconfig(&client));
        let driver_socket = kubelet_root.join("plugins/csi-secrets-store/csi.sock");
        let provider_dir = dir.join("providers");
        let local_root = dir.join("local");
        std::fs::create_dir_all(&provider_dir).unwrap();
        std::fs::create_dir_all(&local_root).unwrap();
        let metrics_port = super::free_port();
        let aws_port = super::free_port();
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
        let driver = tether(
            &bin,
            &dir,
            "driver",
            Path::new(super::DRIVER),
            &driver_args,
            None,
            false,
        );
        wait_socket(&driver_socket, "the driver", &dir);
        plane.spawn(
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
        );
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
            _plane: plane,
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
        *driver = Some(tether(
            &self.bin,
            &self.dir,
            "driver",
            Path::new(super::DRIVER),
            &args,
            None,
            true,
        ));
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
    let port = super::free_port();
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
        // The sync controller's CRD, identity, RBAC and admission policies (the harness runs
        // the controller itself, as the Deployment would).
        "sync-controller/secretsyncs.yaml",
        "sync-controller/sync-controller-rbac.yaml",
        "sync-controller/sync-controller-policies.yaml",
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
        "secretsyncs.secret-sync.x-k8s.io",
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

/// A real API server of one test's own (etcd, kube-apiserver, kube-controller-manager with
/// the garbage collector, namespace and service-account controllers), with `deploy/` applied:
/// what `FakeApiServer` used to stand in for. The driver authenticates as the ServiceAccount
/// of `deploy/`, so it has exactly the RBAC users install.
pub struct ApiServer {
    plane: ControlPlane,
    client: kube::Client,
    driver_kubeconfig: String,
    url: String,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer").field("url", &self.url).finish()
    }
}

impl ApiServer {
    /// Starts one, or `None` (skip) where the components are not built, outside CI.
    pub async fn start() -> Option<Self> {
        let bin = bin_dir();
        if !bin.join("kube-apiserver").exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but the test cluster is not built: run scripts/cluster-build"
            );
            eprintln!("skipping: the test cluster is not built (scripts/cluster-build)");
            return None;
        }
        let plane = tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            ControlPlane::start(bin, &runtime, "", false)
        })
        .await
        .unwrap();
        let client = client_from(&plane.admin_kubeconfig).await;
        let driver_kubeconfig =
            std::fs::read_to_string(plane.driver_kubeconfig(&client).await).unwrap();
        let url = plane.api_url.clone();
        Some(Self {
            plane,
            client,
            driver_kubeconfig,
            url,
        })
    }

    /// Applies the RBAC objects the chart renders with `values` (e.g. the rollout role of
    /// `syncSecret.rolloutOnChange`), as an operator who set that value would have them.
    pub fn apply_chart_rbac(&self, values: &Value) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = root.join(".tools/venv/bin/python");
        let output = Command::new(&python)
            .arg(root.join("scripts/chart.py"))
            .arg("render")
            .arg(values.to_string())
            .output()
            .unwrap_or_else(|e| {
                panic!("{}: {e} (run scripts/test to install it)", python.display())
            });
        assert!(
            output.status.success(),
            "chart.py render: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for document in yaml_documents(&String::from_utf8_lossy(&output.stdout)) {
            let resource = match document["kind"].as_str() {
                Some("ClusterRole") => "clusterroles",
                Some("ClusterRoleBinding") => "clusterrolebindings",
                _ => continue,
            };
            let name = document["metadata"]["name"].as_str().unwrap().to_owned();
            if self
                .get("rbac.authorization.k8s.io", resource, "", &name)
                .is_none()
            {
                self.insert("rbac.authorization.k8s.io", resource, document);
            }
        }
    }

    /// An admin client.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A kubeconfig authenticated as the service account `namespace/name`, e.g. the sync
    /// controller's of `deploy/`.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> String {
        let token = block(service_account_token(&self.client, namespace, name));
        kubeconfig(&self.url, &self.plane.ca_pem, json!({"token": token}))
    }

    /// `https://127.0.0.1:<port>`.
    pub fn api_url(&self) -> &str {
        &self.url
    }

    /// The control plane's directory (component logs).
    pub fn dir(&self) -> &Path {
        &self.plane.dir
    }

    /// The cluster CA, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.plane.ca_pem
    }

    /// A token that may create TokenReviews (system:auth-delegator), as Vault's Kubernetes
    /// auth method is configured with.
    pub fn reviewer_token(&self) -> String {
        if self
            .get("", "serviceaccounts", "kube-system", "token-reviewer")
            .is_some()
        {
            return block(service_account_token(
                &self.client,
                "kube-system",
                "token-reviewer",
            ));
        }
        self.insert(
            "",
            "serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "token-reviewer", "namespace": "kube-system"}}),
        );
        self.insert(
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "token-reviewer"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
                "subjects": [{"kind": "ServiceAccount", "name": "token-reviewer", "namespace": "kube-system"}],
            }),
        );
        block(service_account_token(
            &self.client,
            "kube-system",
            "token-reviewer",
        ))
    }

    fn ensure_namespace(&self, namespace: &str) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let object = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
        block(async {
            match namespaces.create(&PostParams::default(), &object).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => panic!("creating namespace {namespace}: {e}"),
            }
        });
    }

    /// Pods need their ServiceAccount (the `default` one is a controller's to create).
    fn ensure_service_account(&self, namespace: &str, name: &str) {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        block(async {
            let started = Instant::now();
            while accounts.get_opt(name).await.unwrap().is_none() {
                if name != "default" {
                    let object =
                        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
                    let _ = accounts.create(&PostParams::default(), &object).await;
                    continue;
                }
                assert!(
                    started.elapsed() < STARTUP,
                    "no default ServiceAccount in {namespace}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
}

/// Runs `future` to completion from synchronous test code inside a multi-threaded runtime.
fn block<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

/// `/api/v1` or `/apis/<group>/<version>`: every resource the tests touch is at `v1`, but
/// SecretSync's `v1alpha1`.
fn group_path(group: &str) -> String {
    match group {
        "" => "/api/v1".to_owned(),
        "secret-sync.x-k8s.io" => format!("/apis/{group}/v1alpha1"),
        _ => format!("/apis/{group}/v1"),
    }
}

fn resource_path(group: &str, resource: &str, namespace: &str, name: Option<&str>) -> String {
    let mut path = group_path(group);
    if !namespace.is_empty() {
        path.push_str(&format!("/namespaces/{namespace}"));
    }
    path.push_str(&format!("/{resource}"));
    if let Some(name) = name {
        path.push_str(&format!("/{name}"));
    }
    path
}

impl super::TestApi for ApiServer {
    fn kubeconfig(&self) -> String {
        self.driver_kubeconfig.clone()
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    fn insert(&self, group: &str, resource: &str, object: Value) -> Value {
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if !namespace.is_empty() {
            self.ensure_namespace(&namespace);
        }
        if resource == "pods" {
            let account = object["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default");
            self.ensure_service_account(&namespace, account);
        }
        let request = http::Request::post(resource_path(group, resource, &namespace, None))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&object).unwrap())
            .unwrap();
        match block(self.client.request::<Value>(request)) {
            Ok(created) => created,
            // A namespace's `default` ServiceAccount is the controller's to create: a test that
            // stores one (with annotations) updates it instead.
            Err(kube::Error::Api(status))
                if status.code == 409 && resource == "serviceaccounts" =>
            {
                let name = object["metadata"]["name"].as_str().unwrap();
                let metadata = json!({"metadata": {
                    "annotations": object["metadata"]["annotations"],
                    "labels": object["metadata"]["labels"],
                }});
                self.patch(group, resource, &namespace, name, &metadata);
                self.get(group, resource, &namespace, name).unwrap()
            }
            Err(e) => panic!("creating {resource} {}: {e}", object["metadata"]["name"]),
        }
    }

    fn get(&self, group: &str, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let request = http::Request::get(resource_path(group, resource, namespace, Some(name)))
            .body(Vec::new())
            .unwrap();
        match block(self.client.request::<Value>(request)) {
            Ok(object) => Some(object),
            Err(kube::Error::Api(status)) if status.code == 404 => None,
            Err(e) => panic!("getting {resource} {namespace}/{name}: {e}"),
        }
    }

    fn list(&self, group: &str, resource: &str) -> Vec<Value> {
        let request = http::Request::get(format!("{}/{resource}", group_path(group)))
            .body(Vec::new())
            .unwrap();
        let list = block(self.client.request::<Value>(request))
            .unwrap_or_else(|e| panic!("listing {resource}: {e}"));
        list["items"].as_array().cloned().unwrap_or_default()
    }

    fn delete(&self, group: &str, resource: &str, namespace: &str, name: &str) {
        let request = http::Request::delete(resource_path(group, resource, namespace, Some(name)))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&json!({"propagationPolicy": "Background"})).unwrap())
            .unwrap();
        block(self.client.request::<Value>(request))
            .unwrap_or_else(|e| panic!("deleting {resource} {namespace}/{name}: {e}"));
    }

    fn patch(&self, group: &str, resource: &str, namespace: &str, name: &str, patch: &Value) {
        let request = http::Request::patch(resource_path(group, resource, namespace, Some(name)))
            .header(http::header::CONTENT_TYPE, "application/merge-patch+json")
            .body(serde_json::to_vec(patch).unwrap())
            .unwrap();
        block(self.client.request::<Value>(request))
            .unwrap_or_else(|e| panic!("patching {resource} {namespace}/{name}: {e}"));
    }

    fn issue_token(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        pod: (&str, &str),
    ) -> String {
        // Bound to the pod, as kubelet's are, when the pod exists; else unbound.
        let bound = self
            .get("", "pods", namespace, pod.0)
            .filter(|p| p["metadata"]["uid"] == pod.1)
            .map(|_| json!({"kind": "Pod", "apiVersion": "v1", "name": pod.0, "uid": pod.1}));
        let mut spec = json!({"audiences": [audience], "expirationSeconds": 3600});
        if let Some(bound) = bound {
            spec["boundObjectRef"] = bound;
        }
        let request = http::Request::post(resource_path(
            "",
            "serviceaccounts",
            namespace,
            Some(&format!("{service_account}/token")),
        ))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(
            serde_json::to_vec(&json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": spec,
            }))
            .unwrap(),
        )
        .unwrap();
        let created = block(self.client.request::<Value>(request)).unwrap_or_else(|e| {
            panic!("requesting a token for {namespace}/{service_account}: {e}")
        });
        created["status"]["token"].as_str().unwrap().to_owned()
    }

    fn token_public_key_pem(&self) -> String {
        std::fs::read_to_string(self.plane.pki().join("sa.pub")).unwrap()
    }
}
