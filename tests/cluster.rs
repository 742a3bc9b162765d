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

fn local_class(namespace: &str, name: &str, source: &str, objects: &str) -> Value {
    json!({
        "apiVersion": GROUP_V1,
        "kind": "SecretProviderClass",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"provider": "local", "parameters": {"source": source, "objects": objects}},
    })
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
    std::fs::write(
        cluster.local_root.join(format!("{ns}.yaml")),
        format!("alpha: {alpha}\nnested: nested-{ns}\n"),
    )
    .unwrap();
    cluster::apply(
        &client,
        local_class(
            &ns,
            "app",
            &format!("{ns}.yaml"),
            "- objectName: alpha\n- objectName: nested\n  objectAlias: dir/nested\n  filePermission: \"0600\"\n",
        ),
    )
    .await;
    cluster::apply(&client, pod(&ns, "app", "app")).await;
    let pod = running(cluster, &client, &ns, "app").await;
    assert_eq!(pod["spec"]["nodeName"], NODE);
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    let volume = cluster.volume_path(&uid, "secrets");
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
