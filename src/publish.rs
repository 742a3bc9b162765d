//! The publish pipeline: one volume from request to files, shared by the CSI node service and
//! the `mount` command. Reads top to bottom as the data flows: class, provider, volume, status.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::class::{self, ClassError, ClassSource};
use crate::events::{self, PodRef, Recorder, Severity};
use crate::metrics::Metrics;
use crate::pod_status::{Fetch, PodStatusError, PodStatusWriter};
use crate::provider::{MountRequest, ObjectVersion, ProviderError, Registry};
use crate::redact::SecretString;
use crate::volume::atomic_writer::WriteOutcome;
use crate::volume::{self, AtomicWriter, MountError, MountMode, Payload, PayloadError, WriteError};

/// Default file mode told to providers, as upstream (`"420"` on the wire).
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// What the pipeline needs from the process around it.
#[derive(Debug)]
pub struct Context {
    /// Where SecretProviderClasses come from.
    pub classes: Arc<dyn ClassSource>,
    /// Provider name resolution.
    pub providers: Arc<Registry>,
    /// Records SPCPS objects; `None` outside a cluster.
    pub pod_status: Option<PodStatusWriter>,
    /// tmpfs or plain directories.
    pub mount_mode: MountMode,
    /// Where outcomes are counted.
    pub metrics: Arc<Metrics>,
    /// Minimum time between fetches of a mounted volume when kubelet republishes it; `None`
    /// leaves mounted volumes alone (rotation disabled).
    pub rotation_interval: Option<Duration>,
    /// Where rotation outcomes are reported as pod Events; `None` outside a cluster.
    pub events: Option<Arc<Recorder>>,
    volumes: Mutex<HashMap<PathBuf, VolumeState>>,
}

/// What the driver remembers of a mounted volume between calls.
#[derive(Debug, Clone)]
struct VolumeState {
    fetched_at: SystemTime,
    versions: Vec<ObjectVersion>,
    /// The class's own rotation interval, as of the last fetch.
    interval: Option<Duration>,
}

impl Context {
    /// A context with no volumes known yet.
    pub fn new(
        classes: Arc<dyn ClassSource>,
        providers: Arc<Registry>,
        pod_status: Option<PodStatusWriter>,
        mount_mode: MountMode,
        metrics: Arc<Metrics>,
        rotation_interval: Option<Duration>,
    ) -> Self {
        Self {
            classes,
            providers,
            pod_status,
            mount_mode,
            metrics,
            rotation_interval,
            events: None,
            volumes: Mutex::new(HashMap::new()),
        }
    }

    /// Reports rotation outcomes as Events on pods.
    #[must_use]
    pub fn with_events(mut self, events: Arc<Recorder>) -> Self {
        self.events = Some(events);
        self
    }

    fn volume_state(&self, target: &Path) -> Option<VolumeState> {
        self.volumes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(target)
            .cloned()
    }

    fn remember(&self, target: &Path, versions: Vec<ObjectVersion>, interval: Option<Duration>) {
        let state = VolumeState {
            fetched_at: SystemTime::now(),
            versions,
            interval,
        };
        self.volumes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(target.to_owned(), state);
    }

    fn forget(&self, target: &Path) {
        self.volumes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(target);
    }

    /// Whether a mounted volume's rotation interval (its class's, else the node's) has passed.
    /// After a restart, the time of the last content swap stands in for the last fetch.
    fn rotation_due(&self, target: &Path, node_interval: Duration) -> bool {
        let state = self.volume_state(target);
        let interval = state
            .as_ref()
            .and_then(|s| s.interval)
            .unwrap_or(node_interval);
        let last = state
            .map(|s| s.fetched_at)
            .or_else(|| AtomicWriter::swapped_at(target).ok());
        last.and_then(|at| at.elapsed().ok())
            .is_none_or(|age| age >= interval)
    }
}

/// The pod a volume belongs to, from kubelet's `podInfoOnMount` attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// Pod name.
    pub name: String,
    /// Pod namespace: SecretProviderClasses are looked up here only.
    pub namespace: String,
    /// Pod UID, the SPCPS owner.
    pub uid: String,
    /// The pod's service account.
    pub service_account: String,
}

