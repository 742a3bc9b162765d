//! End-to-end tests of the node plugin: the real binary, a real unix socket, real tmpfs mounts,
//! the fake API server for the Kubernetes side.

mod support;

use std::path::Path;
use std::time::Duration;

use secrets_store_csi_driver::proto::csi::v1 as csi;
use serde_json::json;
use support::provider::{Behaviour, FakeProvider};
use support::{
    ApiServer, Driver, NODE, Pod, TestApi as _, mount_line, mounts_under, read_tree, spc, unpublish,
};
use tonic::Code;

const GROUP: &str = "secrets-store.csi.x-k8s.io";
const SECRET_A: &str = "value-of-alpha-7f3a";
const SECRET_B: &str = "value-of-nested-91c2";
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.token-body-5521";

/// A driver with a local-provider SPC `app` in namespace `team` serving two objects.
async fn local_setup() -> Option<(ApiServer, Driver)> {
    let api = ApiServer::start().await?;
    let driver = Driver::start(&api, &[]).await;
    std::fs::write(
        driver.local_root.join("secrets.yaml"),
        format!("alpha: {SECRET_A}\nnested: {SECRET_B}\n"),
    )
    .unwrap();
    let objects = "- objectName: alpha\n- objectName: nested\n  objectAlias: dir/nested\n  filePermission: \"0600\"\n";
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc(
            "team",
            "app",
            "local",
            json!({"source": "secrets.yaml", "objects": objects}),
        ),
    );
    Some((api, driver))
}

/// A provider answering one file `a` holding `SECRET_A`, after `delay`.
fn one_file(delay: Duration) -> Behaviour {
    Behaviour {
        files: vec![("a".into(), 0o644, SECRET_A.into())],
        versions: vec![("a".into(), "1".into())],
        delay,
        ..Default::default()
    }
}

/// A driver with a fake provider `provider` and a class `class` in namespace `ns` using it.
async fn provider_setup(
    provider: &str,
    class: &str,
    behaviour: Behaviour,
) -> Option<(ApiServer, Driver, FakeProvider)> {
    let api = ApiServer::start().await?;
    let driver = Driver::start(&api, &[]).await;
    let fake = FakeProvider::start(&driver.provider_dir, provider, behaviour).await;
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc("ns", class, provider, json!({"k": "v"})),
    );
    Some((api, driver, fake))
}

