//! Stage 6: sync of mounted files into Kubernetes Secrets (`spec.secretObjects`).
//!
//! A controller over this node's SecretProviderClassPodStatus objects. Each record names a
//! pod, its class and its target path; the controller checks that the path is that pod's
//! volume, reads the files and writes one Secret per entry, with the pod's controller (or, for
//! a bare pod, the record) as an owner set in the same write, so garbage collection removes
//! the Secret with its last owner. Reconciles run when a record changes (first mount,
//! rotation), when a managed Secret is deleted or edited by someone else, and on a periodic
//! resync.

pub mod files;
pub mod rollout;
pub mod secret;
pub mod tls;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Secret as KubeSecret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::class::{ClassError, ClassSource as _, KubeClasses};
use crate::crd::{GROUP, NODE_NAME_LABEL, SecretProviderClassPodStatus};
use crate::events::{self, PodRef, Recorder, Severity};
use crate::lock::lock;
use crate::metrics::Metrics;
use crate::volume::target::KubeletRoot;
use files::MountedVolume;
use secret::{MANAGED_LABEL, WriteError, Written};

/// How a sync controller behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node: only records labelled with it are reconciled.
    pub node_name: String,
    /// The CSI driver name pod volumes use.
    pub driver_name: String,
    /// How often every record is reconciled even without a change (repairs drift).
    pub resync_interval: Duration,
    /// Whether a change of synced values rolls out the workloads that own the Secret.
    pub rollout_on_change: bool,
    /// Kubelet's root: a record's target path is rebuilt from it, never followed as recorded.
    pub kubelet_root: KubeletRoot,
}

/// `(namespace, name)`.
type Key = (String, String);

/// First retry delay of a failing record; doubles up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(300);
/// How long the Secret watch waits after a 403 before asking again.
const FORBIDDEN_RETRY: Duration = Duration::from_secs(300);
/// Records reconciled at once.
const CONCURRENCY: usize = 4;

