//! `provider NAME`: a built-in provider served on a plugin socket, for the upstream driver or
//! another node plugin.

use std::sync::Arc;

use anyhow::{Context as _, bail};

use super::builtin::{Builtins, Site};
use super::{VERSION, key_file_path, kube_client, version_key};
use crate::cli::ProviderServeArgs;
use crate::provider::version_key::VersionKey;
use crate::provider::{Provider, aws, azure, gcp, serve, vault};
use crate::{grpc, shutdown};

/// `provider NAME --endpoint`: serves a built-in provider on a plugin socket until signalled.
pub(super) async fn run_provider(args: ProviderServeArgs) -> anyhow::Result<()> {
    let socket = grpc::socket_path(&args.endpoint)?;
    // AWS reports its own version ids and needs no key.
    let key = if args.name == vault::NAME {
        version_key(Some(&key_file_path(
            args.version_key.version_key_file.as_deref(),
            &socket,
            "vault.version.key",
        )))
    } else {
        VersionKey::ephemeral()
    };
    let kube = if args.name == aws::NAME || args.name == gcp::NAME {
        match kube_client(args.kubeconfig.as_deref()).await {
            Ok(client) => Some(client),
            Err(err) => {
                tracing::warn!(
                    error = %format!("{err:#}"),
                    "no Kubernetes API: IRSA, the node region lookup and GCP service-account \
                     impersonation will fail; use Pod Identity and set AWS_REGION"
                );
                None
            }
        }
    } else {
        None
    };
    let builtins = Builtins {
        vault: &args.vault,
        aws: &args.aws,
        gcp: &args.gcp,
        azure: &args.azure,
        key,
        site: Site::Node {
            kubelet_root: args.kubelet_root_dir.clone(),
            kube,
            node_name: args.node_name.clone(),
        },
    };
    let provider: Arc<dyn Provider> = match args.name.as_str() {
        vault::NAME => builtins.vault(),
        aws::NAME => builtins.aws(),
        gcp::NAME => builtins.gcp(),
        azure::NAME => builtins.azure(),
        other => {
            bail!(
                "{other:?} is not a built-in provider that can be served; use: vault, aws, gcp, azure"
            )
        }
    };
    let shutdown = shutdown::on_signal().context("installing signal handlers")?;
    let listener = grpc::bind(&socket)?;
    tracing::info!(provider = %args.name, endpoint = %socket.display(), "serving built-in provider");
    serve::serve(listener, socket, &args.name, VERSION, provider, shutdown)
        .await
        .context("provider server failed")?;
    tracing::info!("shut down cleanly");
    Ok(())
}
