//! The kubelet-facing gRPC edge: CSI Identity, Controller (capabilities only) and Node
//! services on a unix socket. Thin adapters: proto in, `publish` pipeline, proto out.

mod guard;
mod identity;
mod node;
pub mod request;
mod status;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use guard::InFlight;
pub use identity::{ControllerService, IdentityService};
pub use node::NodeService;

use crate::proto::csi::v1::controller_server::ControllerServer;
use crate::proto::csi::v1::identity_server::IdentityServer;
use crate::proto::csi::v1::node_server::NodeServer;
use crate::publish::Context;

/// Identity of this driver as kubelet sees it.
#[derive(Debug, Clone)]
pub struct DriverInfo {
    /// `--drivername`.
    pub name: String,
    /// The vendor version reported by GetPluginInfo.
    pub version: String,
    /// `--nodeid`.
    pub node_id: String,
}

/// Serves the CSI services until `shutdown`, then lets in-flight calls finish and removes the
/// socket.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    info: DriverInfo,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let tasks = TaskTracker::new();
    let node = NodeService::new(ctx, info.node_id.clone(), tasks.clone());
    let result = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(info)))
        .add_service(ControllerServer::new(ControllerService))
        .add_service(NodeServer::new(node))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.cancelled())
        .await;
    tasks.close();
    tasks.wait().await;
    let _ = std::fs::remove_file(&path);
    result
}
