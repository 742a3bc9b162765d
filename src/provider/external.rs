//! The client side of the provider plugin protocol: any upstream provider (Azure, GCP, Vault,
//! AWS, ...) listening on `<dir>/<name>.sock`. The only place proto provider types are built.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use super::{MountRequest, MountResponse, ObjectVersion, Provider, ProviderError, ProviderFile};
use crate::pod::TOKENS_ATTRIBUTE;
use crate::proto::v1alpha1 as pb;
use crate::proto::v1alpha1::csi_driver_provider_client::CsiDriverProviderClient;
use crate::redact::Secret;

/// Attempts for a call that fails because the socket is not answering yet.
const ATTEMPTS: u32 = 3;

/// A provider plugin reached over its unix socket.
#[derive(Debug)]
pub struct ExternalProvider {
    name: String,
    socket: PathBuf,
    max_recv_msg_size: usize,
    channel: Channel,
}

impl ExternalProvider {
    /// A lazily connected client; nothing is dialed until the first call.
    pub fn new(name: &str, socket: PathBuf, max_recv_msg_size: usize) -> Self {
        let path = socket.clone();
        // The authority is "localhost" as with upstream: some providers reject anything else.
        let channel = Endpoint::from_static("http://localhost").connect_with_connector_lazy(
            service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
            }),
        );
        Self {
            name: name.to_owned(),
            socket,
            max_recv_msg_size,
            channel,
        }
    }

    /// The provider name this client was created for.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn client(&self) -> CsiDriverProviderClient<Channel> {
        CsiDriverProviderClient::new(self.channel.clone())
            .max_decoding_message_size(self.max_recv_msg_size)
    }

    /// Asks the plugin for its runtime name and version (the health check).
    pub async fn version(&self) -> Result<(String, String), ProviderError> {
        let request = pb::VersionRequest {
            version: "v1alpha1".to_owned(),
        };
        let response = self
            .client()
            .version(request)
            .await
            .map_err(|status| self.status_error(status, None))?
            .into_inner();
        Ok((response.runtime_name, response.runtime_version))
    }

    fn status_error(&self, status: tonic::Status, timeout: Option<Duration>) -> ProviderError {
        let provider = self.name.clone();
        let message = status.message().to_owned();
        match status.code() {
            _ if message.contains("message length too large") => ProviderError::ResponseTooLarge {
                provider,
                limit: self.max_recv_msg_size,
                message,
            },
            tonic::Code::Unavailable => ProviderError::Unavailable {
                provider,
                socket: self.socket.display().to_string(),
                message: transport_message(&status),
                source: None,
            },
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled if timeout.is_some() => {
                ProviderError::DeadlineExceeded {
                    provider,
                    timeout: timeout.unwrap_or_default(),
                }
            }
            code => ProviderError::Rpc {
                provider,
                code,
                message,
            },
        }
    }
}

/// The transport error behind an `Unavailable`, which tonic keeps in the source chain.
fn transport_message(status: &tonic::Status) -> String {
    let mut message = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        message = format!("{message}: {err}");
        source = err.source();
    }
    message
}

#[async_trait]
impl Provider for ExternalProvider {
    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError> {
        let timeout = request.timeout;
        let wire = to_wire(request);
        let mut attempt = 1;
        let response = loop {
            let mut call = tonic::Request::new(wire.clone());
            if let Some(timeout) = timeout {
                call.set_timeout(timeout);
            }
            match self.client().mount(call).await {
                Ok(response) => break response.into_inner(),
                Err(status) if status.code() == tonic::Code::Unavailable && attempt < ATTEMPTS => {
                    tracing::debug!(provider = %self.name, attempt, "provider unavailable, retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(status) => return Err(self.status_error(status, timeout)),
            }
        };
        from_wire(&self.name, response)
    }
}

fn to_wire(request: MountRequest) -> pb::MountRequest {
    let mut attributes: BTreeMap<String, String> = request.parameters;
    request.pod.put_into(&mut attributes);
    if let Some(tokens) = request.service_account_tokens {
        attributes.insert(TOKENS_ATTRIBUTE.to_owned(), tokens.into_inner());
    }
    let secrets = match request.secrets {
        Some(secrets) => {
            let plain: BTreeMap<String, String> = secrets
                .into_iter()
                .map(|(key, value)| (key, value.into_inner()))
                .collect();
            serde_json::to_string(&plain)
        }
        None => Ok("null".to_owned()),
    };
    pb::MountRequest {
        // A map of strings always serializes.
        attributes: serde_json::to_string(&attributes).unwrap_or_default(),
        secrets: secrets.unwrap_or_else(|_| "null".to_owned()),
        target_path: request.target_path.display().to_string(),
        permission: request.default_mode.to_string(),
        current_object_version: request
            .current_versions
            .into_iter()
            .map(|v| pb::ObjectVersion {
                id: v.id,
                version: v.version,
            })
            .collect(),
    }
}

fn from_wire(provider: &str, response: pb::MountResponse) -> Result<MountResponse, ProviderError> {
    if let Some(error) = response.error.filter(|error| !error.code.is_empty()) {
        return Err(ProviderError::ErrorCode {
            provider: provider.to_owned(),
            code: error.code,
        });
    }
    Ok(MountResponse {
        versions: response
            .object_version
            .into_iter()
            .map(|v| ObjectVersion {
                id: v.id,
                version: v.version,
            })
            .collect(),
        files: response
            .files
            .into_iter()
            .map(|f| ProviderFile {
                path: f.path,
                mode: f.mode.cast_unsigned(),
                contents: Secret::new(f.contents),
            })
            .collect(),
    })
}
