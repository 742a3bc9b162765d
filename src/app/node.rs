//! `node`: the CSI node plugin kubelet talks to, with the Secret sync controller and the
//! metrics endpoint beside it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::builtin::{Builtins, Site};
use super::{VERSION, key_file_path, kube_client, registry, version_key};
use crate::class::KubeClasses;
use crate::class::refresh::RefreshRequests;
use crate::cli::NodeArgs;
use crate::csi::{self, DriverInfo};
use crate::metrics::{self, Metrics};
use crate::pod_status::PodStatusWriter;
use crate::provider::{Registry, local};
use crate::publish::Context;
use crate::volume::target::KubeletRoot;
use crate::volume::{MountMode, TmpfsOptions, mount};
use crate::{events, grpc, shutdown, sync};

/// Runs the node plugin until SIGTERM, then lets in-flight calls finish.
pub(super) async fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    if !args.metrics_backend.eq_ignore_ascii_case("prometheus") {
        bail!(
            "unsupported metrics backend {:?}: only prometheus is supported",
            args.metrics_backend
        );
    }
    if args.nodeid.is_empty() {
        bail!("--nodeid is required (the DaemonSet passes spec.nodeName through KUBE_NODE_NAME)");
    }
    if !mount::can_mount() {
        bail!(
            "the node plugin must run as root to mount tmpfs volumes (securityContext.privileged: true)"
        );
    }
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let socket = grpc::socket_path(&args.endpoint)?;
    let kubelet_root = KubeletRoot::new(&args.kubelet_root_dir).with_context(|| {
        format!(
            "--kubelet-root-dir {}: kubelet's root directory must be mounted into the driver",
            args.kubelet_root_dir.display()
        )
    })?;
    let key = version_key(Some(&key_file_path(
        args.version_key.version_key_file.as_deref(),
        &socket,
        "version.key",
    )));

    let builtins = Builtins {
        vault: &args.builtins.vault,
        aws: &args.builtins.aws,
        gcp: &args.builtins.gcp,
        azure: &args.builtins.azure,
        key,
        site: Site::Node {
            kubelet_root: kubelet_root.path().to_owned(),
            kube: Some(client.clone()),
            node_name: Some(args.nodeid.clone()),
        },
    };
    let providers =
        builtins.register(registry(&args.providers), &args.builtins.builtin_providers)?;
    let providers = match &args.local_provider_root {
        Some(root) => {
            let root = root
                .canonicalize()
                .with_context(|| format!("--local-provider-root {}", root.display()))?;
            tracing::info!(root = %root.display(), "built-in local provider enabled");
            providers.with_builtin(local::NAME, builtins.local(root))
        }
        None => providers.with_disabled(
            local::NAME,
            "start the driver with --local-provider-root DIR to enable it",
        ),
    };

    if args.enable_pprof {
        tracing::warn!(
            port = args.pprof_port,
            "--enable-pprof is accepted for compatibility; no profiling endpoint is served"
        );
    }
    let providers = Arc::new(providers);
    let metrics = Arc::new(Metrics::new());
    let shutdown = shutdown::on_signal().context("installing signal handlers")?;
    let refresh = Arc::new(RefreshRequests::default());
    tokio::spawn(refresh.clone().watch(client.clone(), shutdown.clone()));
    let recorder = Arc::new(events::Recorder::new(client.clone(), &args.nodeid));
    let ctx = Arc::new(
        Context::new(
            Arc::new(KubeClasses::new(client.clone())),
            providers.clone(),
            metrics.clone(),
        )
        .with_mount_mode(MountMode::Tmpfs(TmpfsOptions {
            size_bytes: args.providers.tmpfs_size,
        }))
        .with_pod_status(PodStatusWriter::new(client.clone(), &args.nodeid))
        .with_rotation(
            args.enable_secret_rotation
                .then_some(args.rotation_poll_interval),
        )
        .with_events(recorder.clone())
        .with_refresh(refresh)
        .with_kubelet_root(kubelet_root.clone())
        .with_limits(
            args.providers.max_call_recv_msg_size,
            args.max_concurrent_fetches,
        ),
    );

    let sync = sync::Controller::new(
        client,
        sync::Settings {
            node_name: args.nodeid.clone(),
            driver_name: args.drivername.clone(),
            resync_interval: args.secret_sync_resync_interval,
            rollout_on_change: args.rollout_on_secret_change,
            kubelet_root,
        },
        recorder,
        metrics.clone(),
    );
    let sync_task = tokio::spawn(sync.run(shutdown.clone()));
    let metrics_addr = metrics::parse_addr(&args.metrics_addr)
        .with_context(|| format!("invalid --metrics-addr {:?}", args.metrics_addr))?;
    let listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("failed to listen on --metrics-addr {metrics_addr}"))?;
    let metrics_task = tokio::spawn(metrics::serve(listener, metrics, shutdown.clone()));
    if args.provider_health_check {
        tokio::spawn(health_check(
            providers,
            args.provider_health_check_interval,
            shutdown.clone(),
        ));
    }

    let listener = grpc::bind(&socket)?;
    let info = DriverInfo {
        name: args.drivername.clone(),
        version: VERSION.to_owned(),
        node_id: args.nodeid.clone(),
    };
    tracing::info!(
        endpoint = %socket.display(),
        node = %args.nodeid,
        driver = %args.drivername,
        metrics = %metrics_addr,
        rotation = args.enable_secret_rotation,
        "CSI node plugin listening"
    );
    csi::serve(listener, socket, info, ctx, shutdown.clone())
        .await
        .context("CSI server failed")?;
    shutdown.cancel();
    sync_task.await.context("secret sync task")?;
    metrics_task
        .await
        .context("metrics server task")?
        .context("metrics server failed")?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Asks every connected plugin for its version each interval; logs only, as upstream.
async fn health_check(
    providers: Arc<Registry>,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for client in providers.external_clients() {
            match tokio::time::timeout(Duration::from_secs(5), client.version()).await {
                Ok(Ok((runtime, version))) => {
                    tracing::debug!(
                        provider = client.name(),
                        runtime,
                        version,
                        "provider health check passed"
                    );
                }
                Ok(Err(err)) => {
                    tracing::warn!(provider = client.name(), error = %err, "provider health check failed")
                }
                Err(_) => tracing::warn!(
                    provider = client.name(),
                    "provider health check timed out after 5s"
                ),
            }
        }
    }
}
