//! A drop-in replacement for the Kubernetes Secrets Store CSI driver.
//!
//! The modules follow the path a secret takes from its store to a pod's volume:
//!
//! ```text
//! kubelet --NodePublishVolume--> csi::node         typed request (pod, tokens, spc, target)
//!   csi::guard                                    second concurrent call on a target -> ABORTED
//!   publish::publish(ctx, request)                one pipeline, also used by `mount`
//!     class     : SecretProviderClass lookup (pod namespace) + parameter assembly
//!     provider  : registry -> built-in (vault, aws, local) or external plugin socket
//!     volume    : target lifecycle -> payload validation -> tmpfs -> atomic writer (..data)
//!     pod_status: SecretProviderClassPodStatus record (node label, pod owner, object versions)
//!     rotation  : remembered volume state, interval gate, rotation Events and conditions
//!   <-- Ok | one PublishError -> tonic::Status mapping (csi::status)
//! sync      : kube-runtime Controller over this node's SPCPS -> Kubernetes Secrets
//! secret_sync: cluster controller over SecretSyncs -> class -> provider (with a token
//!             requested for the SecretSync's service account) -> owner-guarded Secret write
//! events    : Warning/Normal Events on pods for sync and rotation outcomes
//! app       : one module per mode (node, mount, provider, sync-controller), one built-in
//!             provider factory
//! leaves    : pod (identity, attribute names), error (messages), grpc (sockets, deadlines),
//!             limits, lock, redact, crd, proto
//! ```
//!
//! Dependencies only point down this map; `tests/module_graph.rs` keeps it so.
//!
//! Secret values and tokens only ever travel inside [`redact::Secret`], whose `Debug` and
//! `Display` print `<redacted>`.

pub mod app;
pub mod class;
pub mod cli;
pub mod crd;
pub mod csi;
pub mod error;
pub mod events;
pub mod grpc;
pub mod limits;
pub mod lock;
pub mod metrics;
pub mod pod;
pub mod pod_status;
pub mod proto;
pub mod provider;
pub mod publish;
pub mod redact;
pub mod rotation;
pub mod secret_sync;
pub mod shutdown;
pub mod sync;
pub mod telemetry;
pub mod template;
pub mod volume;
