//! The built-in `vault` provider against a real OpenBao dev server: through the real CSI
//! socket and tmpfs, with OpenBao's real Kubernetes auth validating pod tokens against the fake
//! API server's TokenReview.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::openbao::{KubernetesAuth, OpenBao, ROOT_TOKEN};
use support::{
    ApiServer, Driver, Pod, TestApi, files, mount_line, mounts_under, service_account, spc,
    unpublish,
};
use tonic::Code;

const GROUP: &str = "secrets-store.csi.x-k8s.io";
const PASSWORD_V1: &str = "first-password-c41d";
const PASSWORD_V2: &str = "second-password-88e0";
const LEGACY: &str = "kv1-legacy-token-5b7a";
const BINARY: &[u8] = b"\x00\xffbinary-secret-3e";
const OTHER: &str = "other-teams-secret-0d9f";

/// OpenBao with KV v1 (`kv/`) and v2 (`secret/`) data, Kubernetes auth against `api`, a role
/// `app` for `team/app-sa` and a role `other` for `team/other-sa`, each reading its own paths.
fn openbao(api: &ApiServer) -> Option<OpenBao> {
    let bao = OpenBao::start()?;
    configure(&bao, api);
    Some(bao)
}

fn configure(bao: &OpenBao, api: &ApiServer) {
    service_account(api, "team", "app-sa");
    service_account(api, "team", "other-sa");
    bao.bao(&["secrets", "enable", "-path=kv", "-version=1", "kv"]);
    bao.bao(&[
        "kv",
        "put",
        "secret/app",
        "username=admin",
        &format!("password={PASSWORD_V1}"),
    ]);
    bao.bao(&[
        "kv",
        "put",
        "secret/app",
        "username=admin",
        &format!("password={PASSWORD_V2}"),
    ]);
    bao.bao(&["kv", "put", "kv/legacy", &format!("token={LEGACY}")]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(BINARY);
    let hex: String = BINARY.iter().map(|b| format!("{b:02x}")).collect();
    bao.bao(&[
        "kv",
        "put",
        "secret/blob",
        &format!("b64={b64}"),
        &format!("hex={hex}"),
    ]);
    let json_file = bao.dir.path().join("typed.json");
    std::fs::write(
        &json_file,
        r#"{"count": 10, "nested": {"b": "hop", "a": [6, "x", true]}}"#,
    )
    .unwrap();
    bao.bao(&[
        "kv",
        "put",
        "secret/typed",
        &format!("@{}", json_file.display()),
    ]);
    bao.bao(&["kv", "put", "secret/other", &format!("value={OTHER}")]);
    bao.policy(
        "app",
        r#"path "secret/data/app" { capabilities = ["read"] }
           path "secret/data/blob" { capabilities = ["read"] }
           path "secret/data/typed" { capabilities = ["read"] }
           path "kv/*" { capabilities = ["read"] }
           path "pki/issue/web" { capabilities = ["update"] }
           path "database/creds/app" { capabilities = ["read"] }
           path "sys/leases/revoke" { capabilities = ["update"] }"#,
    );
    bao.policy(
        "other",
        r#"path "secret/data/other" { capabilities = ["read"] }"#,
    );
    bao.enable_kubernetes_auth_in(None, &kubernetes_auth(api));
    bao.kubernetes_role("app", "team", "app-sa", "app");
    bao.kubernetes_role("other", "team", "other-sa", "other");
}

/// How OpenBao's Kubernetes auth reaches the test's real API server: its URL and CA, and a
/// reviewer token that may create TokenReviews.
fn kubernetes_auth(api: &ApiServer) -> KubernetesAuth {
    KubernetesAuth {
        url: api.url(),
        ca_pem: api.ca_pem().to_owned(),
        reviewer_jwt: api.reviewer_token(),
    }
}

/// [`enable_jwt_auth_method`] and role `app-jwt` for the
/// subject team/app-sa with audience `custom-aud` (as in `examples/vault-jwt.yaml`).
fn enable_jwt_auth(bao: &OpenBao, api: &dyn TestApi) {
    enable_jwt_auth_method(bao, api);
    bao.bao(&[
        "write",
        "auth/jwt/role/app-jwt",
        "role_type=jwt",
        "bound_audiences=custom-aud",
        "user_claim=sub",
        "bound_subject=system:serviceaccount:team:app-sa",
        "token_policies=app",
    ]);
}

/// JWT auth at `jwt/` trusting the fake API server's signing key and issuer; no role yet.
fn enable_jwt_auth_method(bao: &OpenBao, api: &dyn TestApi) {
    bao.bao(&["auth", "enable", "jwt"]);
    let key = bao.dir.path().join("sa.pub");
    std::fs::write(&key, api.token_public_key_pem()).unwrap();
    bao.bao(&[
        "write",
        "auth/jwt/config",
        &format!("jwt_validation_pubkeys=@{}", key.display()),
        &format!("bound_issuer={}", support::apiserver::ISSUER),
    ]);
}

/// A pod of `team` running as `service_account`, stored in the API server.
fn pod(api: &dyn TestApi, name: &str, service_account: &str) -> Pod {
    let mut pod = Pod::new(name, "team");
    pod.service_account = service_account.to_owned();
    pod.register(api, "vault-app");
    pod
}

/// An SPC from `examples/` (the README shows the same files), pointed at `address`.
fn example(file: &str, address: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(file);
    let mut class: Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    class["spec"]["parameters"]["vaultAddress"] = json!(address);
    class
}

/// Stores `examples/vault.yaml` (every KV output form) as class `name`.
fn kv_class(api: &dyn TestApi, name: &str, address: &str) {
    let mut class = example("vault.yaml", address);
    class["metadata"]["name"] = json!(name);
    api.insert(GROUP, "secretproviderclasses", class);
}

/// `id -> version` of a SecretProviderClassPodStatus, without `whole.json`, whose content (and
/// so version) carries a per-request id.
fn versions_of(status: &Value) -> BTreeMap<String, String> {
    let mut versions = support::object_versions(status);
    versions.remove("whole.json");
    versions
}

/// Asserts that the logs hold none of the test's secrets, pod tokens or Vault tokens.
fn assert_no_leaks(driver: &Driver, tokens: &[&str]) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(BINARY);
    let mut values = vec![PASSWORD_V1, PASSWORD_V2, LEGACY, OTHER, &b64, ROOT_TOKEN];
    values.extend_from_slice(tokens);
    driver.assert_logs_free_of(&values);
    let logs = driver.logs();
    // OpenBao service tokens look like `s.` + 24 characters.
    for (index, _) in logs.match_indices("s.") {
        let rest: String = logs[index + 2..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        assert!(
            rest.len() < 24,
            "a Vault token may have been logged: s.{rest}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_secrets_mount_through_the_csi_socket_with_kubernetes_auth() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let Some(bao) = openbao(&api) else { return };
    let key_file = tempfile::tempdir().unwrap();
    let key_arg = format!(
        "--version-key-file={}",
        key_file.path().join("v.key").display()
    );
    let driver = Driver::start(&api, &[&key_arg]).await;
    kv_class(&api, "kv", &bao.addr);

    let app = pod(&api, "web-1", "app-sa");
    let target = driver.target(&app.uid, "secrets");
    let request = app.publish_with_tokens(&target, "kv", &api, &["vault"]);
    let tokens = request.volume_context["csi.storage.k8s.io/serviceAccount.tokens"].clone();
    driver
        .node()
        .node_publish_volume(request)
        .await
        .unwrap_or_else(|e| panic!("{}", e.message()));

    assert!(mount_line(&target).unwrap().contains(" tmpfs "));
    let files = files(&target);
    let text = |name: &str| String::from_utf8(files[name].0.clone()).unwrap();
    assert_eq!(text("password"), PASSWORD_V2);
    assert_eq!(text("password-v1"), PASSWORD_V1);
    assert_eq!(text("legacy"), LEGACY);
    assert_eq!(files["legacy"].1, 0o600);
    assert_eq!(files["password"].1, 0o644);
    assert_eq!(files["binary"].0, BINARY);
    assert_eq!(files["binary-hex"].0, BINARY);
    assert_eq!(text("count"), "10");
    assert_eq!(text("nested.json"), r#"{"a":[6,"x",true],"b":"hop"}"#);
    let whole: Value = serde_json::from_slice(&files["whole.json"].0).unwrap();
    assert_eq!(whole["data"]["data"]["password"], PASSWORD_V2);
    assert_eq!(whole["data"]["metadata"]["version"], 2);
    assert!(whole["request_id"].is_string());
    assert_eq!(files.len(), 8);

    let status = api
        .list(GROUP, "secretproviderclasspodstatuses")
        .pop()
        .unwrap();
    let versions = versions_of(&status);
    assert_eq!(versions.len(), 7);
    assert_ne!(versions["password"], versions["password-v1"]);

    // A restarted driver with the same key file reports the same versions for the same data.
    let second = Driver::start(&api, &[&key_arg]).await;
    let again = pod(&api, "web-2", "app-sa");
    let target2 = second.target(&again.uid, "secrets");
    second
        .node()
        .node_publish_volume(again.publish_with_tokens(&target2, "kv", &api, &["vault"]))
        .await
        .unwrap_or_else(|e| panic!("{}", e.message()));
    let status = api
        .list(GROUP, "secretproviderclasspodstatuses")
        .into_iter()
        .find(|s| s["status"]["podName"] == again.name.as_str())
        .unwrap();
    let versions2 = versions_of(&status);
    assert_eq!(versions, versions2);

    second
        .node()
        .node_unpublish_volume(unpublish(&target2))
        .await
        .unwrap();
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();
    assert!(mounts_under(driver.dir.path()).is_empty());
    let token = serde_json::from_str::<Value>(&tokens).unwrap()["vault"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_no_leaks(&driver, &[&token]);
    assert_no_leaks(&second, &[&token]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_issue_splits_into_certificate_and_key_with_one_request() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let Some(bao) = openbao(&api) else { return };
    bao.bao(&["secrets", "enable", "pki"]);
    bao.bao(&[
        "write",
        "pki/root/generate/internal",
        "common_name=example.com",
        "ttl=24h",
    ]);
    // generate_lease makes each issue a leased, dynamic secret.
    bao.bao(&[
        "write",
        "pki/roles/web",
        "allowed_domains=example.com",
        "allow_subdomains=true",
        "max_ttl=1h",
        "generate_lease=true",
    ]);
    let driver = Driver::start(&api, &[]).await;
    let mut class = example("vault-pki.yaml", &bao.addr);
    class["metadata"]["name"] = json!("tls");
    // Same path and method, other arguments: must be a request of its own.
    let objects = format!(
        "{}- {{objectName: other.crt, secretPath: pki/issue/web, method: PUT, \
         secretArgs: {{common_name: other.example.com}}, secretKey: certificate}}\n",
        class["spec"]["parameters"]["objects"].as_str().unwrap()
    );
    class["spec"]["parameters"]["objects"] = json!(objects);
    api.insert(GROUP, "secretproviderclasses", class);
    let mut certificates = Vec::new();
    let mut keys = Vec::new();
    for name in ["web-1", "web-2"] {
        let mut app = Pod::new(name, "team");
        app.service_account = "app-sa".to_owned();
        app.create_in(&api, "tls", "tls", None);
        let target = driver.target(&app.uid, "tls");
        driver
            .node()
            .node_publish_volume(app.publish_with_tokens(&target, "tls", &api, &["vault"]))
            .await
            .unwrap();
        let files = files(&target);
        let cert = String::from_utf8(files["tls.crt"].0.clone()).unwrap();
        let key = String::from_utf8(files["tls.key"].0.clone()).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        assert!(key.contains("PRIVATE KEY-----"));
        assert_eq!(files["tls.key"].1, 0o400);
        assert_ne!(
            files["other.crt"].0, files["tls.crt"].0,
            "secretArgs are part of the request"
        );
        certificates.push(cert);
        keys.push(key);
    }
    // The synced kubernetes.io/tls Secret holds the newest mount's pair (web-2), never a mix.
    let synced = support::eventually(Duration::from_secs(15), "web-tls with web-2's pair", || {
        api.get("", "secrets", "team", "web-tls").filter(|s| {
            let data = support::secret_data(s);
            String::from_utf8_lossy(&data["tls.crt"]).trim() == certificates[1].trim()
        })
    })
    .await;
    assert_eq!(synced["type"], "kubernetes.io/tls");
    let key = String::from_utf8(support::secret_data(&synced)["tls.key"].clone()).unwrap();
    assert_eq!(
        key.trim(),
        keys[1].trim(),
        "the key that matches the certificate"
    );
    assert_eq!(
        synced["metadata"]["ownerReferences"][0]["kind"],
        "SecretProviderClassPodStatus"
    );
    assert_ne!(
        certificates[0], certificates[1],
        "a leased secret is never shared between pods"
    );
    let issues = bao
        .requests()
        .into_iter()
        .filter(|(_, path)| path == "pki/issue/web")
        .count();
    // One request per distinct (path, method, body) per pod: 2 per pod, not 3.
    assert_eq!(issues, 4);
    assert_no_leaks(&driver, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_logs_in_with_the_pods_token() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let Some(bao) = openbao(&api) else { return };
    enable_jwt_auth(&bao, &api);
    let driver = Driver::start(&api, &[&format!("--vault-address={}", bao.addr)]).await;
    let objects = "- objectName: password\n  secretPath: secret/data/app\n  secretKey: password\n";
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc(
            "team",
            "jwt",
            "vault",
            json!({"roleName": "app-jwt", "vaultAuthMountPath": "jwt", "audience": "custom-aud", "objects": objects}),
        ),
    );
    let app = pod(&api, "web-1", "app-sa");
    let target = driver.target(&app.uid, "secrets");
    driver
        .node()
        .node_publish_volume(app.publish_with_tokens(
            &target,
            "jwt",
            &api,
            &["vault", "custom-aud"],
        ))
        .await
        .unwrap();
    assert_eq!(files(&target)["password"].0, PASSWORD_V2.as_bytes());

    // Another service account is refused by the role's bound subject.
    let intruder = pod(&api, "evil", "other-sa");
    let target = driver.target(&intruder.uid, "secrets");
    let err = driver
        .node()
        .node_publish_volume(intruder.publish_with_tokens(&target, "jwt", &api, &["custom-aud"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert!(
        err.message()
            .contains("failed to login to auth/jwt as role \"app-jwt\""),
        "{}",
        err.message()
    );
    assert!(!target.exists());
    assert_no_leaks(&driver, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_has_its_code_and_message_and_leaves_nothing_behind() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let Some(bao) = openbao(&api) else { return };
    let driver = Driver::start(&api, &[&format!("--vault-address={}", bao.addr)]).await;
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let one = |path: &str, extra: &str| format!("- objectName: obj\n  secretPath: {path}\n{extra}");
    let cases: Vec<(&str, Value, &str, Code, &str)> = vec![
        (
            "denied",
            json!({"roleName": "app", "objects": one("secret/data/other", "  secretKey: value\n")}),
            "app-sa",
            Code::PermissionDenied,
            "couldn't read secret \"obj\": GET /v1/secret/data/other was refused",
        ),
        (
            "missing-path",
            json!({"roleName": "app", "objects": one("kv/nothing-here", "")}),
            "app-sa",
            Code::NotFound,
            "/v1/kv/nothing-here does not exist",
        ),
        (
            "missing-key",
            json!({"roleName": "app", "objects": one("secret/data/app", "  secretKey: pasword\n")}),
            "app-sa",
            Code::NotFound,
            "key \"pasword\" does not exist at the secret path /v1/secret/data/app (keys there: password, username)",
        ),
        (
            "bad-encoding",
            json!({"roleName": "app", "objects": one("secret/data/app", "  secretKey: password\n  encoding: base64\n")}),
            "app-sa",
            Code::InvalidArgument,
            "the value of key \"password\" at /v1/secret/data/app is not valid base64",
        ),
        (
            "unbound-sa",
            json!({"roleName": "app", "objects": one("secret/data/app", "")}),
            "other-sa",
            Code::Unauthenticated,
            "failed to login to auth/kubernetes as role \"app\" for service account team/other-sa",
        ),
        (
            "no-role",
            json!({"objects": one("secret/data/app", "")}),
            "app-sa",
            Code::InvalidArgument,
            "missing 'roleName' in SecretProviderClass definition",
        ),
        (
            "wrong-audience",
            json!({"roleName": "app", "audience": "not-sent", "objects": one("secret/data/app", "")}),
            "app-sa",
            Code::Unauthenticated,
            "kubelet sent no service-account token for audience \"not-sent\"",
        ),
        (
            "wrong-mount",
            json!({"roleName": "app", "vaultAuthMountPath": "k8s-missing", "objects": one("secret/data/app", "")}),
            "app-sa",
            Code::Unauthenticated,
            "auth/k8s-missing",
        ),
        (
            "unreachable",
            json!({"roleName": "app", "vaultAddress": format!("http://127.0.0.1:{closed_port}"), "objects": one("secret/data/app", "")}),
            "app-sa",
            Code::Unavailable,
            &*Box::leak(
                format!("Vault at http://127.0.0.1:{closed_port} is unreachable").into_boxed_str(),
            ),
        ),
        (
            "bad-objects",
            json!({"roleName": "app", "objects": "- objectName: a\n  secretPath: secret/x\n  encoding: rot13\n"}),
            "app-sa",
            Code::InvalidArgument,
            "object \"a\": encoding: invalid encoding type",
        ),
    ];
    // Last: a sealed Vault answers 503 to everything; the read is retried with backoff, then
    // reported (the workload's token is cached from the cases above).
    let sealed: (&str, Value, &str, Code, &str) = (
        "sealed",
        json!({"roleName": "app", "objects": one("secret/data/blob", "  secretKey: hex\n")}),
        "app-sa",
        Code::Unavailable,
        "kept failing for /v1/secret/data/blob (HTTP 503: Vault is sealed)",
    );
    for (name, parameters, service_account, code, message) in cases.into_iter().chain([sealed]) {
        if name == "sealed" {
            bao.bao(&["operator", "seal"]);
        }
        api.insert(
            GROUP,
            "secretproviderclasses",
            spc("team", name, "vault", parameters),
        );
        let app = pod(&api, &format!("pod-{name}"), service_account);
        let target = driver.target(&app.uid, "secrets");
        let err = driver
            .node()
            .node_publish_volume(app.publish_with_tokens(&target, name, &api, &["vault"]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{name}: {}", err.message());
        assert!(err.message().contains(message), "{name}: {}", err.message());
        assert!(!target.exists(), "{name}: target left behind");
        assert!(
            mounts_under(driver.dir.path()).is_empty(),
            "{name}: mount left behind"
        );
    }
    assert_no_leaks(&driver, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_one_identity_share_one_login_and_one_read_per_object() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let Some(bao) = openbao(&api) else { return };
    let driver = Driver::start(&api, &[&format!("--vault-address={}", bao.addr)]).await;
    let objects = "- {objectName: a, secretPath: secret/data/app, secretKey: password}\n\
                   - {objectName: b, secretPath: secret/data/app?version=1, secretKey: password}\n\
                   - {objectName: c, secretPath: kv/legacy, secretKey: token}\n\
                   - {objectName: d, secretPath: secret/data/blob, secretKey: hex}\n\
                   - {objectName: e, secretPath: secret/data/typed}\n";
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc(
            "team",
            "five",
            "vault",
            json!({"roleName": "app", "objects": objects}),
        ),
    );
    let mark = bao.requests().len();
    let publishes = (0..10).map(|i| {
        let app = pod(&api, &format!("web-{i}"), "app-sa");
        let target = driver.target(&app.uid, "secrets");
        let request = app.publish_with_tokens(&target, "five", &api, &["vault"]);
        let mut node = driver.node();
        async move { node.node_publish_volume(request).await }
    });
    for result in futures::future::join_all(publishes).await {
        result.unwrap();
    }
    let requests = bao.requests().split_off(mark);
    let logins = requests
        .iter()
        .filter(|(_, p)| p == "auth/kubernetes/login")
        .count();
    assert_eq!(logins, 1, "{requests:?}");
    assert_eq!(
        requests.len(),
        6,
        "1 login + 5 reads for 10 pods: {requests:?}"
    );

    // A pod that kubelet gave no token for the audience gets nothing from the shared cache.
    let tokenless = pod(&api, "web-no-token", "app-sa");
    let target = driver.target(&tokenless.uid, "secrets");
    let err = driver
        .node()
        .node_publish_volume(tokenless.publish(&target, "five"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert!(!target.exists());

    // Another identity never reuses that token or those reads.
    let other = pod(&api, "other-1", "other-sa");
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc("team", "mine", "vault", json!({"roleName": "other", "objects": "- {objectName: v, secretPath: secret/data/other, secretKey: value}\n"})),
    );
    let target = driver.target(&other.uid, "secrets");
    driver
        .node()
        .node_publish_volume(other.publish_with_tokens(&target, "mine", &api, &["vault"]))
        .await
        .unwrap();
    let denied = pod(&api, "other-2", "other-sa");
    let target = driver.target(&denied.uid, "secrets");
    let err = driver
        .node()
        .node_publish_volume(denied.publish_with_tokens(&target, "five", &api, &["vault"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    let logins = bao.requests()[mark..]
        .iter()
        .filter(|(_, p)| p == "auth/kubernetes/login")
        .count();
    assert_eq!(logins, 3, "one login per identity (and one refused)");
    assert_no_leaks(&driver, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_cached_token_is_replaced_by_one_fresh_login() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let Some(bao) = openbao(&api) else { return };
    let driver = Driver::start(
        &api,
        &[
            &format!("--vault-address={}", bao.addr),
            "--vault-read-cache-ttl=0s",
        ],
    )
    .await;
    kv_class(&api, "kv", &bao.addr);
    let publish = |name: &str| {
        let app = pod(&api, name, "app-sa");
        let target = driver.target(&app.uid, "secrets");
        (
            app.publish_with_tokens(&target, "kv", &api, &["vault"]),
            target,
        )
    };
    let (first, _) = publish("web-1");
    driver.node().node_publish_volume(first).await.unwrap();
    let (second, _) = publish("web-2");
    driver.node().node_publish_volume(second).await.unwrap();
    let logins = |bao: &OpenBao| {
        bao.requests()
            .iter()
            .filter(|(_, p)| p == "auth/kubernetes/login")
            .count()
    };
    assert_eq!(logins(&bao), 1, "the second pod reuses the token");

    bao.bao(&["token", "revoke", "-mode=path", "auth/kubernetes/login"]);
    let (third, target) = publish("web-3");
    driver.node().node_publish_volume(third).await.unwrap();
    assert_eq!(files(&target)["password"].0, PASSWORD_V2.as_bytes());
    assert_eq!(logins(&bao), 2, "one fresh login after the refusal");
    assert_no_leaks(&driver, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_follows_changed_values_and_keeps_the_files_when_vault_is_down() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let Some(mut bao) = openbao(&api) else { return };
    let driver = Driver::start(
        &api,
        // The default 30 s read sharing stays on: a rotation takes no read older than itself.
        &["--enable-secret-rotation", "--rotation-poll-interval=1s"],
    )
    .await;
    kv_class(&api, "kv", &bao.addr);
    let app = pod(&api, "web-1", "app-sa");
    let target = driver.target(&app.uid, "secrets");
    driver
        .node()
        .node_publish_volume(app.publish_with_tokens(&target, "kv", &api, &["vault"]))
        .await
        .unwrap();
    let status = |api: &dyn TestApi| {
        versions_of(
            &api.list(GROUP, "secretproviderclasspodstatuses")
                .pop()
                .unwrap(),
        )
    };
    let first = status(&api);

    // A changed value is swapped in after the interval; only its version changes.
    const ROTATED: &str = "rotated-password-6d21";
    bao.bao(&[
        "kv",
        "put",
        "secret/app",
        "username=admin",
        &format!("password={ROTATED}"),
    ]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let request = app.publish_with_tokens(&target, "kv", &api, &["vault"]);
    driver.node().node_publish_volume(request).await.unwrap();
    assert_eq!(files(&target)["password"].0, ROTATED.as_bytes());
    let second = status(&api);
    assert_ne!(first["password"], second["password"]);
    for unchanged in ["password-v1", "legacy", "binary", "count"] {
        assert_eq!(first[unchanged], second[unchanged], "{unchanged}");
    }
    let before = files(&target);

    bao.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let request = app.publish_with_tokens(&target, "kv", &api, &["vault"]);
    driver.node().node_publish_volume(request).await.unwrap();
    assert_eq!(
        files(&target),
        before,
        "the old files stay when Vault is down"
    );
    let logs = driver.logs();
    assert!(
        logs.contains("is unreachable"),
        "the failure is logged: {logs}"
    );
    assert_no_leaks(&driver, &[ROTATED]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_renewed_before_it_expires_instead_of_logging_in_again() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let Some(bao) = openbao(&api) else { return };
    bao.bao(&[
        "write",
        "auth/kubernetes/role/app",
        "bound_service_account_names=app-sa",
        "bound_service_account_namespaces=team",
        "audience=vault",
        "token_policies=app",
        "token_ttl=6s",
        "token_max_ttl=1h",
    ]);
    let driver = Driver::start(&api, &["--vault-read-cache-ttl=0s"]).await;
    kv_class(&api, "kv", &bao.addr);
    let mark = bao.requests().len();
    for (name, wait) in [("web-1", 0), ("web-2", 4500), ("web-3", 0)] {
        // Past two thirds of the 6 s TTL, the next mount renews the token.
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let app = pod(&api, name, "app-sa");
        let target = driver.target(&app.uid, "secrets");
        driver
            .node()
            .node_publish_volume(app.publish_with_tokens(&target, "kv", &api, &["vault"]))
            .await
            .unwrap();
    }
    let requests = bao.requests().split_off(mark);
    let count = |path: &str| requests.iter().filter(|(_, p)| p == path).count();
    assert_eq!(count("auth/kubernetes/login"), 1, "{requests:?}");
    assert_eq!(count("auth/token/renew-self"), 1, "{requests:?}");
    assert_no_leaks(&driver, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_against_the_configured_ca_and_server_name() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let Some(bao) = OpenBao::start_tls() else {
        return;
    };
    configure(&bao, &api);
    let allowed = format!("--vault-tls-allowed-dirs={}", bao.dir.path().display());
    let driver = Driver::start(&api, &[&allowed]).await;
    let ca = bao.ca_cert.clone().unwrap();
    let address = bao.addr.replace("127.0.0.1", "localhost");
    let one = "- {objectName: p, secretPath: secret/data/app, secretKey: password}\n";
    let cases = [
        (
            "ca",
            json!({"vaultAddress": bao.addr, "vaultCACertPath": ca}),
            None,
        ),
        (
            "ca-dir",
            json!({"vaultAddress": address, "vaultCADirectory": bao.dir.path(), "vaultTLSServerName": "localhost"}),
            None,
        ),
        (
            "skip",
            json!({"vaultAddress": bao.addr, "vaultSkipTLSVerify": "true"}),
            None,
        ),
        (
            "system-roots",
            json!({"vaultAddress": bao.addr}),
            Some(Code::Unavailable),
        ),
        (
            "wrong-name",
            json!({"vaultAddress": bao.addr, "vaultCACertPath": ca, "vaultTLSServerName": "vault.example.com"}),
            Some(Code::Unavailable),
        ),
        (
            "missing-ca",
            json!({"vaultAddress": bao.addr, "vaultCACertPath": bao.dir.path().join("nonexistent.pem")}),
            Some(Code::InvalidArgument),
        ),
        (
            "ca-outside-the-allowed-dirs",
            json!({"vaultAddress": bao.addr, "vaultCACertPath": "/nonexistent/ca.pem"}),
            Some(Code::InvalidArgument),
        ),
    ];
    for (name, mut parameters, failure) in cases {
        parameters["roleName"] = json!("app");
        parameters["objects"] = json!(one);
        api.insert(
            GROUP,
            "secretproviderclasses",
            spc("team", name, "vault", parameters),
        );
        let app = pod(&api, &format!("pod-{name}"), "app-sa");
        let target = driver.target(&app.uid, "secrets");
        let result = driver
            .node()
            .node_publish_volume(app.publish_with_tokens(&target, name, &api, &["vault"]))
            .await;
        match failure {
            None => {
                result.unwrap_or_else(|e| panic!("{name}: {}", e.message()));
                assert_eq!(files(&target)["p"].0, PASSWORD_V2.as_bytes(), "{name}");
            }
            Some(code) => {
                let err = result.unwrap_err();
                assert_eq!(err.code(), code, "{name}: {}", err.message());
                assert!(!target.exists());
            }
        }
    }
    assert_no_leaks(&driver, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_served_provider_gives_the_same_files_as_the_built_in() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let Some(bao) = openbao(&api) else { return };
    let key_dir = tempfile::tempdir().unwrap();
    let key_arg = format!(
        "--version-key-file={}",
        key_dir.path().join("v.key").display()
    );
    let in_process = Driver::start(&api, &[&key_arg]).await;
    // A node plugin without the built-in, finding `vault.sock` like any plugin.
    let via_socket = Driver::start(&api, &["--builtin-providers="]).await;
    let socket = via_socket.provider_dir.join("vault.sock");
    let server = support::serve_provider("vault", &socket, &[&key_arg]).await;
    kv_class(&api, "kv", &bao.addr);

    let mut trees = Vec::new();
    for (driver, name) in [(&in_process, "web-1"), (&via_socket, "web-2")] {
        let app = pod(&api, name, "app-sa");
        let target = driver.target(&app.uid, "secrets");
        driver
            .node()
            .node_publish_volume(app.publish_with_tokens(&target, "kv", &api, &["vault"]))
            .await
            .unwrap_or_else(|e| panic!("{name}: {}", e.message()));
        let mut tree = files(&target);
        // The response envelope carries a per-request id.
        tree.remove("whole.json");
        trees.push(tree);
    }
    assert_eq!(trees[0], trees[1]);
    let versions: Vec<Vec<Value>> = api
        .list(GROUP, "secretproviderclasspodstatuses")
        .iter()
        .map(|s| {
            let mut objects = s["status"]["objects"].as_array().unwrap().clone();
            objects.retain(|o| o["id"] != "whole.json");
            objects
        })
        .collect();
    assert_eq!(
        versions[0], versions[1],
        "the same key gives the same versions"
    );

    let logs = support::stop_provider(server, &socket);
    for value in [PASSWORD_V1, PASSWORD_V2, LEGACY, ROOT_TOKEN] {
        assert!(!logs.contains(value), "the provider logged a secret");
    }
    assert_no_leaks(&in_process, &[]);
    assert_no_leaks(&via_socket, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mount_command_reads_vault_with_a_token_or_a_jwt_file() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let Some(bao) = openbao(&api) else { return };
    let token = bao.bao(&["token", "create", "-policy=app", "-field=token"]);
    let dir = tempfile::tempdir().unwrap();
    let mut class = example("vault.yaml", &bao.addr);
    let parameters = class["spec"]["parameters"].as_object_mut().unwrap();
    parameters.remove("vaultAddress");
    parameters.remove("roleName");
    let class_file = dir.path().join("class.yaml");
    std::fs::write(&class_file, serde_json::to_string(&class).unwrap()).unwrap();
    let target = dir.path().join("out");
    let run = |vault_token: Option<&str>| {
        let mut command = std::process::Command::new(support::DRIVER);
        command
            .args(["mount", "--plain-dir", "--class"])
            .arg(&class_file)
            .env_remove("VAULT_JWT_FILE")
            .arg("--target")
            .arg(&target)
            .env("VAULT_ADDR", &bao.addr)
            .env_remove("VAULT_TOKEN");
        if let Some(token) = vault_token {
            command.env("VAULT_TOKEN", token);
        }
        command.output().unwrap()
    };

    let missing = run(None);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("no Vault credentials"), "{stderr}");
    assert!(!target.exists());

    let output = run(Some(token.trim()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("(provider vault)"), "{stdout}");
    assert_eq!(
        std::fs::read(target.join("password")).unwrap(),
        PASSWORD_V2.as_bytes()
    );
    assert_eq!(std::fs::read(target.join("binary")).unwrap(), BINARY);
    for value in [PASSWORD_V1, PASSWORD_V2, LEGACY, token.trim()] {
        assert!(
            !stdout.contains(value) && !stderr.contains(value),
            "the mount command printed a secret"
        );
    }

    // A JWT file and the class's role instead of a token (JWT auth, examples/vault-jwt.yaml).
    enable_jwt_auth(&bao, &api);
    let jwt = Pod::new("laptop", "team");
    let jwt = api.issue_token("team", "app-sa", "custom-aud", (&jwt.name, &jwt.uid));
    let jwt_file = dir.path().join("jwt");
    std::fs::write(&jwt_file, &jwt).unwrap();
    let jwt_class = dir.path().join("jwt-class.yaml");
    std::fs::write(
        &jwt_class,
        serde_json::to_string(&example("vault-jwt.yaml", &bao.addr)).unwrap(),
    )
    .unwrap();
    let jwt_target = dir.path().join("jwt-out");
    let output = std::process::Command::new(support::DRIVER)
        .args(["mount", "--plain-dir", "--class"])
        .arg(&jwt_class)
        .arg("--target")
        .arg(&jwt_target)
        .arg("--vault-jwt-file")
        .arg(&jwt_file)
        .env_remove("VAULT_TOKEN")
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    assert_eq!(
        std::fs::read(jwt_target.join("password")).unwrap(),
        PASSWORD_V2.as_bytes()
    );
    assert!(!printed.contains(&jwt) && !printed.contains(PASSWORD_V2));
}

#[test]
fn the_readme_shows_the_tested_vault_examples_verbatim() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for example in [
        "vault.yaml",
        "vault-pki.yaml",
        "vault-jwt.yaml",
        "vault-database.yaml",
    ] {
        let text = std::fs::read_to_string(root.join("examples").join(example)).unwrap();
        assert!(
            readme.contains(&format!("```yaml\n{text}```")),
            "README.md must show examples/{example} verbatim"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_namespace_scopes_the_login_and_the_reads() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let Some(bao) = openbao(&api) else { return };
    const TENANT_VALUE: &str = "tenant-password-27aa";
    let ns = Some("tenant");
    bao.bao(&["namespace", "create", "tenant"]);
    bao.bao_in(ns, &["secrets", "enable", "-path=secret", "kv-v2"]);
    bao.bao_in(
        ns,
        &[
            "kv",
            "put",
            "secret/app",
            &format!("password={TENANT_VALUE}"),
        ],
    );
    let policy = bao.dir.path().join("tenant.hcl");
    std::fs::write(
        &policy,
        r#"path "secret/data/app" { capabilities = ["read"] }"#,
    )
    .unwrap();
    bao.bao_in(
        ns,
        &["policy", "write", "tenant-app", policy.to_str().unwrap()],
    );
    bao.enable_kubernetes_auth_in(ns, &kubernetes_auth(&api));
    bao.kubernetes_role_in(ns, "tenant-role", "team", "app-sa", "tenant-app");
    let driver = Driver::start(&api, &[&format!("--vault-address={}", bao.addr)]).await;
    let objects = "- {objectName: password, secretPath: secret/data/app, secretKey: password}\n";
    for (class, parameters) in [
        (
            "tenant",
            json!({"roleName": "tenant-role", "vaultNamespace": "tenant", "objects": objects}),
        ),
        ("root", json!({"roleName": "app", "objects": objects})),
    ] {
        api.insert(
            GROUP,
            "secretproviderclasses",
            spc("team", class, "vault", parameters),
        );
    }
    let mut contents = Vec::new();
    for class in ["tenant", "root"] {
        let app = pod(&api, &format!("pod-{class}"), "app-sa");
        let target = driver.target(&app.uid, "secrets");
        driver
            .node()
            .node_publish_volume(app.publish_with_tokens(&target, class, &api, &["vault"]))
            .await
            .unwrap_or_else(|e| panic!("{class}: {}", e.message()));
        contents.push(files(&target)["password"].0.clone());
    }
    assert_eq!(contents, [TENANT_VALUE.as_bytes(), PASSWORD_V2.as_bytes()]);
    assert_no_leaks(&driver, &[TENANT_VALUE]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_credentials_are_read_once_per_mount_and_never_shared_between_pods() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let Some(bao) = openbao(&api) else { return };
    let Some(redis) = support::redis::Redis::start() else {
        return;
    };
    bao.redis_database(&redis, &["default_ttl=1h"]);
    // Read sharing is on (the default): a leased secret must still be each pod's own.
    let driver = Driver::start(&api, &[&format!("--vault-address={}", bao.addr)]).await;
    database_class(&api, &bao.addr);
    let mark = bao.requests().len();
    let mut users = Vec::new();
    let mut secrets = Vec::new();
    for name in ["api-1", "api-2"] {
        let app = pod(&api, name, "app-sa");
        let target = driver.target(&app.uid, "db");
        driver
            .node()
            .node_publish_volume(app.publish_with_tokens(&target, "db", &api, &["vault"]))
            .await
            .unwrap_or_else(|e| panic!("{name}: {}", e.message()));
        let files = files(&target);
        let user = String::from_utf8(files["db-username"].0.clone()).unwrap();
        let password = String::from_utf8(files["db-password"].0.clone()).unwrap();
        assert!(
            redis.auth(&user, &password),
            "{name}: username and password come from one read and work"
        );
        secrets.push(password);
        users.push(user);
    }
    assert_ne!(users[0], users[1], "each pod gets its own database user");
    let reads = bao.requests()[mark..]
        .iter()
        .filter(|(_, path)| path == "database/creds/app")
        .count();
    assert_eq!(reads, 2, "one read per mount for both objects");
    let secret_refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_no_leaks(&driver, &secret_refs);
}

/// `examples/vault-database.yaml` as class `team/db`: a username and a password from one read
/// of `database/creds/app`.
fn database_class(api: &dyn TestApi, address: &str) {
    api.insert(
        GROUP,
        "secretproviderclasses",
        example("vault-database.yaml", address),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_lease_is_renewed_on_rotation_replaced_near_max_ttl_and_revoked_on_unpublish() {
    if !support::require_root() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let Some(bao) = openbao(&api) else { return };
    let Some(redis) = support::redis::Redis::start() else {
        return;
    };
    // Renewal at 2/3 of 12 s; the max TTL (32 s) cuts the third renewal short.
    bao.redis_database(&redis, &["default_ttl=12s", "max_ttl=32s"]);
    let driver = Driver::start(
        &api,
        &[
            &format!("--vault-address={}", bao.addr),
            "--enable-secret-rotation",
            "--rotation-poll-interval=1s",
        ],
    )
    .await;
    database_class(&api, &bao.addr);
    let app = pod(&api, "api-1", "app-sa");
    let target = driver.target(&app.uid, "db");
    let mut node = driver.node();
    let credential = || {
        let files = files(&target);
        let text = |name: &str| String::from_utf8(files[name].0.clone()).unwrap();
        (text("db-username"), text("db-password"))
    };
    let versions = || {
        api.get(
            GROUP,
            "secretproviderclasspodstatuses",
            "team",
            "api-1-team-db",
        )
        .unwrap()["status"]["objects"]
            .clone()
    };
    let mark = bao.requests().len();
    let started = tokio::time::Instant::now();
    let publish = app.publish_with_tokens(&target, "db", &api, &["vault"]);
    node.node_publish_volume(publish).await.unwrap();
    let first = credential();
    assert!(
        redis.auth(&first.0, &first.1),
        "the issued credential works"
    );
    let first_versions = versions();

    // A young lease is served again; then it is renewed, twice; the credential stays and works.
    for at in [1.5, 8.5, 17.0] {
        tokio::time::sleep_until(started + Duration::from_secs_f64(at)).await;
        let publish = app.publish_with_tokens(&target, "db", &api, &["vault"]);
        node.node_publish_volume(publish).await.unwrap();
        assert_eq!(
            credential(),
            first,
            "rotation at {at} s keeps the credential"
        );
        assert!(redis.auth(&first.0, &first.1), "still valid at {at} s");
        assert_eq!(versions(), first_versions, "versions kept at {at} s");
    }

    // 25.5 s: 6.5 s are left before the max TTL, less than the 12 s asked for: a new one.
    tokio::time::sleep_until(started + Duration::from_secs_f64(25.5)).await;
    let publish = app.publish_with_tokens(&target, "db", &api, &["vault"]);
    node.node_publish_volume(publish).await.unwrap();
    let second = credential();
    assert_ne!(second.0, first.0, "a new database user near the max TTL");
    assert!(redis.auth(&second.0, &second.1), "the new credential works");
    assert!(
        redis.auth(&first.0, &first.1),
        "the old one stays valid until its max TTL, for the application to switch"
    );
    assert_ne!(
        versions(),
        first_versions,
        "a new credential is a new version"
    );

    let requests = bao.requests()[mark..].to_vec();
    let count = |path: &str| requests.iter().filter(|(_, p)| p == path).count();
    assert_eq!(count("database/creds/app"), 2, "{requests:?}");
    assert_eq!(count("sys/leases/renew"), 3, "{requests:?}");
    assert_eq!(count("auth/kubernetes/login"), 1, "{requests:?}");

    // Unpublishing revokes the current lease: its database user is dropped.
    node.node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();
    support::eventually(Duration::from_secs(10), "the lease revoked", || {
        (!redis.auth(&second.0, &second.1)).then_some(())
    })
    .await;
    let requests = bao.requests()[mark..].to_vec();
    let revocations = requests
        .iter()
        .filter(|(_, p)| p == "sys/leases/revoke")
        .count();
    assert_eq!(revocations, 1, "{requests:?}");
    assert_no_leaks(&driver, &[first.1.as_str(), second.1.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_class_vault_csi_provider_was_run_with_gives_its_files() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let Some(bao) = OpenBao::start() else { return };
    service_account(&api, "team", "app-sa");
    let corpus = support::upstream::section("vault");
    let seed = &corpus["seed"];
    bao.bao(&[
        "secrets",
        "enable",
        &format!("-path={}", seed["kv1_mount"].as_str().unwrap()),
        "-version=1",
        "kv",
    ]);
    for entry in seed["kv"].as_array().unwrap() {
        let mut args = vec!["kv", "put", entry[0].as_str().unwrap()];
        args.extend(
            entry[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap()),
        );
        bao.bao(&args);
    }
    for (i, entry) in seed["json"].as_array().unwrap().iter().enumerate() {
        let file = bao.dir.path().join(format!("seed{i}.json"));
        std::fs::write(&file, entry[1].as_str().unwrap()).unwrap();
        bao.bao(&[
            "kv",
            "put",
            entry[0].as_str().unwrap(),
            &format!("@{}", file.display()),
        ]);
    }
    bao.policy(
        "everything",
        r#"path "*" { capabilities = ["read", "list", "update", "create"] }"#,
    );
    // The recording logged in with JWT auth at `jwt`, role `app`, audience `vault`.
    enable_jwt_auth_method(&bao, &api);
    bao.bao(&[
        "write",
        "auth/jwt/role/app",
        "role_type=jwt",
        "bound_audiences=vault",
        "user_claim=sub",
        "token_policies=everything",
    ]);

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vault.sock");
    let log = dir.path().join("provider.log");
    let server = support::upstream::serve("vault", &socket, &log, &[]).await;
    let app = pod(&api, "web-1", "app-sa");
    let tokens = app.tokens(&api, &["vault"]);
    let extra = BTreeMap::from([("vaultAddress", bao.addr.clone())]);
    let mismatches = support::upstream::compare(&socket, &corpus, &app, &tokens, &extra).await;
    support::upstream::assert_no_mismatches(
        server,
        &mismatches,
        &corpus,
        &log,
        &["p<a>&ss", "spaced", "v1value", "aGVsbG8="],
    );
}
