use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::guard::InFlight;
use super::request::{check_target, publish_request};
use crate::error::full_message;
use crate::grpc::grpc_timeout;
use crate::proto::csi::v1 as pb;
use crate::proto::csi::v1::node_server::Node;
use crate::publish::{self, Context, Mode, Outcome};

/// Kubelet's own NodePublishVolume timeout, used when the call carries no deadline.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Time kept back from the caller's deadline to clean up and answer.
const CLEANUP_MARGIN: Duration = Duration::from_millis(500);

/// CSI Node: publish and unpublish secrets-store volumes.
#[derive(Debug)]
pub struct NodeService {
    ctx: Arc<Context>,
    node_id: String,
    in_flight: InFlight,
    tasks: TaskTracker,
}

impl NodeService {
    /// A node service running its pipelines on `tasks`, which shutdown waits for.
    pub fn new(ctx: Arc<Context>, node_id: String, tasks: TaskTracker) -> Self {
        Self {
            ctx,
            node_id,
            in_flight: InFlight::default(),
            tasks,
        }
    }

    fn claim(&self, target: &Path) -> Result<super::guard::InFlightGuard, Status> {
        self.in_flight.try_acquire(target).ok_or_else(|| {
            Status::aborted(format!(
                "an operation on target path {} is already in progress; retry later",
                target.display()
            ))
        })
    }
}

// === impl NodeService ===

#[tonic::async_trait]
impl Node for NodeService {
    /// "This operation MUST be idempotent": a mounted target answers OK without a fetch unless
    /// rotation is due. The pipeline runs on its own task so that a caller that gives up cannot
    /// interrupt it between mount and cleanup.
    async fn node_publish_volume(
        &self,
        request: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        let deadline = grpc_timeout(request.metadata()).unwrap_or(DEFAULT_TIMEOUT);
        let provider_budget = deadline
            .saturating_sub(CLEANUP_MARGIN)
            .max(Duration::from_millis(100));
        let request = publish_request(
            request.into_inner(),
            Some(provider_budget),
            self.ctx.kubelet_root.as_ref(),
        )
        .inspect_err(|status| {
            tracing::warn!(code = ?status.code(), error = status.message(), "rejected NodePublishVolume request");
        })?;
        let span = tracing::info_span!(
            "node_publish_volume",
            pod = %request.pod.name,
            namespace = %request.pod.namespace,
            spc = %request.class_name,
            provider = tracing::field::Empty,
            target = %request.target_path.display(),
        );
        let guard = self.claim(&request.target_path).inspect_err(|status| {
            span.in_scope(|| {
                tracing::warn!(
                    error = status.message(),
                    "concurrent NodePublishVolume refused"
                )
            });
        })?;
        let ctx = self.ctx.clone();
        let task_span = span.clone();
        let task = self.tasks.spawn(
            async move {
                let _guard = guard;
                let result = publish::publish(&ctx, &request, Mode::Publish).await;
                if let Ok(published) = &result {
                    tracing::Span::current().record("provider", published.provider.as_str());
                }
                result
            }
            .instrument(task_span),
        );
        let result = task
            .await
            .map_err(|join| Status::internal(format!("publish task failed: {join}")))?;
        let _entered = span.enter();
        match result {
            Ok(published) => {
                match &published.outcome {
                    Outcome::AlreadyMounted => tracing::debug!("target path is already mounted"),
                    Outcome::Fetched { changed, remount } => tracing::info!(
                        files = published.files.len(),
                        objects = published.versions.len(),
                        changed,
                        remount,
                        "node publish volume complete"
                    ),
                    Outcome::RotationFailed { message } => {
                        tracing::warn!(error = %message, "rotation failed; previous contents kept")
                    }
                }
                Ok(Response::new(pb::NodePublishVolumeResponse {}))
            }
            Err(error) => {
                let status = Status::from(error);
                tracing::error!(code = ?status.code(), error = status.message(), "node publish volume failed");
                Err(status)
            }
        }
    }

    /// Removes the files, unmounts and removes the target; a missing target is already done.
    async fn node_unpublish_volume(
        &self,
        request: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        let request = request.into_inner();
        if request.volume_id.is_empty() {
            return Err(Status::invalid_argument("Volume ID missing in request"));
        }
        if request.target_path.is_empty() {
            return Err(Status::invalid_argument("Target path missing in request"));
        }
        let target = PathBuf::from(&request.target_path);
        let span = tracing::info_span!("node_unpublish_volume", target = %target.display());
        check_target(&target, self.ctx.kubelet_root.as_ref()).inspect_err(|status| {
            span.in_scope(|| {
                tracing::warn!(
                    error = status.message(),
                    "rejected NodeUnpublishVolume request"
                )
            });
        })?;
        let _guard = self.claim(&target)?;
        let ctx = self.ctx.clone();
        let task_target = target.clone();
        let result = self
            .tasks
            .spawn_blocking(move || {
                let result = publish::unpublish(&ctx, &task_target);
                ctx.metrics.unpublish(result.is_ok());
                result
            })
            .await
            .map_err(|join| Status::internal(format!("unpublish task failed: {join}")))?;
        if result.is_ok() {
            self.ctx.providers.unpublished(&target).await;
        }
        let _entered = span.enter();
        match result {
            Ok(()) => {
                tracing::info!("node unpublish volume complete");
                Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
            }
            Err(error) => {
                tracing::error!(error = %full_message(&error), "node unpublish volume failed");
                Err(error.into())
            }
        }
    }

    async fn node_stage_volume(
        &self,
        request: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        let request = request.into_inner();
        if request.volume_id.is_empty() {
            return Err(Status::invalid_argument("Volume ID missing in request"));
        }
        if request.staging_target_path.is_empty() {
            return Err(Status::invalid_argument("Target path missing in request"));
        }
        if request.volume_capability.is_none() {
            return Err(Status::invalid_argument(
                "Volume capability missing in request",
            ));
        }
        Ok(Response::new(pb::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Result<Response<pb::NodeUnstageVolumeResponse>, Status> {
        let request = request.into_inner();
        if request.volume_id.is_empty() {
            return Err(Status::invalid_argument("Volume ID missing in request"));
        }
        if request.staging_target_path.is_empty() {
            return Err(Status::invalid_argument("Target path missing in request"));
        }
        Ok(Response::new(pb::NodeUnstageVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        _: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        Err(Status::unimplemented(
            "NodeGetVolumeStats is not implemented",
        ))
    }

    async fn node_expand_volume(
        &self,
        _: Request<pb::NodeExpandVolumeRequest>,
    ) -> Result<Response<pb::NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("NodeExpandVolume is not implemented"))
    }

    /// Upstream advertises STAGE_UNSTAGE_VOLUME; kubelet never stages ephemeral volumes.
    async fn node_get_capabilities(
        &self,
        _: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        // VOLUME_MOUNT_GROUP: kubelet sends the pod's fsGroup, and files are group-owned by it
        // (kubelet applies no fsGroup to read-only volumes itself).
        let capabilities = [
            pb::node_service_capability::rpc::Type::StageUnstageVolume,
            pb::node_service_capability::rpc::Type::VolumeMountGroup,
        ]
        .into_iter()
        .map(|rpc| pb::NodeServiceCapability {
            r#type: Some(pb::node_service_capability::Type::Rpc(
                pb::node_service_capability::Rpc { r#type: rpc.into() },
            )),
        })
        .collect();
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
        }))
    }
}
