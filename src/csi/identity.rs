use tonic::{Request, Response, Status};

use super::DriverInfo;
use crate::proto::csi::v1 as pb;
use crate::proto::csi::v1::controller_server::Controller;
use crate::proto::csi::v1::identity_server::Identity;

/// CSI Identity: who the driver is and whether it is ready.
#[derive(Debug)]
pub struct IdentityService {
    info: DriverInfo,
}

impl IdentityService {
    /// Answers for `info`.
    pub fn new(info: DriverInfo) -> Self {
        Self { info }
    }
}

// === impl IdentityService ===

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<pb::GetPluginInfoRequest>,
    ) -> Result<Response<pb::GetPluginInfoResponse>, Status> {
        if self.info.name.is_empty() {
            return Err(Status::unavailable("driver name not configured"));
        }
        if self.info.version.is_empty() {
            return Err(Status::unavailable("driver version not configured"));
        }
        Ok(Response::new(pb::GetPluginInfoResponse {
            name: self.info.name.clone(),
            vendor_version: self.info.version.clone(),
            manifest: Default::default(),
        }))
    }

    /// Upstream advertises the controller service (a stub); kubelet and sidecars expect it.
    async fn get_plugin_capabilities(
        &self,
        _: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<pb::GetPluginCapabilitiesResponse>, Status> {
        let service = pb::plugin_capability::Service {
            r#type: pb::plugin_capability::service::Type::ControllerService.into(),
        };
        Ok(Response::new(pb::GetPluginCapabilitiesResponse {
            capabilities: vec![pb::PluginCapability {
                r#type: Some(pb::plugin_capability::Type::Service(service)),
            }],
        }))
    }

    async fn probe(
        &self,
        _: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeResponse>, Status> {
        Ok(Response::new(pb::ProbeResponse { ready: Some(true) }))
    }
}

/// CSI Controller: only capabilities, as upstream; every other RPC is UNIMPLEMENTED.
#[derive(Debug, Clone, Copy)]
pub struct ControllerService;

// === impl ControllerService ===

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn controller_get_capabilities(
        &self,
        _: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::ControllerGetCapabilitiesResponse>, Status> {
        let rpc = pb::controller_service_capability::Rpc {
            r#type: pb::controller_service_capability::rpc::Type::Unknown.into(),
        };
        Ok(Response::new(pb::ControllerGetCapabilitiesResponse {
            capabilities: vec![pb::ControllerServiceCapability {
                r#type: Some(pb::controller_service_capability::Type::Rpc(rpc)),
            }],
        }))
    }
}
