//! The built-in `aws` provider against a real moto server (Secrets Manager, SSM, STS), through
//! the real CSI socket onto real tmpfs mounts. A proxy in front of moto counts every AWS call
//! and injects server errors, throttling and refusals.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::moto::{self, Fault, Moto};
use support::{ApiServer, Driver, Pod, TestApi, files, mounts_under, read_tree, unpublish};

const GROUP: &str = "secrets-store.csi.x-k8s.io";
const REGION: &str = "us-east-1";
const FAILOVER: &str = "us-west-2";
const ROLE: &str = "arn:aws:iam::123456789012:role/team-app";
const TOKENS: &str = "csi.storage.k8s.io/serviceAccount.tokens";

const DB_V1: &str = r#"{"username":"app","db-password":"db-pw-first-5c1d"}"#;
const DB_V2: &str = r#"{"username":"app","db-password":"db-pw-second-77ae"}"#;
const DB_WEST: &str = r#"{"username":"app-west","db-password":"db-pw-west-0b9f"}"#;
const SIGNING_V1: &str = "signing-key-pinned-3e8a";
const SIGNING_V2: &str = "signing-key-newer-a41f";
/// The pinned VersionId in `examples/aws.yaml`.
const SIGNING_VERSION: &str = "0c5b1a6e-8d7f-4e1a-9b3c-2f4d6e8a0b1c";
const KEYSTORE: &[u8] = &[0xfe, 0xed, 0xfe, 0xed, 0, 0, 0, 2, 0xff, 0x00, 0x7f];
const API_KEY: &str = "api-key-secure-string-91c0";
const HOSTS: &str = "db-1.internal,db-2.internal";
const FLAGS_V1: &str = r#"{"beta":false}"#;
const API_TOKEN_EAST: &str = "api-token-east-6d2b";
const API_TOKEN_REPLICA: &str = "api-token-replica-west-c37e";
const API_KEY_WEST: &str = "api-key-west-18fa";

const VALUES: &[&str] = &[
    "db-pw-first-5c1d",
    "db-pw-second-77ae",
    "db-pw-west-0b9f",
    SIGNING_V1,
    SIGNING_V2,
    API_KEY,
    API_TOKEN_EAST,
    API_TOKEN_REPLICA,
    API_KEY_WEST,
    moto::SECRET_KEY,
];

/// The objects of both examples, in both regions: `prod/app/db` has a previous and a current
/// version, `prod/app/signing-key` a pinned old version and a newer current one.
async fn fixtures(moto: &Moto) {
    moto.create_secret(REGION, "prod/app/db", DB_V1).await;
    moto.put_secret(REGION, "prod/app/db", DB_V2).await;
    moto.secrets(REGION)
        .create_secret()
        .name("prod/app/signing-key")
        .secret_string(SIGNING_V1)
        .client_request_token(SIGNING_VERSION)
        .send()
        .await
        .unwrap();
    moto.put_secret(REGION, "prod/app/signing-key", SIGNING_V2)
        .await;
    moto.create_binary_secret(REGION, "prod/app/keystore", KEYSTORE)
        .await;
    moto.put_parameter(REGION, "/prod/app/api-key", "SecureString", API_KEY)
        .await;
    moto.put_parameter(REGION, "/prod/app/hosts", "StringList", HOSTS)
        .await;
    moto.put_parameter(REGION, "/prod/app/feature-flags", "String", FLAGS_V1)
        .await;
    moto.put_parameter(
        REGION,
        "/prod/app/feature-flags",
        "String",
        r#"{"beta":true}"#,
    )
    .await;
    moto.create_secret(REGION, "prod/app/api-token", API_TOKEN_EAST)
        .await;

    moto.create_secret(FAILOVER, "prod/app/db", DB_WEST).await;
    moto.create_secret(FAILOVER, "prod/app/api-token-replica", API_TOKEN_REPLICA)
        .await;
    moto.put_parameter(FAILOVER, "/prod/app/api-key", "SecureString", API_KEY_WEST)
        .await;
}

/// A class from `examples/` (the README shows the same files).
fn example(file: &str) -> Value {
    support::yaml_file(&format!("examples/{file}"))
}

