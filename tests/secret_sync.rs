//! The SecretSync controller (`sync-controller`) end to end: a real API server with the
//! garbage collector, the controller's RBAC and admission policies from `deploy/`, the real
//! binary authenticated as its ServiceAccount, and real OpenBao and moto behind the built-in
//! providers. Every SecretSync here is upstream's README shape, unchanged.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::sync_controller::{ACCOUNT, Site, provider_class, secret_sync, vault_for};
use support::{ApiServer, TestApi as _};

const GROUP: &str = "secret-sync.x-k8s.io";

/// Polls `check` until it answers, or fails naming `what`.
fn until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn condition<'a>(ss: &'a Value, type_: &str) -> Option<&'a Value> {
    ss["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Waits for the condition `type_` of `namespace/name` to have `reason`, and returns the
/// SecretSync.
fn wait_reason(api: &ApiServer, namespace: &str, name: &str, type_: &str, reason: &str) -> Value {
    until(
        &format!("{name} {type_}={reason}"),
        Duration::from_secs(60),
        || {
            let ss = api.get(GROUP, "secretsyncs", namespace, name)?;
            (condition(&ss, type_)?["reason"] == reason).then_some(ss)
        },
    )
}

/// Creates a SecretSync of `account` mapping `password` from `class`, waits for its
/// `SecretCreated` condition to fail with `reason`, and returns the condition's message.
fn create_failing(
    api: &ApiServer,
    namespace: &str,
    name: &str,
    account: &str,
    class: &str,
    reason: &str,
) -> String {
    api.insert(
        GROUP,
        "secretsyncs",
        secret_sync(namespace, name, account, class, &[("password", "password")]),
    );
    failure_message(api, namespace, name, reason)
}

/// The message of `SecretCreated` once it has failed with `reason`.
fn failure_message(api: &ApiServer, namespace: &str, name: &str, reason: &str) -> String {
    let ss = wait_reason(api, namespace, name, "SecretCreated", reason);
    assert_eq!(condition(&ss, "SecretCreated").unwrap()["status"], "False");
    condition(&ss, "SecretCreated").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn secret_value(api: &ApiServer, namespace: &str, name: &str, key: &str) -> Option<String> {
    api.get("", "secrets", namespace, name)?["data"][key]
        .as_str()
        .map(str::to_owned)
}

fn warning_events(api: &ApiServer, namespace: &str, name: &str) -> Vec<Value> {
    api.list("", "events")
        .into_iter()
        .filter(|e| {
            e["metadata"]["namespace"] == namespace
                && e["involvedObject"]["kind"] == "SecretSync"
                && e["involvedObject"]["name"] == name
                && e["type"] == "Warning"
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_sync_creates_updates_rotates_and_cascades_with_the_workloads_identity() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let ns = "team-a";
    let values = ["pw-first-7c1d", "pw-second-93ab", "pw-third-41fe"];
    let Some(bao) = vault_for(&api, ns, values[0]) else {
        return;
    };
    let site = Site::new(&api);
    let controller = site.start(
        "ctl-a",
        &[
            format!("--vault-address={}", bao.addr),
            "--rotation-poll-interval=3s".to_owned(),
        ],
    );

    // Create: the Secret, its owner, labels and annotations; upstream's conditions.
    let mut object = secret_sync(
        ns,
        "app-secret",
        "app-sa",
        "vault-app",
        &[("password", "pw")],
    );
    object["spec"]["secretObject"]["labels"] = json!({"team": "a"});
    object["spec"]["secretObject"]["annotations"] = json!({"owner": "platform"});
    let created = api.insert(GROUP, "secretsyncs", object);
    let ss = wait_reason(&api, ns, "app-secret", "SecretCreated", "CreateSuccessful");
    let secret = api.get("", "secrets", ns, "app-secret").unwrap();
    assert_eq!(secret["data"]["pw"], b64(values[0]));
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(secret["metadata"]["labels"]["team"], "a");
    assert_eq!(
        secret["metadata"]["labels"]["secrets-store.sync.x-k8s.io/secretsync"],
        "app-secret"
    );
    assert_eq!(secret["metadata"]["annotations"]["owner"], "platform");
    let owners = secret["metadata"]["ownerReferences"].as_array().unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0]["kind"], "SecretSync");
    assert_eq!(owners[0]["uid"], created["metadata"]["uid"]);
    assert_eq!(
        condition(&ss, "SecretUpdated").unwrap()["reason"],
        "SecretUpToDate"
    );
    assert_eq!(condition(&ss, "SecretCreated").unwrap()["status"], "True");
    assert!(
        ss["status"]["syncHash"]
            .as_str()
            .unwrap()
            .starts_with("v1:")
    );
    let first_sync = ss["status"]["lastSuccessfulSyncTime"]
        .as_str()
        .unwrap()
        .to_owned();
    let logins = || {
        bao.requests()
            .iter()
            .filter(|(_, path)| path == "auth/kubernetes/login")
            .count()
    };
    assert!(logins() >= 1, "logged in to OpenBao as app-sa");

    // A spec change applies at once: the key is renamed.
    api.patch(
        GROUP,
        "secretsyncs",
        ns,
        "app-secret",
        &json!({"spec": {"secretObject": {"data": [{"sourcePath": "password", "targetKey": "password"}]}}}),
    );
    until("the renamed key", Duration::from_secs(30), || {
        let secret = api.get("", "secrets", ns, "app-secret")?;
        (secret["data"]["password"] == b64(values[0]) && secret["data"].get("pw").is_none())
            .then_some(())
    });

    // Rotation by the poll interval: a new value in OpenBao arrives without any change here.
    bao.bao(&[
        "kv",
        "put",
        "secret/app",
        &format!("password={}", values[1]),
    ]);
    until("the rotated value", Duration::from_secs(30), || {
        (secret_value(&api, ns, "app-secret", "password")? == b64(values[1])).then_some(())
    });
    let ss = api.get(GROUP, "secretsyncs", ns, "app-secret").unwrap();
    assert_ne!(
        ss["status"]["lastSuccessfulSyncTime"].as_str().unwrap(),
        first_sync
    );

    // A deleted Secret is put back at the next poll.
    api.delete("", "secrets", ns, "app-secret");
    until("the Secret put back", Duration::from_secs(30), || {
        (secret_value(&api, ns, "app-secret", "password")? == b64(values[1])).then_some(())
    });

    // A class interval of an hour stops polling; forceSynchronization fetches anyway.
    api.patch(
        "secrets-store.csi.x-k8s.io",
        "secretproviderclasses",
        ns,
        "vault-app",
        &json!({"metadata": {"annotations": {"secrets-store.csi.k8s.io/rotation-poll-interval": "1h"}}}),
    );
    // One more poll at the old interval reads the annotation.
    std::thread::sleep(Duration::from_secs(5));
    bao.bao(&[
        "kv",
        "put",
        "secret/app",
        &format!("password={}", values[2]),
    ]);
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        secret_value(&api, ns, "app-secret", "password").unwrap(),
        b64(values[1]),
        "with a 1h class interval, nothing is fetched before forceSynchronization"
    );
    api.patch(
        GROUP,
        "secretsyncs",
        ns,
        "app-secret",
        &json!({"spec": {"forceSynchronization": "rotate-now-1"}}),
    );
    until("the forced value", Duration::from_secs(30), || {
        (secret_value(&api, ns, "app-secret", "password")? == b64(values[2])).then_some(())
    });

    // An edited class applies at once, whatever the interval: with the object renamed, the
    // SecretSync's sourcePath names nothing; the Secret keeps its value.
    let objects = |name: &str| {
        json!({"spec": {"parameters": {"objects": format!(
            "- objectName: {name}\n  secretPath: secret/data/app\n  secretKey: password\n"
        )}}})
    };
    let spc_group = "secrets-store.csi.x-k8s.io";
    api.patch(
        spc_group,
        "secretproviderclasses",
        ns,
        "vault-app",
        &objects("renamed"),
    );
    let ss = wait_reason(
        &api,
        ns,
        "app-secret",
        "SecretUpdated",
        "RemoteSecretStoreFetchFailed",
    );
    let message = condition(&ss, "SecretUpdated").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("sourcePath \"password\"") && message.contains("it has: renamed"),
        "{message}"
    );
    assert_eq!(
        secret_value(&api, ns, "app-secret", "password").unwrap(),
        b64(values[2])
    );
    api.patch(
        spc_group,
        "secretproviderclasses",
        ns,
        "vault-app",
        &objects("password"),
    );
    wait_reason(&api, ns, "app-secret", "SecretUpdated", "SecretUpToDate");

    // A Secret the controller did not create is left alone.
    api.insert(
        "",
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "taken", "namespace": ns},
               "data": {"keep": b64("mine")}}),
    );
    let message = create_failing(
        &api,
        ns,
        "taken",
        "app-sa",
        "vault-app",
        "ControllerPatchError",
    );
    assert!(
        message.contains("not owned by this SecretSync"),
        "{message}"
    );
    let taken = api.get("", "secrets", ns, "taken").unwrap();
    assert_eq!(taken["data"], json!({"keep": b64("mine")}));
    assert!(taken["metadata"].get("ownerReferences").is_none());
    until("a Warning Event on taken", Duration::from_secs(30), || {
        warning_events(&api, ns, "taken")
            .iter()
            .any(|e| e["reason"] == "ControllerPatchError")
            .then_some(())
    });

    // A service account Vault's role does not allow: a condition and an Event, no Secret.
    let message = create_failing(&api, ns, "denied", "other-sa", "vault-app", "ProviderError");
    assert!(
        message.starts_with("fetching secrets from the provider failed"),
        "{message}"
    );
    assert!(api.get("", "secrets", ns, "denied").is_none());
    until("a Warning Event on denied", Duration::from_secs(30), || {
        warning_events(&api, ns, "denied")
            .iter()
            .any(|e| e["reason"] == "ProviderError")
            .then_some(())
    });

    // A missing class names itself.
    let message = create_failing(
        &api,
        ns,
        "no-class",
        "app-sa",
        "absent",
        "SecretProviderClassMisconfigured",
    );
    assert!(message.contains("\"absent\""), "{message}");

    // The admission policies: the controller's identity cannot mint a token the API server
    // would accept, change a Secret that is not a SecretSync's, or delete one.
    let as_controller = {
        let text = api.service_account_kubeconfig("kube-system", ACCOUNT);
        let file = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    };
    let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(as_controller.clone(), ns);
    let request: Value = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["https://kubernetes.default.svc.cluster.local"], "expirationSeconds": 600}});
    let refused = accounts
        .create_subresource::<Value, Value>("token", "app-sa", &Default::default(), &request)
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("only request tokens for one audience"),
        "{refused}"
    );
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(as_controller.clone(), ns);
    let patch = json!({"data": {"keep": b64("stolen")}});
    let refused = secrets
        .patch(
            "taken",
            &Default::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap_err();
    assert!(
        // Either policy may answer first: the new object or the old one is not a SecretSync's.
        [
            "not owned by the SecretSync",
            "may only write Secrets owned by the SecretSync"
        ]
        .iter()
        .any(|m| refused.to_string().contains(m)),
        "{refused}"
    );
    assert_eq!(
        api.get("", "secrets", ns, "taken").unwrap()["data"],
        json!({"keep": b64("mine")})
    );
    assert!(
        secrets
            .delete("app-secret", &Default::default())
            .await
            .is_err()
    );

    // Deleting the SecretSync takes its Secret with it (the garbage collector).
    api.delete(GROUP, "secretsyncs", ns, "app-secret");
    until("the Secret collected", Duration::from_secs(60), || {
        api.get("", "secrets", ns, "app-secret")
            .is_none()
            .then_some(())
    });

    // No value in the logs, the statuses or the Events.
    let logs = controller.logs();
    let statuses = api
        .list(GROUP, "secretsyncs")
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    let events = api
        .list("", "events")
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    for value in values {
        for (what, text) in [("log", &logs), ("status", &statuses), ("event", &events)] {
            assert!(!text.contains(value), "a secret value in a {what}");
            assert!(
                !text.contains(&b64(value)),
                "a secret value (base64) in a {what}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_writes_and_another_takes_over_when_it_dies_or_steps_down() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let ns = "team-b";
    let password = "pw-failover-5e0a";
    let Some(bao) = vault_for(&api, ns, password) else {
        return;
    };
    let site = Site::new(&api);
    let flags = [format!("--vault-address={}", bao.addr)];
    let lease_holder = || {
        api.get(
            "coordination.k8s.io",
            "leases",
            "kube-system",
            "secrets-store-sync-controller",
        )
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    };
    let mut a = site.start("ctl-a", &flags);
    until("ctl-a to lead", Duration::from_secs(30), || {
        (lease_holder()? == "ctl-a").then_some(())
    });
    let mut b = site.start("ctl-b", &flags);
    until("ctl-b to wait", Duration::from_secs(30), || {
        b.logs()
            .contains("another replica is the leader")
            .then_some(())
    });
    api.insert(
        GROUP,
        "secretsyncs",
        secret_sync(
            ns,
            "one",
            "app-sa",
            "vault-app",
            &[("password", "password")],
        ),
    );
    until("Secret one", Duration::from_secs(30), || {
        (secret_value(&api, ns, "one", "password")? == b64(password)).then_some(())
    });
    assert!(
        !b.logs().contains("synced"),
        "the waiting replica wrote nothing"
    );
    let version = api.get("", "secrets", ns, "one").unwrap()["metadata"]["resourceVersion"].clone();

    // The leader dies without releasing the lease: the other takes over once it expires.
    a.kill();
    until("ctl-b to lead", Duration::from_secs(30), || {
        (lease_holder()? == "ctl-b").then_some(())
    });
    api.insert(
        GROUP,
        "secretsyncs",
        secret_sync(
            ns,
            "two",
            "app-sa",
            "vault-app",
            &[("password", "password")],
        ),
    );
    until("Secret two", Duration::from_secs(30), || {
        (secret_value(&api, ns, "two", "password")? == b64(password)).then_some(())
    });
    // The new leader fetched "one" again, found the same hash (the shared key) and left it.
    until("ctl-b to check one", Duration::from_secs(30), || {
        b.logs().contains("secretsync=one").then_some(())
    });
    assert_eq!(
        api.get("", "secrets", ns, "one").unwrap()["metadata"]["resourceVersion"],
        version,
        "a failover rewrites nothing"
    );

    // A restarted replica queues; the leader stepping down hands over at once.
    a.restart();
    until("ctl-a to wait", Duration::from_secs(30), || {
        (a.logs().matches("another replica is the leader").count() >= 1).then_some(())
    });
    let handed_over = Instant::now();
    assert!(b.terminate(), "a SIGTERM ends the leader cleanly");
    assert!(b.logs().contains("released the lease"));
    until("ctl-a to lead again", Duration::from_secs(30), || {
        (lease_holder()? == "ctl-a").then_some(())
    });
    assert!(
        handed_over.elapsed() < Duration::from_secs(4),
        "a released lease is taken before it would have expired"
    );
    api.insert(
        GROUP,
        "secretsyncs",
        secret_sync(
            ns,
            "three",
            "app-sa",
            "vault-app",
            &[("password", "password")],
        ),
    );
    until("Secret three", Duration::from_secs(30), || {
        (secret_value(&api, ns, "three", "password")? == b64(password)).then_some(())
    });
    for logs in [a.logs(), b.logs()] {
        assert!(!logs.contains(password));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_secret_syncs_of_one_service_account_share_one_login_and_one_read() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let Some(moto) = support::moto::Moto::start().await else {
        return;
    };
    let ns = "team-c";
    let value = "aws-value-2b7f";
    moto.create_secret("us-east-1", "prod/db", value).await;
    moto.reset_calls();
    api.insert(
        "",
        "serviceaccounts",
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "app-sa", "namespace": ns,
                            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/app"}}}),
    );
    api.insert(
        "secrets-store.csi.x-k8s.io",
        "secretproviderclasses",
        provider_class(
            ns,
            "aws-app",
            "aws",
            json!({
                "region": "us-east-1",
                "objects": "- objectName: prod/db\n  objectType: secretsmanager\n  objectAlias: db\n",
                // A templated file is a sourcePath as any object.
                "secrets-store.csi.k8s.io/templates": "- fileName: db.env\n  template: \"DB={{ files.db }}\"\n",
            }),
        ),
    );
    let site = Site::new(&api);
    let controller = site.start(
        "ctl-aws",
        &[
            format!("--aws-endpoint-url={}", moto.url),
            "--aws-region=us-east-1".to_owned(),
        ],
    );
    let names = ["db-1", "db-2", "db-3", "db-4"];
    for name in names {
        api.insert(
            GROUP,
            "secretsyncs",
            secret_sync(ns, name, "app-sa", "aws-app", &[("db", "value")]),
        );
    }
    api.insert(
        GROUP,
        "secretsyncs",
        secret_sync(ns, "db-env", "app-sa", "aws-app", &[("db.env", "env")]),
    );
    for name in names {
        until(name, Duration::from_secs(60), || {
            (secret_value(&api, ns, name, "value")? == b64(value)).then_some(())
        });
    }
    until("db-env", Duration::from_secs(60), || {
        (secret_value(&api, ns, "db-env", "env")? == b64(&format!("DB={value}"))).then_some(())
    });
    assert_eq!(
        moto.count("AssumeRoleWithWebIdentity"),
        1,
        "one login for one identity"
    );
    assert_eq!(
        moto.count("GetSecretValue"),
        1,
        "one read shared by the five SecretSyncs"
    );
    assert!(!controller.logs().contains(value));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_example_secret_syncs_give_upstreams_outcomes_through_a_provider_plugin() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let ns = "test-v1alpha1";
    let site = Site::new(&api);
    let providers = site.dir.path().join("providers");
    std::fs::create_dir_all(&providers).unwrap();
    // Upstream's e2e provider answers `foo` with "secret".
    let plugin = support::provider::FakeProvider::start(
        &providers,
        "e2e-provider",
        support::provider::Behaviour {
            files: vec![("foo".to_owned(), 0o644, b"secret".to_vec())],
            versions: vec![("foo".to_owned(), "v1".to_owned())],
            ..Default::default()
        },
    )
    .await;
    let spc = provider_class(
        ns,
        "e2e-providerspc",
        "e2e-provider",
        json!({
            "objects": "array:\n  - |\n    objectName: foo\n    objectVersion: v1\n",
        }),
    );
    api.insert("secrets-store.csi.x-k8s.io", "secretproviderclasses", spc);
    // The namespace's default ServiceAccount is the controller-manager's to create.
    until(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || api.get("", "serviceaccounts", ns, "default"),
    );
    let _controller = site.start("ctl-e2e", &[]);
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/upstream/secretsyncs.yaml"),
    )
    .unwrap();
    let examples: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let example = |name: &str| {
        let mut object = examples
            .iter()
            .find(|e| e["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no example {name}"))
            .clone();
        object["metadata"]["namespace"] = json!(ns);
        object
    };
    let create = |object: Value| {
        let request = http::Request::post(format!(
            "/apis/secret-sync.x-k8s.io/v1alpha1/namespaces/{}/secretsyncs",
            object["metadata"]["namespace"].as_str().unwrap()
        ))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&object).unwrap())
        .unwrap();
        let client = api.client();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(client.request::<Value>(request))
        })
    };

    // The README's: the Secret with the provider's value, one owner; collected with it.
    create(example("sse2esecret")).unwrap();
    until("sse2esecret", Duration::from_secs(60), || {
        (secret_value(&api, ns, "sse2esecret", "bar")? == b64("secret")).then_some(())
    });
    let secret = api.get("", "secrets", ns, "sse2esecret").unwrap();
    assert_eq!(
        secret["metadata"]["ownerReferences"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["apiVersion"],
        "secret-sync.x-k8s.io/v1alpha1"
    );
    // The plugin was asked as the workload: its namespace, account and tokens.
    let call = plugin.calls().pop().unwrap();
    assert_eq!(call.attributes["csi.storage.k8s.io/pod.namespace"], ns);
    assert_eq!(
        call.attributes["csi.storage.k8s.io/serviceAccount.name"],
        "default"
    );
    let tokens: Value = serde_json::from_str(
        call.attributes["csi.storage.k8s.io/serviceAccount.tokens"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(
        tokens["vault"]["token"].is_string() && tokens["sts.amazonaws.com"]["token"].is_string()
    );
    api.delete(GROUP, "secretsyncs", ns, "sse2esecret");
    until("sse2esecret collected", Duration::from_secs(60), || {
        api.get("", "secrets", ns, "sse2esecret")
            .is_none()
            .then_some(())
    });

    // Refused by the admission policies or the Secret's own validation: ControllerPatchError.
    for (name, says) in [
        (
            "my-custom-api-secret",
            "may not write Secrets of type example.com/api-credentials",
        ),
        (
            "sse2eserviceaccountsecret",
            "may not write Secrets of type kubernetes.io/service-account-token",
        ),
        (
            "sse2einvalidannotationssecret",
            "metadata.annotations: Invalid value",
        ),
        ("sse2einvalidlabelsecret", "metadata.labels: Invalid value"),
    ] {
        create(example(name)).unwrap();
        let message = failure_message(&api, ns, name, "ControllerPatchError");
        assert!(
            message.starts_with(&format!("failed to patch secret \"{name}\"")),
            "{message}"
        );
        assert!(message.contains(says), "{name}: {message}");
        assert!(api.get("", "secrets", ns, name).is_none());
    }

    // Refused by the CRD's own rules, with upstream's message.
    let refused = create(example("sse2einvalidlabelvaluesecret")).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("label values must not exceed 63 characters"),
        "{refused}"
    );

    // The class in another namespace is not found from this one.
    let mut elsewhere = example("sse2esecret");
    elsewhere["metadata"]["namespace"] = json!("ss-namespace");
    api.insert(
        "",
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ss-namespace"}}),
    );
    until(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || api.get("", "serviceaccounts", "ss-namespace", "default"),
    );
    create(elsewhere).unwrap();
    let message = failure_message(
        &api,
        "ss-namespace",
        "sse2esecret",
        "SecretProviderClassMisconfigured",
    );
    assert!(
        message.starts_with("failed to get SecretProviderClass \"e2e-providerspc\""),
        "{message}"
    );
}
