//! `sync-controller`: Secrets synced without a pod, from kubernetes-sigs/
//! secrets-store-sync-controller's `SecretSync` objects.
//!
//! For each SecretSync the controller requests a token for `spec.serviceAccountName` (never
//! using its own identity to fetch), asks the class's provider (built-in or plugin socket)
//! exactly as the node does for a pod of that account, and writes the Secret through
//! [`write`]. Conditions, reasons and the hash in the status follow upstream's controller; a
//! failure keeps the old Secret and is a Warning Event on the SecretSync.

pub mod leader;
pub mod token;
pub mod write;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, predicates, watcher};
use kube::{Api, Resource as _, ResourceExt as _};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::class::{self, ClassError, ClassSource};
use crate::crd::{
    RESERVED_PREFIX, SecretProviderClass, SecretSync, SecretSyncStatus, SyncCondition,
};
use crate::error::kube_message;
use crate::events::{Recorder, Regarding, Severity};
use crate::lock::lock;
use crate::metrics::Metrics;
use crate::pod::PodInfo;
use crate::provider::version_key::VersionKey;
use crate::provider::{DEFAULT_FILE_MODE, MountRequest, ProviderError, ProviderFile, Registry};
use crate::redact::Secret;
use crate::sync::tls;
use crate::template::Templates;
use write::{CONTROLLER_LABEL, Desired, SECRET_SYNC_LABEL, WriteError, Written};

/// Condition type while the Secret has never been written.
pub const CONDITION_CREATE: &str = "SecretCreated";
/// Condition type once it has.
pub const CONDITION_UPDATE: &str = "SecretUpdated";
/// Upstream's condition reasons.
pub mod reason {
    /// The provider failed.
    pub const PROVIDER_ERROR: &str = "ProviderError";
    /// A reserved label was asked for.
    pub const INVALID_LABEL: &str = "InvalidClusterSecretLabelError";
    /// A reserved annotation was asked for.
    pub const INVALID_ANNOTATION: &str = "InvalidClusterSecretAnnotationError";
    /// The controller could not prepare the fetch (e.g. no token).
    pub const SYNC_ERROR: &str = "ControllerSyncError";
    /// The Secret could not be written.
    pub const PATCH_ERROR: &str = "ControllerPatchError";
    /// The SecretProviderClass is missing or unusable.
    pub const SPC_ERROR: &str = "SecretProviderClassMisconfigured";
    /// The provider's answer lacks what `secretObject.data` names.
    pub const FETCH_FAILED: &str = "RemoteSecretStoreFetchFailed";
    /// Set when a SecretSync is first seen.
    pub const SYNC_STARTING: &str = "SyncStarting";
    /// Set when a SecretSync is first seen.
    pub const NO_UPDATE_YET: &str = "NoUpdatesAttemptedYet";
    /// The Secret holds the last fetched values.
    pub const UP_TO_DATE: &str = "SecretUpToDate";
    /// The Secret was created.
    pub const CREATED: &str = "CreateSuccessful";
}
const MESSAGE_CREATED: &str = "Secret created successfully.";
const MESSAGE_UP_TO_DATE: &str = "Secret contains last observed values.";
/// The API server's limit on a Secret's data.
const MAX_SECRET_BYTES: usize = 1024 * 1024;
/// Retry delays after a failure: doubled from the first up to the last.
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// The generation remembered for a SecretSync whose class changed: never its own.
const CLASS_CHANGED: i64 = -1;
/// The most a rotation's shared read may predate the rotation.
const MAX_SHARING_SLACK: Duration = Duration::from_secs(60);