/// Service account `team/<name>`, annotated with the IRSA role when `role` is set.
fn service_account(api: &dyn TestApi, name: &str, role: Option<&str>) {
    let mut account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": "team"}});
    if let Some(role) = role {
        account["metadata"]["annotations"] = json!({"eks.amazonaws.com/role-arn": role});
    }
    api.insert("", "serviceaccounts", account);
}

/// A pod of `team` running as `service_account`, stored in the API server.
fn pod(api: &dyn TestApi, name: &str, service_account: &str) -> Pod {
    let mut pod = Pod::new(name, "team");
    pod.service_account = service_account.to_owned();
    pod.register(api, "app-aws");
    pod
}

async fn driver(api: &dyn TestApi, moto: &Moto, extra: &[&str]) -> Driver {
    let endpoint = format!("--aws-endpoint-url={}", moto.url);
    let mut args = vec![endpoint.as_str()];
    args.extend_from_slice(extra);
    Driver::start(api, &args).await
}

fn text(files: &BTreeMap<String, (Vec<u8>, u32)>, name: &str) -> String {
    String::from_utf8(files[name].0.clone()).unwrap_or_else(|_| panic!("{name} is not text"))
}

fn token_of(
    request: &secrets_store_csi_driver::proto::csi::v1::NodePublishVolumeRequest,
    audience: &str,
) -> String {
    let tokens: Value = serde_json::from_str(&request.volume_context[TOKENS]).unwrap();
    tokens[audience]["token"].as_str().unwrap().to_owned()
}

