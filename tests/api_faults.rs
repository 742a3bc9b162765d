//! What a real API server cannot be made to do on demand: failing (5xx), conflicting (409
//! storms) and slow answers, from the fake API server (`tests/support/apiserver.rs`). Every
//! other Kubernetes behaviour is tested against real servers.

mod support;

use std::time::Duration;

use serde_json::json;
use support::apiserver::ApiFault;
use support::{Driver, FakeApiServer, Pod, eventually, mount_line, secret_data, spc, unpublish};
use tonic::Code;

const GROUP: &str = "secrets-store.csi.x-k8s.io";
const VALUE: &str = "fault-value-3c8e";

async fn local(api: &FakeApiServer, args: &[&str]) -> Driver {
    let driver = Driver::start(api, args).await;
    std::fs::write(driver.local_root.join("s.yaml"), format!("a: {VALUE}\n")).unwrap();
    driver
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_api_server_fails_the_mount_with_unavailable_and_leaves_nothing() {
    if !support::require_root() {
        return;
    }
    let api = FakeApiServer::start().await;
    let driver = local(&api, &[]).await;
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc("ns", "c", "local", json!({"source": "s.yaml"})),
    );
    // kube's client itself retries 503s, as it should; a 500 is final.
    api.inject(ApiFault::status(
        GROUP,
        "secretproviderclasses",
        "GET",
        500,
        1,
    ));
    let pod = Pod::new("p", "ns");
    let target = driver.target(&pod.uid, "v");
    let mut node = driver.node();
    let result = node.node_publish_volume(pod.publish(&target, "c")).await;
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(
        status
            .message()
            .contains("failed to get secretproviderclass ns/c"),
        "{}",
        status.message()
    );
    assert!(mount_line(&target).is_none() && !target.exists());
    // kubelet's retry works once the server does.
    node.node_publish_volume(pod.publish(&target, "c"))
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), VALUE);
    node.node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();
    driver.assert_logs_free_of(&[VALUE]);
}

#[tokio::test(flavor = "multi_thread")]
async fn conflict_storms_on_records_and_secrets_are_retried_and_beyond_them_the_mount_is_undone() {
    if !support::require_root() {
        return;
    }
    let api = FakeApiServer::start().await;
    let driver = local(&api, &["--secret-sync-resync-interval=1s"]).await;
    let mut class = spc("ns", "c", "local", json!({"source": "s.yaml"}));
    class["spec"]["secretObjects"] = json!([{
        "secretName": "synced", "type": "Opaque", "data": [{"objectName": "a", "key": "a"}],
    }]);
    api.insert(GROUP, "secretproviderclasses", class);
    let mut node = driver.node();

    // A record that exists already (a pod of the same name before), and three conflicting
    // writers: the update is retried on fresh reads.
    let mut pod = Pod::new("p", "ns");
    pod.create_in(&api, "v", "c", None);
    api.insert(
        GROUP,
        "secretproviderclasspodstatuses",
        json!({
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClassPodStatus",
            "metadata": {"name": "p-ns-c", "namespace": "ns"},
            "status": {"podName": "p", "mounted": true, "targetPath": "/old"},
        }),
    );
    api.inject(ApiFault::status(
        GROUP,
        "secretproviderclasspodstatuses",
        "PUT",
        409,
        3,
    ));
    // The first Secret writes meet other writers too.
    api.inject(ApiFault::status("", "secrets", "POST", 409, 2));
    let target = driver.target(&pod.uid, "v");
    node.node_publish_volume(pod.publish(&target, "c"))
        .await
        .unwrap();
    let record = api
        .get(GROUP, "secretproviderclasspodstatuses", "ns", "p-ns-c")
        .unwrap();
    assert_eq!(record["status"]["targetPath"], target.display().to_string());
    let secret = eventually(Duration::from_secs(15), "the synced Secret", || {
        api.get("", "secrets", "ns", "synced")
    })
    .await;
    assert_eq!(secret_data(&secret)["a"], VALUE.as_bytes());

    // More conflicts than the retries: the mount is refused (kubelet retries) and undone.
    let mut other = Pod::new("q", "ns");
    other.create_in(&api, "v", "c", None);
    api.insert(
        GROUP,
        "secretproviderclasspodstatuses",
        json!({
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClassPodStatus",
            "metadata": {"name": "q-ns-c", "namespace": "ns"},
            "status": {"podName": "q", "mounted": true, "targetPath": "/old"},
        }),
    );
    api.inject(ApiFault::status(
        GROUP,
        "secretproviderclasspodstatuses",
        "PUT",
        409,
        50,
    ));
    let target = driver.target(&other.uid, "v");
    let status = node
        .node_publish_volume(other.publish(&target, "c"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{}", status.message());
    assert!(mount_line(&target).is_none() && !target.exists());
    driver.assert_logs_free_of(&[VALUE]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_api_server_past_kubelets_deadline_leaves_one_mount_for_the_retry() {
    if !support::require_root() {
        return;
    }
    let api = FakeApiServer::start().await;
    let driver = local(&api, &[]).await;
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc("ns", "c", "local", json!({"source": "s.yaml"})),
    );
    api.inject(ApiFault::delay(
        GROUP,
        "secretproviderclasses",
        "GET",
        Duration::from_secs(3),
        1,
    ));
    let pod = Pod::new("p", "ns");
    let target = driver.target(&pod.uid, "v");
    let mut node = driver.node();
    let mut request = tonic::Request::new(pod.publish(&target, "c"));
    request.set_timeout(Duration::from_secs(1));
    let status = node.node_publish_volume(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // kubelet retries while the first call still runs: refused, never doubled.
    let status = node
        .node_publish_volume(pod.publish(&target, "c"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{}", status.message());
    // Then the retry after it finished finds the volume published, with one mount.
    tokio::time::sleep(Duration::from_secs(3)).await;
    node.node_publish_volume(pod.publish(&target, "c"))
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), VALUE);
    let canonical = target.canonicalize().unwrap();
    let layers = support::mounts_under(&canonical)
        .into_iter()
        .filter(|p| std::path::Path::new(p) == canonical)
        .count();
    assert_eq!(layers, 1);
    node.node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();
}
