//! The publish pipeline: one volume from request to files, shared by the CSI node service and
//! the `mount` command. Reads top to bottom as the data flows: class, provider, volume, status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::class::refresh::{self, REFRESH_ANNOTATION, RefreshRequests};
use crate::class::{self, ClassError, ClassSource};
use crate::events::Recorder;
use crate::limits::{DEFAULT_CONCURRENT_FETCHES, DEFAULT_VOLUME_BYTES, FetchSlots};
use crate::metrics::Metrics;
use crate::pod::PodInfo;
use crate::pod_status::{Fetch, PodStatusError, PodStatusWriter};
use crate::provider::{
    DEFAULT_FILE_MODE, MountRequest, MountedFiles, ObjectVersion, ProviderError, Registry,
};
use crate::redact::SecretString;
use crate::rotation::{Reports, Volumes};
use crate::template::{self, TemplateError, Templates};
use crate::volume::atomic_writer::WriteOutcome;
use crate::volume::lifecycle::{self, PrepareError, Prepared};
use crate::volume::target::{KubeletRoot, TargetError};
use crate::volume::{
    self, AtomicWriter, MountError, MountMode, Payload, PayloadError, UnpublishError, WriteError,
};

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
    /// On a node, kubelet's root: targets must be its CSI volume paths, through no symlink.
    pub kubelet_root: Option<KubeletRoot>,
    /// Classes' refresh requests, watched; `None` outside a cluster.
    pub refresh: Option<Arc<RefreshRequests>>,
    /// Bytes one volume's provider answer (and a built-in's backend reads) may hold.
    pub volume_bytes: usize,
    fetch_slots: FetchSlots,
    volumes: Volumes,
}

