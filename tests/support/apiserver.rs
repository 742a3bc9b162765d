//! A stateful fake Kubernetes API server speaking real HTTP/JSON, for the real `kube` client.
//!
//! It follows the API conventions, not the driver's expectations: objects get uid,
//! resourceVersion and creationTimestamp; create answers 409 AlreadyExists, replace checks
//! resourceVersion (409 Conflict), missing objects are 404 `Status` bodies; lists honour label
//! and field selectors; watches stream from a resourceVersion. A version a resource does not
//! serve answers a plain-text 404, as kube-apiserver does.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// How one resource is served.
#[derive(Clone, Debug)]
pub struct ResourceInfo {
    pub group: &'static str,
    pub resource: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub versions: Vec<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    group: String,
    resource: String,
    namespace: String,
    name: String,
}

#[derive(Clone, Debug)]
struct Event {
    key: Key,
    kind: &'static str,
    object: Value,
    rv: u64,
}

struct Store {
    rv: u64,
    next_uid: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Event>,
    resources: HashMap<(String, String), ResourceInfo>,
    requests: Vec<(String, String)>,
    /// `(group, resource)` pairs every request is forbidden on, as missing RBAC.
    denied: Vec<(String, String)>,
    /// Answers a real API server cannot be made to give on demand.
    faults: Vec<ApiFault>,
}

/// A fault: `times` requests with `method` on `resource` of `group` get `status` (a 5xx, a
/// 409 storm) or wait `delay` first. A GET fault hits reads of one object only: the driver's
/// background lists and watches (refresh requests, SecretSync) must not use it up first.
#[derive(Clone, Debug)]
pub struct ApiFault {
    group: String,
    resource: String,
    method: Method,
    status: Option<u16>,
    delay: Duration,
    times: usize,
}

impl ApiFault {
    /// `times` answers of HTTP `status` to `method` requests on `group`/`resource`.
    pub fn status(group: &str, resource: &str, method: &str, status: u16, times: usize) -> Self {
        Self {
            group: group.to_owned(),
            resource: resource.to_owned(),
            method: method.parse().unwrap(),
            status: Some(status),
            delay: Duration::ZERO,
            times,
        }
    }

    /// `times` answers to `method` requests on `group`/`resource` that take `delay` first.
    pub fn delay(group: &str, resource: &str, method: &str, delay: Duration, times: usize) -> Self {
        Self {
            group: group.to_owned(),
            resource: resource.to_owned(),
            method: method.parse().unwrap(),
            status: None,
            delay,
            times,
        }
    }
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<Event>,
    signer: Signer,
}

/// The service-account token issuer: ES256 JWTs shaped like kube-apiserver's projected tokens.
struct Signer {
    key: ring::signature::EcdsaKeyPair,
}

/// The issuer claim of every token, as a cluster's `--service-account-issuer`.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Signer {
    fn new() -> Self {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Self { key }
    }

    fn sign(&self, claims: &Value) -> String {
        let header = b64(br#"{"alg":"ES256","kid":"fake"}"#);
        let payload = b64(claims.to_string().as_bytes());
        let input = format!("{header}.{payload}");
        let rng = ring::rand::SystemRandom::new();
        let signature = self.key.sign(&rng, input.as_bytes()).unwrap();
        format!("{input}.{}", b64(signature.as_ref()))
    }

    /// The claims of a token this signer issued and that has not expired.
    fn verify(&self, token: &str) -> Option<Value> {
        use ring::signature::{ECDSA_P256_SHA256_FIXED, KeyPair as _, UnparsedPublicKey};
        let (input, signature) = token.rsplit_once('.')?;
        let public =
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref());
        public.verify(input.as_bytes(), &unb64(signature)?).ok()?;
        let (_, payload) = input.split_once('.')?;
        let claims: Value = serde_json::from_slice(&unb64(payload)?).ok()?;
        (claims["exp"].as_u64()? > now_secs()).then_some(claims)
    }

    /// The public key as a PEM SubjectPublicKeyInfo, for JWT auth configuration.
    fn public_key_pem(&self) -> String {
        use ring::signature::KeyPair as _;
        // DER prefix of an id-ecPublicKey / prime256v1 SubjectPublicKeyInfo.
        let mut der = hex_bytes("3059301306072a8648ce3d020106082a8648ce3d030107034200");
        der.extend_from_slice(self.key.public_key().as_ref());
        super::pem("PUBLIC KEY", &der)
    }
}