/// One volume to publish, already validated at the edge.
#[derive(Debug, Clone, Default)]
pub struct PublishRequest {
    /// Kubelet's volume id.
    pub volume_id: String,
    /// Where the files go.
    pub target_path: PathBuf,
    /// `volumeAttributes.secretProviderClass`.
    pub class_name: String,
    /// The owning pod.
    pub pod: PodInfo,
    /// Every volume attribute except the tokens; overrides class parameters.
    pub attributes: BTreeMap<String, String>,
    /// `csi.storage.k8s.io/serviceAccount.tokens`, from the request secrets or attributes.
    pub service_account_tokens: Option<SecretString>,
    /// The `nodePublishSecretRef` data.
    pub secrets: Option<BTreeMap<String, SecretString>>,
    /// Time the caller allows; the provider gets what is left of it.
    pub timeout: Option<Duration>,
}

/// Why the pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Kubelet's NodePublishVolume: a mounted volume is left alone unless rotation is due.
    Publish,
    /// Fetch and swap in fresh contents even when mounted (`mount`, `mount --watch`).
    Refresh,
}

/// What a successful call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Mounted already; the provider was not called.
    AlreadyMounted,
    /// Fetched from the provider; `changed` says whether files were swapped.
    Fetched {
        /// Whether the contents differ from what was mounted.
        changed: bool,
        /// Whether this refreshed an already-mounted volume.
        remount: bool,
    },
    /// A rotation failed; the previous files stay and kubelet is told OK.
    RotationFailed {
        /// The error, for the caller's event or log.
        message: String,
    },
}

/// A successful publish.
#[derive(Debug, Clone)]
pub struct Published {
    /// What happened.
    pub outcome: Outcome,
    /// The provider used, when one was resolved.
    pub provider: String,
    /// Object versions now mounted.
    pub versions: Vec<ObjectVersion>,
    /// The files written (never their contents).
    pub files: Vec<FileSummary>,
}

/// One written file, safe to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    /// Path relative to the volume.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes.
    pub size: usize,
}

