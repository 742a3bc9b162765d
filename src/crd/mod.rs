//! The two custom resources of the Secrets Store CSI driver, group `secrets-store.csi.x-k8s.io`,
//! and the sync controller's `SecretSync`.
//!
//! The wire format matches the upstream driver's Go types field for field, so existing objects
//! round-trip unchanged.

mod generate;
mod pod_status;
mod provider_class;
mod secret_sync;

pub use generate::{crd_files, crds, crds_yaml};

pub use pod_status::{
    NODE_NAME_LABEL, PodStatusCondition, READY_CONDITION, SecretProviderClassObject,
    SecretProviderClassPodStatus, SecretProviderClassPodStatusStatus,
};
pub use provider_class::{
    SecretObject, SecretObjectData, SecretProviderClass, SecretProviderClassSpec, v1alpha1,
};
pub use secret_sync::{
    RESERVED_PREFIX, SECRET_SYNC_GROUP, SecretSync, SecretSyncSpec, SecretSyncStatus,
    SyncCondition, SyncedData, SyncedSecret,
};

/// The API group of both custom resources.
pub const GROUP: &str = "secrets-store.csi.x-k8s.io";