fn hex_bytes(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// A running fake API server on a loopback port.
pub struct FakeApiServer {
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn default_resources() -> Vec<ResourceInfo> {
    let core = |resource, kind| ResourceInfo {
        group: "",
        resource,
        kind,
        namespaced: true,
        versions: vec!["v1"],
    };
    let apps = |resource, kind| ResourceInfo {
        group: "apps",
        resource,
        kind,
        namespaced: true,
        versions: vec!["v1"],
    };
    let csi = |resource, kind| ResourceInfo {
        group: "secrets-store.csi.x-k8s.io",
        resource,
        kind,
        namespaced: true,
        versions: vec!["v1", "v1alpha1"],
    };
    vec![
        core("pods", "Pod"),
        core("secrets", "Secret"),
        core("events", "Event"),
        core("serviceaccounts", "ServiceAccount"),
        ResourceInfo {
            group: "",
            resource: "nodes",
            kind: "Node",
            namespaced: false,
            versions: vec!["v1"],
        },
        ResourceInfo {
            group: "events.k8s.io",
            resource: "events",
            kind: "Event",
            namespaced: true,
            versions: vec!["v1"],
        },
        apps("replicasets", "ReplicaSet"),
        apps("deployments", "Deployment"),
        apps("statefulsets", "StatefulSet"),
        apps("daemonsets", "DaemonSet"),
        csi("secretproviderclasses", "SecretProviderClass"),
        csi(
            "secretproviderclasspodstatuses",
            "SecretProviderClassPodStatus",
        ),
    ]
}

impl FakeApiServer {
    /// Starts a server with the resources the driver uses.
    pub async fn start() -> Self {
        let resources = default_resources()
            .into_iter()
            .map(|r| ((r.group.to_owned(), r.resource.to_owned()), r))
            .collect();
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 1,
                next_uid: 1,
                objects: BTreeMap::new(),
                history: Vec::new(),
                resources,
                requests: Vec::new(),
                denied: Vec::new(),
                faults: Vec::new(),
            }),
            events,
            signer: Signer::new(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, shared, task }
    }

    /// Serves `resource` of `group` with only these versions (e.g. an old CRD).
    pub fn set_versions(&self, group: &str, resource: &str, versions: Vec<&'static str>) {
        let mut store = self.shared.store.lock().unwrap();
        store
            .resources
            .get_mut(&(group.to_owned(), resource.to_owned()))
            .unwrap()
            .versions = versions;
    }

    /// A kubeconfig file content pointing at this server without credentials.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url
        )
    }

    /// A `kube::Client` for this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Stores an object directly, as if created through the API.
    pub fn insert(&self, group: &str, resource: &str, object: Value) -> Value {
        let mut store = self.shared.store.lock().unwrap();
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (status, body) = store.create(&self.shared.events, group, resource, &namespace, object);
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// The stored object, if any.
    pub fn get(&self, group: &str, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.shared.store.lock().unwrap();
        store
            .objects
            .get(&key(group, resource, namespace, name))
            .cloned()
    }

    /// All stored objects of a resource.
    pub fn list(&self, group: &str, resource: &str) -> Vec<Value> {
        let store = self.shared.store.lock().unwrap();
        store
            .objects
            .iter()
            .filter(|(k, _)| k.group == group && k.resource == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A projected service-account token as kubelet gets it from the TokenRequest API, bound
    /// to the pod. The service account must exist.
    pub fn issue_token(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        pod: (&str, &str),
    ) -> String {
        let sa = self
            .get("", "serviceaccounts", namespace, service_account)
            .unwrap_or_else(|| {
                panic!("service account {namespace}/{service_account} does not exist")
            });
        let now = now_secs();
        self.shared.signer.sign(&json!({
            "aud": [audience],
            "exp": now + 3600,
            "iat": now,
            "nbf": now,
            "iss": ISSUER,
            "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": sa["metadata"]["uid"]},
                "pod": {"name": pod.0, "uid": pod.1},
            },
        }))
    }

    /// The public key that verifies issued tokens (PEM), as an OIDC/JWT auth method needs.
    pub fn token_public_key_pem(&self) -> String {
        self.shared.signer.public_key_pem()
    }

    /// Answers every request on `resource` of `group` with 403, as a missing RBAC rule does.
    pub fn deny(&self, group: &str, resource: &str) {
        let mut store = self.shared.store.lock().unwrap();
        store.denied.push((group.to_owned(), resource.to_owned()));
    }

    /// Injects a fault (see [`ApiFault`]).
    pub fn inject(&self, fault: ApiFault) {
        self.shared.store.lock().unwrap().faults.push(fault);
    }

    /// Deletes an object through the API path, so the garbage collector runs as it would.
    pub fn delete(&self, group: &str, resource: &str, namespace: &str, name: &str) {
        let mut store = self.shared.store.lock().unwrap();
        let k = key(group, resource, namespace, name);
        assert!(
            store.delete(&self.shared.events, &k).is_some(),
            "{k:?} does not exist"
        );
    }

    /// Replaces an object's fields with a JSON merge patch, as `kubectl patch --type=merge`.
    pub fn patch(&self, group: &str, resource: &str, namespace: &str, name: &str, patch: &Value) {
        let mut store = self.shared.store.lock().unwrap();
        let k = key(group, resource, namespace, name);
        let existing = store.objects.get(&k).cloned().expect("object exists");
        let mut merged = existing.clone();
        merge_patch(&mut merged, patch);
        store.update(&self.shared.events, k, existing, merged);
    }

    /// `(method, path)` of every request served so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared.store.lock().unwrap().requests.clone()
    }
}