/// The sync controller of one node.
pub struct Controller {
    client: kube::Client,
    settings: Settings,
    classes: KubeClasses,
    events: Arc<Recorder>,
    metrics: Arc<Metrics>,
    pending: Mutex<BTreeSet<Key>>,
    wake: Notify,
    /// Records seen on this node.
    known: Mutex<BTreeSet<Key>>,
    /// Which records write each Secret, so a deleted or edited Secret is repaired at once.
    writers: Mutex<HashMap<Key, BTreeSet<Key>>>,
    /// The resourceVersion of each Secret as we last wrote it: our own writes wake nothing.
    written: Mutex<HashMap<Key, String>>,
    failures: Mutex<HashMap<Key, u32>>,
    forbidden_warned: AtomicBool,
    /// The Secret watch starts with the first class that syncs anything, so a cluster that
    /// never syncs (and grants no Secret access) sees no warning.
    secret_watch: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What to do with a record after a reconcile.
enum Next {
    Done,
    Backoff,
}

impl Controller {
    /// A controller for this node.
    pub fn new(
        client: kube::Client,
        settings: Settings,
        events: Arc<Recorder>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            classes: KubeClasses::new(client.clone()),
            client,
            settings,
            events,
            metrics,
            pending: Mutex::default(),
            wake: Notify::new(),
            known: Mutex::default(),
            writers: Mutex::default(),
            written: Mutex::default(),
            failures: Mutex::default(),
            forbidden_warned: AtomicBool::new(false),
            secret_watch: Mutex::default(),
        })
    }

    /// Runs the watches, the resync and the workers until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tasks = [
            tokio::spawn(self.clone().watch_records()),
            tokio::spawn(self.clone().resync()),
        ];
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = self.clone().work() => {}
        }
        for task in tasks.into_iter().chain(lock(&self.secret_watch).take()) {
            task.abort();
        }
    }

    fn start_secret_watch(self: &Arc<Self>) {
        let mut watch = lock(&self.secret_watch);
        if watch.is_none() {
            *watch = Some(tokio::spawn(self.clone().watch_secrets()));
        }
    }

    fn enqueue(&self, key: Key) {
        lock(&self.pending).insert(key);
        self.wake.notify_one();
    }

    fn enqueue_later(self: &Arc<Self>, key: Key, delay: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if lock(&this.known).contains(&key) {
                this.enqueue(key);
            }
        });
    }

    async fn work(self: Arc<Self>) {
        loop {
            let batch: Vec<Key> = std::mem::take(&mut *lock(&self.pending))
                .into_iter()
                .collect();
            if batch.is_empty() {
                self.wake.notified().await;
                continue;
            }
            futures::stream::iter(batch)
                .for_each_concurrent(CONCURRENCY, |key| {
                    let this = self.clone();
                    async move {
                        let next = this.reconcile(&key).await;
                        this.schedule(key, next);
                    }
                })
                .await;
        }
    }

    fn schedule(self: &Arc<Self>, key: Key, next: Next) {
        match next {
            Next::Done => {
                lock(&self.failures).remove(&key);
            }
            Next::Backoff => {
                let attempts = {
                    let mut failures = lock(&self.failures);
                    let n = failures.entry(key.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                let delay = FIRST_RETRY
                    .saturating_mul(1 << attempts.saturating_sub(1).min(6))
                    .min(MAX_RETRY);
                self.enqueue_later(key, delay);
            }
        }
    }

    async fn watch_records(self: Arc<Self>) {
        let api: Api<SecretProviderClassPodStatus> = Api::all(self.client.clone());
        let config = watcher::Config::default()
            .labels(&format!("{NODE_NAME_LABEL}={}", self.settings.node_name));
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Apply(record) | Event::InitApply(record)) => {
                    let key = key_of(&record.metadata);
                    lock(&self.known).insert(key.clone());
                    self.enqueue(key);
                }
                Ok(Event::Delete(record)) => self.forget_record(&key_of(&record.metadata)),
                Ok(Event::Init | Event::InitDone) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "watching SecretProviderClassPodStatus objects failed; retrying")
                }
            }
        }
    }

    /// A record is gone (its pod was deleted): drop everything kept for it.
    fn forget_record(&self, key: &Key) {
        lock(&self.known).remove(key);
        lock(&self.failures).remove(key);
        let mut writers = lock(&self.writers);
        writers.retain(|_, records| {
            records.remove(key);
            !records.is_empty()
        });
        lock(&self.written).retain(|secret, _| writers.contains_key(secret));
    }

    async fn watch_secrets(self: Arc<Self>) {
        let api: Api<KubeSecret> = Api::all(self.client.clone());
        loop {
            let config = watcher::Config::default().labels(&format!("{MANAGED_LABEL}=true"));
            let mut stream = watcher::watcher(api.clone(), config)
                .default_backoff()
                .boxed();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(Event::Apply(secret)) => self.secret_changed(&secret, false),
                    Ok(Event::Delete(secret)) => self.secret_changed(&secret, true),
                    Ok(Event::Init | Event::InitApply(_) | Event::InitDone) => {}
                    Err(err) if is_forbidden_watch(&err) => {
                        // Without RBAC for Secrets, ask again rarely instead of every few seconds.
                        self.warn_forbidden(&err.to_string());
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "watching managed Secrets failed; retrying");
                    }
                }
            }
            tokio::time::sleep(FORBIDDEN_RETRY).await;
        }
    }

    /// A managed Secret changed: unless we wrote that version, repair it from its mounts.
    fn secret_changed(&self, secret: &KubeSecret, deleted: bool) {
        let key = key_of(&secret.metadata);
        let ours = !deleted
            && lock(&self.written).get(&key).map(String::as_str)
                == secret.metadata.resource_version.as_deref();
        if ours {
            return;
        }
        if deleted {
            lock(&self.written).remove(&key);
        }
        let writers = lock(&self.writers).get(&key).cloned().unwrap_or_default();
        if !writers.is_empty() {
            tracing::info!(
                secret = %key.1,
                namespace = %key.0,
                deleted,
                "a synced Secret was changed outside the driver; repairing it"
            );
        }
        for writer in writers {
            self.enqueue(writer);
        }
    }

    async fn resync(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.settings.resync_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let known: Vec<Key> = lock(&self.known).iter().cloned().collect();
            for key in known {
                self.enqueue(key);
            }
        }
    }

    /// Logs the missing-RBAC hint once per process; mounts are unaffected.
    fn warn_forbidden(&self, error: &str) {
        if !self.forbidden_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error,
                "secretObjects cannot be synced: the driver's service account may not manage Secrets. \
                 Mounts still work. Enable sync with the Helm value syncSecret.enabled=true, or apply the \
                 ClusterRole secretprovidersyncing-role and its ClusterRoleBinding from deploy/"
            );
        }
    }

    async fn reconcile(self: &Arc<Self>, key: &Key) -> Next {
        let started = Instant::now();
        let (namespace, name) = key;
        let records: Api<SecretProviderClassPodStatus> =
            Api::namespaced(self.client.clone(), namespace);
        let record = match records.get_opt(name).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                self.forget_record(key);
                return Next::Done;
            }
            Err(err) => {
                tracing::warn!(record = %name, namespace = %namespace, error = %err, "failed to get SecretProviderClassPodStatus");
                return Next::Backoff;
            }
        };
        let on_this_node = record
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(NODE_NAME_LABEL))
            .is_some_and(|n| n.eq_ignore_ascii_case(&self.settings.node_name));
        let Some(status) = record.status.as_ref().filter(|_| on_this_node) else {
            return Next::Done;
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = match pods.get_opt(&status.pod_name).await {
            Ok(Some(pod)) => pod,
            // The pod is gone: the garbage collector removes the record with it.
            Ok(None) => return Next::Done,
            Err(err) => {
                tracing::warn!(pod = %status.pod_name, namespace = %namespace, error = %err, "failed to get pod");
                return Next::Backoff;
            }
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if pod.metadata.deletion_timestamp.is_some()
            || matches!(phase, Some("Succeeded" | "Failed"))
        {
            return Next::Done;
        }
        let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
        let owned_by_pod = record
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "Pod" && o.uid == pod_uid);
        if !owned_by_pod {
            // A record of an earlier pod of the same name; the new pod's mount rewrites it,
            // which is an event of its own.
            return Next::Done;
        }
        let pod_ref = PodRef {
            namespace: namespace.clone(),
            name: status.pod_name.clone(),
            uid: pod_uid.clone(),
        };
        let class_name = &status.secret_provider_class_name;
        let spec = match self.classes.get(namespace, class_name).await {
            Ok(class) => class.spec,
            Err(ClassError::NotFound { .. }) => return Next::Backoff,
            Err(err) => {
                tracing::warn!(error = %err, "failed to get SecretProviderClass for sync");
                return Next::Backoff;
            }
        };
        if spec.secret_objects.is_empty() {
            return Next::Done;
        }
        self.start_secret_watch();
        let volumes = self.class_volumes(&pod, class_name);
        let volume = match MountedVolume::open(
            &status.target_path,
            &self.settings.kubelet_root,
            &pod_uid,
            &volumes,
        ) {
            Ok(volume) => volume,
            Err(err) => {
                let message = format!(
                    "failed to get mounted files for secretObjects of SecretProviderClass {namespace}/{class_name}: {err}"
                );
                self.metrics.secret_sync_error("FailedToGetMountedFiles");
                self.sync_failed_event(&pod_ref, &message).await;
                return Next::Backoff;
            }
        };
        let owner = owner_of(&pod, &record);
        let mut failed = false;
        for (index, entry) in spec.secret_objects.iter().enumerate() {
            let described = if entry.secret_name.is_empty() {
                format!("secretObjects[{index}]")
            } else {
                format!("secretObjects[{index}] (secretName {})", entry.secret_name)
            };
            let result = match secret::build(entry, &volume) {
                Ok(desired) => {
                    let secret_key = (namespace.clone(), desired.name.clone());
                    lock(&self.writers)
                        .entry(secret_key.clone())
                        .or_default()
                        .insert(key.clone());
                    secret::write(
                        &self.client,
                        namespace,
                        &desired,
                        &owner,
                        volume.content_time,
                    )
                    .await
                    .map(|(written, rv)| {
                        if let Some(rv) = rv {
                            lock(&self.written).insert(secret_key, rv);
                        }
                        written
                    })
                    .map_err(|err| {
                        (
                            err.error_type(),
                            err.to_string(),
                            matches!(err, WriteError::Forbidden { .. }),
                        )
                    })
                }
                Err(err) => Err((err.error_type(), err.to_string(), false)),
            };
            match result {
                Ok(Written::Unchanged) => {}
                Ok(written) => {
                    self.metrics.secret_synced(&spec.provider);
                    tracing::info!(
                        secret = %entry.secret_name,
                        namespace = %namespace,
                        pod = %status.pod_name,
                        created = written == Written::Created,
                        "synced Secret from mounted files"
                    );
                    if let Written::Updated {
                        data_changed: true,
                        owners,
                    } = written
                        && self.settings.rollout_on_change
                    {
                        self.roll_out(&pod_ref, &entry.secret_name, &owners).await;
                    }
                }
                Err((error_type, message, forbidden)) => {
                    failed = true;
                    self.metrics.secret_sync_error(error_type);
                    let message = format!(
                        "failed to sync {described} of SecretProviderClass {namespace}/{class_name}: {message}"
                    );
                    if forbidden {
                        // Said once per process; every pod still gets its Event.
                        self.warn_forbidden(&message);
                        tracing::debug!(pod = %status.pod_name, namespace = %namespace, error = %message, "secret sync failed");
                    } else {
                        tracing::warn!(pod = %status.pod_name, namespace = %namespace, error = %message, "secret sync failed");
                    }
                    self.sync_failed_event(&pod_ref, &message).await;
                }
            }
        }
        self.metrics.secret_sync_duration(started.elapsed());
        if failed { Next::Backoff } else { Next::Done }
    }

    async fn sync_failed_event(&self, pod: &PodRef, message: &str) {
        self.events
            .pod_event(
                pod,
                Severity::Warning,
                events::FAILED_TO_CREATE_SECRET,
                message,
            )
            .await;
    }

    /// Names of the pod's volumes of this driver that use `class_name`.
    fn class_volumes(&self, pod: &Pod, class_name: &str) -> Vec<String> {
        pod.spec
            .iter()
            .flat_map(|spec| spec.volumes.iter().flatten())
            .filter(|v| {
                v.csi.as_ref().is_some_and(|csi| {
                    csi.driver == self.settings.driver_name
                        && csi
                            .volume_attributes
                            .as_ref()
                            .and_then(|a| a.get("secretProviderClass"))
                            .is_some_and(|c| c == class_name)
                })
            })
            .map(|v| v.name.clone())
            .collect()
    }

    async fn roll_out(&self, pod: &PodRef, secret_name: &str, owners: &[OwnerReference]) {
        for result in rollout::restart_owners(&self.client, &pod.namespace, owners).await {
            match result {
                Ok(restarted) => {
                    let message = format!(
                        "Secret {secret_name} changed: restarted {} {} (annotation {})",
                        restarted.kind,
                        restarted.name,
                        rollout::RESTARTED_AT_ANNOTATION
                    );
                    tracing::info!(pod = %pod.name, namespace = %pod.namespace, "{message}");
                    self.events
                        .pod_event(pod, Severity::Normal, events::ROLLOUT_TRIGGERED, &message)
                        .await;
                }
                Err(err) => {
                    let message = format!(
                        "Secret {secret_name} changed but its workload could not be restarted: {err}; \
                         the driver needs get on replicasets and patch on deployments, statefulsets and daemonsets \
                         (Helm value rolloutOnSecretChange=true grants them)"
                    );
                    tracing::warn!(pod = %pod.name, namespace = %pod.namespace, "{message}");
                    self.events
                        .pod_event(pod, Severity::Warning, events::ROLLOUT_TRIGGERED, &message)
                        .await;
                }
            }
        }
    }
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn is_forbidden_watch(err: &watcher::Error) -> bool {
    match err {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.code == 403,
        watcher::Error::WatchError(status) => status.code == 403,
        _ => false,
    }
}

/// The pod's controller (a ReplicaSet, StatefulSet, Job…), else the status record, which is
/// itself owned by the pod: either way the Secret goes when the last user does.
fn owner_of(pod: &Pod, record: &SecretProviderClassPodStatus) -> OwnerReference {
    let controller = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match controller {
        Some(owner) => OwnerReference {
            api_version: owner.api_version.clone(),
            kind: owner.kind.clone(),
            name: owner.name.clone(),
            uid: owner.uid.clone(),
            ..Default::default()
        },
        None => OwnerReference {
            api_version: format!("{GROUP}/v1"),
            kind: "SecretProviderClassPodStatus".to_owned(),
            name: record.metadata.name.clone().unwrap_or_default(),
            uid: record.metadata.uid.clone().unwrap_or_default(),
            ..Default::default()
        },
    }
}
