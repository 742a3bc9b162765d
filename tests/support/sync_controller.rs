//! The real driver binary running `sync-controller` against a real API server, authenticated
//! as the controller's ServiceAccount of `deploy/` (so with exactly its RBAC and admission
//! policies), as the chart's Deployment runs it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::openbao::{KubernetesAuth, OpenBao};
use super::{ApiServer, TestApi as _};

/// The controller's ServiceAccount in `deploy/`.
pub const ACCOUNT: &str = "secrets-store-sync-controller";

/// One controller replica; killed on drop.
pub struct SyncController {
    child: Option<Child>,
    /// Its log file.
    pub log: PathBuf,
    /// Its lease identity.
    pub name: String,
    args: Vec<String>,
}

/// Where one test's controllers keep their kubeconfig, key and logs.
pub struct Site {
    /// The directory.
    pub dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Site {
    /// A directory with a kubeconfig of the controller's ServiceAccount and a shared key.
    pub fn new(api: &ApiServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("controller.kubeconfig");
        std::fs::write(
            &kubeconfig,
            api.service_account_kubeconfig("kube-system", ACCOUNT),
        )
        .unwrap();
        // The key every replica shares, as the chart's Secret mounts it.
        std::fs::write(dir.path().join("version.key"), [7u8; 32]).unwrap();
        Self { dir, kubeconfig }
    }

    /// Starts a replica named `name` with the harness's flags and `extra` ones.
    pub fn start(&self, name: &str, extra: &[String]) -> SyncController {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let mut args = vec![
            "sync-controller".to_owned(),
            format!("--kubeconfig={}", self.kubeconfig.display()),
            "--token-request-audience=vault,sts.amazonaws.com".to_owned(),
            "--leader-elect=true".to_owned(),
            "--leader-election-namespace=kube-system".to_owned(),
            "--leader-election-lease-duration=4s".to_owned(),
            "--leader-election-renew-deadline=3s".to_owned(),
            "--leader-election-retry-period=500ms".to_owned(),
            format!("--pod-name={name}"),
            "--pod-uid=00000000-0000-0000-0000-000000000001".to_owned(),
            format!("--metrics-bind-address=127.0.0.1:{}", free()),
            "--health-probe-bind-address=".to_owned(),
            format!(
                "--provider-volume={}",
                self.dir.path().join("providers").display()
            ),
            "--additional-provider-volume-paths=".to_owned(),
            format!(
                "--version-key-file={}",
                self.dir.path().join("version.key").display()
            ),
            "-v=5".to_owned(),
        ];
        args.extend(extra.iter().cloned());
        let log = self.dir.path().join(format!("{name}.log"));
        let mut controller = SyncController {
            child: None,
            log,
            name: name.to_owned(),
            args,
        };
        controller.spawn();
        controller
    }
}

impl SyncController {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(super::DRIVER)
            .args(&self.args)
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Everything it logged so far (across restarts).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as an OOM kill or a lost node: no lease release.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as a rollout: it releases the lease and exits; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its resident set size, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Starts it again with the same flags.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for SyncController {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let logs = self.logs();
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            eprintln!("--- last lines of {}:", self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A SecretSync as upstream's README writes it.
pub fn secret_sync(
    namespace: &str,
    name: &str,
    account: &str,
    class: &str,
    pairs: &[(&str, &str)],
) -> Value {
    let data: Vec<Value> = pairs
        .iter()
        .map(|(source, target)| json!({"sourcePath": source, "targetKey": target}))
        .collect();
    json!({
        "apiVersion": "secret-sync.x-k8s.io/v1alpha1",
        "kind": "SecretSync",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "serviceAccountName": account,
            "secretProviderClassName": class,
            "secretObject": {"type": "Opaque", "data": data},
        },
    })
}

/// A SecretProviderClass.
pub fn provider_class(namespace: &str, name: &str, provider: &str, parameters: Value) -> Value {
    json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"provider": provider, "parameters": parameters},
    })
}

/// OpenBao with Kubernetes auth reviewing tokens at `api`, a KV secret `secret/app`, and a
/// role `app` for `namespace/app-sa` only.
pub fn vault_for(api: &ApiServer, namespace: &str, password: &str) -> Option<OpenBao> {
    let bao = OpenBao::start()?;
    bao.app_secret(password);
    bao.enable_kubernetes_auth_in(
        None,
        &KubernetesAuth {
            url: api.api_url().to_owned(),
            ca_pem: api.ca_pem().to_owned(),
            reviewer_jwt: api.reviewer_token(),
        },
    );
    bao.kubernetes_role("app", namespace, "app-sa", "app");
    for account in ["app-sa", "other-sa"] {
        api.insert(
            "",
            "serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": account, "namespace": namespace}}),
        );
    }
    api.insert(
        "secrets-store.csi.x-k8s.io",
        "secretproviderclasses",
        provider_class(
            namespace,
            "vault-app",
            "vault",
            json!({
                "vaultAddress": bao.addr,
                "roleName": "app",
                "objects": "- objectName: password\n  secretPath: secret/data/app\n  secretKey: password\n",
            }),
        ),
    );
    Some(bao)
}
