//! Sync of mounted files into Kubernetes Secrets, and rotation: the real driver binary, real
//! tmpfs mounts, the `local` provider, and the fake API server with its garbage collector.

mod support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::provider::{Behaviour, FakeProvider};
use support::{
    ApiServer, Driver, Pod, TestApi, eventually, pem, pod_events, read_tree, secret_data, workload,
};

const GROUP: &str = "secrets-store.csi.x-k8s.io";
const ALPHA: &str = "alpha-value-5d1f";
const NESTED: &str = "nested-value-88e0";
const WAIT: Duration = Duration::from_secs(15);

/// A PEM bundle as providers return it: a PKCS#8 P-256 key, a leaf and an intermediate.
fn tls_bundle() -> (String, String) {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let chain = format!(
        "{}{}",
        pem("CERTIFICATE", b"leaf-certificate-der"),
        pem("CERTIFICATE", b"intermediate-certificate-der")
    );
    (
        format!("{}{chain}", pem("PRIVATE KEY", key.as_ref())),
        chain,
    )
}

fn class_with_secrets(
    namespace: &str,
    name: &str,
    objects: &str,
    secret_objects: Value,
    annotations: Value,
) -> Value {
    json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {
            "provider": "local",
            "parameters": {"source": "secrets.yaml", "objects": objects},
            "secretObjects": secret_objects,
        },
    })
}

fn write_source(driver: &Driver, alpha: &str) {
    let (bundle, _) = tls_bundle();
    let indented: String = bundle.lines().map(|l| format!("  {l}\n")).collect();
    std::fs::write(
        driver.local_root.join("secrets.yaml"),
        format!("alpha: {alpha}\nnested: {NESTED}\nbundle: |\n{indented}"),
    )
    .unwrap();
}

fn secret(api: &dyn TestApi, namespace: &str, name: &str) -> Option<Value> {
    api.get("", "secrets", namespace, name)
}