/// What the controller serves and how.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Audiences it may request tokens for (`--token-request-audience`).
    pub audiences: Vec<String>,
    /// How often every Secret is fetched again; zero never.
    pub poll_interval: Duration,
    /// `spec.secretSyncControllerName` it serves besides the empty one.
    pub controller_name: String,
    /// Its own pod, told to providers as upstream's controller does.
    pub pod_name: String,
    /// Its pod's UID.
    pub pod_uid: String,
    /// Most bytes a provider's answer may hold.
    pub max_bytes: usize,
    /// SecretSyncs reconciled at once.
    pub concurrency: u16,
    /// How long one fetch may take.
    pub fetch_timeout: Duration,
}

/// What the controller remembers of a SecretSync it synced.
#[derive(Debug, Clone)]
struct Synced {
    generation: i64,
    /// When the next fetch is due, and whether the last one failed (then: how many times).
    due: Instant,
    /// How long before `due` a shared read may have begun.
    slack: Duration,
    failures: u32,
}

/// A sync that happened.
#[derive(Debug)]
struct Done {
    written: Written,
    hash: String,
    /// When to fetch again; `None` never.
    interval: Option<Duration>,
    provider: String,
}

/// A sync that did not happen, with upstream's condition reason.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("label {0} is reserved for use by the Secrets Store Sync Controller")]
    ReservedLabel(String),
    #[error("annotation {0} is reserved for use by the Secrets Store Sync Controller")]
    ReservedAnnotation(String),
    #[error("failed to get SecretProviderClass {name:?}: {source}")]
    Class {
        name: String,
        #[source]
        source: Box<ClassError>,
    },
    #[error("SecretProviderClass {name:?}: {message}")]
    Misconfigured { name: String, message: String },
    #[error(transparent)]
    Token(#[from] token::TokenRequestError),
    #[error("fetching secrets from the provider failed: {0}")]
    Provider(#[source] ProviderError),
    #[error("{0}")]
    Data(String),
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Self::ReservedLabel(_) => reason::INVALID_LABEL,
            Self::ReservedAnnotation(_) => reason::INVALID_ANNOTATION,
            Self::Class { .. } | Self::Misconfigured { .. } => reason::SPC_ERROR,
            Self::Token(_) => reason::SYNC_ERROR,
            Self::Provider(_) => reason::PROVIDER_ERROR,
            Self::Data(_) => reason::FETCH_FAILED,
            Self::Write(_) => reason::PATCH_ERROR,
        }
    }
}

/// The reconciler and what it shares between SecretSyncs.
pub struct Controller {
    client: kube::Client,
    classes: Arc<dyn ClassSource>,
    providers: Arc<Registry>,
    tokens: token::Tokens,
    recorder: Arc<Recorder>,
    metrics: Arc<Metrics>,
    key: VersionKey,
    settings: Settings,
    synced: Mutex<HashMap<String, Synced>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Why a reconcile stopped early; only logged by the runtime (conditions say the rest).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Retry(String);

impl Controller {
    /// A controller writing with `client` (its own identity: tokens, Secrets, status).
    pub fn new(
        client: kube::Client,
        classes: Arc<dyn ClassSource>,
        providers: Arc<Registry>,
        recorder: Arc<Recorder>,
        metrics: Arc<Metrics>,
        key: VersionKey,
        settings: Settings,
    ) -> Self {
        Self {
            tokens: token::Tokens::new(client.clone()),
            client,
            classes,
            providers,
            recorder,
            metrics,
            key,
            settings,
            synced: Mutex::new(HashMap::new()),
        }
    }

