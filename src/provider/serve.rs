//! The server side of the provider plugin protocol: a built-in provider served on a unix
//! socket, so the upstream Go driver (or another node plugin) can use it like any plugin.
//! Besides `external`, the only place proto provider types are built.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{DEFAULT_FILE_MODE, MountRequest, MountedFiles, ObjectVersion, Provider};
use crate::grpc::grpc_timeout;
use crate::pod::{PodInfo, TOKENS_ATTRIBUTE};
use crate::proto::v1alpha1 as pb;
use crate::proto::v1alpha1::csi_driver_provider_server::{
    CsiDriverProvider, CsiDriverProviderServer,
};
use crate::redact::Secret;

/// One built-in provider behind the v1alpha1 service.
#[derive(Debug)]
struct Service {
    name: String,
    version: String,
    provider: Arc<dyn Provider>,
}

/// Serves `provider` on `listener` until `shutdown`, then removes the socket.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    name: &str,
    version: &str,
    provider: Arc<dyn Provider>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let service = Service {
        name: name.to_owned(),
        version: version.to_owned(),
        provider,
    };
    let result = tonic::transport::Server::builder()
        .add_service(CsiDriverProviderServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.cancelled())
        .await;
    let _ = std::fs::remove_file(&path);
    result
}

#[tonic::async_trait]
impl CsiDriverProvider for Service {
    async fn version(
        &self,
        _request: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            version: "v1alpha1".to_owned(),
            runtime_name: format!("secrets-store-csi-driver-{}", self.name),
            runtime_version: self.version.clone(),
        }))
    }

    async fn mount(
        &self,
        request: Request<pb::MountRequest>,
    ) -> Result<Response<pb::MountResponse>, Status> {
        let timeout = grpc_timeout(request.metadata());
        let request = from_wire(request.into_inner(), timeout)?;
        let started = std::time::Instant::now();
        match self.provider.mount(request).await {
            Ok(response) => {
                tracing::info!(
                    provider = %self.name,
                    objects = response.files.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "mount served"
                );
                Ok(Response::new(pb::MountResponse {
                    object_version: response
                        .versions
                        .into_iter()
                        .map(|v| pb::ObjectVersion {
                            id: v.id,
                            version: v.version,
                        })
                        .collect(),
                    error: None,
                    files: response
                        .files
                        .into_iter()
                        .map(|f| pb::File {
                            path: f.path,
                            // Valid modes are at most 0o7777, so the cast is exact.
                            mode: f.mode.cast_signed(),
                            contents: f.contents.into_inner(),
                        })
                        .collect(),
                }))
            }
            Err(err) => {
                tracing::warn!(provider = %self.name, error = %err, "mount failed");
                Err(Status::new(err.grpc_code(), err.to_string()))
            }
        }
    }
}

fn from_wire(
    request: pb::MountRequest,
    timeout: Option<std::time::Duration>,
) -> Result<MountRequest, Status> {
    let mut parameters: BTreeMap<String, String> = serde_json::from_str(&request.attributes)
        .map_err(|err| {
            Status::invalid_argument(format!(
                "failed to unmarshal attributes: {err}; the driver must send a JSON object of strings"
            ))
        })?;
    let tokens = parameters.remove(TOKENS_ATTRIBUTE).map(Secret::new);
    let pod = PodInfo::take_from(&mut parameters);
    let secrets: Option<BTreeMap<String, String>> = match request.secrets.trim() {
        "" | "null" => None,
        text => Some(serde_json::from_str(text).map_err(|_| {
            Status::invalid_argument(
                "failed to unmarshal secrets: the driver must send a JSON object of strings",
            )
        })?),
    };
    let default_mode = match request.permission.trim() {
        "" => DEFAULT_FILE_MODE,
        text => text.parse::<u32>().ok().filter(|m| *m <= 0o7777).ok_or_else(|| {
            Status::invalid_argument(format!(
                "failed to unmarshal file permission {text:?}: expected a decimal mode such as \"420\""
            ))
        })?,
    };
    Ok(MountRequest {
        pod,
        parameters,
        service_account_tokens: tokens,
        secrets: secrets.map(|map| {
            map.into_iter()
                .map(|(key, value)| (key, Secret::new(value)))
                .collect()
        }),
        target_path: PathBuf::from(request.target_path),
        default_mode,
        // A driver sends the mounted versions on a rotation.
        fresh_since: (!request.current_object_version.is_empty()).then(std::time::Instant::now),
        current_versions: request
            .current_object_version
            .into_iter()
            .map(|v| ObjectVersion {
                id: v.id,
                version: v.version,
            })
            .collect(),
        // The target belongs to the driver on the other side; nothing is read back from it.
        mounted: MountedFiles::default(),
        timeout,
        // The driver on the other side bounds its answers the same way by default.
        max_bytes: crate::limits::DEFAULT_VOLUME_BYTES,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_requests_become_domain_requests() {
        let request = from_wire(
            pb::MountRequest {
                attributes: r#"{"roleName":"r","csi.storage.k8s.io/serviceAccount.tokens":"{}"}"#
                    .to_owned(),
                secrets: "null".to_owned(),
                target_path: "/t".to_owned(),
                permission: "420".to_owned(),
                current_object_version: vec![pb::ObjectVersion {
                    id: "a".to_owned(),
                    version: "1".to_owned(),
                }],
            },
            None,
        )
        .unwrap();
        assert_eq!(request.default_mode, 0o644);
        assert_eq!(request.parameters.len(), 1);
        assert!(request.service_account_tokens.is_some());
        assert!(request.secrets.is_none());
        assert_eq!(request.current_versions.len(), 1);
        for (attributes, permission) in [("[]", "420"), ("{}", "rw-r--r--")] {
            let err = from_wire(
                pb::MountRequest {
                    attributes: attributes.to_owned(),
                    permission: permission.to_owned(),
                    ..Default::default()
                },
                None,
            )
            .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
        }
    }
}