fn owner_uids(secret: &Value) -> Vec<String> {
    let mut uids: Vec<String> = secret["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| o["uid"].as_str().unwrap().to_owned())
        .collect();
    uids.sort();
    uids
}

#[tokio::test(flavor = "multi_thread")]
async fn secret_objects_sync_owned_by_the_pods_controller_and_bad_entries_fail_alone() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(&api, &["--secret-sync-resync-interval=1s"]).await;
    let (bundle, chain) = tls_bundle();
    let indented: String = bundle.lines().map(|l| format!("  {l}\n")).collect();
    std::fs::write(
        driver.local_root.join("secrets.yaml"),
        format!("alpha: {ALPHA}\nnested: {NESTED}\nbundle: |\n{indented}"),
    )
    .unwrap();
    let objects = "- objectName: alpha\n- objectName: nested\n  objectAlias: dir/nested\n- objectName: bundle\n";
    api.insert(
        GROUP,
        "secretproviderclasses",
        class_with_secrets(
            "team",
            "app",
            objects,
            json!([
                {"secretName": "app-secret", "type": "Opaque",
                 "labels": {"team": "payments"}, "annotations": {"owner": "sre"},
                 "data": [{"objectName": "alpha", "key": "ALPHA"}, {"objectName": "dir/nested", "key": "NESTED"}]},
                {"secretName": "app-tls", "type": "kubernetes.io/tls",
                 "data": [{"objectName": "bundle", "key": "tls.crt"}, {"objectName": "bundle", "key": "tls.key"}]},
                {"secretName": "no-type", "data": [{"objectName": "alpha", "key": "a"}]},
                {"secretName": "bad-object", "type": "Opaque", "data": [{"objectName": "missing", "key": "m"}]},
                {"secretName": "taken", "type": "Opaque", "data": [{"objectName": "alpha", "key": "a"}]},
            ]),
            json!({}),
        ),
    );
    api.insert(
        "",
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "taken", "namespace": "team"},
               "type": "Opaque", "data": {"mine": "dXNlcg=="}}),
    );
    let rs = workload(&api, "replicasets", "ReplicaSet", "team", "web-7c9", None);
    let mut pod = Pod::new("web-7c9-x1", "team");
    pod.create_in(&api, "secrets", "app", Some(("ReplicaSet", &rs)));
    driver.publish_ok(&pod, "secrets", "app").await;

    let synced = eventually(WAIT, "app-secret", || secret(&api, "team", "app-secret")).await;
    let data = secret_data(&synced);
    assert_eq!(data["ALPHA"], ALPHA.as_bytes());
    assert_eq!(data["NESTED"], NESTED.as_bytes());
    assert_eq!(synced["type"], "Opaque");
    assert_eq!(synced["metadata"]["labels"]["team"], "payments");
    assert_eq!(
        synced["metadata"]["labels"]["secrets-store.csi.k8s.io/managed"],
        "true"
    );
    assert_eq!(synced["metadata"]["annotations"]["owner"], "sre");
    let owners = synced["metadata"]["ownerReferences"].as_array().unwrap();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(owners[0]["kind"], "ReplicaSet");
    assert_eq!(owners[0]["uid"], rs["metadata"]["uid"]);

    let tls = eventually(WAIT, "app-tls", || secret(&api, "team", "app-tls")).await;
    assert_eq!(tls["type"], "kubernetes.io/tls");
    let tls_data = secret_data(&tls);
    assert_eq!(
        String::from_utf8(tls_data["tls.crt"].clone()).unwrap(),
        chain
    );
    let key = String::from_utf8(tls_data["tls.key"].clone()).unwrap();
    assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----\n"), "{key}");
    assert_eq!(key.matches("-----BEGIN").count(), 1, "only the key");
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    assert!(
        der.windows(p256.len()).any(|w| w == p256),
        "SEC1 names its curve"
    );

    // Each bad entry fails alone, with a Warning naming it; the user's Secret is untouched.
    let events = eventually(WAIT, "three FailedToCreateSecret events", || {
        let events: Vec<_> = pod_events(&api, "team", &pod.name)
            .into_iter()
            .filter(|(kind, reason, _)| kind == "Warning" && reason == "FailedToCreateSecret")
            .collect();
        (events.len() >= 3).then_some(events)
    })
    .await;
    let messages: Vec<&str> = events.iter().map(|e| e.2.as_str()).collect();
    let has = |needle: &str| messages.iter().any(|m| m.contains(needle));
    assert!(
        has("secretObjects[2] (secretName no-type)") && has("type is empty"),
        "{messages:?}"
    );
    assert!(
        has("secretObjects[3] (secretName bad-object)")
            && has("file matching objectName missing not found"),
        "{messages:?}"
    );
    assert!(
        has("Secret team/taken already exists and is not managed"),
        "{messages:?}"
    );
    assert!(secret(&api, "team", "no-type").is_none());
    assert!(secret(&api, "team", "bad-object").is_none());
    let taken = secret(&api, "team", "taken").unwrap();
    assert_eq!(secret_data(&taken)["mine"], b"user");
    assert!(taken["metadata"]["ownerReferences"].is_null());

    // A deleted synced Secret comes back while the pod runs, and an edit is reverted.
    api.delete("", "secrets", "team", "app-secret");
    let recreated = eventually(WAIT, "app-secret recreated", || {
        secret(&api, "team", "app-secret")
    })
    .await;
    assert_eq!(secret_data(&recreated)["ALPHA"], ALPHA.as_bytes());
    api.patch(
        "",
        "secrets",
        "team",
        "app-secret",
        &json!({"data": {"ALPHA": base64::engine::general_purpose::STANDARD.encode("tampered")}}),
    );
    eventually(WAIT, "app-secret repaired", || {
        secret(&api, "team", "app-secret").filter(|s| secret_data(s)["ALPHA"] == ALPHA.as_bytes())
    })
    .await;

    // A changed type cannot be written in place: the Secret is replaced, keeping its owners.
    let mut class = api
        .get(GROUP, "secretproviderclasses", "team", "app")
        .unwrap();
    class["spec"]["secretObjects"][0]["type"] = json!("example.com/custom");
    api.patch(
        GROUP,
        "secretproviderclasses",
        "team",
        "app",
        &json!({"spec": {"secretObjects": class["spec"]["secretObjects"]}}),
    );
    let retyped = eventually(WAIT, "app-secret retyped on resync", || {
        secret(&api, "team", "app-secret").filter(|s| s["type"] == "example.com/custom")
    })
    .await;
    assert_ne!(retyped["metadata"]["uid"], recreated["metadata"]["uid"]);
    assert_eq!(
        owner_uids(&retyped),
        [rs["metadata"]["uid"].as_str().unwrap()]
    );
    assert_eq!(secret_data(&retyped)["ALPHA"], ALPHA.as_bytes());

    let metrics = support::metrics(driver.metrics_port).await;
    assert!(
        metrics.contains("sync_k8s_secret_total{provider=\"local\",os_type=\"linux\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("error_type=\"SecretNotManaged\""),
        "{metrics}"
    );
    driver.assert_logs_free_of(&[ALPHA, NESTED, "leaf-certificate-der"]);
    let key_line = bundle.lines().nth(1).unwrap();
    driver.assert_logs_free_of(&[key_line]);
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_secrets_keep_one_owner_per_workload_until_garbage_collection() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(&api, &[]).await;
    write_source(&driver, ALPHA);
    let sync = json!([{"secretName": "shared", "type": "Opaque",
                        "data": [{"objectName": "alpha", "key": "alpha"}]}]);
    for class in ["app", "solo"] {
        api.insert(
            GROUP,
            "secretproviderclasses",
            class_with_secrets(
                "team",
                class,
                "- objectName: alpha\n",
                if class == "app" {
                    sync.clone()
                } else {
                    json!([{"secretName": "solo", "type": "Opaque",
                            "data": [{"objectName": "alpha", "key": "alpha"}]}])
                },
                json!({}),
            ),
        );
    }
    let rs_a = workload(&api, "replicasets", "ReplicaSet", "team", "a-1", None);
    let rs_b = workload(&api, "replicasets", "ReplicaSet", "team", "b-1", None);
    let mut pod_a = Pod::new("a-1-x", "team");
    pod_a.create_in(&api, "v", "app", Some(("ReplicaSet", &rs_a)));
    let mut pod_b = Pod::new("b-1-x", "team");
    pod_b.create_in(&api, "v", "app", Some(("ReplicaSet", &rs_b)));
    driver.publish_ok(&pod_a, "v", "app").await;
    driver.publish_ok(&pod_b, "v", "app").await;
    let mut expected = vec![
        rs_a["metadata"]["uid"].as_str().unwrap().to_owned(),
        rs_b["metadata"]["uid"].as_str().unwrap().to_owned(),
    ];
    expected.sort();
    eventually(WAIT, "two owners", || {
        secret(&api, "team", "shared").filter(|s| owner_uids(s) == expected)
    })
    .await;

    // Deleting one Deployment's ReplicaSet: the garbage collector strips its reference (and
    // deletes its pods, which stay Terminating without a kubelet to confirm).
    api.delete("apps", "replicasets", "team", "a-1");
    eventually(WAIT, "the pod deleted with its ReplicaSet", || {
        let pod = api.get("", "pods", "team", "a-1-x");
        pod.is_none_or(|p| !p["metadata"]["deletionTimestamp"].is_null())
            .then_some(())
    })
    .await;
    let only_b = [rs_b["metadata"]["uid"].as_str().unwrap().to_owned()];
    eventually(WAIT, "one owner left", || {
        secret(&api, "team", "shared").filter(|s| owner_uids(s) == only_b)
    })
    .await;
    // The driver does not put the dead owner back on its periodic or event-driven passes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(owner_uids(&secret(&api, "team", "shared").unwrap()), only_b);
    api.delete("apps", "replicasets", "team", "b-1");
    eventually(WAIT, "the Secret collected with its last owner", || {
        secret(&api, "team", "shared").is_none().then_some(())
    })
    .await;

    // A bare pod's Secret is owned by the status record, which the pod owns.
    let mut bare = Pod::new("bare", "team");
    bare.create_in(&api, "v", "solo", None);
    driver.publish_ok(&bare, "v", "solo").await;
    let solo = eventually(WAIT, "solo", || secret(&api, "team", "solo")).await;
    let owners = solo["metadata"]["ownerReferences"].as_array().unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0]["kind"], "SecretProviderClassPodStatus");
    assert_eq!(owners[0]["apiVersion"], "secrets-store.csi.x-k8s.io/v1");
    assert_eq!(owners[0]["name"], "bare-team-solo");
    // Without a kubelet the pod is removed at once (grace period 0), as kubelet would confirm.
    let client = api.client();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, "team");
    pods.delete("bare", &kube::api::DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually(
        WAIT,
        "the record and its Secret collected with the pod",
        || {
            let record = api.get(
                GROUP,
                "secretproviderclasspodstatuses",
                "team",
                "bare-team-solo",
            );
            (record.is_none() && secret(&api, "team", "solo").is_none()).then_some(())
        },
    )
    .await;
    driver.assert_logs_free_of(&[ALPHA]);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_secret_rbac_mounts_work_and_one_warning_names_the_fix() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    // deploy/ without its sync role binding: the real RBAC answers 403.
    api.delete(
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "",
        "secretprovidersyncing-rolebinding",
    );
    let driver = Driver::start(&api, &[]).await;
    write_source(&driver, ALPHA);
    api.insert(
        GROUP,
        "secretproviderclasses",
        class_with_secrets(
            "team",
            "app",
            "- objectName: alpha\n",
            json!([{"secretName": "s", "type": "Opaque", "data": [{"objectName": "alpha", "key": "a"}]}]),
            json!({}),
        ),
    );
    for name in ["p1", "p2"] {
        let mut pod = Pod::new(name, "team");
        pod.create_in(&api, "v", "app", None);
        driver.publish_ok(&pod, "v", "app").await;
        let files = read_tree(&driver.target(&pod.uid, "v"));
        assert_eq!(files[0].1, ALPHA.as_bytes());
    }
    eventually(WAIT, "Forbidden events on both pods", || {
        let both = ["p1", "p2"].iter().all(|p| {
            pod_events(&api, "team", p)
                .iter()
                .any(|e| e.2.contains("syncSecret.enabled=true"))
        });
        both.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = driver.logs();
    let warnings = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("syncSecret.enabled=true"))
        .count();
    assert_eq!(warnings, 1, "{logs}");
    assert!(logs.contains("secretprovidersyncing-role"), "{logs}");
}

fn status_of(api: &dyn TestApi, pod: &Pod, class: &str) -> Value {
    api.get(
        GROUP,
        "secretproviderclasspodstatuses",
        &pod.namespace,
        &format!("{}-{}-{class}", pod.name, pod.namespace),
    )
    .unwrap()
}

fn ready_condition(status: &Value) -> (String, String, String) {
    let condition = status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    let text = |f: &str| condition[f].as_str().unwrap_or_default().to_owned();
    (text("status"), text("reason"), text("message"))
}

fn file(driver: &Driver, pod: &Pod, volume: &str, name: &str) -> Option<String> {
    std::fs::read_to_string(driver.target(&pod.uid, volume).join(name)).ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_follows_the_interval_updates_files_secrets_and_versions_and_failures_show() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(
        &api,
        &["--enable-secret-rotation", "--rotation-poll-interval=1h"],
    )
    .await;
    write_source(&driver, "v1-a7c2");
    let sync = json!([{"secretName": "rot", "type": "Opaque", "data": [{"objectName": "alpha", "key": "alpha"}]}]);
    let objects = "- objectName: alpha\n- objectName: nested\n";
    api.insert(
        GROUP,
        "secretproviderclasses",
        class_with_secrets(
            "team",
            "fast",
            objects,
            sync,
            json!({"secrets-store.csi.k8s.io/rotation-poll-interval": "1s"}),
        ),
    );
    api.insert(
        GROUP,
        "secretproviderclasses",
        class_with_secrets("team", "slow", objects, json!([]), json!({})),
    );
    let mut pod = Pod::new("rot", "team");
    pod.create_in(&api, "v", "fast", None);
    let mut slow_pod = Pod::new("slow", "team");
    slow_pod.create_in(&api, "v", "slow", None);
    driver.publish_ok(&pod, "v", "fast").await;
    driver.publish_ok(&slow_pod, "v", "slow").await;
    eventually(WAIT, "rot synced", || secret(&api, "team", "rot")).await;
    let version_before = status_of(&api, &pod, "fast")["status"]["objects"].clone();
    assert_eq!(ready_condition(&status_of(&api, &pod, "fast")).1, "Mounted");

    // Before the class's interval: nothing is fetched.
    write_source(&driver, "v2-0b9e");
    driver.publish_ok(&pod, "v", "fast").await;
    assert_eq!(file(&driver, &pod, "v", "alpha").unwrap(), "v1-a7c2");

    // After it: files, Secret and versions follow; the node's 1h interval still gates `slow`.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    driver.publish_ok(&pod, "v", "fast").await;
    driver.publish_ok(&slow_pod, "v", "slow").await;
    assert_eq!(file(&driver, &pod, "v", "alpha").unwrap(), "v2-0b9e");
    assert_eq!(file(&driver, &slow_pod, "v", "alpha").unwrap(), "v1-a7c2");
    eventually(WAIT, "rot rotated", || {
        secret(&api, "team", "rot").filter(|s| secret_data(s)["alpha"] == b"v2-0b9e")
    })
    .await;
    let rotated = status_of(&api, &pod, "fast");
    assert_ne!(rotated["status"]["objects"], version_before);
    assert_eq!(ready_condition(&rotated).0, "True");
    assert_eq!(ready_condition(&rotated).1, "Rotated");
    assert!(
        pod_events(&api, "team", "rot")
            .iter()
            .any(|e| e.0 == "Normal" && e.1 == "MountRotationComplete")
    );

    // A failing backend: OK to kubelet, old files kept, and visible on the pod and record.
    std::fs::write(
        driver.local_root.join("secrets.yaml"),
        "alpha: [unterminated",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    driver.publish_ok(&pod, "v", "fast").await;
    assert_eq!(file(&driver, &pod, "v", "alpha").unwrap(), "v2-0b9e");
    let failed = status_of(&api, &pod, "fast");
    let (status, reason, message) = ready_condition(&failed);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RotationFailed")
    );
    assert!(message.contains("secrets.yaml"), "{message}");
    assert_eq!(failed["status"]["objects"], rotated["status"]["objects"]);
    assert!(
        pod_events(&api, "team", "rot")
            .iter()
            .any(|e| e.0 == "Warning"
                && e.1 == "MountRotationFailed"
                && e.2.contains("previous contents stay"))
    );
    let metrics = support::metrics(driver.metrics_port).await;
    assert!(
        metrics.contains("rotation_reconcile_error_total{provider=\"local\""),
        "{metrics}"
    );

    // Recovery clears the condition; an object removed from the class leaves the volume.
    write_source(&driver, "v3-44d1");
    api.patch(
        GROUP,
        "secretproviderclasses",
        "team",
        "fast",
        &json!({"spec": {"parameters": {"objects": "- objectName: alpha\n"}}}),
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    driver.publish_ok(&pod, "v", "fast").await;
    assert_eq!(
        file(&driver, &pod, "v", "alpha").unwrap(),
        "v3-44d1",
        "{}",
        driver.logs()
    );
    assert!(
        file(&driver, &pod, "v", "nested").is_none(),
        "removed object pruned"
    );
    let recovered = status_of(&api, &pod, "fast");
    assert_eq!(ready_condition(&recovered).0, "True");
    assert_eq!(recovered["status"]["objects"].as_array().unwrap().len(), 1);
    eventually(WAIT, "rot follows v3", || {
        secret(&api, "team", "rot").filter(|s| secret_data(s)["alpha"] == b"v3-44d1")
    })
    .await;
    driver.assert_logs_free_of(&["v1-a7c2", "v2-0b9e", "v3-44d1", NESTED]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_driver_killed_mid_rotation_restarts_with_files_and_secrets_consistent() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let mut driver = Driver::start(
        &api,
        &["--enable-secret-rotation", "--rotation-poll-interval=1s"],
    )
    .await;
    let version = |v: &str| Behaviour {
        files: vec![
            ("a".into(), 0o644, format!("a-{v}").into_bytes()),
            ("b".into(), 0o644, format!("b-{v}").into_bytes()),
        ],
        versions: vec![("a".into(), v.into()), ("b".into(), v.into())],
        ..Default::default()
    };
    let fake = FakeProvider::start(&driver.provider_dir, "fake", version("old")).await;
    api.insert(
        GROUP,
        "secretproviderclasses",
        json!({
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClass",
            "metadata": {"name": "app", "namespace": "team"},
            "spec": {"provider": "fake", "parameters": {"k": "v"},
                     "secretObjects": [{"secretName": "pair", "type": "Opaque",
                        "data": [{"objectName": "a", "key": "a"}, {"objectName": "b", "key": "b"}]}]},
        }),
    );
    let mut pod = Pod::new("p", "team");
    pod.create_in(&api, "v", "app", None);
    driver.publish_ok(&pod, "v", "app").await;
    eventually(WAIT, "pair synced", || secret(&api, "team", "pair")).await;

    // The provider answers slowly; the driver is SIGKILLed while the rotation is in flight.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut slow = version("new");
    slow.delay = Duration::from_secs(3);
    fake.set(slow);
    let target = driver.target(&pod.uid, "v");
    let mut node = driver.node();
    let request = pod.publish(&target, "app");
    let in_flight = tokio::spawn(async move { node.node_publish_volume(request).await });
    eventually(WAIT, "the rotation call", || {
        (fake.calls().len() == 2).then_some(())
    })
    .await;
    driver.crash_and_restart().await;
    assert!(
        in_flight.await.unwrap().is_err(),
        "the killed call never answered OK"
    );

    // After the restart: still mounted, the old contents whole, no half-written directory.
    assert!(support::mount_line(&target).is_some());
    assert_eq!(
        read_tree(&target)
            .iter()
            .map(|f| f.1.clone())
            .collect::<Vec<_>>(),
        [b"a-old".to_vec(), b"b-old".to_vec()]
    );
    let entries: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".."))
        .collect();
    assert_eq!(
        entries.len(),
        2,
        "..data and one timestamped dir: {entries:?}"
    );
    let data = secret_data(&secret(&api, "team", "pair").unwrap());
    assert_eq!(
        (data["a"].as_slice(), data["b"].as_slice()),
        (&b"a-old"[..], &b"b-old"[..])
    );

    // The next republish completes the rotation; files and Secret move together.
    fake.set(version("new"));
    driver.publish_ok(&pod, "v", "app").await;
    assert_eq!(std::fs::read(target.join("a")).unwrap(), b"a-new");
    assert_eq!(std::fs::read(target.join("b")).unwrap(), b"b-new");
    eventually(WAIT, "pair follows", || {
        secret(&api, "team", "pair").filter(|s| {
            let d = secret_data(s);
            d["a"] == b"a-new" && d["b"] == b"b-new"
        })
    })
    .await;
    driver.assert_logs_free_of(&["a-old", "b-old", "a-new", "b-new"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_synced_value_rolls_out_the_owning_deployment_when_asked() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    // What the chart grants with the value that turns the rollout on.
    api.apply_chart_rbac(&json!({"syncSecret": {"enabled": true, "rolloutOnChange": true}}));
    let driver = Driver::start(
        &api,
        &[
            "--enable-secret-rotation",
            "--rotation-poll-interval=1s",
            "--rollout-on-secret-change",
        ],
    )
    .await;
    write_source(&driver, "first-6d0a");
    api.insert(
        GROUP,
        "secretproviderclasses",
        class_with_secrets(
            "team",
            "app",
            "- objectName: alpha\n",
            json!([{"secretName": "env", "type": "Opaque", "data": [{"objectName": "alpha", "key": "ALPHA"}]}]),
            json!({}),
        ),
    );
    let deployment = workload(&api, "deployments", "Deployment", "team", "web", None);
    let rs = workload(
        &api,
        "replicasets",
        "ReplicaSet",
        "team",
        "web-5f6",
        Some(&deployment),
    );
    let mut pod = Pod::new("web-5f6-q", "team");
    pod.create_in(&api, "v", "app", Some(("ReplicaSet", &rs)));
    driver.publish_ok(&pod, "v", "app").await;
    eventually(WAIT, "env synced", || secret(&api, "team", "env")).await;
    let annotation = |api: &dyn TestApi| {
        api.get("apps", "deployments", "team", "web").unwrap()["spec"]["template"]["metadata"]
            ["annotations"]["secrets-store.csi.k8s.io/restartedAt"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(
        annotation(&api),
        None,
        "creating the Secret restarts nothing"
    );

    write_source(&driver, "second-90c3");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    driver.publish_ok(&pod, "v", "app").await;
    eventually(WAIT, "the Deployment's restart annotation", || {
        annotation(&api)
    })
    .await;
    // The Event is recorded after the patch, so it may trail the annotation.
    eventually(WAIT, "the RolloutTriggered Event", || {
        pod_events(&api, "team", &pod.name)
            .iter()
            .any(|e| e.1 == "RolloutTriggered" && e.2.contains("Deployment web"))
            .then_some(())
    })
    .await;
    driver.assert_logs_free_of(&["first-6d0a", "second-90c3"]);
}