    /// Reconciles every SecretSync until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let api: Api<SecretSync> = Api::all(self.client.clone());
        let (store, writer) = reflector::store();
        // Status writes (ours) do not bump the generation and start no reconcile.
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .applied_objects()
            .predicate_filter(predicates::generation, Default::default());
        // A class's spec edited: its SecretSyncs fetch again at once (metadata only, so that
        // large classes cost the controller no memory).
        let classes: Api<PartialObjectMeta<SecretProviderClass>> = Api::all(self.client.clone());
        let class_changes = watcher(classes, watcher::Config::default())
            .default_backoff()
            .touched_objects()
            .predicate_filter(predicates::generation, Default::default());
        let config = controller::Config::default().concurrency(self.settings.concurrency);
        let pruner = tokio::spawn(self.clone().prune(store.clone(), stop.clone()));
        let (users, controller) = (store.clone(), self.clone());
        controller::Controller::for_stream(stream, store)
            .watches_stream(class_changes, move |class| {
                controller.class_changed(
                    &users,
                    &class.namespace().unwrap_or_default(),
                    &class.name_any(),
                )
            })
            .with_config(config)
            .graceful_shutdown_on(stop.cancelled_owned())
            .run(
                |ss, ctx| async move { ctx.reconcile(&ss).await },
                |_ss, err, _ctx| {
                    tracing::debug!(error = %err, "reconcile ended early");
                    Action::requeue(RETRY_FIRST)
                },
                self,
            )
            .for_each(|_| async {})
            .await;
        pruner.abort();
    }

    /// The SecretSyncs of a changed class, marked so that they fetch anew, not from a read
    /// shared before the change.
    fn class_changed(
        &self,
        store: &Store<SecretSync>,
        namespace: &str,
        name: &str,
    ) -> Vec<ObjectRef<SecretSync>> {
        let users: Vec<Arc<SecretSync>> = store
            .state()
            .into_iter()
            .filter(|ss| {
                ss.namespace().as_deref() == Some(namespace)
                    && ss.spec.secret_provider_class_name == name
            })
            .collect();
        let mut synced = lock(&self.synced);
        for ss in &users {
            if let Some(state) = ss.uid().and_then(|uid| synced.get_mut(&uid)) {
                state.generation = CLASS_CHANGED;
            }
        }
        users.iter().map(|ss| ObjectRef::from_obj(&**ss)).collect()
    }

