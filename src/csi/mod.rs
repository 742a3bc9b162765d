//! The kubelet-facing gRPC edge: CSI Identity, Controller (capabilities only) and Node
//! services on a unix socket. Thin adapters: proto in, `publish` pipeline, proto out.

mod guard;
mod identity;
mod node;
pub mod request;
mod status;

use std::io;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use guard::InFlight;
pub use identity::{ControllerService, IdentityService};
pub use node::NodeService;
pub use status::full_message;

use crate::proto::csi::v1::controller_server::ControllerServer;
use crate::proto::csi::v1::identity_server::IdentityServer;
use crate::proto::csi::v1::node_server::NodeServer;
use crate::publish::Context;

/// The CSI endpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Not a `unix://` address or an absolute path.
    #[error("invalid endpoint {0:?}: use unix:///path/to/csi.sock")]
    Invalid(String),
    /// Something that is not a socket is in the way; it is never deleted.
    #[error("refusing to replace {}: it exists and is not a socket; remove it or choose another --endpoint", .0.display())]
    NotASocket(PathBuf),
    /// Binding failed.
    #[error("failed to listen on {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Parses `--endpoint` as upstream does: `unix:///csi/csi.sock`, `unix://tmp/csi.sock`
/// (relative form, made absolute) or a plain absolute path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, EndpointError> {
    let lower = endpoint.to_ascii_lowercase();
    let rest = if lower.starts_with("unix://") {
        &endpoint["unix://".len()..]
    } else if lower.starts_with("unix:") {
        &endpoint["unix:".len()..]
    } else if endpoint.starts_with('/') {
        endpoint
    } else {
        return Err(EndpointError::Invalid(endpoint.to_owned()));
    };
    let trimmed = rest.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(EndpointError::Invalid(endpoint.to_owned()));
    }
    Ok(Path::new("/").join(trimmed))
}

/// Binds the socket, replacing a stale socket file left by a previous run.
pub fn bind(path: &Path) -> Result<UnixListener, EndpointError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| EndpointError::Bind {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(_) => return Err(EndpointError::NotASocket(path.to_owned())),
        Err(_) => {}
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| EndpointError::Bind {
            path: path.to_owned(),
            source,
        })?;
    }
    UnixListener::bind(path).map_err(|source| EndpointError::Bind {
        path: path.to_owned(),
        source,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_as_upstream() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            Path::new("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("unix://tmp/csi.sock").unwrap(),
            Path::new("/tmp/csi.sock")
        );
        assert_eq!(socket_path("UNIX:///a.sock").unwrap(), Path::new("/a.sock"));
        assert_eq!(
            socket_path("/run/csi.sock").unwrap(),
            Path::new("/run/csi.sock")
        );
        for bad in ["tcp://127.0.0.1:10000", "csi.sock", "unix://", ""] {
            assert!(socket_path(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_anything_else_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        drop(bind(&path).unwrap());
        assert!(
            path.exists(),
            "the first listener leaves its socket file behind"
        );
        drop(bind(&path).unwrap());
        let file = dir.path().join("file");
        std::fs::write(&file, "keep me").unwrap();
        assert!(matches!(bind(&file), Err(EndpointError::NotASocket(_))));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }
}
