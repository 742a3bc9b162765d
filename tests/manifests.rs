//! The install artefacts: CRDs generated from the Rust types and committed, the Helm chart
//! rendered by Helm's own code (PyPI helm-python-sdk, via `scripts/chart.py`), and `deploy/`
//! kept identical to the chart's render.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser as _;
use secrets_store_csi_driver::cli::{Cli, Command as CliCommand};
use serde_json::{Value, json};

const CHART: &str = "charts/secrets-store-csi-driver";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap()
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

#[test]
fn committed_crds_are_the_ones_generated_from_the_types() {
    for (name, yaml) in secrets_store_csi_driver::crd::crd_files() {
        let deploy = if name == "secretsyncs.yaml" {
            "deploy/sync-controller"
        } else {
            "deploy"
        };
        for dir in [format!("{CHART}/crds"), deploy.to_owned()] {
            let path = root().join(&dir).join(&name);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == yaml,
                "{dir}/{name} is out of date: run `cargo run -- crdgen --out-dir {CHART}/crds` \
                 and `.tools/venv/bin/python scripts/chart.py deploy`"
            );
        }
    }
}

/// Checks `value` against a structural OpenAPI schema as the API server would, except that an
/// unknown field is an error here (the server would silently drop it).
fn validate(value: &Value, schema: &Value, at: &str) -> Result<(), String> {
    if value.is_null() && schema["nullable"] == true {
        return Ok(());
    }
    match schema["type"].as_str() {
        Some("object") => {
            let object = value.as_object().ok_or(format!("{at}: not an object"))?;
            for (key, field) in object {
                let sub = if let Some(property) = schema["properties"].get(key) {
                    property
                } else if schema["additionalProperties"].is_object() {
                    &schema["additionalProperties"]
                } else if schema["x-kubernetes-preserve-unknown-fields"] == true {
                    continue;
                } else {
                    return Err(format!("{at}.{key}: not in the schema"));
                };
                validate(field, sub, &format!("{at}.{key}"))?;
            }
            Ok(())
        }
        Some("array") => {
            let items = value.as_array().ok_or(format!("{at}: not an array"))?;
            for (i, item) in items.iter().enumerate() {
                validate(item, &schema["items"], &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        Some("string") if value.is_string() => Ok(()),
        Some("boolean") if value.is_boolean() => Ok(()),
        Some("integer") if value.is_i64() || value.is_u64() => Ok(()),
        Some(other) => Err(format!("{at}: {value} is not a {other}")),
        None => Ok(()),
    }
}

#[test]
fn the_crd_schemas_accept_upstream_and_example_classes() {
    let crds = secrets_store_csi_driver::crd::crds();
    let class_crd = serde_json::to_value(&crds[0]).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "quickstart-secrets.yaml")
        .collect();
    files.push(root().join("tests/fixtures/upstream-spcs.yaml"));
    let mut checked = 0;
    for file in files {
        for class in yaml_documents(&std::fs::read_to_string(&file).unwrap()) {
            let version = class["apiVersion"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap();
            let schema =
                class_crd["spec"]["versions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|v| v["name"] == version)
                    .unwrap_or_else(|| panic!("{}: version {version} not served", file.display()))
                    ["schema"]["openAPIV3Schema"]
                    .clone();
            let object = json!({"spec": class["spec"]});
            validate(&object, &schema, "").unwrap_or_else(|e| {
                panic!("{} ({}): {e}", file.display(), class["metadata"]["name"])
            });
            checked += 1;
        }
    }
    assert!(checked >= 8, "{checked}");
    // The validator itself rejects what the schema does not describe.
    let schema = class_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    assert!(validate(&json!({"spec": {"provder": "typo"}}), &schema, "").is_err());
    assert!(validate(&json!({"spec": {"parameters": {"a": 1}}}), &schema, "").is_err());
}

/// The tools venv's Python with the Helm SDK, or `None` (skip) outside CI.
fn helm_python() -> Option<PathBuf> {
    let python = root().join(".tools/venv/bin/python");
    let works = python.is_file()
        && Command::new(&python)
            .args(["-c", "import helm_python"])
            .status()
            .is_ok_and(|s| s.success());
    if works {
        return Some(python);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but .tools/venv has no helm-python-sdk: run scripts/test, which installs it"
    );
    eprintln!(
        "skipping: helm-python-sdk is not installed in .tools/venv (scripts/test installs it)"
    );
    None
}

fn chart_script(python: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(python)
        .arg(root().join("scripts/chart.py"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn render(python: &Path, values: &Value) -> Vec<Value> {
    let (ok, text) = chart_script(python, &["render", &values.to_string()]);
    assert!(ok, "render failed: {text}");
    yaml_documents(&text)
}

/// The DaemonSet of release `csi-secrets-store`, named as upstream's chart names it.
const CHART_DAEMONSET: &str = "csi-secrets-store-secrets-store-csi-driver";

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn container<'a>(daemonset: &'a Value, name: &str) -> &'a Value {
    daemonset["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// The driver's own parser accepts the rendered arguments.
fn assert_driver_accepts(args: &[String]) {
    let cli = Cli::try_parse_from(
        std::iter::once("secrets-store-csi-driver".to_owned()).chain(args.iter().cloned()),
    )
    .unwrap_or_else(|e| panic!("the chart's args do not parse: {e}\n{args:?}"));
    assert!(matches!(cli.command, Some(CliCommand::Node(_))));
}

#[test]
fn the_chart_lints_and_renders_upstreams_defaults() {
    let Some(python) = helm_python() else { return };
    let (ok, text) = chart_script(&python, &["lint"]);
    assert!(ok, "helm lint --strict: {text}");

    let docs = render(&python, &json!({}));
    let driver = find(&docs, "CSIDriver", "secrets-store.csi.k8s.io").unwrap();
    assert_eq!(driver["spec"]["podInfoOnMount"], true);
    assert_eq!(driver["spec"]["attachRequired"], false);
    assert_eq!(driver["spec"]["volumeLifecycleModes"], json!(["Ephemeral"]));
    assert_eq!(driver["spec"]["requiresRepublish"], false);
    assert_eq!(
        driver["spec"]["tokenRequests"],
        json!([{"audience": "vault"}, {"audience": "sts.amazonaws.com"}, {"audience": "pods.eks.amazonaws.com"}])
    );
    assert!(find(&docs, "ClusterRole", "secretprovidersyncing-role").is_none());
    assert!(find(&docs, "ClusterRole", "secretproviderrollout-role").is_none());
    for role in [
        "secretproviderclasses-role",
        "secretproviderclasses-admin-role",
        "secretproviderclasses-viewer-role",
        "secretproviderclasspodstatuses-viewer-role",
    ] {
        assert!(find(&docs, "ClusterRole", role).is_some(), "{role}");
    }
    let binding = find(
        &docs,
        "ClusterRoleBinding",
        "secretproviderclasses-rolebinding",
    )
    .unwrap();
    assert_eq!(binding["subjects"][0]["name"], "secrets-store-csi-driver");
    assert!(find(&docs, "ServiceAccount", "secrets-store-csi-driver").is_some());
    let service = find(&docs, "Service", &format!("{CHART_DAEMONSET}-metrics")).unwrap();
    assert_eq!(service["spec"]["ports"][0]["port"], 8095);

    let ds = find(&docs, "DaemonSet", CHART_DAEMONSET).unwrap();
    let names: Vec<&str> = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["node-driver-registrar", "secrets-store", "liveness-probe"]
    );
    let resources = |name: &str| container(ds, name)["resources"].clone();
    assert_eq!(
        resources("secrets-store"),
        json!({"requests": {"cpu": "50m", "memory": "100Mi"}, "limits": {"cpu": "200m", "memory": "200Mi"}})
    );
    for sidecar in ["node-driver-registrar", "liveness-probe"] {
        assert_eq!(
            resources(sidecar),
            json!({"requests": {"cpu": "10m", "memory": "20Mi"}, "limits": {"cpu": "100m", "memory": "100Mi"}})
        );
    }
    let store = container(ds, "secrets-store");
    assert_eq!(store["securityContext"]["privileged"], true);
    let mounts = store["volumeMounts"].as_array().unwrap();
    let pods = mounts
        .iter()
        .find(|m| m["name"] == "mountpoint-dir")
        .unwrap();
    assert_eq!(pods["mountPath"], "/var/lib/kubelet/pods");
    assert_eq!(pods["mountPropagation"], "Bidirectional");
    let volumes = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let host_path = |name: &str| {
        volumes.iter().find(|v| v["name"] == name).unwrap()["hostPath"]["path"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        host_path("plugin-dir"),
        "/var/lib/kubelet/plugins/csi-secrets-store/"
    );
    assert_eq!(
        host_path("registration-dir"),
        "/var/lib/kubelet/plugins_registry/"
    );
    assert_eq!(
        host_path("providers-dir"),
        "/var/run/secrets-store-csi-providers"
    );
    assert_eq!(
        host_path("providers-dir-0"),
        "/etc/kubernetes/secrets-store-csi-providers"
    );
    let store_args = args(store);
    for expected in [
        "--endpoint=$(CSI_ENDPOINT)",
        "--nodeid=$(KUBE_NODE_NAME)",
        "--provider-volume=/var/run/secrets-store-csi-providers",
        "--additional-provider-volume-paths=/etc/kubernetes/secrets-store-csi-providers",
        "--metrics-addr=:8095",
        "--enable-secret-rotation=false",
        "--builtin-providers=vault,aws",
        "--kubelet-root-dir=/var/lib/kubelet",
        "--max-concurrent-fetches=16",
    ] {
        assert!(
            store_args.contains(&expected.to_owned()),
            "{expected}: {store_args:?}"
        );
    }
    assert_driver_accepts(&store_args);
    assert!(
        args(container(ds, "node-driver-registrar")).contains(
            &"--kubelet-registration-path=/var/lib/kubelet/plugins/csi-secrets-store/csi.sock"
                .to_owned()
        )
    );
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "8095");
}

#[test]
fn names_and_provider_mounts_follow_upstreams_chart() {
    let Some(python) = helm_python() else { return };
    let docs = render(&python, &json!({"fullnameOverride": "sscsi"}));
    assert!(find(&docs, "DaemonSet", "sscsi").is_some());
    assert!(find(&docs, "Service", "sscsi-metrics").is_some());
    let docs = render(
        &python,
        &json!({"linux": {"additionalProvidersDirs": [
            "/var/run/secrets-store-csi-providers", "/etc/p", "/etc/p", "/etc/q"
        ]}}),
    );
    let ds = find(&docs, "DaemonSet", CHART_DAEMONSET).unwrap();
    let mounts: Vec<&str> = container(ds, "secrets-store")["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"].as_str().unwrap().starts_with("providers-dir"))
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(
        mounts,
        ["/var/run/secrets-store-csi-providers", "/etc/p", "/etc/q"],
        "each directory is mounted once"
    );
    let volumes = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let provider_volumes = volumes
        .iter()
        .filter(|v| v["name"].as_str().unwrap().starts_with("providers-dir"))
        .count();
    assert_eq!(provider_volumes, 3);
}

#[test]
fn chart_values_reach_the_csidriver_rbac_and_driver_flags() {
    let Some(python) = helm_python() else { return };
    let docs = render(
        &python,
        &json!({
            "syncSecret": {"enabled": true, "resyncInterval": "10m", "rolloutOnChange": true},
            "enableSecretRotation": true,
            "rotationPollInterval": "30s",
            "tokenRequests": [{"audience": "vault"}, {"audience": "sts.amazonaws.com", "expirationSeconds": 3600}],
            "logVerbosity": 3,
            "logFormatJSON": true,
            "providerHealthCheck": true,
            "linux": {"metricsAddr": ":9095", "kubeletRootDir": "/data/kubelet"},
            "vault": {
                "address": "https://vault.vault.svc:8200",
                "authMount": "k8s-prod",
                "namespace": "team-a",
                "tls": {"caConfigMap": "vault-ca", "serverName": "vault.internal", "allowedDirs": ["/etc/vault-tls"]},
                "readCacheTTL": "0s",
            },
            "aws": {
                "region": "eu-central-1",
                "endpointURL": "https://vpce-1.secretsmanager.eu-central-1.vpce.amazonaws.com",
                "useFIPSEndpoint": true,
                "readCacheTTL": "1m",
            },
        }),
    );
    let driver = find(&docs, "CSIDriver", "secrets-store.csi.k8s.io").unwrap();
    assert_eq!(driver["spec"]["requiresRepublish"], true);
    assert_eq!(
        driver["spec"]["tokenRequests"][1]["expirationSeconds"],
        3600
    );
    assert!(find(&docs, "ClusterRole", "secretprovidersyncing-role").is_some());
    assert!(
        find(
            &docs,
            "ClusterRoleBinding",
            "secretprovidersyncing-rolebinding"
        )
        .is_some()
    );
    let rollout = find(&docs, "ClusterRole", "secretproviderrollout-role").unwrap();
    assert_eq!(rollout["rules"][1]["verbs"], json!(["get", "patch"]));
    assert!(
        find(
            &docs,
            "ClusterRoleBinding",
            "secretproviderrollout-rolebinding"
        )
        .is_some()
    );
    let ds = find(&docs, "DaemonSet", CHART_DAEMONSET).unwrap();
    let store = container(ds, "secrets-store");
    let store_args = args(store);
    for expected in [
        "--enable-secret-rotation=true",
        "--secret-sync-resync-interval=10m",
        "--rollout-on-secret-change=true",
        "--rotation-poll-interval=30s",
        "--provider-health-check=true",
        "-v=3",
        "--log-format-json=true",
        "--metrics-addr=:9095",
        "--vault-address=https://vault.vault.svc:8200",
        "--vault-mount=k8s-prod",
        "--vault-namespace=team-a",
        "--vault-tls-ca-cert=/etc/secrets-store-csi-driver/vault-ca/ca.crt",
        "--vault-tls-server-name=vault.internal",
        "--vault-tls-allowed-dirs=/etc/vault-tls,/etc/secrets-store-csi-driver/vault-ca",
        "--kubelet-root-dir=/data/kubelet",
        "--vault-read-cache-ttl=0s",
        "--builtin-providers=vault,aws",
        "--aws-region=eu-central-1",
        "--aws-endpoint-url=https://vpce-1.secretsmanager.eu-central-1.vpce.amazonaws.com",
        "--aws-use-fips-endpoint=true",
        "--aws-read-cache-ttl=1m",
    ] {
        assert!(
            store_args.contains(&expected.to_owned()),
            "{expected}: {store_args:?}"
        );
    }
    assert_driver_accepts(&store_args);
    assert!(
        store["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "vault-ca")
    );
    let pods = store["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "mountpoint-dir")
        .unwrap();
    assert_eq!(pods["mountPath"], "/data/kubelet/pods");
    let ports = store["ports"].as_array().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "metrics" && p["containerPort"] == 9095)
    );

    let class_role = find(&docs, "ClusterRole", "secretproviderclasses-role").unwrap();
    assert!(
        class_role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"] == json!(["serviceaccounts", "nodes"])
                && r["verbs"] == json!(["get"])),
        "the AWS provider reads service accounts and nodes"
    );

    // Without the built-in providers, `vault` and `aws` are looked up as plugin sockets, and
    // the driver may not read service accounts or nodes.
    let docs = render(
        &python,
        &json!({"vault": {"enabled": false}, "aws": {"enabled": false}}),
    );
    let ds = find(&docs, "DaemonSet", CHART_DAEMONSET).unwrap();
    let store_args = args(container(ds, "secrets-store"));
    assert!(store_args.contains(&"--builtin-providers=".to_owned()));
    assert!(
        !store_args
            .iter()
            .any(|a| a.starts_with("--vault-") || a.starts_with("--aws-"))
    );
    assert_driver_accepts(&store_args);
    let class_role = find(&docs, "ClusterRole", "secretproviderclasses-role").unwrap();
    assert!(!class_role.to_string().contains("serviceaccounts"));
}

#[test]
fn gcp_values_enable_the_provider_and_request_the_pools_token() {
    let Some(python) = helm_python() else { return };
    let docs = render(
        &python,
        &json!({"aws": {"enabled": false}, "gcp": {
            "enabled": true,
            "project": "prod-123",
            "clusterLocation": "europe-west1",
            "clusterName": "main",
            "secretManagerEndpoint": "https://secretmanager.p.googleapis.com",
            "readCacheTTL": "10s",
        }}),
    );
    let driver = find(&docs, "CSIDriver", "secrets-store.csi.k8s.io").unwrap();
    let audiences: Vec<&str> = driver["spec"]["tokenRequests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["audience"].as_str().unwrap())
        .collect();
    assert!(audiences.contains(&"prod-123.svc.id.goog"), "{audiences:?}");
    assert!(audiences.contains(&"vault"), "{audiences:?}");
    let ds = find(&docs, "DaemonSet", CHART_DAEMONSET).unwrap();
    let store_args = args(container(ds, "secrets-store"));
    for expected in [
        "--builtin-providers=vault,gcp",
        "--gcp-project=prod-123",
        "--gcp-cluster-location=europe-west1",
        "--gcp-cluster-name=main",
        "--gcp-secret-manager-endpoint=https://secretmanager.p.googleapis.com",
        "--gcp-read-cache-ttl=10s",
    ] {
        assert!(
            store_args.contains(&expected.to_owned()),
            "{expected}: {store_args:?}"
        );
    }
    assert_driver_accepts(&store_args);
    let class_role = find(&docs, "ClusterRole", "secretproviderclasses-role").unwrap();
    assert!(
        class_role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"] == json!(["serviceaccounts"]) && r["verbs"] == json!(["get"])),
        "the GCP provider reads service accounts' impersonation annotations"
    );
}

#[test]
fn azure_values_enable_the_provider_and_request_the_federation_token() {
    let Some(python) = helm_python() else { return };
    let docs = render(
        &python,
        &json!({"vault": {"enabled": false}, "azure": {
            "enabled": true,
            "cloudName": "AzureChinaCloud",
            "keyvaultEndpoint": "https://{vault}.privatelink.vaultcore.azure.cn",
            "writeCertAndKeyInSeparateFiles": true,
        }}),
    );
    let driver = find(&docs, "CSIDriver", "secrets-store.csi.k8s.io").unwrap();
    let audiences: Vec<&str> = driver["spec"]["tokenRequests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["audience"].as_str().unwrap())
        .collect();
    assert!(
        audiences.contains(&"api://AzureADTokenExchange"),
        "{audiences:?}"
    );
    assert_eq!(
        audiences
            .iter()
            .filter(|a| **a == "api://AzureADTokenExchange")
            .count(),
        1
    );
    let ds = find(&docs, "DaemonSet", CHART_DAEMONSET).unwrap();
    let store_args = args(container(ds, "secrets-store"));
    for expected in [
        "--builtin-providers=aws,azure",
        "--azure-cloud-name=AzureChinaCloud",
        "--azure-keyvault-endpoint=https://{vault}.privatelink.vaultcore.azure.cn",
        "--azure-write-cert-and-key-in-separate-files=true",
        "--azure-read-cache-ttl=30s",
    ] {
        assert!(
            store_args.contains(&expected.to_owned()),
            "{expected}: {store_args:?}"
        );
    }
    assert_driver_accepts(&store_args);
}

#[test]
fn deploy_is_the_charts_render_and_parses() {
    let mut kinds = Vec::new();
    let mut docs = Vec::new();
    let files = std::fs::read_dir(root().join("deploy"))
        .unwrap()
        .chain(std::fs::read_dir(root().join("deploy/sync-controller")).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| !path.is_dir());
    for path in files {
        assert_eq!(path.extension().unwrap(), "yaml", "{}", path.display());
        for doc in yaml_documents(&std::fs::read_to_string(&path).unwrap()) {
            for field in ["apiVersion", "kind"] {
                assert!(doc[field].is_string(), "{}: no {field}", path.display());
            }
            assert!(
                doc["metadata"]["name"].is_string(),
                "{}: no name",
                path.display()
            );
            assert!(
                doc["metadata"]["labels"].get("helm.sh/chart").is_none(),
                "{}: Helm labels in plain manifests",
                path.display()
            );
            kinds.push(doc["kind"].as_str().unwrap().to_owned());
            docs.push(doc);
        }
    }
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "CSIDriver",
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "DaemonSet",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    // The sync controller: its own pods (never the DaemonSet's), flags the binary accepts,
    // no committed key.
    let controller = find(&docs, "Deployment", "secrets-store-sync-controller").unwrap();
    let pod_labels = &controller["spec"]["template"]["metadata"]["labels"];
    assert_eq!(pod_labels["app"], "secrets-store-sync-controller");
    let controller_args = args(container(controller, "sync-controller"));
    let cli = Cli::try_parse_from(
        std::iter::once("secrets-store-csi-driver".to_owned())
            .chain(controller_args.iter().cloned()),
    )
    .unwrap_or_else(|e| {
        panic!("the sync controller's args do not parse: {e}\n{controller_args:?}")
    });
    assert!(matches!(cli.command, Some(CliCommand::SyncController(_))));
    assert!(find(&docs, "Secret", "secrets-store-sync-controller-key").is_none());
    let ds = find(&docs, "DaemonSet", "csi-secrets-store").unwrap();
    assert_eq!(ds["metadata"]["namespace"], "kube-system");
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"],
        json!({"app": "csi-secrets-store"})
    );
    assert!(find(&docs, "ClusterRole", "secretprovidersyncing-role").is_some());
    assert_driver_accepts(&args(container(ds, "secrets-store")));

    let Some(python) = helm_python() else { return };
    let (ok, text) = chart_script(&python, &["deploy", "--check"]);
    assert!(ok, "{text}");
    // Images, arguments and RBAC rules agree with the chart's defaults.
    let chart = render(&python, &json!({}));
    let chart_ds = find(&chart, "DaemonSet", CHART_DAEMONSET).unwrap();
    for name in ["node-driver-registrar", "secrets-store", "liveness-probe"] {
        assert_eq!(
            container(ds, name)["image"],
            container(chart_ds, name)["image"],
            "{name}"
        );
        assert_eq!(
            container(ds, name)["args"],
            container(chart_ds, name)["args"],
            "{name}"
        );
    }
    for role in [
        "secretproviderclasses-role",
        "secretproviderclasses-admin-role",
    ] {
        assert_eq!(
            find(&docs, "ClusterRole", role).unwrap()["rules"],
            find(&chart, "ClusterRole", role).unwrap()["rules"],
            "{role}"
        );
    }
}

#[test]
fn sync_controller_values_reach_its_flags_rbac_and_policies() {
    let Some(python) = helm_python() else { return };
    let off = render(&python, &json!({}));
    assert!(find(&off, "Deployment", "secrets-store-sync-controller").is_none());
    let docs = render(
        &python,
        &json!({"syncController": {
            "enabled": true,
            "tokenRequestAudience": [{"audience": "custom"}],
            "rotationPollInterval": "1h",
            "validatingAdmissionPolicies": {"namespaceSelector": {"matchLabels": {"sync": "on"}}},
        }}),
    );
    let deployment = find(&docs, "Deployment", "secrets-store-sync-controller").unwrap();
    let flags = args(container(deployment, "sync-controller"));
    assert!(
        flags.contains(&"--token-request-audience=custom".to_owned()),
        "{flags:?}"
    );
    assert!(
        flags.contains(&"--rotation-poll-interval=1h".to_owned()),
        "{flags:?}"
    );
    assert!(
        flags.contains(&"--leader-elect=true".to_owned()),
        "{flags:?}"
    );
    let token = find(
        &docs,
        "ValidatingAdmissionPolicy",
        "secrets-store-sync-controller-token",
    )
    .unwrap();
    assert!(token.to_string().contains("['custom']"), "{token}");
    let binding = find(
        &docs,
        "ValidatingAdmissionPolicyBinding",
        "secrets-store-sync-controller-secret-owner",
    )
    .unwrap();
    assert_eq!(
        binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]["sync"],
        "on"
    );
    // Least privilege: Secrets only created and patched, never read, listed or deleted.
    let role = find(&docs, "ClusterRole", "secrets-store-sync-controller").unwrap();
    let secret_verbs: Vec<&str> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == "secrets")
        })
        .flat_map(|r| {
            r["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
        })
        .collect();
    assert_eq!(secret_verbs, ["create", "patch"]);
    // The key Secret is random and Helm keeps it.
    let key = find(&docs, "Secret", "secrets-store-sync-controller-key").unwrap();
    assert_eq!(
        key["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert!(key["data"]["version.key"].as_str().unwrap().len() >= 44);
}

#[test]
fn the_readme_templates_are_accepted_and_render() {
    use secrets_store_csi_driver::provider::ProviderFile;
    use secrets_store_csi_driver::redact::SecretBytes;
    use secrets_store_csi_driver::template::{PARAMETER, Templates};

    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut rendered = Vec::new();
    for block in readme.split("```yaml").skip(1) {
        let block = block.split("```").next().unwrap();
        for doc in yaml_documents(block) {
            let Some(text) = doc["spec"]["parameters"][PARAMETER].as_str() else {
                continue;
            };
            let mut parameters =
                std::collections::BTreeMap::from([(PARAMETER.to_owned(), text.to_owned())]);
            let templates = Templates::take_from("readme/example", &mut parameters, 0o644)
                .unwrap()
                .unwrap();
            // Every object the class names, as the provider would return it.
            let objects: Vec<Value> =
                serde_saphyr::from_str(doc["spec"]["parameters"]["objects"].as_str().unwrap())
                    .unwrap();
            let files: Vec<ProviderFile> = objects
                .iter()
                .map(|o| {
                    let path = o["objectAlias"]
                        .as_str()
                        .or(o["objectName"].as_str())
                        .unwrap();
                    let contents = if path.ends_with(".json") {
                        r#"{"username": "app", "password": "pw"}"#
                    } else {
                        "value"
                    };
                    ProviderFile {
                        path: path.to_owned(),
                        mode: 0o644,
                        contents: SecretBytes::new(contents.as_bytes().to_vec()),
                    }
                })
                .collect();
            let out = templates.render(&files, 1 << 20).unwrap();
            rendered.extend(out.into_iter().map(|f| f.path));
        }
    }
    assert_eq!(rendered, [".pgpass", "config/app.json", "app.env"]);
}
