//! Wiring: builds each mode's pipeline context and runs it until done or shut down, one
//! module per mode (`node`, `mount`, `provider`, `sync_controller`) and one factory of
//! built-in providers.

mod builtin;
mod mount;
mod node;
mod provider;
mod sync_controller;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::cli::{Cli, Command, CrdgenArgs, ProviderArgs, UnmountArgs};
use crate::provider::version_key::VersionKey;
use crate::provider::{Registry, RegistryConfig};

/// The version printed by `--version` and reported to kubelet.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the selected mode.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // One TLS stack for kube, Vault and AWS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Some(Command::Node(args)) => node::run_node(args).await,
        Some(Command::Mount(args)) => mount::run_mount(args).await,
        Some(Command::Unmount(args)) => run_unmount(&args),
        Some(Command::Provider(args)) => provider::run_provider(args).await,
        Some(Command::SyncController(args)) => sync_controller::run_sync_controller(args).await,
        Some(Command::Crdgen(args)) => run_crdgen(&args),
        None => bail!("no command given: run `secrets-store-csi-driver --help`"),
    }
}

/// `--version` output, in upstream's JSON shape.
pub fn version_json() -> String {
    serde_json::json!({
        "BuildVersion": VERSION,
        "GitCommit": option_env!("GIT_COMMIT").unwrap_or("unknown"),
        "BuildDate": option_env!("BUILD_DATE").unwrap_or("unknown"),
    })
    .to_string()
}

/// The object version key at `path`, or a per-process key (with a warning) if it cannot be
/// used: delivering secrets matters more than stable versions.
fn version_key(path: Option<&Path>) -> VersionKey {
    let Some(path) = path else {
        return VersionKey::ephemeral();
    };
    match VersionKey::load_or_create(path) {
        Ok(key) => key,
        Err(err) => {
            tracing::warn!(
                path = %path.display(),
                error = %err,
                "cannot use the object version key file; versions will change on restart"
            );
            VersionKey::ephemeral()
        }
    }
}

/// `--version-key-file`, else `default_name` next to the socket: a node-local directory that
/// the DaemonSet already keeps across restarts.
fn key_file_path(flag: Option<&Path>, socket: &Path, default_name: &str) -> PathBuf {
    match flag {
        Some(path) => path.to_owned(),
        None => socket.parent().unwrap_or(Path::new("/")).join(default_name),
    }
}

fn registry(args: &ProviderArgs) -> Registry {
    Registry::new(RegistryConfig {
        socket_dirs: args.socket_dirs(),
        max_recv_msg_size: args.max_call_recv_msg_size,
    })
}

async fn kube_client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster config and no kubeconfig")?,
    };
    let mut config = config;
    config.headers.clear();
    Ok(kube::Client::try_from(config)?)
}

fn run_crdgen(args: &CrdgenArgs) -> anyhow::Result<()> {
    let Some(dir) = &args.out_dir else {
        print!("{}", crate::crd::crds_yaml());
        return Ok(());
    };
    for (name, yaml) in crate::crd::crd_files() {
        let path = dir.join(name);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn run_unmount(args: &UnmountArgs) -> anyhow::Result<()> {
    crate::volume::lifecycle::remove_volume(&args.target)?;
    println!("removed {}", args.target.display());
    Ok(())
}
