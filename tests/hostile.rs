//! Hostile tenants on a shared node: each test is an attack that once crashed, exhausted or
//! misled the driver, run against the real binary through its real socket onto real tmpfs
//! mounts. Every one asserts the attack fails with a clear error, leaves nothing behind, and
//! that the driver keeps serving other pods.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::moto::Moto;
use support::provider::{Behaviour, FakeProvider};
use support::{
    ApiServer, Driver, Pod, TestApi, eventually, mount_line, mounts_under, pod_events, secret_data,
    service_account, spc, unpublish,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

const GROUP: &str = "secrets-store.csi.x-k8s.io";
const VICTIM_SECRET: &str = "victim-value-0e41";
const OWN_SECRET: &str = "own-value-7b2c";
const WAIT: Duration = Duration::from_secs(15);

/// A local-provider class `name` in `namespace` mounting `alpha` from `source`.
fn local_class(api: &dyn TestApi, namespace: &str, name: &str, source: &str, objects: &str) {
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc(
            namespace,
            name,
            "local",
            json!({"source": source, "objects": objects}),
        ),
    );
}

/// Publishes a healthy local volume: the driver still serves other pods.
async fn assert_still_serving(driver: &Driver, api: &dyn TestApi) {
    std::fs::write(driver.local_root.join("healthy.yaml"), "ok: fine\n").unwrap();
    local_class(
        api,
        "healthy",
        "healthy",
        "healthy.yaml",
        "- objectName: ok\n",
    );
    let pod = Pod::new("healthy", "healthy");
    let target = driver.publish_ok(&pod, "v", "healthy").await;
    assert_eq!(std::fs::read_to_string(target.join("ok")).unwrap(), "fine");
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();
}