/// One error type per pipeline stage; `csi::status` maps it to a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The SecretProviderClass is missing or unusable.
    #[error(transparent)]
    Class(#[from] ClassError),
    /// The provider could not be resolved or failed.
    #[error("failed to mount secrets store objects for pod {pod}: {source}")]
    Provider {
        /// `namespace/name`.
        pod: String,
        /// The provider's error.
        #[source]
        source: ProviderError,
    },
    /// The provider returned files that cannot be written safely.
    #[error("failed to mount secrets store objects for pod {pod}: {source}")]
    Payload {
        /// `namespace/name`.
        pod: String,
        /// What is unsafe.
        #[source]
        source: PayloadError,
    },
    /// The target directory could not be prepared.
    #[error("failed to create target path {}: {source}", path.display())]
    TargetPath {
        /// The target.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Mounting or inspecting the tmpfs failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// Writing the files failed.
    #[error("failed to write secrets store objects for pod {pod}: {source}")]
    Write {
        /// `namespace/name`.
        pod: String,
        /// The filesystem error.
        #[source]
        source: WriteError,
    },
    /// The SecretProviderClassPodStatus could not be recorded.
    #[error(transparent)]
    PodStatus(#[from] PodStatusError),
}

impl PublishError {
    /// The upstream metric `error_type`.
    pub fn error_type(&self) -> String {
        match self {
            Self::Class(ClassError::NotFound { .. } | ClassError::Api { .. }) => {
                "SecretProviderClassNotFound".to_owned()
            }
            Self::Class(_) | Self::Mount(MountError::Mount { .. } | MountError::Unmount { .. }) => {
                "FailedToMount".to_owned()
            }
            Self::Provider { source, .. } => source.error_type(),
            Self::Payload { .. } | Self::Write { .. } => "FileWriteError".to_owned(),
            Self::TargetPath { .. } | Self::Mount(MountError::Inspect { .. }) => {
                "FailedToEnsureMountPoint".to_owned()
            }
            Self::PodStatus(_) => String::new(),
        }
    }
}

/// Publishes one volume; counts the outcome in the metrics.
pub async fn publish(
    ctx: &Context,
    request: &PublishRequest,
    mode: Mode,
) -> Result<Published, PublishError> {
    let started = Instant::now();
    let provider_hint = request
        .attributes
        .get("providerName")
        .cloned()
        .unwrap_or_default();
    match run(ctx, request, mode).await {
        Ok(published) => {
            ctx.metrics.publish_ok(&published.provider);
            if let Outcome::Fetched { remount, .. } = published.outcome {
                ctx.metrics
                    .publish_duration(&published.provider, started.elapsed());
                if remount && mode == Mode::Publish {
                    ctx.metrics
                        .rotation_ok(&published.provider, started.elapsed());
                }
            }
            Ok(published)
        }
        Err(Failure {
            error,
            provider,
            remount,
        }) => {
            let provider = provider.unwrap_or(provider_hint);
            ctx.metrics.publish_error(&provider, &error.error_type());
            if remount && mode == Mode::Publish {
                // A failed rotation must not fail the pod (kubernetes#121271): keep the old files,
                // but say so where people look: the pod's Events and the SPCPS condition.
                ctx.metrics.rotation_error(&provider, &error.error_type());
                let message = crate::csi::full_message(&error);
                tracing::warn!(error = %message, "rotation failed, keeping the mounted contents");
                report_rotation_failure(ctx, request, &message).await;
                return Ok(Published {
                    outcome: Outcome::RotationFailed { message },
                    provider,
                    versions: ctx
                        .volume_state(&request.target_path)
                        .map(|s| s.versions)
                        .unwrap_or_default(),
                    files: Vec::new(),
                });
            }
            Err(error)
        }
    }
}

async fn report_rotation_failure(ctx: &Context, request: &PublishRequest, message: &str) {
    if let Some(recorder) = &ctx.events {
        let note = format!(
            "rotation of SecretProviderClass {}/{} failed; the previous contents stay mounted: {message}",
            request.pod.namespace, request.class_name
        );
        recorder
            .pod_event(
                &pod_ref(&request.pod),
                Severity::Warning,
                events::MOUNT_ROTATION_FAILED,
                &note,
            )
            .await;
    }
    if let Some(writer) = &ctx.pod_status
        && let Err(err) = writer
            .record_rotation_failure(&request.pod, &request.class_name, message)
            .await
    {
        tracing::warn!(error = %err, "failed to record the rotation failure on the SecretProviderClassPodStatus");
    }
}

fn pod_ref(pod: &PodInfo) -> PodRef {
    PodRef {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
    }
}

/// An error with what was known when it happened.
struct Failure {
    error: PublishError,
    provider: Option<String>,
    remount: bool,
}

impl Failure {
    fn new(error: impl Into<PublishError>, provider: Option<&str>, remount: bool) -> Self {
        Self {
            error: error.into(),
            provider: provider.map(str::to_owned),
            remount,
        }
    }
}

async fn run(ctx: &Context, request: &PublishRequest, mode: Mode) -> Result<Published, Failure> {
    let target = &request.target_path;
    let pod = format!("{}/{}", request.pod.namespace, request.pod.name);
    let mounted = is_published(ctx, target).map_err(|e| Failure::new(e, None, false))?;
    if mounted && mode == Mode::Publish {
        let due = ctx
            .rotation_interval
            .is_some_and(|interval| ctx.rotation_due(target, interval));
        if !due {
            tracing::debug!("target path is already mounted");
            let state = ctx.volume_state(target);
            return Ok(Published {
                outcome: Outcome::AlreadyMounted,
                provider: request
                    .attributes
                    .get("providerName")
                    .cloned()
                    .unwrap_or_default(),
                versions: state.map(|s| s.versions).unwrap_or_default(),
                files: Vec::new(),
            });
        }
    }
    let remount = mounted;

    // Class: the pod's namespace only.
    let namespace = &request.pod.namespace;
    let class = ctx
        .classes
        .get(namespace, &request.class_name)
        .await
        .map_err(|e| Failure::new(e, None, remount))?;
    let spec = &class.spec;
    class::check(namespace, &request.class_name, spec)
        .map_err(|e| Failure::new(e, None, remount))?;
    let class_interval = class
        .rotation_interval(namespace, &request.class_name)
        .map_err(|e| Failure::new(e, None, remount))?;
    let provider_name = spec.provider.trim().to_owned();
    let provider_fail = |source| {
        Failure::new(
            PublishError::Provider {
                pod: pod.clone(),
                source,
            },
            Some(&provider_name),
            remount,
        )
    };
    let provider = ctx.providers.get(&provider_name).map_err(provider_fail)?;

    // Volume: the tmpfs exists before the provider is called (legacy providers write into it).
    let prepared = if mounted {
        Prepared::default()
    } else {
        prepare(ctx, target).map_err(|e| Failure::new(e, Some(&provider_name), remount))?
    };
    let parameters = class::merge_parameters(spec, &request.attributes);
    let fetched = fetch_and_write(
        ctx,
        request,
        &pod,
        &provider_name,
        provider.as_ref(),
        parameters,
    )
    .await;
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(error) => {
            prepared.undo(ctx, target);
            return Err(Failure {
                error,
                provider: Some(provider_name),
                remount,
            });
        }
    };

    // Status: the SPCPS records what is mounted.
    if let Some(writer) = &ctx.pod_status {
        let target_str = target.display().to_string();
        if let Err(err) = writer
            .record(
                &request.pod,
                &request.class_name,
                &target_str,
                &fetched.versions,
                match (remount, fetched.changed) {
                    (false, _) => Fetch::Mounted,
                    (true, true) => Fetch::Rotated,
                    (true, false) => Fetch::Unchanged,
                },
            )
            .await
        {
            prepared.undo(ctx, target);
            return Err(Failure::new(err, Some(&provider_name), remount));
        }
    }
    ctx.remember(target, fetched.versions.clone(), class_interval);
    if remount
        && fetched.changed
        && mode == Mode::Publish
        && let Some(recorder) = &ctx.events
    {
        let note = format!(
            "rotated SecretProviderClass {namespace}/{}: new contents are mounted",
            request.class_name
        );
        recorder
            .pod_event(
                &pod_ref(&request.pod),
                Severity::Normal,
                events::MOUNT_ROTATION_COMPLETE,
                &note,
            )
            .await;
    }
    Ok(Published {
        outcome: Outcome::Fetched {
            changed: fetched.changed,
            remount,
        },
        provider: provider_name,
        versions: fetched.versions,
        files: fetched.files,
    })
}

struct Fetched {
    versions: Vec<ObjectVersion>,
    files: Vec<FileSummary>,
    changed: bool,
}

async fn fetch_and_write(
    ctx: &Context,
    request: &PublishRequest,
    pod: &str,
    provider_name: &str,
    provider: &dyn crate::provider::Provider,
    parameters: BTreeMap<String, String>,
) -> Result<Fetched, PublishError> {
    let mount_request = MountRequest {
        parameters,
        service_account_tokens: request.service_account_tokens.clone(),
        secrets: request.secrets.clone(),
        target_path: request.target_path.clone(),
        default_mode: DEFAULT_FILE_MODE,
        current_versions: ctx
            .volume_state(&request.target_path)
            .map(|s| s.versions)
            .unwrap_or_default(),
        timeout: request.timeout,
    };
    let provider_error = |source| PublishError::Provider {
        pod: pod.to_owned(),
        source,
    };
    let call = provider.mount(mount_request);
    let response = match request.timeout {
        Some(timeout) => tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::DeadlineExceeded {
                    provider: provider_name.to_owned(),
                    timeout,
                })
            }),
        None => call.await,
    }
    .map_err(provider_error)?;
    if response.versions.is_empty() {
        return Err(provider_error(ProviderError::MissingObjectVersions {
            provider: provider_name.to_owned(),
        }));
    }
    let payload = Payload::validate(response.files).map_err(|source| PublishError::Payload {
        pod: pod.to_owned(),
        source,
    })?;
    let files = payload
        .files()
        .map(|(path, file)| FileSummary {
            path: path.display().to_string(),
            mode: file.mode,
            size: file.contents.expose().len(),
        })
        .collect();
    // An empty payload is a legacy provider that wrote its own files.
    let changed = if payload.is_empty() {
        true
    } else {
        let writer = AtomicWriter::new(&request.target_path);
        let outcome = tokio::task::spawn_blocking(move || writer.write(&payload))
            .await
            .map_err(|join| PublishError::TargetPath {
                path: request.target_path.clone(),
                source: std::io::Error::other(join.to_string()),
            })?
            .map_err(|source| PublishError::Write {
                pod: pod.to_owned(),
                source,
            })?;
        outcome == WriteOutcome::Changed
    };
    Ok(Fetched {
        versions: response.versions,
        files,
        changed,
    })
}

