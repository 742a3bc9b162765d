//! The built-in `azure` provider against a Key Vault and Entra ID served by test support
//! (no Key Vault emulator can be installed here: see tests/support/azure.rs), through the
//! real CSI socket onto real tmpfs mounts, with pods' tokens minted by the real
//! kube-apiserver and certificates made by openssl.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::azure::{AUDIENCE, Azure, Fault, Pki};
use support::{ApiServer, Driver, Pod, TestApi, files, mounts_under, read_tree, unpublish};

const GROUP: &str = "secrets-store.csi.x-k8s.io";
const SP_CLIENT: &str = "sp-client-4c1e";
const SP_SECRET: &str = "sp-secret-value-d07b";
const WI_CLIENT: &str = "wi-client";

const SECRET1_V1: &str = "kv-secret1-first-91ac";
const SECRET1_V2: &str = "kv-secret1-second-3b70";
const SECRET1_V3: &str = "kv-secret1-third-e25d";
const SECRET2: &str = "kv-secret2-value-5f18";
const DB_OLD: &str = "kv-db-old-77e0";
const DB: &str = "kv-db-current-a9c3";
const API_KEY: &[u8] = b"kv-api-key-\x00\xffbinary";
const PINNED: &str = "8d3a1f5c2b6e4f0a9c7d1e2f3a4b5c6d";

struct Fixture {
    azure: Azure,
    pki: Pki,
}

/// The server with the fixtures, or `None` when the test cannot run here (not root).
async fn azure() -> Option<Fixture> {
    if !support::require_root() {
        return None;
    }
    let azure = Azure::start().await;
    let pki = Pki::generate();
    azure.secret("kvname", "secret1", SECRET1_V1);
    azure.secret("kvname", "secret1", SECRET1_V2);
    azure.secret("kvname", "secret2", SECRET2);
    azure.secret("kvname", "secret3", "c2VjcmV0Mw==");
    azure.key("kvname", "key1", pki.leaf_jwk.clone());
    azure.key("kvname", "key2", pki.ec_jwk.clone());
    let pem_secret = format!("{}{}{}", pki.leaf_key, pki.leaf, pki.intermediate);
    for (vault, name, secret, content_type) in [
        (
            "kvname",
            "cert1",
            pem_secret.as_str(),
            "application/x-pem-file",
        ),
        (
            "kvname",
            "cert2-pfx",
            pki.pfx.as_str(),
            "application/x-pkcs12",
        ),
        (
            "app-kv",
            "web-tls",
            pki.pfx.as_str(),
            "application/x-pkcs12",
        ),
    ] {
        azure.certificate(
            vault,
            name,
            secret,
            content_type,
            pki.leaf_jwk.clone(),
            &pki.leaf_der,
        );
    }
    azure.secret_version("app-kv", "db-password", DB_OLD, PINNED);
    azure.secret("app-kv", "db-password", DB);
    let api_key = base64::engine::general_purpose::STANDARD.encode(API_KEY);
    azure.secret("app-kv", "api-key", &api_key);
    azure.key("app-kv", "signing", pki.ec_jwk.clone());
    azure.service_principal(SP_CLIENT, SP_SECRET);
    azure.federate(WI_CLIENT, "team", "app-sa");
    Some(Fixture { azure, pki })
}

fn plugin_class(file: &str) -> Value {
    support::plugin_class("azure", file)
}

fn example(file: &str) -> Value {
    support::yaml_file(&format!("examples/{file}"))
}

fn pod(api: &dyn TestApi, name: &str, service_account: &str, class: &str) -> Pod {
    support::service_account(api, "team", service_account);
    let mut pod = Pod::new(name, "team");
    pod.service_account = service_account.to_owned();
    pod.register(api, class);
    pod
}

/// A driver with `azure` built in (it is opt-in), unless `extra` sets `--builtin-providers`.
async fn driver(api: &dyn TestApi, azure: &Azure, extra: &[&str]) -> Driver {
    Driver::with_builtin(api, "azure", &azure.flags(), extra).await
}