impl super::TestApi for FakeApiServer {
    fn kubeconfig(&self) -> String {
        FakeApiServer::kubeconfig(self)
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    fn insert(&self, group: &str, resource: &str, object: Value) -> Value {
        FakeApiServer::insert(self, group, resource, object)
    }

    fn get(&self, group: &str, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        FakeApiServer::get(self, group, resource, namespace, name)
    }

    fn list(&self, group: &str, resource: &str) -> Vec<Value> {
        FakeApiServer::list(self, group, resource)
    }

    fn delete(&self, group: &str, resource: &str, namespace: &str, name: &str) {
        FakeApiServer::delete(self, group, resource, namespace, name);
    }

    fn patch(&self, group: &str, resource: &str, namespace: &str, name: &str, patch: &Value) {
        FakeApiServer::patch(self, group, resource, namespace, name, patch);
    }

    fn issue_token(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        pod: (&str, &str),
    ) -> String {
        FakeApiServer::issue_token(self, namespace, service_account, audience, pod)
    }

    fn token_public_key_pem(&self) -> String {
        FakeApiServer::token_public_key_pem(self)
    }
}

fn key(group: &str, resource: &str, namespace: &str, name: &str) -> Key {
    Key {
        group: group.to_owned(),
        resource: resource.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// A parsed request path.
struct Target {
    group: String,
    version: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => (String::new(), (*version).to_owned(), rest),
        ["apis", group, version, rest @ ..] => ((*group).to_owned(), (*version).to_owned(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        rest => (None, rest),
    };
    match rest {
        [resource] => Some(Target {
            group,
            version,
            resource: (*resource).to_owned(),
            namespace,
            name: None,
        }),
        [resource, name] => Some(Target {
            group,
            version,
            resource: (*resource).to_owned(),
            namespace,
            name: Some((*name).to_owned()),
        }),
        _ => None,
    }
}

fn status(code: StatusCode, reason: &str, message: String, kind: &str, name: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"name": name, "kind": kind},
        "code": code.as_u16(),
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// TokenReview as kube-apiserver answers it: the signature, expiry, audiences, and that the
/// service account (and bound pod) still exist.
fn token_review(shared: &Shared, body: &[u8]) -> Response {
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "invalid TokenReview".into(),
            "TokenReview",
            "",
        );
    };
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_else(|| vec![ISSUER.to_owned()]);
    let wanted = if wanted.is_empty() {
        vec![ISSUER.to_owned()]
    } else {
        wanted
    };
    let result = (|| {
        let claims = shared.signer.verify(token).ok_or("invalid bearer token")?;
        let audiences: Vec<String> = claims["aud"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let matched: Vec<String> = wanted
            .iter()
            .filter(|a| audiences.contains(a))
            .cloned()
            .collect();
        if matched.is_empty() {
            return Err("token audiences is invalid for the target audiences");
        }
        let k8s = &claims["kubernetes.io"];
        let namespace = k8s["namespace"].as_str().unwrap_or_default();
        let name = k8s["serviceaccount"]["name"].as_str().unwrap_or_default();
        let store = shared.store.lock().unwrap();
        let sa = store
            .objects
            .get(&key("", "serviceaccounts", namespace, name))
            .ok_or("service account has been deleted")?;
        if sa["metadata"]["uid"] != k8s["serviceaccount"]["uid"] {
            return Err("service account UID does not match the token");
        }
        let pod = k8s["pod"]["name"].as_str().unwrap_or_default();
        if let Some(stored) = store.objects.get(&key("", "pods", namespace, pod))
            && stored["metadata"]["uid"] != k8s["pod"]["uid"]
        {
            return Err("pod UID does not match the token");
        }
        Ok(json!({
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{namespace}:{name}"),
                "uid": sa["metadata"]["uid"],
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
                "extra": {
                    "authentication.kubernetes.io/pod-name": [pod],
                    "authentication.kubernetes.io/pod-uid": [k8s["pod"]["uid"]],
                },
            },
            "audiences": matched,
        }))
    })();
    let status_body =
        result.unwrap_or_else(|error| json!({"authenticated": false, "error": error}));
    let body = json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": review["spec"],
        "status": status_body,
    });
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn page_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "404 page not found\n",
    )
        .into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    shared
        .store
        .lock()
        .unwrap()
        .requests
        .push((method.to_string(), uri.path().to_owned()));
    if method == Method::POST && uri.path() == "/apis/authentication.k8s.io/v1/tokenreviews" {
        return token_review(&shared, &body);
    }
    let Some(target) = parse_path(uri.path()) else {
        return page_not_found();
    };
    let info = {
        let store = shared.store.lock().unwrap();
        store
            .resources
            .get(&(target.group.clone(), target.resource.clone()))
            .cloned()
    };
    let Some(info) = info.filter(|i| i.versions.contains(&target.version.as_str())) else {
        return page_not_found();
    };
    let fault = {
        let mut store = shared.store.lock().unwrap();
        let found = store.faults.iter_mut().find(|f| {
            f.times > 0
                && f.group == info.group
                && f.resource == info.resource
                && f.method == method
                && (method != Method::GET || target.name.is_some())
        });
        found.map(|f| {
            f.times -= 1;
            f.clone()
        })
    };
    if let Some(fault) = fault {
        tokio::time::sleep(fault.delay).await;
        if let Some(code) = fault.status {
            let code = StatusCode::from_u16(code).unwrap();
            let reason = if code == StatusCode::CONFLICT {
                "Conflict"
            } else {
                "InternalError"
            };
            return status(
                code,
                reason,
                format!("injected {code}"),
                info.resource,
                target.name.as_deref().unwrap_or_default(),
            );
        }
    }
    let denied = shared
        .store
        .lock()
        .unwrap()
        .denied
        .contains(&(info.group.to_owned(), info.resource.to_owned()));
    if denied {
        let verb = match method {
            Method::GET if query.contains_key("watch") => "watch",
            Method::GET if target.name.is_none() => "list",
            Method::GET => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "unknown",
        };
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{}{} is forbidden: User \"system:serviceaccount:kube-system:secrets-store-csi-driver\" \
                 cannot {verb} resource \"{}\" in API group \"{}\"",
                info.resource,
                target
                    .name
                    .as_ref()
                    .map(|n| format!(" \"{n}\""))
                    .unwrap_or_default(),
                info.resource,
                info.group
            ),
            info.kind,
            target.name.as_deref().unwrap_or_default(),
        );
    }
    let api_version = if info.group.is_empty() {
        target.version.clone()
    } else {
        format!("{}/{}", info.group, target.version)
    };
    let namespace = target.namespace.clone().unwrap_or_default();
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");

    match (method, target.name.clone()) {
        (Method::GET, None) if watch => watch_stream(
            &shared,
            &info,
            &api_version,
            target.namespace.clone(),
            &query,
        ),
        (Method::GET, None) => {
            let store = shared.store.lock().unwrap();
            let items: Vec<Value> = store
                .objects
                .iter()
                .filter(|(k, _)| k.group == info.group && k.resource == info.resource)
                .filter(|(k, _)| {
                    target
                        .namespace
                        .as_ref()
                        .is_none_or(|ns| &k.namespace == ns)
                })
                .filter(|(_, v)| selects(v, &query))
                .map(|(_, v)| with_version(v, &api_version))
                .collect();
            let list = json!({
                "kind": format!("{}List", info.kind),
                "apiVersion": api_version,
                "metadata": {"resourceVersion": store.rv.to_string()},
                "items": items,
            });
            json_response(StatusCode::OK, &list)
        }
        (Method::GET, Some(name)) => {
            let store = shared.store.lock().unwrap();
            match store
                .objects
                .get(&key(info.group, info.resource, &namespace, &name))
            {
                Some(object) => json_response(StatusCode::OK, &with_version(object, &api_version)),
                None => not_found(&info, &name),
            }
        }
        (Method::POST, None) => {
            let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "invalid JSON body".into(),
                    info.kind,
                    "",
                );
            };
            let mut store = shared.store.lock().unwrap();
            let (code, body) = store.create(
                &shared.events,
                info.group,
                info.resource,
                &namespace,
                object,
            );
            if code == StatusCode::CREATED {
                json_response(code, &with_version(&body, &api_version))
            } else {
                (
                    code,
                    [(header::CONTENT_TYPE, "application/json")],
                    body.to_string(),
                )
                    .into_response()
            }
        }
        (Method::PUT, Some(name)) => {
            let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "invalid JSON body".into(),
                    info.kind,
                    &name,
                );
            };
            let mut store = shared.store.lock().unwrap();
            let k = key(info.group, info.resource, &namespace, &name);
            let Some(existing) = store.objects.get(&k).cloned() else {
                return not_found(&info, &name);
            };
            let sent_rv = object["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default();
            if !sent_rv.is_empty()
                && sent_rv
                    != existing["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default()
            {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {}.{} \"{name}\": the object has been modified; \
                         please apply your changes to the latest version and try again",
                        info.resource, info.group
                    ),
                    info.kind,
                    &name,
                );
            }
            let updated = store.update(&shared.events, k, existing, object);
            json_response(StatusCode::OK, &with_version(&updated, &api_version))
        }
        (Method::PATCH, Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "invalid patch body".into(),
                    info.kind,
                    &name,
                );
            };
            let mut store = shared.store.lock().unwrap();
            let k = key(info.group, info.resource, &namespace, &name);
            let existing = store.objects.get(&k).cloned();
            match (existing, content_type) {
                (None, "application/apply-patch+yaml") => {
                    let (code, body) =
                        store.create(&shared.events, info.group, info.resource, &namespace, patch);
                    json_response(code, &with_version(&body, &api_version))
                }
                (None, _) => not_found(&info, &name),
                (Some(existing), _) => {
                    let mut merged = existing.clone();
                    merge_patch(&mut merged, &patch);
                    let updated = store.update(&shared.events, k, existing, merged);
                    json_response(StatusCode::OK, &with_version(&updated, &api_version))
                }
            }
        }
        (Method::DELETE, Some(name)) => {
            let mut store = shared.store.lock().unwrap();
            let k = key(info.group, info.resource, &namespace, &name);
            if let Some(uid) = preconditions_uid(&body)
                && let Some(existing) = store.objects.get(&k)
                && existing["metadata"]["uid"].as_str() != Some(uid.as_str())
            {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        existing["metadata"]["uid"].as_str().unwrap_or_default()
                    ),
                    info.kind,
                    &name,
                );
            }
            match store.delete(&shared.events, &k) {
                Some(object) => json_response(StatusCode::OK, &with_version(&object, &api_version)),
                None => not_found(&info, &name),
            }
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "method not allowed".into(),
            info.kind,
            "",
        ),
    }
}

