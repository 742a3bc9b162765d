//! Stage 6: sync of mounted files into Kubernetes Secrets (`spec.secretObjects`).
//!
//! A controller over this node's SecretProviderClassPodStatus objects. Each record names a
//! pod, its class and its target path; the controller checks that the path is that pod's
//! volume, reads the files and writes one Secret per entry, with the pod's controller (or, for
//! a bare pod, the record) as an owner set in the same write, so garbage collection removes
//! the Secret with its last owner. Built on kube-runtime's `Controller`: it reconciles a
//! record when it changes (first mount, rotation), when a managed Secret is deleted or edited
//! by someone else (mapped back to its records through an index), after a failure with a
//! per-record backoff, and at every resync interval; at shutdown, running reconciles finish.

pub mod files;
pub mod rollout;
pub mod secret;
pub mod tls;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Secret as KubeSecret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::class::{ClassError, ClassSource as _, KubeClasses};
use crate::crd::{GROUP, NODE_NAME_LABEL, SecretProviderClassPodStatus};
use crate::events::{self, Recorder, Regarding, Severity};
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
const CONCURRENCY: u16 = 4;

/// A reconcile that must be retried later; what went wrong is already logged or reported.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Retry(String);

/// The sync controller of one node.
pub struct Controller {
    client: kube::Client,
    settings: Settings,
    classes: KubeClasses,
    events: Arc<Recorder>,
    metrics: Arc<Metrics>,
    /// This node's records, as the controller's watch keeps them.
    records: Mutex<Option<Store<SecretProviderClassPodStatus>>>,
    /// Which records write each Secret, so a deleted or edited Secret is repaired at once.
    writers: Mutex<HashMap<Key, BTreeSet<Key>>>,
    /// The resourceVersion of each Secret as we last wrote it: our own writes wake nothing.
    written: Mutex<HashMap<Key, String>>,
    failures: Mutex<HashMap<Key, u32>>,
    forbidden_warned: AtomicBool,
    /// Managed Secrets changed by someone else, for the controller to map to their records.
    changed_secrets: mpsc::UnboundedSender<KubeSecret>,
    changed_receiver: Mutex<Option<mpsc::UnboundedReceiver<KubeSecret>>>,
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

impl Controller {
    /// A controller for this node.
    pub fn new(
        client: kube::Client,
        settings: Settings,
        events: Arc<Recorder>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (changed_secrets, changed_receiver) = mpsc::unbounded_channel();
        Arc::new(Self {
            classes: KubeClasses::new(client.clone()),
            client,
            settings,
            events,
            metrics,
            records: Mutex::default(),
            writers: Mutex::default(),
            written: Mutex::default(),
            failures: Mutex::default(),
            forbidden_warned: AtomicBool::new(false),
            changed_secrets,
            changed_receiver: Mutex::new(Some(changed_receiver)),
            secret_watch: Mutex::default(),
        })
    }