    /// Forgets SecretSyncs that were deleted.
    async fn prune(self: Arc<Self>, store: Store<SecretSync>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
            let live: std::collections::HashSet<String> =
                store.state().iter().filter_map(|ss| ss.uid()).collect();
            lock(&self.synced).retain(|uid, _| live.contains(uid));
        }
    }

    async fn reconcile(&self, ss: &SecretSync) -> Result<Action, Retry> {
        let name = ss.name_any();
        let namespace = ss.namespace().unwrap_or_default();
        let served = &ss.spec.secret_sync_controller_name;
        if !served.is_empty() && *served != self.settings.controller_name {
            return Ok(Action::await_change());
        }
        let uid = ss.uid().unwrap_or_default();
        let generation = ss.metadata.generation.unwrap_or_default();
        let now = Instant::now();
        let remembered = lock(&self.synced).get(&uid).cloned();
        let fresh_since = match &remembered {
            Some(state) if state.generation == generation && state.due > now => {
                return Ok(Action::requeue(state.due - now));
            }
            // Due by the interval: a read that began at most a tenth of the interval (a
            // minute at most) before it was due is fresh enough, so that SecretSyncs of one
            // identity created together keep sharing their reads on every rotation.
            Some(state) if state.generation == generation && state.failures == 0 => {
                Some(state.due.checked_sub(state.slack).unwrap_or(state.due))
            }
            // A spec change or forceSynchronization: only a read from now on.
            Some(_) => Some(now),
            // Not seen by this process (a start or a failover): any shared read will do.
            None => None,
        };
        let started = Instant::now();
        let outcome = self.sync(ss, &namespace, &uid, fresh_since).await;
        self.metrics.secret_sync_duration(started.elapsed());
        let status = ss.status.clone().unwrap_or_default();
        let condition_type = if status.sync_hash.is_empty() {
            CONDITION_CREATE
        } else {
            CONDITION_UPDATE
        };
        let mut next = status.clone();
        init_conditions(&mut next, generation);
        let (interval, failures) = match outcome {
            Ok(Done {
                written,
                hash,
                interval,
                provider,
            }) => {
                if written != Written::Unchanged {
                    self.metrics.secret_synced(&provider);
                }
                if hash != status.sync_hash || written != Written::Unchanged || failed(&status) {
                    if condition_type == CONDITION_CREATE {
                        set_condition(
                            &mut next,
                            CONDITION_CREATE,
                            true,
                            reason::CREATED,
                            MESSAGE_CREATED,
                            generation,
                        );
                    }
                    set_condition(
                        &mut next,
                        CONDITION_UPDATE,
                        true,
                        reason::UP_TO_DATE,
                        MESSAGE_UP_TO_DATE,
                        generation,
                    );
                    next.sync_hash = hash;
                    next.last_successful_sync_time = Some(jiff::Timestamp::now().to_string());
                }
                tracing::debug!(secretsync = %name, namespace = %namespace, ?written, "synced");
                (interval, 0)
            }
            Err(failure) => {
                let message = failure.to_string();
                let reason = failure.reason();
                self.metrics.secret_sync_error(reason);
                tracing::warn!(secretsync = %name, namespace = %namespace, reason, error = %message, "sync failed; the Secret is left as it was");
                set_condition(
                    &mut next,
                    condition_type,
                    false,
                    reason,
                    &message,
                    generation,
                );
                let object = Regarding {
                    api_version: SecretSync::api_version(&()).into_owned(),
                    kind: SecretSync::kind(&()).into_owned(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    uid: uid.clone(),
                };
                self.recorder
                    .record(&object, Severity::Warning, reason, &message)
                    .await;
                let failures = remembered.map_or(0, |s| s.failures) + 1;
                (retry_delay(failures), failures)
            }
        };
        if next != status {
            let api: Api<SecretSync> = Api::namespaced(self.client.clone(), &namespace);
            let patch = json!({"status": next});
            if let Err(err) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                return Err(Retry(format!(
                    "updating the status of SecretSync {namespace}/{name}: {}",
                    kube_message(&err)
                )));
            }
        }
        lock(&self.synced).insert(
            uid,
            Synced {
                generation,
                due: Instant::now() + interval.unwrap_or(Duration::from_secs(86_400 * 365)),
                slack: interval.map_or(Duration::ZERO, |i| (i / 10).min(MAX_SHARING_SLACK)),
                failures,
            },
        );
        Ok(interval.map_or_else(Action::await_change, Action::requeue))
    }

    /// Fetches and writes one SecretSync's Secret: what was written, the new hash and when to
    /// fetch again.
    async fn sync(
        &self,
        ss: &SecretSync,
        namespace: &str,
        uid: &str,
        fresh_since: Option<Instant>,
    ) -> Result<Done, Failure> {
        let spec = &ss.spec;
        let object = &spec.secret_object;
        if let Some(key) = object
            .labels
            .keys()
            .find(|k| k.starts_with(RESERVED_PREFIX))
        {
            return Err(Failure::ReservedLabel(key.clone()));
        }
        if let Some(key) = object
            .annotations
            .keys()
            .find(|k| k.starts_with(RESERVED_PREFIX))
        {
            return Err(Failure::ReservedAnnotation(key.clone()));
        }
        let class_name = &spec.secret_provider_class_name;
        let class_error = |source| Failure::Class {
            name: class_name.clone(),
            source: Box::new(source),
        };
        let class = self
            .classes
            .get(namespace, class_name)
            .await
            .map_err(class_error)?;
        class::check(namespace, class_name, &class.spec).map_err(class_error)?;
        let interval = class
            .rotation_interval(namespace, class_name)
            .map_err(class_error)?
            .or(Some(self.settings.poll_interval))
            .filter(|d| !d.is_zero());
        let misconfigured = |message: String| Failure::Misconfigured {
            name: class_name.clone(),
            message,
        };
        let provider_name = class.spec.provider.trim();
        let provider = self
            .providers
            .get(provider_name)
            .map_err(|err| misconfigured(err.to_string()))?;
        let mut parameters = class.spec.parameters.clone();
        let templates = Templates::take_from(
            &format!("{namespace}/{class_name}"),
            &mut parameters,
            DEFAULT_FILE_MODE,
        )
        .map_err(|err| misconfigured(err.to_string()))?;
        let audiences = match provider.token_audiences(&parameters) {
            Some(needed) => {
                if let Some(missing) = needed.iter().find(|a| !self.settings.audiences.contains(a))
                {
                    return Err(misconfigured(format!(
                        "its provider logs in with a token for audience {missing:?}, which the \
                         controller may not request: add it to --token-request-audience (Helm \
                         value syncController.tokenRequestAudience)"
                    )));
                }
                needed
            }
            None => self.settings.audiences.clone(),
        };
        let tokens = self
            .tokens
            .for_account(namespace, &spec.service_account_name, &audiences)
            .await?;
        let request = MountRequest {
            pod: PodInfo {
                name: self.settings.pod_name.clone(),
                namespace: namespace.to_owned(),
                uid: self.settings.pod_uid.clone(),
                service_account: spec.service_account_name.clone(),
            },
            parameters,
            service_account_tokens: Some(tokens),
            default_mode: DEFAULT_FILE_MODE,
            timeout: Some(self.settings.fetch_timeout),
            fresh_since,
            max_bytes: self.settings.max_bytes,
            ..Default::default()
        };
        let answer = tokio::time::timeout(self.settings.fetch_timeout, provider.mount(request))
            .await
            .map_err(|_| {
                Failure::Provider(ProviderError::DeadlineExceeded {
                    provider: provider_name.to_owned(),
                    timeout: self.settings.fetch_timeout,
                })
            })?
            .map_err(Failure::Provider)?;
        let mut files = answer.files;
        if let Some(templates) = &templates {
            let fetched: usize = files.iter().map(|f| f.contents.expose().len()).sum();
            let rendered = templates
                .render(&files, self.settings.max_bytes.saturating_sub(fetched))
                .map_err(|err| Failure::Data(err.to_string()))?;
            files.extend(rendered);
        }
        let data = secret_data(ss, class_name, &files)?;
        let hash = self.hash(ss, uid, &class.revision, &data);
        // Written even when the hash is unchanged: a Secret deleted or edited since is put
        // back (a Secret already as desired costs one patch that changes nothing).
        let mut labels = object.labels.clone();
        labels.insert(SECRET_SYNC_LABEL.to_owned(), ss.name_any());
        labels.insert(CONTROLLER_LABEL.to_owned(), String::new());
        let desired = Desired {
            namespace: namespace.to_owned(),
            name: ss.name_any(),
            type_: object.type_.clone(),
            labels,
            annotations: object.annotations.clone(),
            data: Secret::new(data),
            owner: OwnerReference {
                api_version: SecretSync::api_version(&()).into_owned(),
                kind: SecretSync::kind(&()).into_owned(),
                name: ss.name_any(),
                uid: uid.to_owned(),
                controller: Some(true),
                block_owner_deletion: None,
            },
        };
        let written = write::write(&self.client, &desired).await?;
        Ok(Done {
            written,
            hash,
            interval,
            provider: provider_name.to_owned(),
        })
    }

    /// A keyed hash of the Secret's data and what it was built from, as upstream's syncHash:
    /// it changes with the data, either object's identity or generation and
    /// `forceSynchronization`, and reveals nothing of the data without the key.
    fn hash(
        &self,
        ss: &SecretSync,
        uid: &str,
        class_revision: &str,
        data: &BTreeMap<String, ByteString>,
    ) -> String {
        let inputs = format!(
            "secretsync|{uid}|{}|{class_revision}|{}",
            ss.metadata.generation.unwrap_or_default(),
            ss.spec.force_synchronization
        );
        let mut contents = Vec::new();
        for (key, value) in data {
            for part in [key.as_bytes(), value.0.as_slice()] {
                contents.extend_from_slice(&(part.len() as u64).to_be_bytes());
                contents.extend_from_slice(part);
            }
        }
        format!("v1:{}", self.key.version(inputs.as_bytes(), &contents))
    }
}