/// `preconditions.uid` of a DeleteOptions body.
fn preconditions_uid(body: &[u8]) -> Option<String> {
    let options: Value = serde_json::from_slice(body).ok()?;
    options["preconditions"]["uid"].as_str().map(str::to_owned)
}

impl Store {
    /// Removes an object, then collects garbage as kube-controller-manager's garbage collector
    /// does with background propagation: a dependent whose owners are all gone is deleted
    /// (and its own dependents in turn); a dependent with a remaining owner loses the dangling
    /// reference.
    fn delete(&mut self, events: &broadcast::Sender<Event>, k: &Key) -> Option<Value> {
        let mut object = self.objects.remove(k)?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.emit(events, k.clone(), "DELETED", &object);
        let live: std::collections::HashSet<String> = self
            .objects
            .values()
            .filter_map(|o| o["metadata"]["uid"].as_str().map(str::to_owned))
            .collect();
        let dependents: Vec<(Key, Value)> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|r| r["uid"].as_str().is_some_and(|uid| !live.contains(uid)))
                    })
            })
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        for (dependent, existing) in dependents {
            let remaining: Vec<Value> = existing["metadata"]["ownerReferences"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["uid"].as_str().is_some_and(|uid| live.contains(uid)))
                .cloned()
                .collect();
            if remaining.is_empty() {
                self.delete(events, &dependent);
            } else {
                let mut updated = existing.clone();
                updated["metadata"]["ownerReferences"] = Value::Array(remaining);
                self.update(events, dependent, existing, updated);
            }
        }
        Some(object)
    }

    /// Records a change at the current resourceVersion for watches, past and live.
    fn emit(
        &mut self,
        events: &broadcast::Sender<Event>,
        key: Key,
        kind: &'static str,
        object: &Value,
    ) {
        let event = Event {
            key,
            kind,
            object: object.clone(),
            rv: self.rv,
        };
        self.history.push(event.clone());
        let _ = events.send(event);
    }

    fn create(
        &mut self,
        events: &broadcast::Sender<Event>,
        group: &str,
        resource: &str,
        namespace: &str,
        mut object: Value,
    ) -> (StatusCode, Value) {
        let info = self.resources[&(group.to_owned(), resource.to_owned())].clone();
        let mut name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if name.is_empty() {
            if let Some(prefix) = object["metadata"]["generateName"].as_str() {
                name = format!("{prefix}{:05}", self.next_uid);
            } else {
                let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid",
                    "message": format!("{} \"\" is invalid: metadata.name: Required value: name or generateName is required", info.kind),
                    "code": 422});
                return (StatusCode::UNPROCESSABLE_ENTITY, body);
            }
        }
        if name.len() > 253 {
            let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid",
                "message": format!("{} \"{name}\" is invalid: metadata.name: must be no more than 253 characters", info.kind),
                "code": 422});
            return (StatusCode::UNPROCESSABLE_ENTITY, body);
        }
        let k = key(group, resource, namespace, &name);
        if self.objects.contains_key(&k) {
            let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": "AlreadyExists", "code": 409,
                "message": format!("{}.{} \"{name}\" already exists", resource, group),
                "details": {"name": name, "group": group, "kind": resource}});
            return (StatusCode::CONFLICT, body);
        }
        self.rv += 1;
        let uid = format!("00000000-0000-4000-8000-{:012}", self.next_uid);
        self.next_uid += 1;
        let meta = object["metadata"]
            .as_object_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut meta = Value::Object(meta);
        meta["name"] = json!(name);
        if info.namespaced {
            meta["namespace"] = json!(namespace);
        }
        meta["uid"] = json!(uid);
        meta["resourceVersion"] = json!(self.rv.to_string());
        meta["creationTimestamp"] = json!("2026-11-23T00:00:00Z");
        meta["generation"] = json!(1);
        object["metadata"] = meta;
        self.objects.insert(k.clone(), object.clone());
        self.emit(events, k, "ADDED", &object);
        (StatusCode::CREATED, object)
    }

    fn update(
        &mut self,
        events: &broadcast::Sender<Event>,
        k: Key,
        existing: Value,
        mut object: Value,
    ) -> Value {
        self.rv += 1;
        for field in ["uid", "creationTimestamp", "name", "namespace"] {
            object["metadata"][field] = existing["metadata"][field].clone();
        }
        let generation = existing["metadata"]["generation"].as_i64().unwrap_or(1);
        object["metadata"]["generation"] = json!(generation);
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(k.clone(), object.clone());
        self.emit(events, k, "MODIFIED", &object);
        object
    }
}