    /// Runs the controller until `shutdown`; a reconcile that has started finishes first, so
    /// a Secret is never left between a delete and the create that follows.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(changed) = lock(&self.changed_receiver).take() else {
            return;
        };
        let api: Api<SecretProviderClassPodStatus> = Api::all(self.client.clone());
        let config = watcher::Config::default()
            .labels(&format!("{NODE_NAME_LABEL}={}", self.settings.node_name));
        let controller = controller::Controller::new(api, config)
            .with_config(controller::Config::default().concurrency(CONCURRENCY));
        *lock(&self.records) = Some(controller.store());
        let this = self.clone();
        let stop = shutdown.clone();
        controller
            .watches_stream(
                UnboundedReceiverStream::new(changed).map(Ok),
                move |secret: KubeSecret| this.records_writing(&secret),
            )
            .graceful_shutdown_on(async move { stop.cancelled().await })
            .run(
                |record, this: Arc<Self>| async move { this.reconcile(&record).await },
                |record, _: &Retry, this: Arc<Self>| this.backoff(&record),
                self.clone(),
            )
            .for_each(|result| async move {
                if let Err(err) = result
                    && !matches!(err, controller::Error::ReconcilerFailed(..))
                {
                    tracing::warn!(error = %err, "secret sync controller: retrying");
                }
            })
            .await;
        if let Some(task) = lock(&self.secret_watch).take() {
            task.abort();
        }
    }

    fn start_secret_watch(self: &Arc<Self>) {
        let mut watch = lock(&self.secret_watch);
        if watch.is_none() {
            *watch = Some(tokio::spawn(self.clone().watch_secrets()));
        }
    }

    /// The next attempt of a failed record: 5 s, doubling up to 5 min, and never later than
    /// the resync every record gets.
    fn backoff(&self, record: &SecretProviderClassPodStatus) -> Action {
        let key = key_of(&record.metadata);
        let attempts = {
            let mut failures = lock(&self.failures);
            // Records deleted while failing are forgotten here.
            failures.retain(|failing, _| *failing == key || self.exists(failing));
            let n = failures.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        Action::requeue(
            FIRST_RETRY
                .saturating_mul(1 << attempts.saturating_sub(1).min(6))
                .min(MAX_RETRY)
                .min(self.settings.resync_interval),
        )
    }

    /// Whether the record is still in the controller's store.
    fn exists(&self, (namespace, name): &Key) -> bool {
        lock(&self.records)
            .as_ref()
            .is_some_and(|store| store.get(&ObjectRef::new(name).within(namespace)).is_some())
    }

    /// The records that write `secret` and still exist; the index forgets the others.
    fn records_writing(&self, secret: &KubeSecret) -> Vec<ObjectRef<SecretProviderClassPodStatus>> {
        let key = key_of(&secret.metadata);
        let mut writers = lock(&self.writers);
        let Some(records) = writers.get_mut(&key) else {
            return Vec::new();
        };
        records.retain(|record| self.exists(record));
        let found: Vec<_> = records
            .iter()
            .map(|(namespace, name)| ObjectRef::new(name).within(namespace))
            .collect();
        if records.is_empty() {
            writers.remove(&key);
            lock(&self.written).remove(&key);
        }
        found
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
                    Ok(Event::Apply(secret)) => self.secret_changed(secret, false),
                    Ok(Event::Delete(secret)) => self.secret_changed(secret, true),
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
    fn secret_changed(&self, secret: KubeSecret, deleted: bool) {
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
        if lock(&self.writers).contains_key(&key) {
            tracing::info!(
                secret = %key.1,
                namespace = %key.0,
                deleted,
                "a synced Secret was changed outside the driver; repairing it"
            );
            // The controller maps its name to the records; only the name travels, never the
            // data. The channel only closes at shutdown.
            let name_only = KubeSecret {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: secret.metadata.name,
                    namespace: secret.metadata.namespace,
                    ..Default::default()
                },
                ..Default::default()
            };
            let _ = self.changed_secrets.send(name_only);
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

    /// Syncs one record's `secretObjects`; `Ok` requeues it for the next resync.
    async fn reconcile(
        self: &Arc<Self>,
        record: &SecretProviderClassPodStatus,
    ) -> Result<Action, Retry> {
        let key = key_of(&record.metadata);
        self.sync_record(&key, record).await?;
        lock(&self.failures).remove(&key);
        Ok(Action::requeue(self.settings.resync_interval))
    }

    async fn sync_record(
        self: &Arc<Self>,
        key: &Key,
        record: &SecretProviderClassPodStatus,
    ) -> Result<(), Retry> {
        let started = Instant::now();
        let (namespace, _) = key;
        let on_this_node = record
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(NODE_NAME_LABEL))
            .is_some_and(|n| n.eq_ignore_ascii_case(&self.settings.node_name));
        let Some(status) = record.status.as_ref().filter(|_| on_this_node) else {
            return Ok(());
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = match pods.get_opt(&status.pod_name).await {
            Ok(Some(pod)) => pod,
            // The pod is gone: the garbage collector removes the record with it.
            Ok(None) => return Ok(()),
            Err(err) => {
                tracing::warn!(pod = %status.pod_name, namespace = %namespace, error = %err, "failed to get pod");
                return Err(Retry(format!(
                    "getting pod {namespace}/{}: {err}",
                    status.pod_name
                )));
            }
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if pod.metadata.deletion_timestamp.is_some()
            || matches!(phase, Some("Succeeded" | "Failed"))
        {
            return Ok(());
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
            return Ok(());
        }
        let pod_ref = Regarding::pod(namespace, &status.pod_name, &pod_uid);
        let class_name = &status.secret_provider_class_name;
        let spec = match self.classes.get(namespace, class_name).await {
            Ok(class) => class.spec,
            Err(err @ ClassError::NotFound { .. }) => return Err(Retry(err.to_string())),
            Err(err) => {
                tracing::warn!(error = %err, "failed to get SecretProviderClass for sync");
                return Err(Retry(err.to_string()));
            }
        };
        if spec.secret_objects.is_empty() {
            return Ok(());
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
                return Err(Retry(message));
            }
        };
        let owner = owner_of(&pod, record);
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
        if failed {
            Err(Retry(format!("syncing {namespace}/{}", status.pod_name)))
        } else {
            Ok(())
        }
    }

    async fn sync_failed_event(&self, pod: &Regarding, message: &str) {
        self.events
            .record(
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

    async fn roll_out(&self, pod: &Regarding, secret_name: &str, owners: &[OwnerReference]) {
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
                        .record(pod, Severity::Normal, events::ROLLOUT_TRIGGERED, &message)
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
                        .record(pod, Severity::Warning, events::ROLLOUT_TRIGGERED, &message)
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