/// Whether the target already holds a published volume. A tmpfs that cannot be listed is
/// corrupt: it is unmounted and treated as absent, as upstream does.
fn is_published(ctx: &Context, target: &Path) -> Result<bool, PublishError> {
    match ctx.mount_mode {
        MountMode::Tmpfs(_) => {
            if !volume::mount::is_mount_point(target)? {
                return Ok(false);
            }
            if std::fs::read_dir(target).is_err() {
                tracing::warn!(target = %target.display(), "mounted target cannot be listed, remounting");
                volume::mount::unmount(target)?;
                return Ok(false);
            }
            Ok(true)
        }
        MountMode::PlainDir => Ok(AtomicWriter::swapped_at(target).is_ok()),
    }
}

/// What `prepare` did, so a failure can undo exactly that.
#[derive(Debug, Default)]
struct Prepared {
    created_dir: bool,
    mounted: bool,
}

fn prepare(ctx: &Context, target: &Path) -> Result<Prepared, PublishError> {
    let target_error = |source| PublishError::TargetPath {
        path: target.to_owned(),
        source,
    };
    let created_dir = !target.exists();
    if created_dir {
        std::fs::create_dir_all(target).map_err(target_error)?;
    }
    let mut prepared = Prepared {
        created_dir,
        mounted: false,
    };
    if let MountMode::Tmpfs(options) = &ctx.mount_mode {
        if let Err(err) = volume::mount::mount_tmpfs(target, options) {
            prepared.undo(ctx, target);
            return Err(err.into());
        }
        prepared.mounted = true;
    }
    Ok(prepared)
}