fn not_found(info: &ResourceInfo, name: &str) -> Response {
    let qualified = if info.group.is_empty() {
        info.resource.to_owned()
    } else {
        format!("{}.{}", info.resource, info.group)
    };
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{qualified} \"{name}\" not found"),
        info.resource,
        name,
    )
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn with_version(object: &Value, api_version: &str) -> Value {
    let mut object = object.clone();
    object["apiVersion"] = json!(api_version);
    object
}

/// RFC 7386 JSON merge patch (strategic merge patches are treated the same for our types).
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (field, value) in fields {
                if value.is_null() {
                    target.as_object_mut().unwrap().remove(field);
                } else {
                    merge_patch(
                        target
                            .as_object_mut()
                            .unwrap()
                            .entry(field.clone())
                            .or_insert(Value::Null),
                        value,
                    );
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn selects(object: &Value, query: &HashMap<String, String>) -> bool {
    let labels = &object["metadata"]["labels"];
    let label_ok = query
        .get("labelSelector")
        .is_none_or(|s| label_selector_matches(s, labels));
    let field_ok = query
        .get("fieldSelector")
        .is_none_or(|s| field_selector_matches(s, object));
    label_ok && field_ok
}

/// Equality, set (`in`, `notin`) and existence requirements, comma-separated.
pub fn label_selector_matches(selector: &str, labels: &Value) -> bool {
    let value_of = |k: &str| labels.get(k).and_then(Value::as_str);
    split_requirements(selector).iter().all(|req| {
        let req = req.trim();
        if req.is_empty() {
            return true;
        }
        if let Some((k, set)) = req.split_once(" notin ") {
            let set = parse_set(set);
            return value_of(k.trim()).is_none_or(|v| !set.contains(&v.to_owned()));
        }
        if let Some((k, set)) = req.split_once(" in ") {
            let set = parse_set(set);
            return value_of(k.trim()).is_some_and(|v| set.contains(&v.to_owned()));
        }
        if let Some((k, v)) = req.split_once("!=") {
            return value_of(k.trim()) != Some(v.trim());
        }
        if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
            return value_of(k.trim()) == Some(v.trim());
        }
        if let Some(k) = req.strip_prefix('!') {
            return value_of(k.trim()).is_none();
        }
        value_of(req).is_some()
    })
}

fn split_requirements(selector: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current);
    out
}