fn assert_clean(driver: &Driver, target: &Path) {
    assert!(
        mounts_under(driver.dir.path()).is_empty(),
        "a mount was left behind: {:?}",
        mounts_under(driver.dir.path())
    );
    assert!(!target.exists(), "the target directory was left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_controller_and_node_info_answer_as_upstream() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(&api, &[]).await;
    let info = driver
        .identity()
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "secrets-store.csi.k8s.io");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let probe = driver
        .identity()
        .probe(csi::ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));
    let caps = driver
        .identity()
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let service = csi::plugin_capability::Service {
        r#type: csi::plugin_capability::service::Type::ControllerService.into(),
    };
    assert_eq!(
        caps.capabilities,
        vec![csi::PluginCapability {
            r#type: Some(csi::plugin_capability::Type::Service(service))
        }]
    );
    let controller = driver
        .controller()
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(controller.capabilities.len(), 1);

    let mut node = driver.node();
    assert_eq!(
        node.node_get_info(csi::NodeGetInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .node_id,
        NODE
    );
    let caps = node
        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let rpc = |kind: csi::node_service_capability::rpc::Type| csi::NodeServiceCapability {
        r#type: Some(csi::node_service_capability::Type::Rpc(
            csi::node_service_capability::Rpc {
                r#type: kind.into(),
            },
        )),
    };
    assert_eq!(
        caps.capabilities,
        vec![
            rpc(csi::node_service_capability::rpc::Type::StageUnstageVolume),
            rpc(csi::node_service_capability::rpc::Type::VolumeMountGroup),
        ]
    );
    let stage = csi::NodeStageVolumeRequest {
        volume_id: "v".into(),
        staging_target_path: "/s".into(),
        ..Default::default()
    };
    assert_eq!(
        node.node_stage_volume(stage.clone())
            .await
            .unwrap_err()
            .message(),
        "Volume capability missing in request"
    );
    let stage = csi::NodeStageVolumeRequest {
        volume_capability: Some(Default::default()),
        ..stage
    };
    node.node_stage_volume(stage).await.unwrap();
    let unstage = csi::NodeUnstageVolumeRequest {
        volume_id: "v".into(),
        staging_target_path: String::new(),
    };
    assert_eq!(
        node.node_unstage_volume(unstage).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let expand = node
        .node_expand_volume(csi::NodeExpandVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(expand.code(), Code::Unimplemented);
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_mounts_tmpfs_writes_files_records_status_and_unpublish_cleans_up() {
    if !support::require_root() {
        return;
    }
    let Some((api, driver)) = local_setup().await else {
        return;
    };
    // The pod exists, as under kubelet: the garbage collector removes the records of pods that
    // do not.
    let mut pod = Pod::new("web-1", "team");
    pod.register(&api, "app");
    let target = driver.target(&pod.uid, "secrets");
    let mut node = driver.node();
    node.node_publish_volume(pod.publish(&target, "app"))
        .await
        .unwrap();

    let line = mount_line(&target).expect("target is a mount point");
    assert!(line.contains(" - tmpfs "), "{line}");
    for option in ["nosuid", "nodev", "noexec"] {
        assert!(line.contains(option), "{option} missing: {line}");
    }
    assert_eq!(
        read_tree(&target),
        vec![
            ("alpha".to_owned(), SECRET_A.as_bytes().to_vec(), 0o644),
            ("dir/nested".to_owned(), SECRET_B.as_bytes().to_vec(), 0o600),
        ]
    );
    assert_eq!(
        std::fs::read_link(target.join("dir")).unwrap(),
        Path::new("..data/dir")
    );

    let status = api
        .get(
            GROUP,
            "secretproviderclasspodstatuses",
            "team",
            "web-1-team-app",
        )
        .expect("SPCPS created");
    assert_eq!(
        status["metadata"]["labels"]["internal.secrets-store.csi.k8s.io/node-name"],
        NODE
    );
    assert_eq!(status["metadata"]["ownerReferences"][0]["kind"], "Pod");
    assert_eq!(
        status["metadata"]["ownerReferences"][0]["uid"],
        pod.uid.as_str()
    );
    assert_eq!(status["status"]["mounted"], true);
    assert_eq!(status["status"]["targetPath"], target.display().to_string());
    let ids: Vec<_> = status["status"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["alpha", "dir/nested"], "sorted by id");

    // Idempotent: a second publish leaves the same data in place without a fetch.
    let data_before = std::fs::read_link(target.join("..data")).unwrap();
    std::fs::write(
        driver.local_root.join("secrets.yaml"),
        "alpha: changed\nnested: changed\n",
    )
    .unwrap();
    node.node_publish_volume(pod.publish(&target, "app"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_link(target.join("..data")).unwrap(),
        data_before
    );
    assert_eq!(
        std::fs::read(target.join("alpha")).unwrap(),
        SECRET_A.as_bytes()
    );

    node.node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();
    assert_clean(&driver, &target);
    node.node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();

    let metrics = support::metrics(driver.metrics_port).await;
    assert!(
        metrics.contains("node_publish_total{provider=\"local\",os_type=\"linux\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("node_unpublish_total{os_type=\"linux\"} 2"),
        "{metrics}"
    );
    assert!(
        !driver
            .logs()
            .contains("failed to clean and unmount target path")
    );
    driver.assert_logs_free_of(&[SECRET_A, SECRET_B]);
}

#[tokio::test(flavor = "multi_thread")]
async fn external_providers_get_upstream_attributes_and_their_files_are_written_exactly() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(&api, &[]).await;
    let behaviour = Behaviour {
        files: vec![
            ("foo".into(), 0, SECRET_A.into()),
            // Bits above 0777 are dropped, as upstream's writer drops them.
            ("nested/bar".into(), 0o1640, SECRET_B.into()),
        ],
        versions: vec![
            ("secret/foo".into(), "v1".into()),
            ("secret/bar".into(), "v1".into()),
        ],
        ..Default::default()
    };
    let provider = FakeProvider::start(&driver.provider_dir, "fake", behaviour).await;
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc(
            "default",
            "ext",
            "fake",
            json!({"objects": "x", "shadowed": "by-spc"}),
        ),
    );

    let pod = Pod::new("api-0", "default");
    let target = driver.target(&pod.uid, "v");
    let mut request = pod.publish(&target, "ext");
    request
        .volume_context
        .insert("shadowed".into(), "by-pod".into());
    request.secrets.insert(
        "csi.storage.k8s.io/serviceAccount.tokens".into(),
        format!("{{\"aud\":{{\"token\":\"{TOKEN}\"}}}}"),
    );
    request.secrets.insert(
        "clientSecret".into(),
        "node-publish-secret-ref-value".into(),
    );
    driver.node().node_publish_volume(request).await.unwrap();

    let calls = provider.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.authority, "localhost");
    assert!(
        call.target_mounted,
        "the tmpfs is mounted before the provider is called"
    );
    assert_eq!(call.permission, "420");
    assert_eq!(call.target_path, target.display().to_string());
    let attributes = &call.attributes;
    for key in [
        "csi.storage.k8s.io/pod.name",
        "csi.storage.k8s.io/pod.namespace",
        "csi.storage.k8s.io/pod.uid",
        "csi.storage.k8s.io/serviceAccount.name",
        "csi.storage.k8s.io/ephemeral",
        "secretProviderClass",
        "objects",
    ] {
        assert!(
            attributes.get(key).is_some(),
            "attribute {key} missing: {attributes}"
        );
    }
    assert_eq!(
        attributes["shadowed"], "by-pod",
        "pod attributes override SPC parameters"
    );
    let tokens: serde_json::Value = serde_json::from_str(
        attributes["csi.storage.k8s.io/serviceAccount.tokens"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(tokens["aud"]["token"], TOKEN);
    assert_eq!(
        call.secrets["clientSecret"],
        "node-publish-secret-ref-value"
    );

    let tree = read_tree(&target);
    assert_eq!(
        tree,
        vec![
            ("foo".into(), SECRET_A.as_bytes().to_vec(), 0),
            ("nested/bar".into(), SECRET_B.as_bytes().to_vec(), 0o640)
        ]
    );
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();
    assert_clean(&driver, &target);
    driver.assert_logs_free_of(&[SECRET_A, SECRET_B, TOKEN, "node-publish-secret-ref-value"]);

    // Without nodePublishSecretRef the provider gets `null`, as upstream sends.
    driver
        .node()
        .node_publish_volume(Pod::new("api-1", "default").publish(&target, "ext"))
        .await
        .unwrap();
    assert!(provider.calls()[1].secrets.is_null());
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_input_fails_with_its_code_and_leaves_nothing_behind() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(&api, &["--max-call-recv-msg-size=2048"]).await;
    let provider = FakeProvider::start(&driver.provider_dir, "fake", Behaviour::default()).await;
    // A socket file nobody listens on: the provider's pod is down.
    drop(std::os::unix::net::UnixListener::bind(driver.provider_dir.join("down.sock")).unwrap());
    for (name, provider_name) in [
        ("fake", "fake"),
        ("down", "down"),
        ("missing", "nosuchprovider"),
        ("badname", "../../etc"),
        ("noprovider", ""),
    ] {
        api.insert(
            GROUP,
            "secretproviderclasses",
            spc("ns", name, provider_name, json!({"k": "v"})),
        );
    }
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc("ns", "noparams", "fake", json!({})),
    );
    let pod = Pod::new("p", "ns");
    let target = driver.target(&pod.uid, "v");
    let mut node = driver.node();

    let good_versions = vec![("o".to_owned(), "1".to_owned())];
    let file = |path: &str| Behaviour {
        files: vec![(path.to_owned(), 0o644, SECRET_A.into())],
        versions: good_versions.clone(),
        ..Default::default()
    };
    let cases: Vec<(&str, Option<Behaviour>, Code, &str)> = vec![
        (
            "unknown",
            None,
            Code::NotFound,
            "failed to get secretproviderclass ns/unknown",
        ),
        (
            "noprovider",
            None,
            Code::FailedPrecondition,
            "provider not set in ns/noprovider",
        ),
        (
            "noparams",
            None,
            Code::FailedPrecondition,
            "parameters not set in ns/noparams",
        ),
        (
            "badname",
            None,
            Code::InvalidArgument,
            "invalid provider name",
        ),
        ("missing", None, Code::NotFound, "nosuchprovider.sock"),
        ("down", None, Code::Unavailable, "is unavailable"),
        (
            "fake",
            Some(Behaviour {
                error_code: "BackendDown".into(),
                versions: good_versions.clone(),
                ..Default::default()
            }),
            Code::Unknown,
            "provider error code BackendDown",
        ),
        (
            "fake",
            Some(Behaviour {
                files: file("a").files,
                versions: vec![],
                ..Default::default()
            }),
            Code::Internal,
            "missing object versions",
        ),
        (
            "fake",
            Some(Behaviour {
                files: vec![("big".into(), 0o644, vec![b'x'; 4096])],
                versions: good_versions.clone(),
                ..Default::default()
            }),
            Code::ResourceExhausted,
            "--max-call-recv-msg-size",
        ),
    ];
    let bad_paths = [
        "/abs",
        "../up",
        "a/../b",
        "..hidden",
        "a//b",
        "./a",
        "a/",
        &"x".repeat(256),
    ];
    let path_cases = bad_paths
        .iter()
        .map(|p| ("fake", Some(file(p)), Code::Internal, "unsafe file path"));
    for (class, behaviour, code, message) in cases.into_iter().chain(path_cases) {
        if let Some(behaviour) = behaviour {
            provider.set(behaviour);
        }
        let status = node
            .node_publish_volume(pod.publish(&target, class))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{class}: {}", status.message());
        assert!(
            status.message().contains(message),
            "{class}: {:?} lacks {message:?}",
            status.message()
        );
        assert_clean(&driver, &target);
    }
    let metrics = support::metrics(driver.metrics_port).await;
    assert!(metrics.contains("error_type=\"BackendDown\""), "{metrics}");
    assert!(
        metrics.contains("error_type=\"FileWriteError\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("error_type=\"SecretProviderClassNotFound\""),
        "{metrics}"
    );
    driver.assert_logs_free_of(&[SECRET_A]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_slower_than_the_deadline_fails_the_call_and_the_mount_is_undone() {
    if !support::require_root() {
        return;
    }
    let Some((_api, driver, _provider)) =
        provider_setup("slow", "slow", one_file(Duration::from_secs(3))).await
    else {
        return;
    };
    let pod = Pod::new("p", "ns");
    let target = driver.target(&pod.uid, "v");
    let mut request = tonic::Request::new(pod.publish(&target, "slow"));
    request.set_timeout(Duration::from_millis(1500));
    let status = driver
        .node()
        .node_publish_volume(request)
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // The driver gives the provider the caller's deadline minus a margin, then cleans up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_clean(&driver, &target);
    assert!(
        driver.logs().contains("did not answer within"),
        "{}",
        driver.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_calls_on_one_target_are_aborted_and_many_targets_publish_in_parallel() {
    if !support::require_root() {
        return;
    }
    let Some((_api, driver, provider)) =
        provider_setup("fake", "c", one_file(Duration::from_millis(700))).await
    else {
        return;
    };
    let pod = Pod::new("p", "ns");
    let target = driver.target(&pod.uid, "v");
    let mut first_client = driver.node();
    let (first, second) = tokio::join!(
        first_client.node_publish_volume(pod.publish(&target, "c")),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            driver
                .node()
                .node_publish_volume(pod.publish(&target, "c"))
                .await
        }
    );
    first.unwrap();
    assert_eq!(second.unwrap_err().code(), Code::Aborted);
    assert_eq!(provider.calls().len(), 1);

    let pods: Vec<Pod> = (0..20).map(|i| Pod::new(&format!("p{i}"), "ns")).collect();
    let started = std::time::Instant::now();
    let results = futures::future::join_all(pods.iter().map(|pod| {
        let target = driver.target(&pod.uid, "v");
        let mut node = driver.node();
        let request = pod.publish(&target, "c");
        async move { node.node_publish_volume(request).await }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "publishes ran one at a time: {:?}",
        started.elapsed()
    );
    for pod in &pods {
        let target = driver.target(&pod.uid, "v");
        assert_eq!(
            std::fs::read(target.join("a")).unwrap(),
            SECRET_A.as_bytes()
        );
        driver
            .node()
            .node_unpublish_volume(unpublish(&target))
            .await
            .unwrap();
    }
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();
    assert!(mounts_under(driver.dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn v1alpha1_classes_mount_with_a_deprecation_warning_and_foreign_node_statuses_are_taken_over()
 {
    if !support::require_root() {
        return;
    }
    let Some((api, driver)) = local_setup().await else {
        return;
    };
    // An old CRD: the class is served as v1alpha1 only.
    let crd = "secretproviderclasses.secrets-store.csi.x-k8s.io";
    let mut definition = api
        .get("apiextensions.k8s.io", "customresourcedefinitions", "", crd)
        .unwrap();
    for version in definition["spec"]["versions"].as_array_mut().unwrap() {
        version["served"] = json!(version["name"] == "v1alpha1");
    }
    api.patch(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "",
        crd,
        &json!({"spec": {"versions": definition["spec"]["versions"]}}),
    );
    let mut pod = Pod::new("sts-0", "team");
    pod.create_in(&api, "v", "app", None);
    api.insert(
        GROUP,
        "secretproviderclasspodstatuses",
        json!({
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClassPodStatus",
            "metadata": {"name": "sts-0-team-app", "namespace": "team",
                         "labels": {"internal.secrets-store.csi.k8s.io/node-name": "node-b"}},
            "status": {"podName": "sts-0", "mounted": true, "targetPath": "/old"},
        }),
    );
    let target = driver.publish_ok(&pod, "v", "app").await;
    assert!(
        driver.logs().contains("v1alpha1, which is deprecated"),
        "{}",
        driver.logs()
    );
    let status = api
        .get(
            GROUP,
            "secretproviderclasspodstatuses",
            "team",
            "sts-0-team-app",
        )
        .unwrap();
    assert_eq!(
        status["metadata"]["labels"]["internal.secrets-store.csi.k8s.io/node-name"],
        NODE
    );
    assert_eq!(status["status"]["targetPath"], target.display().to_string());
    assert_eq!(
        status["metadata"]["ownerReferences"][0]["uid"],
        pod.uid.as_str()
    );
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();
    driver.assert_logs_free_of(&[SECRET_A, SECRET_B]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_provider_is_off_without_a_root_and_jailed_with_one() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("s.yaml"), format!("a: {SECRET_A}\n")).unwrap();
    let driver = Driver::start(&api, &[]).await;
    std::os::unix::fs::symlink(
        outside.path().join("s.yaml"),
        driver.local_root.join("escape.yaml"),
    )
    .unwrap();
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc("ns", "escape", "local", json!({"source": "escape.yaml"})),
    );
    let pod = Pod::new("p", "ns");
    let target = driver.target(&pod.uid, "v");
    let status = driver
        .node()
        .node_publish_volume(pod.publish(&target, "escape"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("outside --local-provider-root"));
    assert_clean(&driver, &target);
    driver.assert_logs_free_of(&[SECRET_A]);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_in_flight_publish_finish_and_removes_the_socket() {
    if !support::require_root() {
        return;
    }
    let Some((_api, mut driver, _provider)) =
        provider_setup("fake", "c", one_file(Duration::from_millis(800))).await
    else {
        return;
    };
    let pod = Pod::new("p", "ns");
    let target = driver.target(&pod.uid, "v");
    let mut node = driver.node();
    let call =
        tokio::spawn(async move { node.node_publish_volume(pod.publish(&target, "c")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::block_in_place(|| driver.terminate());
    assert!(
        call.await.unwrap().is_ok(),
        "the in-flight publish was cut off"
    );
    assert!(status.success(), "{status}: {}", driver.logs());
    assert!(!driver.socket.exists(), "socket left behind");
}