/// The Secret's data from the provider's files, as `secretObject.data` maps them.
fn secret_data(
    ss: &SecretSync,
    class_name: &str,
    files: &[ProviderFile],
) -> Result<BTreeMap<String, ByteString>, Failure> {
    let object = &ss.spec.secret_object;
    let tls_type = object.type_ == "kubernetes.io/tls";
    let mut data = BTreeMap::new();
    let mut bytes = 0;
    for (index, item) in object.data.iter().enumerate() {
        let Some(file) = files.iter().find(|f| f.path == item.source_path) else {
            let mut names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
            names.truncate(20);
            return Err(Failure::Data(format!(
                "secretObject.data[{index}].sourcePath {:?} is not an object of SecretProviderClass \
                 {class_name:?}; it has: {}",
                item.source_path,
                names.join(", ")
            )));
        };
        let contents = file.contents.expose();
        let value = if tls_type {
            let split = match item.target_key.as_str() {
                "tls.crt" => tls::certificates(contents),
                "tls.key" => tls::private_key(contents),
                other => {
                    return Err(Failure::Data(format!(
                        "secretObject.data[{index}].targetKey {other:?} is not supported for type \
                         kubernetes.io/tls; only tls.crt and tls.key are"
                    )));
                }
            };
            split.map_err(|err| {
                Failure::Data(format!(
                    "secretObject.data[{index}] (sourcePath {}): {err}",
                    item.source_path
                ))
            })?
        } else {
            contents.to_vec()
        };
        bytes += item.target_key.len() + value.len();
        data.insert(item.target_key.clone(), ByteString(value));
    }
    if bytes > MAX_SECRET_BYTES {
        return Err(Failure::Data(format!(
            "the Secret would hold {bytes} bytes; Kubernetes allows {MAX_SECRET_BYTES}: sync fewer objects into it"
        )));
    }
    Ok(data)
}