fn assert_no_leaks(driver: &Driver, tokens: &[&str]) {
    let mut values = VALUES.to_vec();
    values.extend_from_slice(tokens);
    driver.assert_logs_free_of(&values);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_irsa_example_mounts_every_kind_of_object_with_few_calls() {
    if !support::require_root() {
        return;
    }
    let Some(moto) = Moto::start().await else {
        return;
    };
    fixtures(&moto).await;
    let Some(api) = ApiServer::start().await else {
        return;
    };
    service_account(&api, "app-sa", Some(ROLE));
    api.insert(GROUP, "secretproviderclasses", example("aws.yaml"));
    let driver = driver(&api, &moto, &[]).await;

    let app = pod(&api, "web-1", "app-sa");
    let target = driver.target(&app.uid, "secrets");
    let request = app.publish_with_tokens(&target, "app-aws", &api, &["sts.amazonaws.com"]);
    let token = token_of(&request, "sts.amazonaws.com");
    driver
        .node()
        .node_publish_volume(request)
        .await
        .unwrap_or_else(|e| panic!("{}", e.message()));

    assert!(support::mount_line(&target).unwrap().contains(" tmpfs "));
    let files = files(&target);
    assert_eq!(text(&files, "db.json"), DB_V2);
    assert_eq!(files["db.json"].1, 0o400);
    assert_eq!(text(&files, "db-user"), "app");
    assert_eq!(text(&files, "db-password"), "db-pw-second-77ae");
    assert_eq!(
        files["db-password"].1, 0o400,
        "jmesPath files inherit the mode"
    );
    assert_eq!(text(&files, "db-previous.json"), DB_V1);
    assert_eq!(text(&files, "prod_app_signing-key"), SIGNING_V1);
    assert_eq!(files["prod_app_signing-key"].1, 0o644);
    assert_eq!(files["keystore.jks"].0, KEYSTORE);
    assert_eq!(text(&files, "_prod_app_api-key"), API_KEY);
    assert_eq!(text(&files, "hosts"), HOSTS);
    assert_eq!(text(&files, "feature-flags.json"), FLAGS_V1);
    assert_eq!(files.len(), 9);

    let versions = support::pod_versions(&api, "web-1");
    assert_eq!(versions["prod_app_signing-key"], SIGNING_VERSION);
    assert_eq!(versions["db-user"], versions["db.json"]);
    assert_ne!(versions["db.json"], versions["db-previous.json"]);
    assert_eq!(versions["feature-flags.json"], "1");
    assert_eq!(versions["_prod_app_api-key"], "1");

    // One STS exchange, one batch for the two current secrets, one call per label or pinned
    // version, one GetParameters for the three parameters.
    assert_eq!(moto.count("AssumeRoleWithWebIdentity"), 1);
    assert_eq!(moto.count("BatchGetSecretValue"), 1);
    assert_eq!(moto.count("GetSecretValue"), 2);
    assert_eq!(moto.count("GetParameters"), 1);
    assert_eq!(moto.calls().len(), 5);

    // A second pod of the same identity shares the credentials and the reads.
    let again = pod(&api, "web-2", "app-sa");
    let target2 = driver.target(&again.uid, "secrets");
    driver
        .node()
        .node_publish_volume(again.publish_with_tokens(
            &target2,
            "app-aws",
            &api,
            &["sts.amazonaws.com"],
        ))
        .await
        .unwrap_or_else(|e| panic!("{}", e.message()));
    assert_eq!(read_tree(&target2), read_tree(&target));
    assert_eq!(moto.calls().len(), 5, "{:?}", moto.calls());

    // Another service account with the same role is another identity: its own STS call.
    service_account(&api, "other-sa", Some(ROLE));
    let other = pod(&api, "batch-1", "other-sa");
    let target3 = driver.target(&other.uid, "secrets");
    driver
        .node()
        .node_publish_volume(other.publish_with_tokens(
            &target3,
            "app-aws",
            &api,
            &["sts.amazonaws.com"],
        ))
        .await
        .unwrap_or_else(|e| panic!("{}", e.message()));
    assert_eq!(moto.count("AssumeRoleWithWebIdentity"), 2);

    for target in [&target, &target2, &target3] {
        driver
            .node()
            .node_unpublish_volume(unpublish(target))
            .await
            .unwrap();
    }
    assert!(mounts_under(driver.dir.path()).is_empty());
    assert_no_leaks(&driver, &[&token]);
}

/// A Pod Identity agent that hands out credentials for one token, recording what it was sent.
async fn pod_identity_agent(token: String) -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let app = axum::Router::new().route(
        "/v1/credentials",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let recorded = recorded.clone();
            let token = token.clone();
            async move {
                let sent = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                recorded.lock().unwrap().push(sent.clone());
                if sent != token {
                    return (
                        axum::http::StatusCode::BAD_REQUEST,
                        "{\"Message\":\"bad token\"}".to_owned(),
                    );
                }
                let body = json!({
                    "AccessKeyId": "ASIAPODIDENTITY00001",
                    "SecretAccessKey": "pod-identity-secret-key-f00d",
                    "Token": "pod-identity-session-token-beef",
                    "AccountId": moto::ACCOUNT,
                    "Expiration": "2099-01-01T00:00:00Z",
                });
                (axum::http::StatusCode::OK, body.to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/credentials", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_identity_and_failover_only_on_server_errors() {
    if !support::require_root() {
        return;
    }
    let Some(moto) = Moto::start().await else {
        return;
    };
    fixtures(&moto).await;
    let Some(api) = ApiServer::start().await else {
        return;
    };
    service_account(&api, "app-sa", None);
    api.insert(
        GROUP,
        "secretproviderclasses",
        example("aws-pod-identity.yaml"),
    );

    let app = pod(&api, "web-1", "app-sa");
    let tokens = app.tokens(&api, &["pods.eks.amazonaws.com"]);
    let token = serde_json::from_str::<Value>(&tokens).unwrap()["pods.eks.amazonaws.com"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (agent, seen) = pod_identity_agent(token.clone()).await;
    let agent_arg = format!("--aws-pod-identity-endpoint={agent}");
    let driver = driver(
        &api,
        &moto,
        &[
            &agent_arg,
            "--aws-read-cache-ttl=0s",
            "--aws-call-timeout=1s",
        ],
    )
    .await;
    let publish = |pod: &Pod, target: &Path| {
        let mut request = pod.publish(target, "app-aws-pod-identity");
        request
            .volume_context
            .insert(TOKENS.to_owned(), tokens.clone());
        request
    };

    // A healthy primary region: the failover region is not asked at all.
    let target = driver.target(&app.uid, "secrets");
    driver
        .node()
        .node_publish_volume(publish(&app, &target))
        .await
        .unwrap_or_else(|e| panic!("{}", e.message()));
    let mounted = files(&target);
    assert_eq!(text(&mounted, "db.json"), DB_V2);
    assert_eq!(text(&mounted, "api-token"), API_TOKEN_EAST);
    assert_eq!(text(&mounted, "api-key"), API_KEY);
    assert_eq!(*seen.lock().unwrap(), vec![token.clone()]);
    assert!(
        moto.calls().iter().all(|c| c.region == REGION),
        "{:?}",
        moto.calls()
    );
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();

    // us-east-1 failing with 503 (after the SDK's retries): everything comes from us-west-2,
    // the replica under its failover name.
    moto.inject(Fault::fail(503, "ServiceUnavailable").region(REGION));
    moto.reset_calls();
    driver
        .node()
        .node_publish_volume(publish(&app, &target))
        .await
        .unwrap_or_else(|e| panic!("{}", e.message()));
    let mounted = files(&target);
    assert_eq!(text(&mounted, "db.json"), DB_WEST);
    assert_eq!(text(&mounted, "db-user"), "app-west");
    assert_eq!(text(&mounted, "api-token"), API_TOKEN_REPLICA);
    assert_eq!(text(&mounted, "api-key"), API_KEY_WEST);
    assert!(moto.calls().iter().any(|c| c.region == FAILOVER));
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();

    // us-east-1 not answering in time: the same.
    moto.heal();
    moto.inject(Fault::delay(Duration::from_secs(3)).region(REGION));
    driver
        .node()
        .node_publish_volume(publish(&app, &target))
        .await
        .unwrap_or_else(|e| panic!("{}", e.message()));
    assert_eq!(text(&files(&target), "api-token"), API_TOKEN_REPLICA);
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();

    // A refusal (4xx) in the primary region is final: no failover, PermissionDenied.
    moto.heal();
    moto.inject(
        Fault::fail(400, "AccessDeniedException")
            .operation("GetParameters")
            .region(REGION),
    );
    moto.reset_calls();
    let err = driver
        .node()
        .node_publish_volume(publish(&app, &target))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::PermissionDenied,
        "{}",
        err.message()
    );
    assert!(
        err.message()
            .contains("us-east-1: Failed fetching parameters"),
        "{}",
        err.message()
    );
    assert!(
        moto.calls().iter().all(|c| c.region == REGION),
        "{:?}",
        moto.calls()
    );
    assert!(!target.exists(), "a failed mount leaves nothing behind");

    // Both regions down: Unavailable, naming both.
    moto.heal();
    moto.inject(Fault::fail(500, "InternalFailure"));
    let err = driver
        .node()
        .node_publish_volume(publish(&app, &target))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{}", err.message());
    assert!(
        err.message()
            .contains("Failed to fetch secret from all regions"),
        "{}",
        err.message()
    );
    assert!(mounts_under(driver.dir.path()).is_empty());
    assert_no_leaks(
        &driver,
        &[
            &token,
            "pod-identity-secret-key-f00d",
            "pod-identity-session-token-beef",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_rereads_only_what_can_change_and_backs_off_when_throttled() {
    if !support::require_root() {
        return;
    }
    let Some(moto) = Moto::start().await else {
        return;
    };
    fixtures(&moto).await;
    let Some(api) = ApiServer::start().await else {
        return;
    };
    service_account(&api, "app-sa", Some(ROLE));
    let objects = r#"
- {objectName: prod/app/db, objectType: secretsmanager, objectAlias: db.json}
- {objectName: prod/app/api-token, objectType: secretsmanager}
- {objectName: prod/app/keystore, objectType: secretsmanager}
- {objectName: prod/app/signing-key, objectType: secretsmanager, objectVersion: 0c5b1a6e-8d7f-4e1a-9b3c-2f4d6e8a0b1c}
- {objectName: /prod/app/api-key, objectType: ssmparameter, objectAlias: api-key}
- {objectName: /prod/app/feature-flags, objectType: ssmparameter, objectAlias: flags}
"#;
    api.insert(
        GROUP,
        "secretproviderclasses",
        support::spc(
            "team",
            "rotating",
            "aws",
            json!({"region": REGION, "objects": objects}),
        ),
    );
    let driver = driver(
        &api,
        &moto,
        // The default read sharing stays on: a rotation takes no read older than itself.
        &["--enable-secret-rotation", "--rotation-poll-interval=1s"],
    )
    .await;
    let app = pod(&api, "web-1", "app-sa");
    let target = driver.target(&app.uid, "secrets");
    let publish = || app.publish_with_tokens(&target, "rotating", &api, &["sts.amazonaws.com"]);

    driver.node().node_publish_volume(publish()).await.unwrap();
    let first = moto.calls();
    assert_eq!(moto.count("BatchGetSecretValue"), 1, "{first:?}");
    assert_eq!(
        moto.count("GetSecretValue"),
        1,
        "the pinned version: {first:?}"
    );
    assert_eq!(moto.count("GetParameters"), 1);

    // Nothing changed: the pinned version is read back from the volume, the rest batched.
    moto.reset_calls();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    driver.node().node_publish_volume(publish()).await.unwrap();
    let ops: Vec<String> = moto.calls().into_iter().map(|c| c.operation).collect();
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(
        ops.contains(&"BatchGetSecretValue".to_owned())
            && ops.contains(&"GetParameters".to_owned())
    );
    assert_eq!(text(&files(&target), "prod_app_signing-key"), SIGNING_V1);

    // A rotated secret is picked up at the next republish.
    moto.put_secret(REGION, "prod/app/db", r#"{"rotated":true}"#)
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    driver.node().node_publish_volume(publish()).await.unwrap();
    assert_eq!(text(&files(&target), "db.json"), r#"{"rotated":true}"#);

    // Throttling is retried with backoff by the SDK; the rotation still succeeds.
    moto.reset_calls();
    moto.inject(
        Fault::fail(400, "ThrottlingException")
            .operation("BatchGetSecretValue")
            .times(2),
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    driver.node().node_publish_volume(publish()).await.unwrap();
    assert_eq!(moto.count("BatchGetSecretValue"), 3);

    // An IAM policy without secretsmanager:BatchGetSecretValue: one by one, and the batch is
    // not offered again to this identity.
    moto.heal();
    moto.inject(Fault::fail(400, "AccessDeniedException").operation("BatchGetSecretValue"));
    moto.reset_calls();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    driver.node().node_publish_volume(publish()).await.unwrap();
    assert_eq!(moto.count("BatchGetSecretValue"), 1);
    assert_eq!(moto.count("GetSecretValue"), 3);
    moto.reset_calls();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    driver.node().node_publish_volume(publish()).await.unwrap();
    assert_eq!(moto.count("BatchGetSecretValue"), 0);
    assert_eq!(moto.count("GetSecretValue"), 3);

    // AWS down during a rotation: the pod keeps its files.
    moto.heal();
    moto.inject(Fault::fail(503, "ServiceUnavailable"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    driver.node().node_publish_volume(publish()).await.unwrap();
    assert_eq!(text(&files(&target), "db.json"), r#"{"rotated":true}"#);
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();
    assert_no_leaks(&driver, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_has_its_code_and_message_and_leaves_nothing_behind() {
    if !support::require_root() {
        return;
    }
    let Some(moto) = Moto::start().await else {
        return;
    };
    fixtures(&moto).await;
    moto.create_secret(REGION, "plain", "not json at all: plain-value-2b7c")
        .await;
    let Some(api) = ApiServer::start().await else {
        return;
    };
    service_account(&api, "app-sa", Some(ROLE));
    service_account(&api, "no-role", None);
    let driver = driver(&api, &moto, &[]).await;

    let sm =
        |extra: &str| format!("- {{objectName: prod/app/db, objectType: secretsmanager{extra}}}");
    let cases: Vec<(&str, Value, &str, tonic::Code, &str)> = vec![
        (
            "no-type",
            json!({"region": REGION, "objects": "- objectName: prod/app/db"}),
            "app-sa",
            tonic::Code::InvalidArgument,
            "objects[0]: Must use objectType when a full ARN is not specified: prod/app/db",
        ),
        (
            "bad-type",
            json!({"region": REGION, "objects": "- {objectName: x, objectType: kms}"}),
            "app-sa",
            tonic::Code::InvalidArgument,
            "Invalid objectType: kms",
        ),
        (
            "arn-region",
            json!({"region": REGION, "objects": "- objectName: arn:aws:secretsmanager:eu-west-1:1:secret:x"}),
            "app-sa",
            tonic::Code::InvalidArgument,
            "ARN region must match region us-east-1",
        ),
        (
            "mode",
            json!({"region": REGION, "objects": sm(", filePermission: '777'")}),
            "app-sa",
            tonic::Code::InvalidArgument,
            "filePermission: Invalid File Permission: 777",
        ),
        (
            "traversal",
            json!({"region": REGION, "pathTranslation": "False",
                   "objects": sm(", objectAlias: ../../etc/passwd")}),
            "app-sa",
            tonic::Code::InvalidArgument,
            "path can not contain ../",
        ),
        (
            // Translated as ASCP translates it, the alias is a name the writer keeps for itself.
            "translated-traversal",
            json!({"region": REGION, "objects": sm(", objectAlias: ../../etc/passwd")}),
            "app-sa",
            tonic::Code::InvalidArgument,
            "reserved for the writer",
        ),
        (
            "duplicate",
            json!({"region": REGION, "objects": format!("{}\n{}", sm(""), sm(""))}),
            "app-sa",
            tonic::Code::InvalidArgument,
            "found descriptor with duplicate object name prod/app/db, no object alias, and no version label",
        ),
        (
            "failover-object",
            json!({"region": REGION, "objects": sm(", objectAlias: a, failoverObject: {objectName: b}")}),
            "app-sa",
            tonic::Code::InvalidArgument,
            "failover object allowed only when failover region is defined",
        ),
        (
            "same-failover",
            json!({"region": REGION, "failoverRegion": REGION, "objects": sm("")}),
            "app-sa",
            tonic::Code::InvalidArgument,
            "us-east-1: failover region cannot be the same as the primary region",
        ),
        (
            "translation",
            json!({"region": REGION, "pathTranslation": "--", "objects": sm("")}),
            "app-sa",
            tonic::Code::InvalidArgument,
            "pathTranslation must be either 'False' or a single character string",
        ),
        (
            "jmes-missing",
            json!({"region": REGION, "objects": sm(", objectAlias: db, jmesPath: [{path: nope, objectAlias: n}]")}),
            "app-sa",
            tonic::Code::InvalidArgument,
            "JMES Path - nope for object alias - n does not point to a valid object",
        ),
        (
            "jmes-bad",
            json!({"region": REGION, "objects": sm(", objectAlias: db, jmesPath: [{path: 'a.[', objectAlias: n}]")}),
            "app-sa",
            tonic::Code::InvalidArgument,
            "Invalid JMES Path: a.[",
        ),
        (
            "jmes-not-json",
            json!({"region": REGION, "objects": "- {objectName: plain, objectType: secretsmanager, jmesPath: [{path: a, objectAlias: n}]}"}),
            "app-sa",
            tonic::Code::InvalidArgument,
            "Invalid JSON used with jmesPath in secret: plain",
        ),
        (
            "not-found",
            json!({"region": REGION, "objects": "- {objectName: prod/app/none, objectType: secretsmanager}"}),
            "app-sa",
            tonic::Code::NotFound,
            "us-east-1: Failed fetching secret prod/app/none: ResourceNotFoundException",
        ),
        (
            "ssm-not-found",
            json!({"region": REGION, "objects": "- {objectName: /none, objectType: ssmparameter}"}),
            "app-sa",
            tonic::Code::NotFound,
            "invalid parameters: /none",
        ),
        (
            "no-role",
            json!({"region": REGION, "objects": sm("")}),
            "no-role",
            tonic::Code::Unauthenticated,
            "An IAM role must be associated with service account no-role (namespace: team)",
        ),
        (
            "no-region",
            json!({"objects": sm("")}),
            "app-sa",
            tonic::Code::InvalidArgument,
            "Region not found",
        ),
    ];
    for (name, parameters, account, code, message) in cases {
        api.insert(
            GROUP,
            "secretproviderclasses",
            support::spc("team", name, "aws", parameters),
        );
        let app = pod(&api, &format!("pod-{name}"), account);
        let target = driver.target(&app.uid, "secrets");
        let err = driver
            .node()
            .node_publish_volume(app.publish_with_tokens(
                &target,
                name,
                &api,
                &["sts.amazonaws.com"],
            ))
            .await
            .expect_err(name);
        assert_eq!(err.code(), code, "{name}: {}", err.message());
        assert!(err.message().contains(message), "{name}: {}", err.message());
        assert!(!target.exists(), "{name} left its target behind");
    }

    // Without kubelet's tokens there is nothing to authenticate with.
    api.insert(
        GROUP,
        "secretproviderclasses",
        support::spc(
            "team",
            "no-token",
            "aws",
            json!({"region": REGION, "objects": sm("")}),
        ),
    );
    let app = pod(&api, "pod-no-token", "app-sa");
    let target = driver.target(&app.uid, "secrets");
    let err = driver
        .node()
        .node_publish_volume(app.publish(&target, "no-token"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains("serviceAccount.tokens not provided"),
        "{}",
        err.message()
    );

    // The node's region label stands in for a missing region parameter.
    api.insert(
        "",
        "nodes",
        json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": support::NODE, "labels": {"topology.kubernetes.io/region": REGION}}}),
    );
    api.insert(
        GROUP,
        "secretproviderclasses",
        support::spc(
            "team",
            "node-region",
            "aws",
            json!({"objects": sm(", objectAlias: db.json")}),
        ),
    );
    let app = pod(&api, "pod-node-region", "app-sa");
    let target = driver.target(&app.uid, "secrets");
    driver
        .node()
        .node_publish_volume(app.publish_with_tokens(
            &target,
            "node-region",
            &api,
            &["sts.amazonaws.com"],
        ))
        .await
        .unwrap_or_else(|e| panic!("{}", e.message()));
    assert_eq!(text(&files(&target), "db.json"), DB_V2);
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();
    assert!(mounts_under(driver.dir.path()).is_empty());
    assert_no_leaks(&driver, &["plain-value-2b7c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_served_provider_gives_the_same_files_as_the_built_in() {
    if !support::require_root() {
        return;
    }
    let Some(moto) = Moto::start().await else {
        return;
    };
    fixtures(&moto).await;
    let Some(api) = ApiServer::start().await else {
        return;
    };
    service_account(&api, "app-sa", Some(ROLE));
    api.insert(GROUP, "secretproviderclasses", example("aws.yaml"));
    let in_process = driver(&api, &moto, &[]).await;
    let via_socket = driver(&api, &moto, &["--builtin-providers=vault"]).await;
    let socket = via_socket.provider_dir.join("aws.sock");
    let kubeconfig = via_socket.dir.path().join("kubeconfig");
    let endpoint = format!("--aws-endpoint-url={}", moto.url);
    let kubeconfig = format!("--kubeconfig={}", kubeconfig.display());
    let server = support::serve_provider("aws", &socket, &[&endpoint, &kubeconfig]).await;

    let mut trees = Vec::new();
    for (driver, name) in [(&in_process, "web-1"), (&via_socket, "web-2")] {
        let app = pod(&api, name, "app-sa");
        let target = driver.target(&app.uid, "secrets");
        driver
            .node()
            .node_publish_volume(app.publish_with_tokens(
                &target,
                "app-aws",
                &api,
                &["sts.amazonaws.com"],
            ))
            .await
            .unwrap_or_else(|e| panic!("{name}: {}", e.message()));
        trees.push(files(&target));
        driver
            .node()
            .node_unpublish_volume(unpublish(&target))
            .await
            .unwrap();
    }
    assert_eq!(trees[0].len(), 9);
    assert_eq!(trees[0], trees[1]);
    assert_eq!(
        support::pod_versions(&api, "web-1"),
        support::pod_versions(&api, "web-2")
    );

    let logs = support::stop_provider(server, &socket);
    for value in VALUES {
        assert!(!logs.contains(value), "the provider logged a secret");
    }
    assert_no_leaks(&in_process, &[]);
    assert_no_leaks(&via_socket, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mount_command_reads_aws_with_the_environments_credentials() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    fixtures(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out");
    let output = std::process::Command::new(support::DRIVER)
        .args([
            "mount",
            "--class",
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/aws.yaml")
                .display()
                .to_string(),
            "--target",
            &target.display().to_string(),
            "--plain-dir",
        ])
        .env("AWS_ENDPOINT_URL", &moto.url)
        .env("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", moto::SECRET_KEY)
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", dir.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // Even the most verbose logging never shows a value or the credentials, including
        // the SDK's own switches for logging bodies.
        .env("RUST_LOG", "trace")
        .env("LOG_SENSITIVE_BODIES", "true")
        .env("LOG_SIGNABLE_BODY", "true")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let mounted = files(&target);
    assert_eq!(text(&mounted, "db-password"), "db-pw-second-77ae");
    assert_eq!(text(&mounted, "_prod_app_api-key"), API_KEY);
    assert_eq!(mounted.len(), 9);
    assert_eq!(moto.count("AssumeRoleWithWebIdentity"), 0);
    for value in VALUES {
        assert!(
            !stdout.contains(value) && !stderr.contains(value),
            "mount printed a secret"
        );
    }
    std::process::Command::new(support::DRIVER)
        .args(["unmount", "--target", &target.display().to_string()])
        .status()
        .unwrap();

    // A class without `region` takes the AWS profile's, as the AWS CLI does.
    let class = dir.path().join("class.yaml");
    std::fs::write(
        &class,
        "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\n\
         metadata: {name: profile-region}\nspec:\n  provider: aws\n  parameters:\n    \
         objects: '- {objectName: prod/app/db, objectType: secretsmanager, objectAlias: db.json}'\n",
    )
    .unwrap();
    let profile = dir.path().join("config");
    std::fs::write(&profile, "[default]\nregion = us-east-1\n").unwrap();
    let second = dir.path().join("second");
    let output = std::process::Command::new(support::DRIVER)
        .args(["mount", "--plain-dir", "--class"])
        .arg(&class)
        .arg("--target")
        .arg(&second)
        .env("AWS_ENDPOINT_URL", &moto.url)
        .env("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", moto::SECRET_KEY)
        .env("AWS_CONFIG_FILE", &profile)
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(text(&files(&second), "db.json"), DB_V2);
}

#[test]
fn the_readme_shows_the_tested_aws_examples_verbatim() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for example in ["aws.yaml", "aws-pod-identity.yaml"] {
        let text = std::fs::read_to_string(root.join("examples").join(example)).unwrap();
        assert!(
            readme.contains(&format!("```yaml\n{text}```")),
            "README.md must show examples/{example} verbatim"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_class_ascp_was_run_with_gives_its_files() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let corpus = support::upstream::section("aws");
    let seed = &corpus["seed"];
    let text = |v: &Value| v.as_str().unwrap().to_owned();
    for entry in seed["secrets"].as_array().unwrap() {
        moto.create_secret(REGION, &text(&entry[0]), &text(&entry[1]))
            .await;
    }
    for entry in seed["secret_updates"].as_array().unwrap() {
        moto.put_secret(REGION, &text(&entry[0]), &text(&entry[1]))
            .await;
    }
    for entry in seed["binary_secrets"].as_array().unwrap() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text(&entry[1]))
            .unwrap();
        moto.create_binary_secret(REGION, &text(&entry[0]), &bytes)
            .await;
    }
    for entry in seed["parameters"].as_array().unwrap() {
        moto.put_parameter(REGION, &text(&entry[0]), &text(&entry[1]), &text(&entry[2]))
            .await;
    }
    for entry in seed["labels"].as_array().unwrap() {
        moto.parameters(REGION)
            .label_parameter_version()
            .name(text(&entry[0]))
            .parameter_version(entry[1].as_i64().unwrap())
            .labels(text(&entry[2]))
            .send()
            .await
            .unwrap();
    }
    service_account(&api, "app-sa", Some(ROLE));

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let socket = dir.path().join("aws.sock");
    let log = dir.path().join("provider.log");
    let args = [
        format!("--aws-endpoint-url={}", moto.url),
        format!("--kubeconfig={}", kubeconfig.display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = support::upstream::serve("aws", &socket, &log, &args).await;
    let app = pod(&api, "web-1", "app-sa");
    let tokens = app.tokens(&api, &["sts.amazonaws.com"]);
    let mismatches =
        support::upstream::compare(&socket, &corpus, &app, &tokens, &BTreeMap::new()).await;
    support::upstream::assert_no_mismatches(
        server,
        &mismatches,
        &corpus,
        &log,
        &["plain-value", "param-value", "secure-value", "p<&>"],
    );
}