fn parse_set(set: &str) -> Vec<String> {
    set.trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect()
}

/// `a.b=c` and `a.b!=c` over dotted paths.
pub fn field_selector_matches(selector: &str, object: &Value) -> bool {
    selector
        .split(',')
        .filter(|r| !r.trim().is_empty())
        .all(|req| {
            let (path, wanted, negate) = match req.split_once("!=") {
                Some((p, v)) => (p, v, true),
                None => match req.split_once("==").or_else(|| req.split_once('=')) {
                    Some((p, v)) => (p, v, false),
                    None => return false,
                },
            };
            let actual = path.trim().split('.').fold(object, |v, part| &v[part]);
            let actual = actual.as_str().unwrap_or_default();
            (actual == wanted.trim()) != negate
        })
}

fn watch_stream(
    shared: &Arc<Shared>,
    info: &ResourceInfo,
    api_version: &str,
    namespace: Option<String>,
    query: &HashMap<String, String>,
) -> Response {
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(290);
    let (backlog, live) = {
        let store = shared.store.lock().unwrap();
        let backlog: Vec<Event> = store
            .history
            .iter()
            .filter(|e| e.rv > since)
            .cloned()
            .collect();
        (backlog, shared.events.subscribe())
    };
    let (group, resource) = (info.group.to_owned(), info.resource.to_owned());
    let query = query.clone();
    let api_version = api_version.to_owned();
    let wanted = move |event: &Event| {
        event.key.group == group
            && event.key.resource == resource
            && namespace
                .as_ref()
                .is_none_or(|ns| &event.key.namespace == ns)
            && selects(&event.object, &query)
    };
    let last_backlog_rv = backlog.last().map_or(since, |e| e.rv);
    let wanted_live = wanted.clone();
    let backlog = futures::stream::iter(backlog.into_iter().filter(wanted));
    let live = tokio_stream::wrappers::BroadcastStream::new(live)
        .filter_map(|e| async move { e.ok() })
        .filter(move |e| futures::future::ready(e.rv > last_backlog_rv && wanted_live(e)));
    let lines = backlog
        .chain(live)
        .map(move |event| {
            let line =
                json!({"type": event.kind, "object": with_version(&event.object, &api_version)});
            Ok::<_, std::convert::Infallible>(Bytes::from(format!("{line}\n")))
        })
        .take_until(tokio::time::sleep(Duration::from_secs(timeout)));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(lines))
        .unwrap()
}
