//! End-to-end on a real single-node cluster (tests/support/cluster.rs): kubelet mounts pods'
//! volumes through the driver, the real API server validates and stores what it writes, the
//! real garbage collector cleans up after it. Each test asserts what a user would check with
//! kubectl.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::cluster::{self, Cluster, NODE};

const GROUP_V1: &str = "secrets-store.csi.x-k8s.io/v1";
const WAIT: Duration = Duration::from_secs(60);

/// Polls `check` until it returns `Some` (or panics with `what` and the driver's log tail).
async fn until<T, F, Fut>(cluster: &Cluster, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if started.elapsed() > WAIT {
            let logs = cluster.driver_logs();
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            let kubelet = cluster.log("kubelet");
            let kubelet_tail: Vec<&str> = kubelet.lines().rev().take(40).collect();
            panic!(
                "timed out waiting for {what}\n--- driver ---\n{}\n--- kubelet ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                kubelet_tail
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn class(namespace: &str, name: &str, provider: &str, parameters: Value) -> Value {
    json!({
        "apiVersion": GROUP_V1,
        "kind": "SecretProviderClass",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"provider": provider, "parameters": parameters},
    })
}

fn local_class(namespace: &str, name: &str, source: &str, objects: &str) -> Value {
    class(
        namespace,
        name,
        "local",
        json!({"source": source, "objects": objects}),
    )
}

fn pod(namespace: &str, name: &str, class: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app",
                "image": "registry.example/app:1",
                "volumeMounts": [{"name": "secrets", "mountPath": "/mnt/secrets", "readOnly": true}],
            }],
            "volumes": [{"name": "secrets", "csi": {
                "driver": "secrets-store.csi.k8s.io",
                "readOnly": true,
                "volumeAttributes": {"secretProviderClass": class},
            }}],
        },
    })
}

async fn running(cluster: &Cluster, client: &kube::Client, namespace: &str, name: &str) -> Value {
    until(
        cluster,
        &format!("pod {namespace}/{name} Running"),
        || async {
            let pod = cluster::get(client, "v1", "Pod", Some(namespace), name).await?;
            (pod["status"]["phase"] == "Running").then_some(pod)
        },
    )
    .await
}

/// Applies `class` and a pod `app` mounting it (as `service_account` when given), and waits
/// until the pod runs; returns the pod and its volume's path on the node.
async fn run_app(
    cluster: &Cluster,
    client: &kube::Client,
    class: Value,
    service_account: Option<&str>,
) -> (Value, std::path::PathBuf) {
    let ns = class["metadata"]["namespace"].as_str().unwrap().to_owned();
    let name = class["metadata"]["name"].as_str().unwrap().to_owned();
    cluster::apply(client, class).await;
    let mut app = pod(&ns, "app", &name);
    if let Some(account) = service_account {
        app["spec"]["serviceAccountName"] = json!(account);
    }
    cluster::apply(client, app).await;
    let pod = running(cluster, client, &ns, "app").await;
    let volume = cluster.volume_path(pod["metadata"]["uid"].as_str().unwrap(), "secrets");
    (pod, volume)
}

