//! `sync-controller`: the SecretSync controller as a Deployment runs it, with leader election
//! (only the Lease holder reconciles), the metrics and health endpoints, and the built-in
//! providers acting with each SecretSync's service-account token.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;

use super::builtin::{Builtins, Site};
use super::{kube_client, registry, version_key};
use crate::class::KubeClasses;
use crate::cli::SyncControllerArgs;
use crate::events::{Recorder, SYNC_CONTROLLER_COMPONENT};
use crate::metrics::{self, Metrics};
use crate::provider::local;
use crate::secret_sync::{Controller, Settings, leader};
use crate::shutdown;

/// Runs the controller until SIGTERM; an error when leadership is lost (the pod restarts and
/// queues for the lease again, as controller-runtime does).
pub(super) async fn run_sync_controller(args: SyncControllerArgs) -> anyhow::Result<()> {
    let audiences: Vec<String> = args
        .token_request_audience
        .iter()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect();
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let identity = if args.pod_name.is_empty() {
        format!("sync-controller-{}", std::process::id())
    } else {
        args.pod_name.clone()
    };
    if args.version_key.version_key_file.is_none() {
        tracing::warn!(
            "no --version-key-file: status.syncHash changes with every restart, so each restart \
             or failover rewrites every Secret once; mount a key shared by the replicas"
        );
    }
    let builtins = Builtins {
        vault: &args.builtins.vault,
        aws: &args.builtins.aws,
        gcp: &args.builtins.gcp,
        azure: &args.builtins.azure,
        key: version_key(args.version_key.version_key_file.as_deref()),
        site: Site::Node {
            kubelet_root: PathBuf::from("/var/lib/kubelet"),
            kube: Some(client.clone()),
            node_name: None,
        },
    };
    let providers = builtins
        .register(registry(&args.providers), &args.builtins.builtin_providers)?
        .with_disabled(
            local::NAME,
            "the local provider reads node files and is not served by the sync controller",
        );
    let metrics = Arc::new(Metrics::new());
    let recorder = Arc::new(Recorder::for_component(
        client.clone(),
        &identity,
        SYNC_CONTROLLER_COMPONENT,
    ));
    let controller = Arc::new(Controller::new(
        client.clone(),
        Arc::new(KubeClasses::new(client.clone())),
        Arc::new(providers),
        recorder,
        metrics.clone(),
        builtins.key.clone(),
        Settings {
            audiences: audiences.clone(),
            poll_interval: args.rotation_poll_interval,
            controller_name: args.secret_sync_controller_name.clone(),
            pod_name: args.pod_name.clone(),
            pod_uid: args.pod_uid.clone(),
            max_bytes: args.providers.max_call_recv_msg_size,
            concurrency: args.concurrent_syncs.max(1),
            fetch_timeout: args.fetch_timeout,
        },
    ));

    let shutdown = shutdown::on_signal().context("installing signal handlers")?;
    let mut servers = Vec::new();
    for (flag, addr) in [
        ("--metrics-bind-address", &args.metrics_bind_address),
        (
            "--health-probe-bind-address",
            &args.health_probe_bind_address,
        ),
    ] {
        if addr.is_empty()
            || (flag != "--metrics-bind-address" && *addr == args.metrics_bind_address)
        {
            continue;
        }
        let parsed =
            metrics::parse_addr(addr).with_context(|| format!("invalid {flag} {addr:?}"))?;
        let listener = tokio::net::TcpListener::bind(parsed)
            .await
            .with_context(|| format!("failed to listen on {flag} {parsed}"))?;
        servers.push(tokio::spawn(metrics::serve(
            listener,
            metrics.clone(),
            shutdown.clone(),
        )));
    }
    tracing::info!(
        audiences = ?audiences,
        poll_interval = ?args.rotation_poll_interval,
        leader_elect = args.leader_elect,
        identity = %identity,
        "sync controller starting"
    );

    let lost = CancellationToken::new();
    let elector = if args.leader_elect {
        let namespace = [&args.leader_election_namespace, &args.pod_namespace]
            .into_iter()
            .find(|n| !n.is_empty())
            .cloned()
            .context(
                "--leader-elect needs --leader-election-namespace or the pod's namespace \
                 (SYNC_CONTROLLER_POD_NAMESPACE from the downward API)",
            )?;
        let elector = Arc::new(leader::Elector::new(
            client.clone(),
            &namespace,
            &args.leader_election_id,
            &identity,
            leader::Timings {
                lease_duration: args.leader_election_lease_duration,
                renew_deadline: args.leader_election_renew_deadline,
                retry_period: args.leader_election_retry_period,
            },
        ));
        if !elector.acquire(&shutdown).await {
            tracing::info!("shut down before becoming the leader");
            return Ok(());
        }
        Some(tokio::spawn({
            let elector = elector.clone();
            let (shutdown, lost) = (shutdown.clone(), lost.clone());
            async move { elector.hold(shutdown, lost).await }
        }))
    } else {
        None
    };

    // Reconciling stops on shutdown or when the lease is lost, whichever comes first.
    let stop = CancellationToken::new();
    let watch = {
        let (stop, shutdown, lost) = (stop.clone(), shutdown.clone(), lost.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = lost.cancelled() => {}
            }
            stop.cancel();
        })
    };
    controller.run(stop).await;
    watch.abort();
    if lost.is_cancelled() {
        bail!("lost the leader lease; exiting so that the pod restarts and queues for it again");
    }
    shutdown.cancel();
    if let Some(holder) = elector {
        holder.await.context("lease holder task")?;
    }
    for server in servers {
        server
            .await
            .context("metrics server task")?
            .context("metrics server failed")?;
    }
    tracing::info!("shut down cleanly");
    Ok(())
}