fn assert_nothing_left(target: &Path) {
    assert!(
        mount_line(target).is_none(),
        "a mount was left at {target:?}"
    );
    assert!(!target.exists(), "the target directory was left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_or_multiplying_jmes_paths_are_refused_and_the_driver_keeps_serving() {
    if !support::require_root() {
        return;
    }
    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.create_secret("us-east-1", "db", r#"{"password":"pw"}"#)
        .await;
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(&api, &[&format!("--aws-endpoint-url={}", moto.url)]).await;
    // IRSA through moto's STS: the secret would be read, then the expression evaluated.
    api.insert(
        "",
        "serviceaccounts",
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "default", "namespace": "team",
                            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/r"}}}),
    );
    let deep = format!("{}password{}", "(".repeat(5000), ")".repeat(5000));
    let chain = vec!["a"; 5000].join(".");
    // Short and shallow, but each flattened multi-select multiplies what it builds.
    let multiplying = "@.[@,@,@,@,@,@,@,@][].[@,@,@,@,@,@,@,@][].[@,@,@,@,@,@,@,@]".to_owned();
    for (name, path) in [
        ("parens", deep),
        ("chain", chain),
        ("multiplying", multiplying),
    ] {
        let objects = format!(
            "- objectName: db\n  objectType: secretsmanager\n  jmesPath:\n    - path: '{path}'\n      objectAlias: password\n"
        );
        api.insert(
            GROUP,
            "secretproviderclasses",
            spc(
                "team",
                name,
                "aws",
                json!({"region": "us-east-1", "objects": objects}),
            ),
        );
        let pod = Pod::new(&format!("pod-{name}"), "team");
        let target = driver.target(&pod.uid, "v");
        let status = driver
            .node()
            .node_publish_volume(pod.publish_with_tokens(
                &target,
                name,
                &api,
                &["sts.amazonaws.com"],
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(
            status
                .message()
                .contains("jmesPath[0].path: Invalid JMES Path"),
            "{}",
            status.message()
        );
        assert_nothing_left(&target);
    }
    assert_eq!(moto.calls().len(), 0, "refused before any AWS call");
    assert_still_serving(&driver, &api).await;
}

/// A server that answers Vault's login with a token and every other request with `size`
/// bytes of JSON, declaring its length or not (then the body ends when the connection
/// closes), and counts the reads.
async fn hostile_vault(size: usize, declare_length: bool) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let reads = Arc::new(AtomicUsize::new(0));
    let counter = reads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&request).into_owned();
                if head.contains("/login") {
                    let body = r#"{"auth":{"client_token":"hostile-token","lease_duration":3600}}"#;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                    return;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let header = if declare_length {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {size}\r\n\r\n"
                    )
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
                        .to_owned()
                };
                if stream.write_all(header.as_bytes()).await.is_err() {
                    return;
                }
                let prefix = br#"{"data":{"k":""#;
                let _ = stream.write_all(prefix).await;
                let suffix = br#""}}"#;
                let chunk = vec![b'x'; 64 << 10];
                let mut sent = prefix.len();
                while sent + chunk.len() + suffix.len() < size {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent += chunk.len();
                }
                let _ = stream
                    .write_all(&vec![b'x'; size - sent - suffix.len()])
                    .await;
                let _ = stream.write_all(suffix).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (address, reads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_vault_cannot_exhaust_the_drivers_memory_and_pods_cannot_redirect_vault() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(&api, &[]).await;
    service_account(&api, "team", "app");
    let objects: String = (0..8)
        .map(|i| format!("- {{objectName: o{i}, secretPath: secret/data/big{i}, secretKey: k}}\n"))
        .collect();
    let before = driver.rss_kib();
    for declare_length in [true, false] {
        // Just under the 8 MiB each response was once allowed.
        let (address, reads) = hostile_vault((8 << 20) - 4096, declare_length).await;
        let name = format!("big-{declare_length}");
        api.insert(
            GROUP,
            "secretproviderclasses",
            spc(
                "team",
                &name,
                "vault",
                json!({"vaultAddress": address, "roleName": "app", "objects": objects}),
            ),
        );
        for round in 0..3 {
            let mut pod = Pod::new(&format!("pod-{declare_length}-{round}"), "team");
            pod.service_account = "app".to_owned();
            let target = driver.target(&pod.uid, "v");
            let status = driver
                .node()
                .node_publish_volume(pod.publish_with_tokens(&target, &name, &api, &["vault"]))
                .await
                .unwrap_err();
            assert_eq!(
                status.code(),
                Code::ResourceExhausted,
                "{}",
                status.message()
            );
            assert!(
                status.message().contains("--max-call-recv-msg-size"),
                "{}",
                status.message()
            );
            assert_nothing_left(&target);
        }
        assert!(reads.load(Ordering::SeqCst) > 0);
    }
    // 48 answers of almost 8 MiB were offered; the driver held at most a volume's budget.
    let grown = driver.peak_rss_kib().saturating_sub(before);
    println!(
        "driver RSS {before} KiB before, peak {} KiB",
        driver.peak_rss_kib()
    );
    assert!(
        grown < 48 << 10,
        "the driver grew by {grown} KiB facing 8 MiB answers"
    );

    // A pod cannot point the class at a server of its choosing.
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc(
            "team",
            "honest",
            "vault",
            json!({"vaultAddress": "http://127.0.0.1:1", "roleName": "app", "objects": objects}),
        ),
    );
    let mut pod = Pod::new("redirecting", "team");
    pod.service_account = "app".to_owned();
    let target = driver.target(&pod.uid, "v");
    let mut request = pod.publish_with_tokens(&target, "honest", &api, &["vault"]);
    request.volume_context.insert(
        "vaultAddress".to_owned(),
        "http://evil.example:8200".to_owned(),
    );
    let status = driver
        .node()
        .node_publish_volume(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("volume attribute \"vaultAddress\" cannot override"),
        "{}",
        status.message()
    );
    assert_nothing_left(&target);
    assert_still_serving(&driver, &api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_aws_volume_is_refused_with_the_limit_named() {
    if !support::require_root() {
        return;
    }
    let Some(moto) = Moto::start().await else {
        return;
    };
    let big = "y".repeat(40 << 10);
    for i in 0..8 {
        moto.create_secret("us-east-1", &format!("big{i}"), &big)
            .await;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(
        &api,
        &[
            &format!("--aws-endpoint-url={}", moto.url),
            "--max-call-recv-msg-size=200000",
            "--aws-pod-identity-endpoint=http://127.0.0.1:1",
        ],
    )
    .await;
    let objects: String = (0..8)
        .map(|i| format!("- {{objectName: big{i}, objectType: secretsmanager}}\n"))
        .collect();
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc(
            "team",
            "big",
            "aws",
            json!({"region": "us-east-1", "objects": objects}),
        ),
    );
    support::service_account(&api, "team", "default");
    api.patch(
        "",
        "serviceaccounts",
        "team",
        "default",
        &json!({"metadata": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/r"}}}),
    );
    let pod = Pod::new("big", "team");
    let target = driver.target(&pod.uid, "v");
    let status = driver
        .node()
        .node_publish_volume(pod.publish_with_tokens(&target, "big", &api, &["sts.amazonaws.com"]))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("200000 bytes"),
        "{}",
        status.message()
    );
    assert_nothing_left(&target);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_cannot_read_tls_files_from_another_pods_volume() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let tls_dir = tempfile::tempdir().unwrap();
    let allowed = format!("--vault-tls-allowed-dirs={}", tls_dir.path().display());
    let driver = Driver::start(&api, &[&allowed]).await;
    // The victim's volume holds a client certificate and key.
    let key = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIKey0fTheVictimPodXXXXXXXXXXXXXXXXXXXXXXX\n-----END PRIVATE KEY-----\n";
    std::fs::write(
        driver.local_root.join("victim.yaml"),
        format!(
            "tls.key: |\n{}",
            key.lines().map(|l| format!("  {l}\n")).collect::<String>()
        ),
    )
    .unwrap();
    local_class(
        &api,
        "victim",
        "victim",
        "victim.yaml",
        "- objectName: tls.key\n",
    );
    let victim = Pod::new("victim", "victim");
    let victim_target = driver.publish_ok(&victim, "tls", "victim").await;
    let stolen = victim_target.join("tls.key");
    assert!(stolen.exists());
    // Inside the allowed directory, a link into the kubelet root.
    std::os::unix::fs::symlink(&stolen, tls_dir.path().join("linked.key")).unwrap();

    let thief_sa = "thief";
    service_account(&api, "thief", thief_sa);
    let objects = "- {objectName: x, secretPath: secret/data/x, secretKey: k}\n";
    let stolen = stolen.display().to_string();
    let linked = tls_dir.path().join("linked.key").display().to_string();
    let missing = victim_target.join("no-such.key").display().to_string();
    let mut messages = Vec::new();
    for (name, key_path) in [
        ("direct", &stolen),
        ("linked", &linked),
        ("missing", &missing),
    ] {
        api.insert(
            GROUP,
            "secretproviderclasses",
            spc(
                "thief",
                name,
                "vault",
                json!({
                    "vaultAddress": "https://127.0.0.1:1", "roleName": "r", "objects": objects,
                    "vaultTLSClientCertPath": key_path, "vaultTLSClientKeyPath": key_path,
                }),
            ),
        );
        let mut pod = Pod::new(&format!("thief-{name}"), "thief");
        pod.service_account = thief_sa.to_owned();
        let target = driver.target(&pod.uid, "v");
        let status = driver
            .node()
            .node_publish_volume(pod.publish_with_tokens(&target, name, &api, &["vault"]))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{name}: {}",
            status.message()
        );
        let message = status.message().to_owned();
        assert!(
            message.contains("not in a directory the driver allows"),
            "{message}"
        );
        assert!(!message.contains("BEGIN"), "{message}");
        assert!(!message.contains("No such file"), "{message}");
        messages.push(
            message
                .replace(key_path.as_str(), "PATH")
                .replace(&pod.name, "POD"),
        );
        assert_nothing_left(&target);
    }
    // Whether the file exists or not, the refusal reads the same.
    assert_eq!(messages[0], messages[2]);
    driver.assert_logs_free_of(&["Key0fTheVictim"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_status_target_path_never_syncs_another_namespaces_volume() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(&api, &["--secret-sync-resync-interval=1s"]).await;
    std::fs::write(
        driver.local_root.join("secrets.yaml"),
        format!("victim: {VICTIM_SECRET}\nown: {OWN_SECRET}\n"),
    )
    .unwrap();
    local_class(
        &api,
        "victim",
        "victim",
        "secrets.yaml",
        "- {objectName: victim, objectAlias: value}\n",
    );
    let mut victim = Pod::new("victim", "victim");
    victim.create_in(&api, "v", "victim", None);
    let victim_target = driver.publish_ok(&victim, "v", "victim").await;

    api.insert(
        GROUP,
        "secretproviderclasses",
        json!({
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClass",
            "metadata": {"name": "loot", "namespace": "evil"},
            "spec": {
                "provider": "local",
                "parameters": {"source": "secrets.yaml", "objects": "- {objectName: own, objectAlias: value}\n"},
                "secretObjects": [{"secretName": "loot", "type": "Opaque",
                                   "data": [{"objectName": "value", "key": "value"}]}],
            },
        }),
    );
    let mut thief = Pod::new("thief", "evil");
    thief.create_in(&api, "v", "loot", None);
    let thief_target = driver.publish_ok(&thief, "v", "loot").await;
    let synced = eventually(WAIT, "the thief's own Secret", || {
        api.get("", "secrets", "evil", "loot")
    })
    .await;
    assert_eq!(secret_data(&synced)["value"], OWN_SECRET.as_bytes());

    // Same last components, another root; and the thief's own volume replaced by a link.
    let look_alike = driver.dir.path().join(format!(
        "elsewhere/pods/{}/volumes/kubernetes.io~csi/v",
        thief.uid
    ));
    std::fs::create_dir_all(&look_alike).unwrap();
    std::os::unix::fs::symlink(&victim_target, look_alike.join("mount")).unwrap();
    let record = "thief-evil-loot";
    for path in [
        look_alike.join("mount").display().to_string(),
        format!(
            "{}/../../../../../pods/{}/volumes/kubernetes.io~csi/v/mount",
            thief_target.display(),
            victim.uid
        ),
    ] {
        api.patch(
            GROUP,
            "secretproviderclasspodstatuses",
            "evil",
            record,
            &json!({"status": {"targetPath": path}}),
        );
        eventually(WAIT, "a sync failure event naming the path", || {
            pod_events(&api, "evil", "thief")
                .into_iter()
                .find(|(_, _, message)| message.contains("does not belong to pod UID"))
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let secret = api.get("", "secrets", "evil", "loot").unwrap();
        assert_eq!(secret_data(&secret)["value"], OWN_SECRET.as_bytes());
    }
    for secret in api.list("", "secrets") {
        for value in secret_data(&secret).values() {
            assert_ne!(value.as_slice(), VICTIM_SECRET.as_bytes(), "{secret}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tmpfs_left_by_an_interrupted_first_mount_is_never_reported_published() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(&api, &[]).await;
    std::fs::write(
        driver.local_root.join("s.yaml"),
        format!("a: {OWN_SECRET}\n"),
    )
    .unwrap();
    local_class(&api, "ns", "c", "s.yaml", "- objectName: a\n");
    for stacked in [1, 3] {
        let pod = Pod::new(&format!("p{stacked}"), "ns");
        let target = driver.target(&pod.uid, "v");
        std::fs::create_dir_all(&target).unwrap();
        // What a driver killed between mount and write leaves (and retries stacked on it).
        for _ in 0..stacked {
            nix::mount::mount(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some("size=1m"),
            )
            .unwrap();
        }
        driver
            .node()
            .node_publish_volume(pod.publish(&target, "c"))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("a")).unwrap(),
            OWN_SECRET
        );
        let canonical = target.canonicalize().unwrap();
        let layers = mounts_under(&canonical)
            .into_iter()
            .filter(|p| Path::new(p) == canonical)
            .count();
        assert_eq!(layers, 1, "exactly one tmpfs, not one on top of another");
        assert!(mount_line(&target).unwrap().contains("tmpfs"));
        driver
            .node()
            .node_unpublish_volume(unpublish(&target))
            .await
            .unwrap();
        assert_nothing_left(&target);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_aliases_and_symlink_loops_fail_cleanly_and_later_fetches_still_work() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(&api, &[]).await;
    std::fs::write(
        driver.local_root.join("s.yaml"),
        format!("a: {OWN_SECRET}\n"),
    )
    .unwrap();
    let deep = vec!["d"; 2000].join("/");
    local_class(
        &api,
        "ns",
        "deep",
        "s.yaml",
        &format!("- objectName: a\n  objectAlias: {deep}\n"),
    );
    let loop_dir = driver.local_root.join("looped");
    std::fs::create_dir_all(loop_dir.join("sub")).unwrap();
    std::fs::write(loop_dir.join("sub/a"), "x").unwrap();
    std::os::unix::fs::symlink(&loop_dir, loop_dir.join("sub/back")).unwrap();
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc("ns", "loop", "local", json!({"source": "looped"})),
    );
    for (class, code, message) in [
        ("deep", Code::InvalidArgument, "16 directories deep"),
        ("loop", Code::InvalidArgument, "symlink loop"),
    ] {
        let pod = Pod::new(&format!("p-{class}"), "ns");
        let target = driver.target(&pod.uid, "v");
        let status = driver
            .node()
            .node_publish_volume(pod.publish(&target, class))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{class}: {}", status.message());
        assert!(status.message().contains(message), "{}", status.message());
        assert_nothing_left(&target);
    }
    assert_still_serving(&driver, &api).await;
    driver.assert_logs_free_of(&[OWN_SECRET]);
}

#[tokio::test(flavor = "multi_thread")]
async fn unpublish_deletes_nothing_it_did_not_write_and_only_below_the_kubelet_root() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(&api, &[]).await;
    let precious = driver.dir.path().join("precious");
    std::fs::create_dir_all(precious.join("mount")).unwrap();
    std::fs::write(precious.join("mount/data"), "keep").unwrap();
    let mut node = driver.node();

    // Outside the kubelet root: refused, untouched.
    let status = node
        .node_unpublish_volume(unpublish(&precious.join("mount")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    // A target that is a link to elsewhere: refused, nothing followed.
    let linked = driver.target("uid-link", "v");
    std::fs::create_dir_all(linked.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(precious.join("mount"), &linked).unwrap();
    let status = node
        .node_unpublish_volume(unpublish(&linked))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(status.message().contains("symlink"), "{}", status.message());
    // A target holding files the driver did not write: they stay, and the call says so.
    let foreign = driver.target("uid-foreign", "v");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("not-ours"), "keep").unwrap();
    let status = node
        .node_unpublish_volume(unpublish(&foreign))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "{}",
        status.message()
    );
    assert_eq!(
        std::fs::read_to_string(foreign.join("not-ours")).unwrap(),
        "keep"
    );
    assert_eq!(
        std::fs::read_to_string(precious.join("mount/data")).unwrap(),
        "keep"
    );
    // A publish outside the kubelet root is refused before anything is created.
    std::fs::write(driver.local_root.join("s.yaml"), "a: b\n").unwrap();
    local_class(&api, "ns", "c", "s.yaml", "- objectName: a\n");
    let pod = Pod::new("p", "ns");
    let outside = driver.dir.path().join("outside/mount");
    let status = node
        .node_publish_volume(pod.publish(&outside, "c"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("--kubelet-root-dir"),
        "{}",
        status.message()
    );
    assert!(!outside.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_synced_secret_with_a_forged_future_content_time_is_repaired() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(&api, &["--secret-sync-resync-interval=1s"]).await;
    std::fs::write(
        driver.local_root.join("s.yaml"),
        format!("a: {OWN_SECRET}\n"),
    )
    .unwrap();
    api.insert(
        GROUP,
        "secretproviderclasses",
        json!({
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClass",
            "metadata": {"name": "c", "namespace": "ns"},
            "spec": {
                "provider": "local",
                "parameters": {"source": "s.yaml", "objects": "- objectName: a\n"},
                "secretObjects": [{"secretName": "synced", "type": "Opaque",
                                   "data": [{"objectName": "a", "key": "a"}]}],
            },
        }),
    );
    let mut pod = Pod::new("p", "ns");
    pod.create_in(&api, "v", "c", None);
    driver.publish_ok(&pod, "v", "c").await;
    eventually(WAIT, "the synced Secret", || {
        api.get("", "secrets", "ns", "synced")
    })
    .await;
    use base64::Engine as _;
    let forged = base64::engine::general_purpose::STANDARD.encode("forged");
    api.patch(
        "",
        "secrets",
        "ns",
        "synced",
        &json!({
            "metadata": {"annotations": {"secrets-store.csi.k8s.io/content-time": "2199-01-01T00:00:00Z"}},
            "data": {"a": forged},
        }),
    );
    eventually(WAIT, "the forged Secret repaired", || {
        let secret = api.get("", "secrets", "ns", "synced")?;
        (secret_data(&secret)["a"] == OWN_SECRET.as_bytes()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_error_codes_cannot_grow_the_metrics_and_bad_deadlines_are_ignored() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(&api, &[]).await;
    let fake = FakeProvider::start(&driver.provider_dir, "fake", Behaviour::default()).await;
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc("ns", "c", "fake", json!({"k": "v"})),
    );
    let pod = Pod::new("p", "ns");
    let target = driver.target(&pod.uid, "v");
    let mut node = driver.node();
    for i in 0..100 {
        fake.set(Behaviour {
            error_code: format!("Code{i}"),
            versions: vec![("a".into(), "1".into())],
            ..Default::default()
        });
        node.node_publish_volume(pod.publish(&target, "c"))
            .await
            .unwrap_err();
    }
    let metrics = support::metrics(driver.metrics_port).await;
    let codes: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("node_publish_error_total{"))
        .filter_map(|l| l.split("error_type=\"").nth(1)?.split('"').next())
        .collect();
    assert!(codes.len() <= 33, "{} error types: {codes:?}", codes.len());
    assert!(codes.contains("other"), "{codes:?}");

    // A deadline header that once overflowed a multiplication.
    fake.set(Behaviour {
        files: vec![("a".into(), 0o644, b"v".to_vec())],
        versions: vec![("a".into(), "1".into())],
        ..Default::default()
    });
    let mut request = tonic::Request::new(pod.publish(&target, "c"));
    request
        .metadata_mut()
        .insert("grpc-timeout", "18446744073709551615H".parse().unwrap());
    node.node_publish_volume(request).await.unwrap();
    assert!(target.join("a").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_log_error_shows_no_dependency_debug_output() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start_with_env(&api, &[], &[("RUST_LOG", "error")]).await;
    std::fs::write(driver.local_root.join("s.yaml"), "a: b\n").unwrap();
    local_class(&api, "ns", "c", "s.yaml", "- objectName: a\n");
    let pod = Pod::new("p", "ns");
    driver.publish_ok(&pod, "v", "c").await;
    let logs = driver.logs();
    assert!(
        !logs.contains("DEBUG") && !logs.contains("TRACE"),
        "RUST_LOG=error still logged debug output:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_failure_after_its_event_expired_is_still_reported() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(
        &api,
        &["--enable-secret-rotation", "--rotation-poll-interval=1ms"],
    )
    .await;
    let fake = FakeProvider::start(
        &driver.provider_dir,
        "fake",
        Behaviour {
            files: vec![("a".into(), 0o644, b"v".to_vec())],
            versions: vec![("a".into(), "1".into())],
            ..Default::default()
        },
    )
    .await;
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc("ns", "c", "fake", json!({"k": "v"})),
    );
    let mut pod = Pod::new("p", "ns");
    pod.create_in(&api, "v", "c", None);
    let target = driver.target(&pod.uid, "v");
    let mut node = driver.node();
    node.node_publish_volume(pod.publish(&target, "c"))
        .await
        .unwrap();
    fake.set(Behaviour {
        error_code: "BackendDown".into(),
        versions: vec![("a".into(), "1".into())],
        ..Default::default()
    });
    let failures = |api: &dyn TestApi| -> Vec<Value> {
        api.list("", "events")
            .into_iter()
            .filter(|e| e["reason"] == "MountRotationFailed")
            .collect()
    };
    node.node_publish_volume(pod.publish(&target, "c"))
        .await
        .unwrap();
    let first = eventually(WAIT, "a MountRotationFailed event", || {
        failures(&api).into_iter().next()
    })
    .await;
    // The Event expires (or is deleted) while the series is remembered.
    api.delete(
        "",
        "events",
        "ns",
        first["metadata"]["name"].as_str().unwrap(),
    );
    node.node_publish_volume(pod.publish(&target, "c"))
        .await
        .unwrap();
    eventually(WAIT, "a new MountRotationFailed event", || {
        failures(&api).into_iter().next()
    })
    .await;
}
