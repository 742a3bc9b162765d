//! A fake provider plugin serving the v1alpha1 protocol on a unix socket, recording what it
//! is asked and answering what the test says.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrets_store_csi_driver::proto::v1alpha1 as pb;
use secrets_store_csi_driver::proto::v1alpha1::csi_driver_provider_server::{
    CsiDriverProvider, CsiDriverProviderServer,
};
use serde_json::Value;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// One Mount call as received.
#[derive(Clone, Debug)]
pub struct ReceivedMount {
    pub attributes: Value,
    pub secrets: Value,
    pub target_path: String,
    pub permission: String,
    pub current_versions: Vec<(String, String)>,
    pub authority: String,
    /// Whether the target was already a mount point when the provider was called.
    pub target_mounted: bool,
}

/// What the fake answers.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    pub files: Vec<(String, i32, Vec<u8>)>,
    pub versions: Vec<(String, String)>,
    pub error_code: String,
    pub delay: Duration,
    /// Answer every other call with error code `Flaky` instead (a backend failing half the
    /// time).
    pub fail_every_other: bool,
}

#[derive(Default)]
struct State {
    behaviour: Behaviour,
    calls: Vec<ReceivedMount>,
    authorities: Vec<String>,
}

/// A running fake provider.
pub struct FakeProvider {
    pub socket: PathBuf,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Service(Arc<Mutex<State>>);

#[tonic::async_trait]
impl CsiDriverProvider for Service {
    async fn version(
        &self,
        _: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            version: "v1alpha1".into(),
            runtime_name: "fakeprovider".into(),
            runtime_version: "0.0.10".into(),
        }))
    }

    async fn mount(
        &self,
        request: Request<pb::MountRequest>,
    ) -> Result<Response<pb::MountResponse>, Status> {
        let request = request.into_inner();
        let parse = |s: &str| {
            serde_json::from_str::<Value>(s).map_err(|e| Status::invalid_argument(e.to_string()))
        };
        let behaviour = {
            let mut state = self.0.lock().unwrap();
            let authority = state.authorities.last().cloned().unwrap_or_default();
            state.calls.push(ReceivedMount {
                attributes: parse(&request.attributes)?,
                secrets: parse(&request.secrets)?,
                target_path: request.target_path.clone(),
                permission: request.permission.clone(),
                current_versions: request
                    .current_object_version
                    .iter()
                    .map(|v| (v.id.clone(), v.version.clone()))
                    .collect(),
                authority,
                target_mounted: super::mount_line(Path::new(&request.target_path)).is_some(),
            });
            state.behaviour.clone()
        };
        tokio::time::sleep(behaviour.delay).await;
        if behaviour.fail_every_other && self.0.lock().unwrap().calls.len().is_multiple_of(2) {
            return Ok(Response::new(pb::MountResponse {
                error: Some(pb::Error {
                    code: "Flaky".into(),
                }),
                ..Default::default()
            }));
        }
        Ok(Response::new(pb::MountResponse {
            object_version: behaviour
                .versions
                .iter()
                .map(|(id, version)| pb::ObjectVersion {
                    id: id.clone(),
                    version: version.clone(),
                })
                .collect(),
            error: (!behaviour.error_code.is_empty()).then(|| pb::Error {
                code: behaviour.error_code.clone(),
            }),
            files: behaviour
                .files
                .iter()
                .map(|(path, mode, contents)| pb::File {
                    path: path.clone(),
                    mode: *mode,
                    contents: contents.clone(),
                })
                .collect(),
        }))
    }
}

impl FakeProvider {
    /// Serves `<dir>/<name>.sock`.
    pub async fn start(dir: &Path, name: &str, behaviour: Behaviour) -> Self {
        let socket = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let state = Arc::new(Mutex::new(State {
            behaviour,
            ..Default::default()
        }));
        let service = Service(state.clone());
        let recorder = state.clone();
        let layer = tower::util::MapRequestLayer::new(
            move |req: tonic::codegen::http::Request<tonic::body::Body>| {
                let authority = req
                    .uri()
                    .authority()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                recorder.lock().unwrap().authorities.push(authority);
                req
            },
        );
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .layer(layer)
                .add_service(CsiDriverProviderServer::new(service))
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self {
            socket,
            state,
            task,
        }
    }

    pub fn set(&self, behaviour: Behaviour) {
        self.state.lock().unwrap().behaviour = behaviour;
    }

    pub fn calls(&self) -> Vec<ReceivedMount> {
        self.state.lock().unwrap().calls.clone()
    }
}