/// Publishes `class` for `pod` with kubelet's token for Entra ID and, if given, the
/// `nodePublishSecretRef` Secret's data; returns the target.
async fn publish(
    driver: &Driver,
    api: &dyn TestApi,
    pod: &Pod,
    class: &str,
    principal: Option<(&str, &str)>,
) -> Result<std::path::PathBuf, tonic::Status> {
    let target = driver.target(&pod.uid, "secrets");
    let mut request = pod.publish_with_tokens(&target, class, api, &[AUDIENCE]);
    if let Some((id, secret)) = principal {
        request.secrets.insert("clientid".to_owned(), id.to_owned());
        request
            .secrets
            .insert("clientsecret".to_owned(), secret.to_owned());
    }
    driver
        .node()
        .node_publish_volume(request)
        .await
        .map(|_| target)
}

const SP: Option<(&str, &str)> = Some((SP_CLIENT, SP_SECRET));

fn text(files: &BTreeMap<String, (Vec<u8>, u32)>, name: &str) -> String {
    String::from_utf8(files[name].0.clone()).unwrap_or_else(|_| panic!("{name} is not text"))
}

fn assert_no_leaks(driver: &Driver, fixture: &Fixture) {
    let tokens = fixture.azure.issued_tokens();
    let key_body: String = fixture
        .pki
        .leaf_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .take(3)
        .collect();
    let mut values = vec![
        SECRET1_V1,
        SECRET1_V2,
        SECRET1_V3,
        SECRET2,
        DB_OLD,
        DB,
        SP_SECRET,
        &key_body,
        &fixture.pki.pfx[..64],
    ];
    values.extend(tokens.iter().map(String::as_str));
    driver.assert_logs_free_of(&values);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugins_example_classes_mount_unchanged_with_one_token_per_identity() {
    let Some(fixture) = azure().await else {
        return;
    };
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let (azure, pki) = (&fixture.azure, &fixture.pki);
    for file in [
        "v1alpha1_secretproviderclass_secrets.yaml",
        "v1alpha1_secretproviderclass_certs.yaml",
        "v1alpha1_secretproviderclass_keys.yaml",
    ] {
        api.insert(GROUP, "secretproviderclasses", plugin_class(file));
    }
    let driver = driver(&api, azure, &[]).await;

    let app = pod(&api, "keys-1", "default", "azure-keys");
    let target = publish(&driver, &api, &app, "azure-keys", SP)
        .await
        .unwrap_or_else(|e| panic!("{}", e.message()));
    assert!(support::mount_line(&target).unwrap().contains(" tmpfs "));
    let found = files(&target);
    assert_eq!(
        text(&found, "key1"),
        pki.leaf_public,
        "RSA public key as PKIX PEM"
    );
    assert_eq!(
        text(&found, "KEY_ALIAS"),
        pki.ec_public,
        "EC public key as PKIX PEM"
    );
    assert_eq!(found["key1"].1, 0o644);
    assert_eq!(found.len(), 2);
    let versions = support::pod_versions(&api, "keys-1");
    assert_eq!(versions.len(), 2);
    assert!(versions["key/key1"].len() == 32, "{versions:?}");
    assert_eq!(
        azure.exchanges(),
        [(SP_CLIENT.to_owned(), "secret".to_owned())]
    );
    let first = target;

    let app = pod(&api, "certs-1", "default", "azure-certs");
    let target = publish(&driver, &api, &app, "azure-certs", SP)
        .await
        .unwrap_or_else(|e| panic!("{}", e.message()));
    let found = files(&target);
    assert_eq!(
        text(&found, "cert1"),
        pki.leaf,
        "objectType cert: the certificate alone"
    );
    assert_eq!(text(&found, "cert1-pub-key"), pki.leaf_public);
    assert_eq!(
        text(&found, "cert1-secret"),
        format!("{}{}{}", pki.leaf_key, pki.leaf, pki.intermediate),
        "a PEM certificate's secret as Key Vault holds it"
    );
    assert_eq!(
        text(&found, "cert2-secret-pfx"),
        pki.pfx,
        "objectFormat pfx: as is"
    );
    assert_eq!(
        found["cert2-secret-pfx-binary"].0,
        base64::engine::general_purpose::STANDARD
            .decode(&pki.pfx)
            .unwrap(),
        "pfx with objectEncoding base64: the binary PKCS#12"
    );
    assert_eq!(found.len(), 5);
    let versions = support::pod_versions(&api, "certs-1");
    assert_eq!(versions.len(), 4, "one entry per object id: {versions:?}");
    assert_eq!(versions["cert/cert1"], versions["secret/cert1"]);
    // One token for the service principal; four distinct objects read once each (cert1 as
    // cert, key and secret; cert2-pfx once for both files).
    assert_eq!(azure.exchanges().len(), 1);
    assert_eq!(azure.reads(), 2 + 4, "{:?}", azure.calls());

    let certs = target;

    // The plugin refuses its own secrets example (objectEncoding "SECRET_ALIAS"); so does
    // the provider, before reading anything.
    let app = pod(&api, "secrets-1", "default", "azure-secrets");
    let reads = azure.reads();
    let err = publish(&driver, &api, &app, "azure-secrets", SP)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    assert!(
        err.message()
            .contains("invalid objectEncoding: SECRET_ALIAS, should be hex, base64 or utf-8"),
        "{}",
        err.message()
    );
    assert!(!driver.target(&app.uid, "secrets").exists());
    assert_eq!(azure.reads(), reads);

    // Another pod with the same service principal shares its token and, in the read window,
    // its reads; a different secret is another identity.
    let app = pod(&api, "keys-2", "default", "azure-keys");
    let target = publish(&driver, &api, &app, "azure-keys", SP)
        .await
        .unwrap();
    assert_eq!(read_tree(&target), read_tree(&first));
    assert_eq!(azure.exchanges().len(), 1);
    assert_eq!(azure.reads(), reads);
    let app = pod(&api, "keys-3", "default", "azure-keys");
    let err = publish(
        &driver,
        &api,
        &app,
        "azure-keys",
        Some((SP_CLIENT, "wrong")),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unauthenticated,
        "{}",
        err.message()
    );
    assert!(err.message().contains("AADSTS7000215"), "{}", err.message());
    let app = pod(&api, "keys-4", "default", "azure-keys");
    let err = publish(&driver, &api, &app, "azure-keys", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains("could not find clientid"),
        "{}",
        err.message()
    );

    for target in [&first, &certs, &target] {
        driver
            .node()
            .node_unpublish_volume(unpublish(target))
            .await
            .unwrap();
    }
    assert!(mounts_under(driver.dir.path()).is_empty());
    assert_no_leaks(&driver, &fixture);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_certificates_rotation_and_every_failure_with_its_code() {
    let Some(fixture) = azure().await else {
        return;
    };
    let (azure, pki) = (&fixture.azure, &fixture.pki);
    let disabled = azure.secret("app-kv", "toggle", "kv-toggle-old-0e6f");
    azure.secret("app-kv", "toggle", "kv-toggle-new-b1d2");
    azure.disable("app-kv", "toggle", &disabled);
    azure.secret("app-kv", "private", "kv-private-4411");
    azure.restrict("app-kv", "private", &["someone-else"]);
    let Some(api) = ApiServer::start().await else {
        return;
    };
    api.insert(GROUP, "secretproviderclasses", example("azure.yaml"));
    let driver = driver(
        &api,
        azure,
        &["--enable-secret-rotation", "--rotation-poll-interval=1s"],
    )
    .await;

    let app = pod(&api, "web-1", "app-sa", "app-azure");
    let target = publish(&driver, &api, &app, "app-azure", None)
        .await
        .unwrap_or_else(|e| panic!("{}", e.message()));
    let found = files(&target);
    assert_eq!(text(&found, "db-password"), DB);
    assert_eq!(
        text(&found, "db-password.previous"),
        DB_OLD,
        "a pinned version"
    );
    assert_eq!(found["api-key.bin"].0, API_KEY, "objectEncoding base64");
    assert_eq!(found["api-key.bin"].1, 0o440, "filePermission is octal");
    assert_eq!(
        text(&found, "tls/web.pem"),
        format!(
            "{}{}{}{}",
            pki.leaf_key, pki.leaf, pki.intermediate, pki.root
        ),
        "a PKCS#12 certificate's secret: the key, then the chain from the leaf up"
    );
    assert_eq!(text(&found, "tls/web.crt"), pki.leaf);
    assert_eq!(text(&found, "signing.pub"), pki.ec_public);
    assert_eq!(found.len(), 6);
    assert_eq!(
        azure.exchanges(),
        [(
            WI_CLIENT.to_owned(),
            "system:serviceaccount:team:app-sa".to_owned()
        )]
    );
    let versions = support::pod_versions(&api, "web-1");
    assert_eq!(versions["secret/db-password"].len(), 32);
    assert!(
        azure
            .calls()
            .iter()
            .all(|c| c.client.as_deref() == Some(WI_CLIENT))
    );

    let web = target;

    let objects = |entries: &[&str]| {
        let array: Vec<String> = entries
            .iter()
            .map(|e| format!("  - |\n    {e}\n"))
            .collect();
        format!("array:\n{}", array.concat())
    };
    let class = |name: &str, vault: &str, extra: Value, entries: &[&str]| {
        let mut parameters = json!({"keyvaultName": vault, "tenantId": "tid",
                                    "clientID": WI_CLIENT, "objects": objects(entries)});
        for (key, value) in extra.as_object().unwrap() {
            parameters[key] = value.clone();
        }
        support::spc("team", name, "azure", parameters)
    };
    let cases: Vec<(&str, Value, &str, tonic::Code, &str)> = vec![
        (
            "missing",
            class(
                "missing",
                "app-kv",
                json!({}),
                &["objectName: nope\n    objectType: secret"],
            ),
            "app-sa",
            tonic::Code::NotFound,
            "SecretNotFound",
        ),
        (
            "disabled",
            class(
                "disabled",
                "app-kv",
                json!({}),
                &[&format!(
                    "objectName: toggle\n    objectType: secret\n    objectVersion: {disabled}"
                )],
            ),
            "app-sa",
            tonic::Code::FailedPrecondition,
            "SecretDisabled",
        ),
        (
            "denied",
            class(
                "denied",
                "app-kv",
                json!({}),
                &["objectName: private\n    objectType: secret"],
            ),
            "app-sa",
            tonic::Code::PermissionDenied,
            "grant client wi-client the Key Vault Secrets User role",
        ),
        (
            "not-federated",
            class(
                "not-federated",
                "app-kv",
                json!({}),
                &["objectName: db-password\n    objectType: secret"],
            ),
            "other-sa",
            tonic::Code::Unauthenticated,
            "AADSTS700213",
        ),
        (
            "pod-identity",
            class(
                "pod-identity",
                "app-kv",
                json!({"usePodIdentity": "true"}),
                &["objectName: db-password\n    objectType: secret"],
            ),
            "app-sa",
            tonic::Code::InvalidArgument,
            "usePodIdentity: true is not supported",
        ),
        (
            "bad-vault",
            class(
                "bad-vault",
                "evil.example.com",
                json!({}),
                &["objectName: db-password\n    objectType: secret"],
            ),
            "app-sa",
            tonic::Code::InvalidArgument,
            "Invalid vault name",
        ),
        (
            "traversal",
            class(
                "traversal",
                "app-kv",
                json!({}),
                &["objectName: db-password\n    objectType: secret\n    objectAlias: ../../escape"],
            ),
            "app-sa",
            tonic::Code::InvalidArgument,
            "not a safe file path",
        ),
        (
            "not-base64",
            class(
                "not-base64",
                "app-kv",
                json!({}),
                &["objectName: db-password\n    objectType: secret\n    objectEncoding: base64"],
            ),
            "app-sa",
            tonic::Code::InvalidArgument,
            "is not base64",
        ),
        (
            "history",
            class(
                "history",
                "app-kv",
                json!({}),
                &["objectName: db-password\n    objectType: secret\n    objectVersionHistory: 3"],
            ),
            "app-sa",
            tonic::Code::InvalidArgument,
            "objectVersionHistory is not supported",
        ),
        (
            "tenant",
            class(
                "tenant",
                "app-kv",
                json!({"tenantId": "other-tenant"}),
                &["objectName: db-password\n    objectType: secret"],
            ),
            "app-sa",
            tonic::Code::Unauthenticated,
            "AADSTS90002",
        ),
    ];
    for (name, spc, account, code, message) in cases {
        api.insert(GROUP, "secretproviderclasses", spc);
        let app = pod(&api, &format!("pod-{name}"), account, name);
        let target = driver.target(&app.uid, "secrets");
        let err = publish(&driver, &api, &app, name, None)
            .await
            .expect_err(name);
        assert_eq!(err.code(), code, "{name}: {}", err.message());
        assert!(err.message().contains(message), "{name}: {}", err.message());
        assert!(!target.exists(), "{name} left its target behind");
    }

    // Without kubelet's token for Entra ID there is nothing to exchange.
    api.insert(
        GROUP,
        "secretproviderclasses",
        class(
            "fresh",
            "app-kv",
            json!({"clientID": "fresh-client"}),
            &["objectName: db-password\n    objectType: secret"],
        ),
    );
    let app = pod(&api, "pod-no-token", "app-sa", "fresh");
    let target = driver.target(&app.uid, "secrets");
    let err = driver
        .node()
        .node_publish_volume(app.publish_with_tokens(&target, "fresh", &api, &["vault"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains(
            "add {audience: api://AzureADTokenExchange} to the CSIDriver's tokenRequests"
        ),
        "{}",
        err.message()
    );

    // Key Vault down on a first mount: Unavailable after retries, nothing mounted.
    azure.inject(Fault {
        status: 503,
        times: None,
        object: Some("secret2".to_owned()),
    });
    api.insert(
        GROUP,
        "secretproviderclasses",
        class(
            "down",
            "kvname",
            json!({}),
            &["objectName: secret2\n    objectType: secret"],
        ),
    );
    let app = pod(&api, "pod-down", "app-sa", "down");
    let err = publish(&driver, &api, &app, "down", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{}", err.message());
    assert!(
        err.message().contains("is failing: HTTP 503"),
        "{}",
        err.message()
    );
    assert!(!driver.target(&app.uid, "secrets").exists());
    azure.heal();

    // Rotation: a new version arrives at the next republish; transient failures are
    // retried; a revoked token is replaced once; an outage keeps the mounted files.
    api.insert(
        GROUP,
        "secretproviderclasses",
        class(
            "rotating",
            "kvname",
            json!({}),
            &["objectName: secret1\n    objectType: secret"],
        ),
    );
    let app = pod(&api, "rotating", "app-sa", "rotating");
    let target = publish(&driver, &api, &app, "rotating", None)
        .await
        .unwrap();
    assert_eq!(text(&files(&target), "secret1"), SECRET1_V2);
    let v3 = azure.secret("kvname", "secret1", SECRET1_V3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publish(&driver, &api, &app, "rotating", None)
        .await
        .unwrap();
    assert_eq!(text(&files(&target), "secret1"), SECRET1_V3);
    assert_eq!(
        support::pod_versions(&api, "rotating")["secret/secret1"],
        v3
    );

    let reads = azure.reads();
    azure.inject(Fault {
        status: 503,
        times: Some(2),
        object: None,
    });
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publish(&driver, &api, &app, "rotating", None)
        .await
        .unwrap();
    assert_eq!(azure.reads(), reads + 3, "two failures, then the read");

    let exchanges = azure.exchanges().len();
    azure.revoke_tokens();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publish(&driver, &api, &app, "rotating", None)
        .await
        .unwrap();
    assert_eq!(azure.exchanges().len(), exchanges + 1);

    azure.inject(Fault {
        status: 503,
        times: None,
        object: None,
    });
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publish(&driver, &api, &app, "rotating", None)
        .await
        .unwrap();
    assert_eq!(text(&files(&target), "secret1"), SECRET1_V3);
    azure.heal();
    for target in [&target, &web] {
        driver
            .node()
            .node_unpublish_volume(unpublish(target))
            .await
            .unwrap();
    }
    assert!(mounts_under(driver.dir.path()).is_empty());
    assert_no_leaks(&driver, &fixture);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_mounts_the_same_in_process_and_on_the_plugin_socket() {
    let Some(fixture) = azure().await else {
        return;
    };
    let Some(api) = ApiServer::start().await else {
        return;
    };
    api.insert(GROUP, "secretproviderclasses", example("azure.yaml"));
    let in_process = driver(&api, &fixture.azure, &[]).await;
    let via_socket = driver(&api, &fixture.azure, &["--builtin-providers=vault,aws"]).await;
    let socket = via_socket.provider_dir.join("azure.sock");
    let args = fixture.azure.flags();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = support::serve_provider("azure", &socket, &args).await;

    let mut trees = Vec::new();
    for (driver, name) in [(&in_process, "web-1"), (&via_socket, "web-2")] {
        let app = pod(&api, name, "app-sa", "app-azure");
        let target = publish(driver, &api, &app, "app-azure", None)
            .await
            .unwrap_or_else(|e| panic!("{name}: {}", e.message()));
        trees.push(read_tree(&target));
        driver
            .node()
            .node_unpublish_volume(unpublish(&target))
            .await
            .unwrap();
    }
    assert_eq!(trees[0].len(), 6);
    assert_eq!(trees[0], trees[1]);
    assert_eq!(
        support::pod_versions(&api, "web-1"),
        support::pod_versions(&api, "web-2")
    );
    let logs = support::stop_provider(server, &socket);
    for value in [DB, DB_OLD, SP_SECRET] {
        assert!(!logs.contains(value), "the provider logged a secret value");
    }
    assert_no_leaks(&in_process, &fixture);
    assert_no_leaks(&via_socket, &fixture);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_azure_plugin_mounts_the_same_files_and_versions() {
    let Some(fixture) = azure().await else {
        return;
    };
    if support::azure::plugin_binary().is_none() {
        return;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let azure = &fixture.azure;
    azure.secret("app-kv", "hex-secret", "6b762d6865782d76616c7565");
    for file in [
        "v1alpha1_secretproviderclass_secrets.yaml",
        "v1alpha1_secretproviderclass_certs.yaml",
        "v1alpha1_secretproviderclass_keys.yaml",
    ] {
        api.insert(GROUP, "secretproviderclasses", plugin_class(file));
    }
    api.insert(GROUP, "secretproviderclasses", example("azure.yaml"));
    let variety = "array:\n  - |\n    objectName: hex-secret\n    objectType: secret\n    objectEncoding: HEX\n    filePermission: \"0600\"\n  - |\n    objectName: web-tls\n    objectType: secret\n    objectFormat: PEM\n    objectAlias: nested/dir/web.pem\n  - |\n    objectName: web-tls\n    objectType: secret\n    objectFormat: pfx\n    objectAlias: web.pfx\n  - |\n    objectName: web-tls\n    objectType: key\n  - |\n    objectName: db-password\n    objectType: secret\n    objectVersion: \" 8d3a1f5c2b6e4f0a9c7d1e2f3a4b5c6d \"\n";
    let wi = |name: &str, objects: &str, extra: Value| {
        let mut parameters = json!({"keyvaultName": "app-kv", "tenantID": "tid",
                                    "clientID": WI_CLIENT, "objects": objects});
        for (key, value) in extra.as_object().unwrap() {
            parameters[key] = value.clone();
        }
        support::spc("team", name, "azure", parameters)
    };
    api.insert(
        GROUP,
        "secretproviderclasses",
        wi(
            "variety",
            variety,
            json!({"cloudName": "AzurePublicCloud", "usePodIdentity": "false"}),
        ),
    );
    api.insert(
        GROUP,
        "secretproviderclasses",
        wi(
            "missing",
            "array:\n  - |\n    objectName: nope\n    objectType: secret\n",
            json!({}),
        ),
    );
    api.insert(
        GROUP,
        "secretproviderclasses",
        wi("no-objects", "array: []\n", json!({})),
    );

    let ours = driver(&api, azure, &[]).await;
    let theirs = driver(&api, azure, &["--builtin-providers=vault,aws"]).await;
    let front = azure.front().await;
    let socket = theirs.provider_dir.join("azure.sock");
    let log = theirs.dir.path().join("azure-plugin.log");
    let plugin = support::azure::start_plugin(&socket, &front, &log).await;

    let cases = [
        ("azure-certs", "default", SP),
        ("azure-keys", "default", SP),
        ("azure-secrets", "default", SP),
        ("app-azure", "app-sa", None),
        ("variety", "app-sa", None),
        ("missing", "app-sa", None),
        ("no-objects", "app-sa", None),
        ("app-azure", "other-sa", None),
    ];
    let mut compared = 0;
    for (index, (class, account, principal)) in cases.into_iter().enumerate() {
        let mut outcomes = Vec::new();
        for (side, driver) in [("ours", &ours), ("theirs", &theirs)] {
            let name = format!("{side}-{index}");
            let app = pod(&api, &name, account, class);
            let outcome = match publish(driver, &api, &app, class, principal).await {
                Ok(target) => {
                    let tree = read_tree(&target);
                    driver
                        .node()
                        .node_unpublish_volume(unpublish(&target))
                        .await
                        .unwrap();
                    Ok((tree, support::pod_versions(&api, &name)))
                }
                Err(status) => Err(status.message().to_owned()),
            };
            outcomes.push(outcome);
        }
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        match (&outcomes[0], &outcomes[1]) {
            (Ok(a), Ok(b)) => {
                assert_eq!(
                    a.0, b.0,
                    "{class}: files differ from the plugin's\n{log_text}"
                );
                assert_eq!(a.1, b.1, "{class}: versions differ from the plugin's");
                compared += 1;
            }
            (Err(a), Err(b)) => {
                eprintln!("{class} as {account} fails on both sides:\n  ours: {a}\n  theirs: {b}")
            }
            (a, b) => panic!(
                "{class} as {account}: ours {:?}, the plugin's {:?}\n{log_text}",
                a.as_ref().map(|_| "mounted"),
                b.as_ref().map(|_| "mounted")
            ),
        }
    }
    // The plugin's secrets example, a missing object, a class of no objects (the driver
    // wants one version at least) and an unfederated service account fail on both sides;
    // the other four mount identically.
    assert_eq!(compared, 4, "four classes mount on both sides");
    drop(plugin);
    assert!(mounts_under(ours.dir.path()).is_empty());
    assert!(mounts_under(theirs.dir.path()).is_empty());
    assert_no_leaks(&ours, &fixture);
}

#[test]
fn the_readme_shows_the_tested_azure_example_verbatim() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let text = std::fs::read_to_string(root.join("examples/azure.yaml")).unwrap();
    assert!(
        readme.contains(&format!("```yaml\n{text}```")),
        "README.md must show examples/azure.yaml verbatim"
    );
}