impl Context {
    /// A context for `classes` and `providers` with no volumes known yet: plain directories,
    /// no status records, no Events, rotation off and the default limits until the `with_`
    /// methods say otherwise.
    pub fn new(
        classes: Arc<dyn ClassSource>,
        providers: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            classes,
            providers,
            pod_status: None,
            mount_mode: MountMode::PlainDir,
            metrics,
            rotation_interval: None,
            events: None,
            kubelet_root: None,
            refresh: None,
            volume_bytes: DEFAULT_VOLUME_BYTES,
            fetch_slots: FetchSlots::new(DEFAULT_CONCURRENT_FETCHES),
            volumes: Volumes::default(),
        }
    }

    /// Mounts volumes as `mode` says (tmpfs on a node).
    #[must_use]
    pub fn with_mount_mode(mut self, mode: MountMode) -> Self {
        self.mount_mode = mode;
        self
    }

    /// Records each mount in a SecretProviderClassPodStatus.
    #[must_use]
    pub fn with_pod_status(mut self, writer: PodStatusWriter) -> Self {
        self.pod_status = Some(writer);
        self
    }

    /// Re-fetches a republished volume once `interval` (or its class's own) has passed.
    #[must_use]
    pub fn with_rotation(mut self, interval: Option<Duration>) -> Self {
        self.rotation_interval = interval;
        self
    }

    /// Accepts only kubelet's CSI volume paths under `root` as targets.
    #[must_use]
    pub fn with_kubelet_root(mut self, root: KubeletRoot) -> Self {
        self.kubelet_root = Some(root);
        self
    }

    /// Bounds each volume to `volume_bytes` and the node to `concurrent_fetches` volumes
    /// fetching at once (a quarter of them per namespace).
    #[must_use]
    pub fn with_limits(mut self, volume_bytes: usize, concurrent_fetches: usize) -> Self {
        self.volume_bytes = volume_bytes;
        self.fetch_slots = FetchSlots::new(concurrent_fetches);
        self
    }

    /// Honours classes' refresh requests (`secrets-store.csi.k8s.io/refresh-requested-at`).
    #[must_use]
    pub fn with_refresh(mut self, refresh: Arc<RefreshRequests>) -> Self {
        self.refresh = Some(refresh);
        self
    }

    /// Reports rotation outcomes as Events on pods.
    #[must_use]
    pub fn with_events(mut self, events: Arc<Recorder>) -> Self {
        self.events = Some(events);
        self
    }

    fn reports(&self) -> Reports<'_> {
        Reports {
            events: self.events.as_deref(),
            pod_status: self.pod_status.as_ref(),
        }
    }
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
    /// The pod's `fsGroup`, as kubelet sends it (`volume_mount_group`): files and directories
    /// are group-owned by it, group-readable.
    pub group: Option<u32>,
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
    /// The node's or the namespace's fetch slots stayed taken until the deadline.
    #[error(
        "failed to mount secrets store objects for pod {pod}: the driver is busy: all of the \
         node's fetch slots, or the {share} of them one namespace may hold, stayed in use for \
         {waited:?}; kubelet retries (--max-concurrent-fetches sets the slots)"
    )]
    Busy {
        /// `namespace/name`.
        pod: String,
        /// How long the call waited.
        waited: Duration,
        /// Slots one namespace may hold.
        share: usize,
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
    /// The target is not a path the driver may use.
    #[error(transparent)]
    Target(#[from] TargetError),
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
    /// The class's templated files are invalid or do not fit the fetched objects.
    #[error("failed to mount secrets store objects for pod {pod}: {source}")]
    Template {
        /// `namespace/name`.
        pod: String,
        /// What is wrong, by class, file and line.
        #[source]
        source: TemplateError,
    },
    /// The SecretProviderClassPodStatus could not be recorded.
    #[error(transparent)]
    PodStatus(#[from] PodStatusError),
}

impl From<PrepareError> for PublishError {
    fn from(error: PrepareError) -> Self {
        match error {
            PrepareError::Target(error) => Self::Target(error),
            PrepareError::Create { path, source } => Self::TargetPath { path, source },
            PrepareError::Mount(error) => Self::Mount(error),
        }
    }
}

impl PublishError {
    /// The upstream metric `error_type`.
    pub fn error_type(&self) -> String {
        match self {
            Self::Class(ClassError::NotFound { .. } | ClassError::Api { .. }) => {
                "SecretProviderClassNotFound".to_owned()
            }
            Self::Class(_)
            | Self::Busy { .. }
            | Self::Mount(MountError::Mount { .. } | MountError::Unmount { .. }) => {
                "FailedToMount".to_owned()
            }
            Self::Provider { source, .. } => source.error_type(),
            Self::Template { source, .. } if source.is_declaration() => "FailedToMount".to_owned(),
            Self::Payload { .. } | Self::Write { .. } | Self::Template { .. } => {
                "FileWriteError".to_owned()
            }
            Self::Target(_) | Self::TargetPath { .. } | Self::Mount(MountError::Inspect { .. }) => {
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
            let provider = provider.unwrap_or_default();
            ctx.metrics.publish_error(&provider, &error.error_type());
            if remount && mode == Mode::Publish {
                // A failed rotation must not fail the pod (kubernetes#121271): keep the old files,
                // but say so where people look: the pod's Events and the SPCPS condition.
                ctx.metrics.rotation_error(&provider, &error.error_type());
                let message = crate::error::full_message(&error);
                tracing::warn!(error = %message, "rotation failed, keeping the mounted contents");
                ctx.reports()
                    .failed(&request.pod, &request.class_name, &message)
                    .await;
                return Ok(Published {
                    outcome: Outcome::RotationFailed { message },
                    provider,
                    versions: ctx.volumes.versions(&request.target_path),
                    files: Vec::new(),
                });
            }
            Err(error)
        }
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

/// Runs filesystem and mount work on the blocking pool, never on an async worker.
async fn blocking<T: Send + 'static>(
    target: &Path,
    work: impl FnOnce() -> Result<T, PublishError> + Send + 'static,
) -> Result<T, PublishError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| {
            Err(PublishError::TargetPath {
                path: target.to_owned(),
                source: std::io::Error::other(format!("volume task failed: {join}")),
            })
        })
}

async fn run(ctx: &Context, request: &PublishRequest, mode: Mode) -> Result<Published, Failure> {
    let target = &request.target_path;
    let pod = format!("{}/{}", request.pod.namespace, request.pod.name);
    let mounted = {
        let (mount_mode, root, path) = (
            ctx.mount_mode.clone(),
            ctx.kubelet_root.clone(),
            target.clone(),
        );
        blocking(target, move || {
            Ok(lifecycle::is_published(&mount_mode, root.as_ref(), &path)?)
        })
        .await
        .map_err(|e| Failure::new(e, None, false))?
    };
    if mounted && mode == Mode::Publish {
        let refresh = ctx
            .refresh
            .as_ref()
            .and_then(|r| r.get(&request.pod.namespace, &request.class_name));
        let due = ctx
            .rotation_interval
            .is_some_and(|interval| ctx.volumes.due(target, interval, refresh.as_deref()));
        if !due {
            tracing::debug!("target path is already mounted");
            // As upstream, a call answered before the class is read counts for no provider.
            return Ok(Published {
                outcome: Outcome::AlreadyMounted,
                provider: String::new(),
                versions: ctx.volumes.versions(target),
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
    // Templates render inside the driver, so a pod may not bring its own.
    let class_only: Vec<&str> = provider
        .class_parameters()
        .iter()
        .copied()
        .chain([template::PARAMETER])
        .collect();
    let mut parameters = class::merge_parameters(
        namespace,
        &request.class_name,
        spec,
        &request.attributes,
        &class_only,
    )
    .map_err(|e| Failure::new(e, Some(&provider_name), remount))?;
    // The typed identity is the only one providers see; a class cannot set it.
    PodInfo::take_from(&mut parameters);
    let templates = Templates::take_from(
        &format!("{namespace}/{}", request.class_name),
        &mut parameters,
        DEFAULT_FILE_MODE,
    )
    .map_err(|source| {
        let error = PublishError::Template {
            pod: pod.clone(),
            source,
        };
        Failure::new(error, Some(&provider_name), remount)
    })?;

    // Volume: the tmpfs exists before the provider is called (legacy providers write into it).
    let prepared = if mounted {
        Prepared::default()
    } else {
        let (mount_mode, root, path) = (
            ctx.mount_mode.clone(),
            ctx.kubelet_root.clone(),
            target.clone(),
        );
        blocking(target, move || {
            Ok(lifecycle::prepare(&mount_mode, root.as_ref(), &path)?)
        })
        .await
        .map_err(|e| Failure::new(e, Some(&provider_name), remount))?
    };
    let fetched = fetch_and_write(
        ctx,
        request,
        &pod,
        &provider_name,
        provider.as_ref(),
        parameters,
        templates.as_ref(),
    )
    .await;
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(error) => {
            undo(prepared, ctx, target).await;
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
            undo(prepared, ctx, target).await;
            return Err(Failure::new(err, Some(&provider_name), remount));
        }
    }
    let refresh = class
        .annotations
        .get(REFRESH_ANNOTATION)
        .map(|value| refresh::bounded(value));
    ctx.volumes
        .remember(target, fetched.versions.clone(), class_interval, refresh);
    if remount && fetched.changed && mode == Mode::Publish {
        ctx.reports()
            .rotated(&request.pod, &request.class_name)
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

/// The mounted volume's files as a provider may read them back: only after a completed swap,
/// only through the links into `..data`. Nothing is touched until a provider reads, so
/// providers that never reuse files cost no filesystem calls.
fn mounted_files(target: &Path) -> MountedFiles {
    let target = target.to_owned();
    let root = std::sync::OnceLock::new();
    MountedFiles::new(move |name| {
        let root: &Option<PathBuf> = root.get_or_init(|| {
            let root = target.canonicalize().ok()?;
            AtomicWriter::swapped_at(&root).ok()?;
            Some(root)
        });
        volume::read_published(root.as_deref()?, name).ok()
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
    templates: Option<&Templates>,
) -> Result<Fetched, PublishError> {
    let started = Instant::now();
    let provider_error = |source| PublishError::Provider {
        pod: pod.to_owned(),
        source,
    };
    let acquire = ctx.fetch_slots.acquire(&request.pod.namespace);
    let slot = match request.timeout {
        Some(timeout) => tokio::time::timeout(timeout, acquire).await.ok(),
        None => Some(acquire.await),
    };
    let Some(_slot) = slot else {
        return Err(PublishError::Busy {
            pod: pod.to_owned(),
            waited: started.elapsed(),
            share: ctx.fetch_slots.namespace_share(),
        });
    };
    let timeout = request
        .timeout
        .map(|timeout| timeout.saturating_sub(started.elapsed()));
    let current_versions = ctx.volumes.versions(&request.target_path);
    let mount_request = MountRequest {
        pod: request.pod.clone(),
        parameters,
        service_account_tokens: request.service_account_tokens.clone(),
        secrets: request.secrets.clone(),
        target_path: request.target_path.clone(),
        default_mode: DEFAULT_FILE_MODE,
        fresh_since: (!current_versions.is_empty()).then_some(started),
        current_versions,
        mounted: mounted_files(&request.target_path),
        timeout,
        max_bytes: ctx.volume_bytes,
    };
    let call = provider.mount(mount_request);
    let response = match timeout {
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
    let (mut files, mut versions) = (response.files, response.versions);
    if let Some(templates) = templates {
        let fetched: usize = files.iter().map(|f| f.contents.expose().len()).sum();
        let rendered = templates
            .render(&files, ctx.volume_bytes.saturating_sub(fetched))
            .map_err(|source| PublishError::Template {
                pod: pod.to_owned(),
                source,
            })?;
        versions.extend(templates.versions(&versions));
        files.extend(rendered);
    }
    let payload =
        Payload::validate(files, ctx.volume_bytes).map_err(|source| PublishError::Payload {
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
    // An empty payload is a legacy provider that wrote its own files: the writer still swaps
    // in an empty `..data`, which marks the volume as published.
    let legacy = payload.is_empty();
    let writer = AtomicWriter::new(&request.target_path).with_group(request.group);
    let target = request.target_path.clone();
    let outcome = tokio::task::spawn_blocking(move || writer.write(&payload))
        .await
        .unwrap_or_else(|join| Err(WriteError::interrupted(&target, join.to_string())))
        .map_err(|source| PublishError::Write {
            pod: pod.to_owned(),
            source,
        })?;
    Ok(Fetched {
        versions,
        files,
        changed: legacy || outcome == WriteOutcome::Changed,
    })
}

/// Leaves the target as this call found it. A failed rotation of a mounted volume keeps what
/// is known about it (its versions and its class's interval); only a mount this call made is
/// forgotten.
async fn undo(prepared: Prepared, ctx: &Context, target: &Path) {
    if prepared.is_empty() {
        return;
    }
    ctx.volumes.forget(target);
    let (mode, path) = (ctx.mount_mode.clone(), target.to_owned());
    let _ = tokio::task::spawn_blocking(move || prepared.undo(&mode, &path)).await;
}

/// Removes a volume: unmount, delete what the driver wrote, remove the then empty directory.
/// On a node the target must be kubelet's CSI volume path, through no symlink. A missing
/// target is already done.
pub fn unpublish(ctx: &Context, target: &Path) -> Result<(), UnpublishError> {
    if let Some(root) = &ctx.kubelet_root {
        root.owner(target)?;
        root.check_no_links(target)?;
    }
    ctx.volumes.forget(target);
    lifecycle::remove_volume(target)
}