/// Writes the namespace's `local` source and runs pod `app` with class `app` mounting
/// `objects` from it.
async fn run_local_app(
    cluster: &Cluster,
    client: &kube::Client,
    ns: &str,
    source: &str,
    objects: &str,
) -> (Value, std::path::PathBuf) {
    std::fs::write(cluster.local_root.join(format!("{ns}.yaml")), source).unwrap();
    let class = local_class(ns, "app", &format!("{ns}.yaml"), objects);
    run_app(cluster, client, class, None).await
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_with_its_files_its_status_record_and_leaves_nothing_when_deleted() {
    let Some(cluster) = cluster::cluster() else {
        return;
    };
    let _shared = cluster.shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("basic").await;
    let alpha = format!("alpha-{ns}");
    let (pod, volume) = run_local_app(
        cluster,
        &client,
        &ns,
        &format!("alpha: {alpha}\nnested: nested-{ns}\n"),
        "- objectName: alpha\n- objectName: nested\n  objectAlias: dir/nested\n  filePermission: \"0600\"\n",
    )
    .await;
    assert_eq!(pod["spec"]["nodeName"], NODE);
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    assert_eq!(
        std::fs::read_to_string(volume.join("alpha")).unwrap(),
        alpha
    );
    assert_eq!(mode(&volume.join("alpha")), 0o644);
    assert_eq!(mode(&volume.join("dir/nested")), 0o600);
    assert!(support::mount_line(&volume).unwrap().contains(" tmpfs "));

    let record = format!("app-{ns}-app");
    let status = cluster::get(
        &client,
        GROUP_V1,
        "SecretProviderClassPodStatus",
        Some(&ns),
        &record,
    )
    .await
    .unwrap();
    assert_eq!(
        status["metadata"]["labels"]["internal.secrets-store.csi.k8s.io/node-name"],
        NODE
    );
    assert_eq!(status["metadata"]["ownerReferences"][0]["kind"], "Pod");
    assert_eq!(
        status["metadata"]["ownerReferences"][0]["uid"],
        uid.as_str()
    );
    assert_eq!(status["status"]["mounted"], true);
    assert_eq!(status["status"]["targetPath"], volume.display().to_string());

    cluster::delete(&client, "v1", "Pod", Some(&ns), "app").await;
    until(cluster, "the pod gone", || async {
        cluster::get(&client, "v1", "Pod", Some(&ns), "app")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        support::mount_line(&volume).is_none(),
        "kubelet unpublished"
    );
    until(cluster, "the status record garbage-collected", || async {
        cluster::get(
            &client,
            GROUP_V1,
            "SecretProviderClassPodStatus",
            Some(&ns),
            &record,
        )
        .await
        .is_none()
        .then_some(())
    })
    .await;
    assert!(!cluster.driver_logs().contains(&alpha));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelets_own_republish_rotates_the_files_and_the_versions() {
    let Some(cluster) = cluster::cluster() else {
        return;
    };
    let _shared = cluster.shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("rotation").await;
    let source = cluster.local_root.join(format!("{ns}.yaml"));
    let (_, volume) = run_local_app(
        cluster,
        &client,
        &ns,
        "token: first-value\n",
        "- objectName: token\n",
    )
    .await;
    let file = volume.join("token");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "first-value");
    let record = format!("app-{ns}-app");
    let versions = |status: &Value| status["status"]["objects"].clone();
    let before = cluster::get(
        &client,
        GROUP_V1,
        "SecretProviderClassPodStatus",
        Some(&ns),
        &record,
    )
    .await
    .unwrap();

    // Nobody calls the driver but kubelet: requiresRepublish makes it republish.
    std::fs::write(&source, "token: second-value\n").unwrap();
    until(cluster, "the rotated file", || async {
        (std::fs::read_to_string(&file).ok()? == "second-value").then_some(())
    })
    .await;
    let after = until(cluster, "the record's new version", || async {
        let status = cluster::get(
            &client,
            GROUP_V1,
            "SecretProviderClassPodStatus",
            Some(&ns),
            &record,
        )
        .await?;
        (versions(&status) != versions(&before)).then_some(status)
    })
    .await;
    assert_eq!(after["status"]["objects"][0]["id"], "token");
    until(
        cluster,
        "a MountRotationComplete event on the pod",
        || async {
            let events = cluster::list(&client, "v1", "Event", &ns).await;
            events.into_iter().find(|e| {
                e["reason"] == "MountRotationComplete" && e["involvedObject"]["name"] == "app"
            })
        },
    )
    .await;
    cluster::delete(&client, "v1", "Namespace", None, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_refresh_request_fetches_at_the_next_republish_whatever_the_interval() {
    let Some(cluster) = cluster::cluster() else {
        return;
    };
    let _shared = cluster.shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("refresh").await;
    let source = cluster.local_root.join(format!("{ns}.yaml"));
    std::fs::write(&source, "token: first-value\n").unwrap();
    let mut class = local_class(&ns, "app", &format!("{ns}.yaml"), "- objectName: token\n");
    class["metadata"]["annotations"] =
        json!({"secrets-store.csi.k8s.io/rotation-poll-interval": "1h"});
    let (_, volume) = run_app(cluster, &client, class.clone(), None).await;
    let file = volume.join("token");
    let read = || std::fs::read_to_string(&file).unwrap();
    assert_eq!(read(), "first-value");

    // Kubelet republishes every few seconds; with an hour's interval nothing is fetched.
    std::fs::write(&source, "token: second-value\n").unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(read(), "first-value");

    // A new value of the annotation: the next republish fetches.
    class["metadata"]["annotations"]["secrets-store.csi.k8s.io/refresh-requested-at"] =
        json!("2026-12-02T17:00:00Z");
    cluster::apply(&client, class.clone()).await;
    until(cluster, "the refreshed file", || async {
        (std::fs::read_to_string(&file).ok()? == "second-value").then_some(())
    })
    .await;
    until(cluster, "a MountRotationComplete event", || async {
        let events = cluster::list(&client, "v1", "Event", &ns).await;
        events.into_iter().find(|e| {
            e["reason"] == "MountRotationComplete" && e["involvedObject"]["name"] == "app"
        })
    })
    .await;

    // Once per value: the same value again fetches nothing more.
    std::fs::write(&source, "token: third-value\n").unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(read(), "second-value");
    cluster::delete(&client, "v1", "Namespace", None, &ns).await;
}

/// Reads `file` of a pod's volume as a container process of `uid` with `groups` would: through
/// a bind mount of the volume (kubelet's own directories are root's only), by `setpriv`.
fn read_as(
    volume: &std::path::Path,
    file: &str,
    uid: u32,
    groups: &[u32],
) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let view = tempfile::tempdir().unwrap();
    std::fs::set_permissions(view.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let status = std::process::Command::new("mount")
        .arg("--bind")
        .arg(volume)
        .arg(view.path())
        .status()
        .unwrap();
    assert!(status.success(), "bind mount");
    let groups = if groups.is_empty() {
        "--clear-groups".to_owned()
    } else {
        format!(
            "--groups={}",
            groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let output = std::process::Command::new("setpriv")
        .args([format!("--reuid={uid}"), format!("--regid={uid}"), groups])
        .arg("cat")
        .arg(view.path().join(file))
        .output()
        .unwrap();
    let _ = std::process::Command::new("umount")
        .arg(view.path())
        .status();
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_root_pod_with_an_fs_group_reads_its_files_and_one_without_gets_roots() {
    use std::os::unix::fs::MetadataExt as _;
    let Some(cluster) = cluster::cluster() else {
        return;
    };
    let _shared = cluster.shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("fsgroup").await;
    std::fs::write(
        cluster.local_root.join(format!("{ns}.yaml")),
        "token: group-readable\n",
    )
    .unwrap();
    let mut class = local_class(&ns, "app", &format!("{ns}.yaml"), "- objectName: token\n");
    class["spec"]["parameters"]["filePermission"] = json!("0440");
    cluster::apply(&client, class).await;
    let mut app = pod(&ns, "app", "app");
    app["spec"]["securityContext"] =
        json!({"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000});
    cluster::apply(&client, app).await;
    cluster::apply(&client, pod(&ns, "plain", "app")).await;
    let uid = |pod: &Value| pod["metadata"]["uid"].as_str().unwrap().to_owned();
    let app = running(cluster, &client, &ns, "app").await;
    let plain = running(cluster, &client, &ns, "plain").await;

    // What the container's process is: uid 1000, gid 1000, supplementary group 2000.
    let volume = cluster.volume_path(&uid(&app), "secrets");
    let file = volume.join("token");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 2000));
    assert_eq!(mode(&file), 0o440);
    assert_eq!(
        read_as(&volume, "token", 1000, &[2000]).unwrap(),
        b"group-readable"
    );
    // A rotation swaps in files that are the group's from the start.
    std::fs::write(
        cluster.local_root.join(format!("{ns}.yaml")),
        "token: rotated\n",
    )
    .unwrap();
    until(cluster, "the rotated file", || async {
        (std::fs::read_to_string(&file).ok()? == "rotated").then_some(())
    })
    .await;
    assert_eq!(std::fs::metadata(&file).unwrap().gid(), 2000);
    assert_eq!(mode(&file), 0o440);
    assert_eq!(
        read_as(&volume, "token", 1000, &[2000]).unwrap(),
        b"rotated"
    );

    // Without fsGroup: exactly as before, root's, and not readable by uid 1000.
    let volume = cluster.volume_path(&uid(&plain), "secrets");
    let meta = std::fs::metadata(volume.join("token")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(mode(&volume.join("token")), 0o440);
    assert!(read_as(&volume, "token", 1000, &[]).is_err());
    cluster::delete(&client, "v1", "Namespace", None, &ns).await;
}

fn deployment(namespace: &str, name: &str, class: &str) -> Value {
    let mut template = pod(namespace, name, class);
    template["metadata"] = json!({"labels": {"app": name}});
    let template = json!({"metadata": template["metadata"], "spec": template["spec"]});
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": template,
        },
    })
}

fn owners(secret: &Value) -> Vec<(String, String)> {
    let mut owners: Vec<(String, String)> = secret["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                o["kind"].as_str().unwrap().to_owned(),
                o["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    owners.sort();
    owners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_secrets_are_owned_by_the_replicasets_collected_with_them_and_usable_by_pods() {
    let Some(cluster) = cluster::cluster() else {
        return;
    };
    let _shared = cluster.shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("sync").await;
    std::fs::write(
        cluster.local_root.join(format!("{ns}.yaml")),
        format!("password: pw-{ns}\n"),
    )
    .unwrap();
    let mut class = local_class(
        &ns,
        "app",
        &format!("{ns}.yaml"),
        "- objectName: password\n",
    );
    class["spec"]["secretObjects"] = json!([{
        "secretName": "app-credentials",
        "type": "Opaque",
        "labels": {"team": "payments"},
        "data": [{"objectName": "password", "key": "password"}],
    }]);
    cluster::apply(&client, class).await;
    cluster::apply(&client, deployment(&ns, "one", "app")).await;
    let secret = until(cluster, "the synced Secret", || async {
        cluster::get(&client, "v1", "Secret", Some(&ns), "app-credentials").await
    })
    .await;
    assert_eq!(
        secret["metadata"]["labels"]["secrets-store.csi.k8s.io/managed"],
        "true"
    );
    assert_eq!(secret["metadata"]["labels"]["team"], "payments");
    let owners_one = owners(&secret);
    assert_eq!(owners_one.len(), 1, "{owners_one:?}");
    assert_eq!(owners_one[0].0, "ReplicaSet");
    assert!(owners_one[0].1.starts_with("one-"), "{owners_one:?}");
    use base64::Engine as _;
    let value = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["password"].as_str().unwrap())
        .unwrap();
    assert_eq!(value, format!("pw-{ns}").as_bytes());

    // A pod that reads the Secret through secretKeyRef starts once it exists.
    let mut consumer = pod(&ns, "consumer", "app");
    consumer["spec"]["containers"][0]["env"] = json!([{
        "name": "PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "app-credentials", "key": "password"}},
    }]);
    cluster::apply(&client, consumer).await;
    running(cluster, &client, &ns, "consumer").await;

    // A second Deployment of the same class: a second owner.
    cluster::apply(&client, deployment(&ns, "two", "app")).await;
    until(cluster, "two ReplicaSets owning the Secret", || async {
        let secret = cluster::get(&client, "v1", "Secret", Some(&ns), "app-credentials").await?;
        (owners(&secret)
            .iter()
            .filter(|(kind, _)| kind == "ReplicaSet")
            .count()
            == 2)
            .then_some(())
    })
    .await;

    // The real garbage collector removes it with its last owner.
    cluster::delete(&client, "v1", "Pod", Some(&ns), "consumer").await;
    cluster::delete(&client, "apps/v1", "Deployment", Some(&ns), "one").await;
    cluster::delete(&client, "apps/v1", "Deployment", Some(&ns), "two").await;
    until(cluster, "the Secret garbage-collected", || async {
        cluster::get(&client, "v1", "Secret", Some(&ns), "app-credentials")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(!cluster.driver_logs().contains(&format!("pw-{ns}")));
    cluster::delete(&client, "v1", "Namespace", None, &ns).await;
}

fn service_account(namespace: &str, name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_sync_role_the_real_403_gives_one_warning_and_events_and_mounts_still_work() {
    let Some(cluster) = cluster::cluster() else {
        return;
    };
    let _alone = cluster.exclusive().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("norbac").await;
    let log_start = cluster.driver_logs().len();
    let binding = cluster::get(
        &client,
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        None,
        "secretprovidersyncing-rolebinding",
    )
    .await
    .unwrap();
    cluster::delete(
        &client,
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        None,
        "secretprovidersyncing-rolebinding",
    )
    .await;
    std::fs::write(cluster.local_root.join(format!("{ns}.yaml")), "k: v\n").unwrap();
    let mut class = local_class(&ns, "app", &format!("{ns}.yaml"), "- objectName: k\n");
    class["spec"]["secretObjects"] = json!([{
        "secretName": "never", "type": "Opaque", "data": [{"objectName": "k", "key": "k"}],
    }]);
    cluster::apply(&client, class).await;
    for name in ["one", "two"] {
        cluster::apply(&client, pod(&ns, name, "app")).await;
    }
    for name in ["one", "two"] {
        running(cluster, &client, &ns, name).await;
    }
    for name in ["one", "two"] {
        until(
            cluster,
            &format!("a FailedToCreateSecret event on {name}"),
            || async {
                cluster::list(&client, "v1", "Event", &ns)
                    .await
                    .into_iter()
                    .find(|e| {
                        e["reason"] == "FailedToCreateSecret"
                            && e["involvedObject"]["name"] == name
                            && e["message"]
                                .as_str()
                                .is_some_and(|m| m.contains("may not manage Secrets"))
                    })
            },
        )
        .await;
    }
    assert!(
        cluster::get(&client, "v1", "Secret", Some(&ns), "never")
            .await
            .is_none()
    );
    let logs = cluster.driver_logs()[log_start..].to_owned();
    assert_eq!(
        logs.matches("secretObjects cannot be synced").count(),
        1,
        "one warning for the whole node:\n{logs}"
    );

    // Restore what deploy/ grants.
    let mut restored = binding;
    restored["metadata"] = json!({"name": "secretprovidersyncing-rolebinding"});
    cluster::apply(&client, restored).await;
    cluster::delete(&client, "v1", "Namespace", None, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_driver_keeps_mounted_pods_mounted_and_rotating() {
    let Some(cluster) = cluster::cluster() else {
        return;
    };
    let _alone = cluster.exclusive().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("restart").await;
    let source = cluster.local_root.join(format!("{ns}.yaml"));
    let (_, volume) = run_local_app(
        cluster,
        &client,
        &ns,
        "token: before-restart\n",
        "- objectName: token\n",
    )
    .await;

    cluster.crash_and_restart_driver();
    assert!(
        support::mount_line(&volume).is_some(),
        "the mount outlives the driver"
    );
    assert_eq!(
        std::fs::read_to_string(volume.join("token")).unwrap(),
        "before-restart"
    );
    std::fs::write(&source, "token: after-restart\n").unwrap();
    until(cluster, "a rotation by the new driver", || async {
        (std::fs::read_to_string(volume.join("token")).ok()? == "after-restart").then_some(())
    })
    .await;
    let pod = cluster::get(&client, "v1", "Pod", Some(&ns), "app")
        .await
        .unwrap();
    assert_eq!(pod["status"]["phase"], "Running");
    cluster::delete(&client, "v1", "Namespace", None, &ns).await;
}

/// OpenBao with Kubernetes auth reviewing tokens at the cluster's API server through a
/// reviewer of `ns` that may create TokenReviews, as Vault's docs set it up; role `app` for
/// `ns/app-sa` with policy `app` (which the caller writes). [`remove_reviewer`] undoes the
/// cluster-wide binding.
async fn openbao_for(
    cluster: &Cluster,
    client: &kube::Client,
    ns: &str,
) -> Option<support::openbao::OpenBao> {
    let bao = support::openbao::OpenBao::start()?;
    cluster::apply(client, service_account(ns, "vault-reviewer", json!({}))).await;
    cluster::apply(
        client,
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("{ns}-reviewer")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
            "subjects": [{"kind": "ServiceAccount", "name": "vault-reviewer", "namespace": ns}],
        }),
    )
    .await;
    let reviewer = cluster::service_account_token(client, ns, "vault-reviewer").await;
    bao.enable_kubernetes_auth_in(
        None,
        &support::openbao::KubernetesAuth {
            url: cluster.api_url.clone(),
            ca_pem: cluster.ca_pem.clone(),
            reviewer_jwt: reviewer,
        },
    );
    bao.kubernetes_role("app", ns, "app-sa", "app");
    cluster::apply(client, service_account(ns, "app-sa", json!({}))).await;
    Some(bao)
}

async fn remove_reviewer(client: &kube::Client, ns: &str) {
    cluster::delete(
        client,
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        None,
        &format!("{ns}-reviewer"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_logs_in_with_the_token_kubelet_requested_through_the_real_token_review() {
    let Some(cluster) = cluster::cluster() else {
        return;
    };
    let _shared = cluster.shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("vault").await;
    let Some(bao) = openbao_for(cluster, &client, &ns).await else {
        return;
    };
    let password = format!("vault-password-{ns}");
    bao.app_secret(&password);
    let vault = class(
        &ns,
        "vault-app",
        "vault",
        json!({
            "vaultAddress": bao.addr,
            "roleName": "app",
            "objects": "- objectName: password\n  secretPath: secret/data/app\n  secretKey: password\n",
        }),
    );
    let (_, volume) = run_app(cluster, &client, vault, Some("app-sa")).await;
    assert_eq!(
        std::fs::read_to_string(volume.join("password")).unwrap(),
        password
    );
    let logins = bao
        .requests()
        .into_iter()
        .filter(|(_, path)| path == "auth/kubernetes/login")
        .count();
    assert!(logins >= 1, "logged in through OpenBao's Kubernetes auth");
    assert!(!cluster.driver_logs().contains(&password));
    cluster::delete(&client, "v1", "Namespace", None, &ns).await;
    remove_reviewer(&client, &ns).await;
}

/// Service account `app-sa` of `ns`, annotated for IRSA with role `app`.
async fn irsa_account(client: &kube::Client, ns: &str) {
    let role = json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/app"});
    cluster::apply(client, service_account(ns, "app-sa", role)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_irsa_assumes_the_role_with_kubelets_token_against_moto() {
    let Some(cluster) = cluster::cluster() else {
        return;
    };
    let _shared = cluster.shared().await;
    let Some(moto) = support::moto::Moto::start_proxy_on(cluster.aws_port).await else {
        return;
    };
    let client = cluster.client().await;
    let ns = cluster.namespace("aws").await;
    let value = format!("aws-secret-{ns}");
    moto.create_secret("us-east-1", "prod/db", &value).await;
    irsa_account(&client, &ns).await;
    let aws = class(
        &ns,
        "aws-app",
        "aws",
        json!({
            "region": "us-east-1",
            "objects": "- objectName: prod/db\n  objectType: secretsmanager\n",
        }),
    );
    let (_, volume) = run_app(cluster, &client, aws, Some("app-sa")).await;
    assert_eq!(
        std::fs::read_to_string(volume.join("prod_db")).unwrap(),
        value
    );
    assert!(moto.count("AssumeRoleWithWebIdentity") >= 1);
    assert!(!cluster.driver_logs().contains(&value));
    cluster::delete(&client, "v1", "Namespace", None, &ns).await;
}

/// The SecretProviderClassPodStatus's object versions by id.
async fn recorded_versions(
    client: &kube::Client,
    ns: &str,
    record: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let status = cluster::get(
        client,
        GROUP_V1,
        "SecretProviderClassPodStatus",
        Some(ns),
        record,
    )
    .await?;
    let objects = status["status"]["objects"].as_array()?;
    Some(
        objects
            .iter()
            .map(|o| {
                (
                    o["id"].as_str().unwrap_or_default().to_owned(),
                    o["version"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
    )
}

fn secret_value(secret: &Value, key: &str) -> String {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(secret["data"][key].as_str().unwrap_or_default())
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templated_file_joins_vault_objects_follows_a_rotated_input_and_syncs_into_a_secret() {
    let Some(cluster) = cluster::cluster() else {
        return;
    };
    let _shared = cluster.shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("tmplvault").await;
    let Some(bao) = openbao_for(cluster, &client, &ns).await else {
        return;
    };
    let (first, second) = (format!("pg-first-{ns}"), format!("pg-second-{ns}"));
    bao.bao(&[
        "kv",
        "put",
        "secret/db",
        "username=app",
        &format!("password={first}"),
    ]);
    bao.bao(&["kv", "put", "secret/db-host", "host=db.internal"]);
    bao.policy(
        "app",
        r#"path "secret/data/db" { capabilities = ["read"] }
           path "secret/data/db-host" { capabilities = ["read"] }"#,
    );
    let templates = r#"- fileName: .pgpass
  filePermission: "0400"
  template: "{{ files.host }}:5432:app:{{ files.username }}:{{ files.password }}\n"
- fileName: config/app.json
  template: '{"user": {{ files.username | tojson }}, "password": {{ files.password | tojson }}}'
"#;
    let mut vault = class(
        &ns,
        "app",
        "vault",
        json!({
            "vaultAddress": bao.addr,
            "roleName": "app",
            "objects": "- objectName: username\n  secretPath: secret/data/db\n  secretKey: username\n\
                        - objectName: password\n  secretPath: secret/data/db\n  secretKey: password\n\
                        - objectName: host\n  secretPath: secret/data/db-host\n  secretKey: host\n",
            "secrets-store.csi.k8s.io/templates": templates,
        }),
    );
    vault["spec"]["secretObjects"] = json!([{
        "secretName": "pg", "type": "Opaque",
        "data": [{"objectName": ".pgpass", "key": "pgpass"}],
    }]);
    let (_, volume) = run_app(cluster, &client, vault, Some("app-sa")).await;
    let pgpass = |password: &str| format!("db.internal:5432:app:app:{password}\n");
    let read = |file: &str| std::fs::read_to_string(volume.join(file)).unwrap();
    assert_eq!(read(".pgpass"), pgpass(&first));
    assert_eq!(mode(&volume.join(".pgpass")), 0o400);
    let config: Value = serde_json::from_str(&read("config/app.json")).unwrap();
    assert_eq!(config, json!({"user": "app", "password": first}));
    let record = format!("app-{ns}-app");
    let before = recorded_versions(&client, &ns, &record).await.unwrap();
    for id in [
        "username",
        "password",
        "host",
        "template:.pgpass",
        "template:config/app.json",
    ] {
        assert!(before.contains_key(id), "{id} in {before:?}");
    }
    let secret = until(
        cluster,
        "the Secret synced from the templated file",
        || async { cluster::get(&client, "v1", "Secret", Some(&ns), "pg").await },
    )
    .await;
    assert_eq!(secret_value(&secret, "pgpass"), pgpass(&first));

    // One input rotates: the templated files, their versions and the Secret follow it; the
    // input that did not change keeps its version.
    bao.bao(&[
        "kv",
        "put",
        "secret/db",
        "username=app",
        &format!("password={second}"),
    ]);
    until(cluster, "the re-rendered .pgpass", || async {
        (std::fs::read_to_string(volume.join(".pgpass")).ok()? == pgpass(&second)).then_some(())
    })
    .await;
    assert!(read("config/app.json").contains(&second));
    let after = until(cluster, "the record's new template versions", || async {
        let versions = recorded_versions(&client, &ns, &record).await?;
        (versions["template:.pgpass"] != before["template:.pgpass"]).then_some(versions)
    })
    .await;
    assert_eq!(after["host"], before["host"]);
    assert_ne!(
        after["template:config/app.json"],
        before["template:config/app.json"]
    );
    until(cluster, "the Secret with the rotated value", || async {
        let secret = cluster::get(&client, "v1", "Secret", Some(&ns), "pg").await?;
        (secret_value(&secret, "pgpass") == pgpass(&second)).then_some(())
    })
    .await;
    let logs = cluster.driver_logs();
    assert!(!logs.contains(&first) && !logs.contains(&second));
    cluster::delete(&client, "v1", "Namespace", None, &ns).await;
    remove_reviewer(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelets_republishes_renew_a_database_lease_until_max_ttl_and_the_pods_deletion_revokes_it()
 {
    let Some(cluster) = cluster::cluster() else {
        return;
    };
    let _shared = cluster.shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("lease").await;
    let Some(bao) = openbao_for(cluster, &client, &ns).await else {
        return;
    };
    let Some(redis) = support::redis::Redis::start() else {
        return;
    };
    // Renewed from 20 s on; kubelet republishes every ~5 s, well inside the 30 s TTL. Past
    // 60 s less than 30 s are left before the max TTL: a new credential.
    bao.redis_database(&redis, &["default_ttl=30s", "max_ttl=90s"]);
    bao.policy(
        "app",
        r#"path "database/creds/app" { capabilities = ["read"] }
           path "sys/leases/revoke" { capabilities = ["update"] }"#,
    );
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vault-database.yaml");
    let mut db: Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    db["metadata"]["namespace"] = json!(ns);
    db["spec"]["parameters"]["vaultAddress"] = json!(bao.addr);
    let (_, volume) = run_app(cluster, &client, db, Some("app-sa")).await;
    let issued = std::time::Instant::now();
    let read = || {
        let file = |name: &str| std::fs::read_to_string(volume.join(name)).ok();
        Some((file("db-username")?, file("db-password")?))
    };
    let first = read().unwrap();
    assert!(
        redis.auth(&first.0, &first.1),
        "the issued credential works"
    );
    let record = format!("app-{ns}-db");
    let before = recorded_versions(&client, &ns, &record).await.unwrap();

    let mut outlived_ttl = false;
    let second = loop {
        assert!(
            issued.elapsed() < Duration::from_secs(150),
            "no new credential within 150 s: {:?}",
            bao.requests()
        );
        let now = read().unwrap_or_else(|| first.clone());
        if now.0 != first.0 {
            break now;
        }
        if issued.elapsed() > Duration::from_secs(40) && !outlived_ttl {
            assert!(
                redis.auth(&first.0, &first.1),
                "renewed past its 30 s TTL, the credential still works"
            );
            assert_eq!(
                recorded_versions(&client, &ns, &record).await.unwrap(),
                before
            );
            outlived_ttl = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        outlived_ttl,
        "the first credential was replaced before its TTL"
    );
    assert!(redis.auth(&second.0, &second.1), "the new credential works");
    let requests = bao.requests();
    let count = |path: &str| requests.iter().filter(|(_, p)| p == path).count();
    assert_eq!(count("database/creds/app"), 2, "{requests:?}");
    assert!(count("sys/leases/renew") >= 2, "{requests:?}");
    assert_eq!(count("auth/kubernetes/login"), 1, "{requests:?}");
    until(cluster, "the record's new versions", || async {
        let versions = recorded_versions(&client, &ns, &record).await?;
        (versions["db-password"] != before["db-password"]).then_some(())
    })
    .await;

    // Deleting the pod unpublishes the volume, which revokes the lease: the user is dropped.
    cluster::delete(&client, "v1", "Pod", Some(&ns), "app").await;
    until(cluster, "the revoked credential", || async {
        (!redis.auth(&second.0, &second.1)).then_some(())
    })
    .await;
    let revocations = bao
        .requests()
        .iter()
        .filter(|(_, p)| p == "sys/leases/revoke")
        .count();
    assert_eq!(revocations, 1);
    let logs = cluster.driver_logs();
    assert!(!logs.contains(&first.1) && !logs.contains(&second.1));
    cluster::delete(&client, "v1", "Namespace", None, &ns).await;
    remove_reviewer(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templated_file_joins_aws_objects_and_a_bad_template_fails_its_mount_naming_the_line() {
    let Some(cluster) = cluster::cluster() else {
        return;
    };
    let _shared = cluster.shared().await;
    let Some(moto) = support::moto::Moto::start_proxy_on(cluster.aws_port).await else {
        return;
    };
    let client = cluster.client().await;
    let ns = cluster.namespace("tmplaws").await;
    let password = format!("p@ss/{ns}");
    let credentials = json!({"username": "app", "password": password}).to_string();
    moto.create_secret("us-east-1", "prod/db", &credentials)
        .await;
    moto.put_parameter("us-east-1", "/prod/host", "String", "db.internal")
        .await;
    irsa_account(&client, &ns).await;
    let aws = |name: &str, templates: &str| {
        class(
            &ns,
            name,
            "aws",
            json!({
                "region": "us-east-1",
                "objects": "- objectName: prod/db\n  objectType: secretsmanager\n  objectAlias: db.json\n\
                            - objectName: /prod/host\n  objectType: ssmparameter\n  objectAlias: host\n",
                "secrets-store.csi.k8s.io/templates": templates,
            }),
        )
    };
    let good = r#"- fileName: app.env
  filePermission: "0440"
  template: |
    DB_USER={{ (files["db.json"] | fromjson).username }}
    DATABASE_URL=postgres://{{ (files["db.json"] | fromjson).username }}:{{ (files["db.json"] | fromjson).password | urlencode }}@{{ files.host }}/app
"#;
    let (_, volume) = run_app(cluster, &client, aws("app", good), Some("app-sa")).await;
    let encoded = password.replace('@', "%40").replace('/', "%2F");
    assert_eq!(
        std::fs::read_to_string(volume.join("app.env")).unwrap(),
        format!("DB_USER=app\nDATABASE_URL=postgres://app:{encoded}@db.internal/app\n")
    );
    assert_eq!(mode(&volume.join("app.env")), 0o440);

    // A template that does not fit the objects, and one the driver refuses: the pod does not
    // start, its event names the class, the file, the line and the gRPC code, never a value,
    // and its volume holds nothing.
    let missing = r#"- fileName: bad.env
  template: |
    USER={{ (files["db.json"] | fromjson).username }}
    PORT={{ (files["db.json"] | fromjson).port }}
"#;
    let refused = "- fileName: bad.env\n  template: \"ok\\n{% include 'x' %}\"\n";
    for (name, templates, code) in [
        ("missing", missing, "FailedPrecondition"),
        ("refused", refused, "InvalidArgument"),
    ] {
        cluster::apply(&client, aws(name, templates)).await;
        let mut bad = pod(&ns, name, name);
        bad["spec"]["serviceAccountName"] = json!("app-sa");
        cluster::apply(&client, bad).await;
        let expected = format!("template for \"bad.env\" in SecretProviderClass {ns}/{name}");
        let event = until(
            cluster,
            &format!("the FailedMount event of {name}"),
            || async {
                cluster::list(&client, "v1", "Event", &ns)
                    .await
                    .into_iter()
                    .find(|e| {
                        e["reason"] == "FailedMount"
                            && e["involvedObject"]["name"] == name
                            && e["message"].as_str().is_some_and(|m| m.contains(&expected))
                    })
            },
        )
        .await;
        let message = event["message"].as_str().unwrap();
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains(&format!("code = {code}")), "{message}");
        assert!(
            !message.contains(&password) && !message.contains("db.internal"),
            "{message}"
        );
        let pod = cluster::get(&client, "v1", "Pod", Some(&ns), name)
            .await
            .unwrap();
        assert_ne!(pod["status"]["phase"], "Running");
        let target = cluster.volume_path(pod["metadata"]["uid"].as_str().unwrap(), "secrets");
        assert!(
            support::mounts_under(&target).is_empty(),
            "{target:?} left mounted"
        );
        let left: Vec<_> = std::fs::read_dir(&target)
            .map(|dir| dir.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{left:?} left in {target:?}");
    }
    assert!(!cluster.driver_logs().contains(&password));
    cluster::delete(&client, "v1", "Namespace", None, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1alpha1_class_served_by_the_real_api_server_mounts() {
    let Some(cluster) = cluster::cluster() else {
        return;
    };
    let _shared = cluster.shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("alpha").await;
    std::fs::write(cluster.local_root.join(format!("{ns}.yaml")), "k: legacy\n").unwrap();
    let mut old = local_class(&ns, "old", &format!("{ns}.yaml"), "- objectName: k\n");
    old["apiVersion"] = json!("secrets-store.csi.x-k8s.io/v1alpha1");
    let (_, volume) = run_app(cluster, &client, old, None).await;
    assert_eq!(std::fs::read_to_string(volume.join("k")).unwrap(), "legacy");
    cluster::delete(&client, "v1", "Namespace", None, &ns).await;
}

/// The SecretProviderClasses of `examples/`, the README and upstream's own tests.
fn documented_classes() -> Vec<(String, Value)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources: Vec<(String, String)> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "quickstart-secrets.yaml")
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    sources.push((
        "tests/fixtures/upstream-spcs.yaml".to_owned(),
        std::fs::read_to_string(root.join("tests/fixtures/upstream-spcs.yaml")).unwrap(),
    ));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for (i, block) in readme.split("```yaml").skip(1).enumerate() {
        let block = block.split("```").next().unwrap();
        if block.contains("kind: SecretProviderClass") {
            sources.push((format!("README.md yaml block {i}"), block.to_owned()));
        }
    }
    sources
        .into_iter()
        .flat_map(|(from, text)| {
            cluster::yaml_documents(&text)
                .into_iter()
                .filter(|d| d["kind"] == "SecretProviderClass")
                .map(move |d| (from.clone(), d))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crds_from_deploy_accept_every_documented_class_and_reject_a_malformed_one() {
    let Some(cluster) = cluster::cluster() else {
        return;
    };
    let _shared = cluster.shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("schema").await;
    let classes = documented_classes();
    assert!(classes.len() >= 10, "{} classes", classes.len());
    for (from, mut class) in classes {
        class["metadata"]["namespace"] = json!(ns);
        cluster::try_apply(&client, &class)
            .await
            .unwrap_or_else(|e| panic!("{from}: {}: {e}", class["metadata"]["name"]));
    }
    // What the README says the API server answers.
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    for (spec, expected) in [
        (
            json!({"provider": "vault", "parameters": {"roleName": 5}}),
            "spec.parameters.roleName: Invalid value: \"integer\"",
        ),
        (
            json!({"provder": "vault"}),
            "unknown field \"spec.provder\"",
        ),
    ] {
        let bad = json!({
            "apiVersion": GROUP_V1, "kind": "SecretProviderClass",
            "metadata": {"name": "bad", "namespace": ns}, "spec": spec,
        });
        let path = format!("/apis/{GROUP_V1}/namespaces/{ns}/secretproviderclasses");
        let message = cluster::create_strict(&client, &path, &bad)
            .await
            .unwrap_err()
            .to_string();
        assert!(message.contains(expected), "{message}");
        assert!(readme.contains(expected), "the README shows {expected:?}");
    }
    cluster::delete(&client, "v1", "Namespace", None, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_sanity_passes_against_the_node_socket() {
    let Some(cluster) = cluster::cluster() else {
        return;
    };
    let _shared = cluster.shared().await;
    // Every spec that needs CreateVolume or a working Controller service: the driver, as
    // upstream, serves inline ephemeral volumes only and registers an unimplemented
    // Controller.
    const SKIPPED: &[&str] = &[
        "Controller Service",
        "ListSnapshots",
        "DeleteSnapshot",
        "CreateSnapshot",
        "ExpandVolume",
        "should work",
        "should be idempotent",
        "should fail when the volume is missing",
        "should fail when the node does not exist",
        "NodeGetVolumeStats",
        "should return appropriate values",
        "Node Service NodeStageVolume",
        "Node Service NodeUnstageVolume",
        "ModifyVolume",
        "should remove target path",
    ];
    // The paths are below a running pod's directory: kubelet's housekeeping deletes the
    // directories of pods it does not know, which raced with csi-sanity's own mkdir.
    let client = cluster.client().await;
    let ns = cluster.namespace("sanity").await;
    let (pod, _) = run_local_app(
        cluster,
        &client,
        &ns,
        "token: sanity\n",
        "- objectName: token\n",
    )
    .await;
    let pod_dir = cluster
        .kubelet_root
        .join("pods")
        .join(pod["metadata"]["uid"].as_str().unwrap());
    let mount = pod_dir.join("volumes/kubernetes.io~csi/sanity/mount");
    let staging = pod_dir.join("volumes/kubernetes.io~csi/staging/mount");
    // csi-sanity creates the two directories themselves, not their parents.
    for dir in [&mount, &staging] {
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    }
    let output = std::process::Command::new(cluster.bin().join("csi-sanity"))
        .args([
            format!("--csi.endpoint={}", cluster.driver_socket.display()),
            format!("--csi.mountdir={}", mount.display()),
            format!("--csi.stagingdir={}", staging.display()),
            format!("--ginkgo.skip={}", SKIPPED.join("|")),
            "--ginkgo.no-color".to_owned(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "csi-sanity failed:\n{text}");
    let ran = text
        .lines()
        .find(|l| l.contains("Ran ") && l.contains(" Specs"))
        .unwrap_or_default()
        .to_owned();
    eprintln!("csi-sanity: {ran}");
    assert!(!ran.starts_with("Ran 0 "), "{text}");
    cluster::delete(&client, "v1", "Namespace", None, &ns).await;
}