/// Whether the last attempt failed: a success then sets the conditions again.
fn failed(status: &SecretSyncStatus) -> bool {
    status.conditions.iter().any(|c| c.status == "False")
}

fn retry_delay(failures: u32) -> Option<Duration> {
    let factor = 1u32 << failures.saturating_sub(1).min(10);
    Some((RETRY_FIRST * factor).min(RETRY_MAX))
}

/// Upstream's first conditions, where missing.
fn init_conditions(status: &mut SecretSyncStatus, generation: i64) {
    for (type_, reason) in [
        (CONDITION_CREATE, reason::SYNC_STARTING),
        (CONDITION_UPDATE, reason::NO_UPDATE_YET),
    ] {
        if !status.conditions.iter().any(|c| c.type_ == type_) {
            status.conditions.push(SyncCondition {
                type_: type_.to_owned(),
                status: "Unknown".to_owned(),
                observed_generation: Some(generation),
                last_transition_time: jiff::Timestamp::now().to_string(),
                reason: reason.to_owned(),
                message: String::new(),
            });
        }
    }
}

/// `meta.SetStatusCondition`: the transition time moves only when the status does.
fn set_condition(
    status: &mut SecretSyncStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: i64,
) {
    let value = if ok { "True" } else { "False" };
    let now = jiff::Timestamp::now().to_string();
    let condition = match status.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(condition) => condition,
        None => {
            status.conditions.push(SyncCondition {
                type_: type_.to_owned(),
                ..Default::default()
            });
            status.conditions.last_mut().expect("just pushed")
        }
    };
    if condition.status != value {
        condition.status = value.to_owned();
        condition.last_transition_time = now;
    }
    condition.reason = reason.to_owned();
    condition.message = message.to_owned();
    condition.observed_generation = Some(generation);
}