impl Prepared {
    /// Leaves the target as it was found: no mount, no directory this call created.
    fn undo(&self, ctx: &Context, target: &Path) {
        if self.mounted
            && let Err(err) = volume::mount::unmount(target)
        {
            tracing::error!(error = %err, target = %target.display(), "failed to unmount after a failed publish");
            return;
        }
        if self.created_dir {
            let removed = match ctx.mount_mode {
                MountMode::Tmpfs(_) => std::fs::remove_dir(target),
                MountMode::PlainDir => std::fs::remove_dir_all(target),
            };
            if let Err(err) = removed {
                tracing::warn!(error = %err, target = %target.display(), "failed to remove target after a failed publish");
            }
        }
        // A failed rotation of a mounted volume keeps what is known about it (its versions
        // and its class's interval); only a mount this call made is forgotten.
        if self.mounted || self.created_dir {
            ctx.forget(target);
        }
    }
}

/// Why a volume could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum UnpublishError {
    /// Unmounting failed.
    #[error("failed to clean and unmount target path {}: {source}", path.display())]
    Unmount {
        /// The target.
        path: PathBuf,
        /// The mount error.
        #[source]
        source: MountError,
    },
    /// Something other than our tmpfs is mounted below the target; deleting would reach into it.
    #[error("failed to clean and unmount target path {}: {mount} is mounted inside it; unmount it first", path.display())]
    NestedMount {
        /// The target.
        path: PathBuf,
        /// The mount below it.
        mount: String,
    },
    /// Removing the directory failed.
    #[error("failed to clean and unmount target path {}: {source}", path.display())]
    Remove {
        /// The target.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Removes a volume: unmount, delete what is left, remove the directory. A missing target is
/// already done.
pub fn unpublish(ctx: &Context, target: &Path) -> Result<(), UnpublishError> {
    ctx.forget(target);
    remove_volume(target)
}

/// Unmounts and deletes a target directory, refusing to delete through another mount.
pub fn remove_volume(target: &Path) -> Result<(), UnpublishError> {
    if std::fs::symlink_metadata(target).is_err() {
        return Ok(());
    }
    let unmount_error = |source| UnpublishError::Unmount {
        path: target.to_owned(),
        source,
    };
    volume::mount::unmount(target).map_err(unmount_error)?;
    let canonical = target
        .canonicalize()
        .map_err(|source| UnpublishError::Remove {
            path: target.to_owned(),
            source,
        })?;
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(mount) =
        volume::mount::mount_points(&table).find(|p| Path::new(p).starts_with(&canonical))
    {
        return Err(UnpublishError::NestedMount {
            path: target.to_owned(),
            mount,
        });
    }
    std::fs::remove_dir_all(target).map_err(|source| UnpublishError::Remove {
        path: target.to_owned(),
        source,
    })
}
