//! `SecretSync` (group `secret-sync.x-k8s.io`, `v1alpha1`): kubernetes-sigs/
//! secrets-store-sync-controller's API for a Secret synced without any pod, field for field and
//! with its validation rules, so its examples apply unchanged.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of `SecretSync`.
pub const SECRET_SYNC_GROUP: &str = "secret-sync.x-k8s.io";
/// The prefix of labels and annotations reserved for the controller.
pub const RESERVED_PREFIX: &str = "secrets-store.sync.x-k8s.io";

/// Name patterns of upstream's API (a DNS subdomain; a Secret data key).
const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const DATA_KEY: &str = r"^[A-Za-z0-9.]([-A-Za-z0-9]+([-._a-zA-Z0-9]?[A-Za-z0-9])*)?(\/([0-9]+))*$";
const FORCE_VALUE: &str = r"^[A-Za-z0-9]([-A-Za-z0-9]+([-._a-zA-Z0-9]?[A-Za-z0-9])*)?$";

/// A Kubernetes Secret kept in sync with a SecretProviderClass's objects, fetched with a
/// service account's identity; the SecretSync's name is the Secret's.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "secret-sync.x-k8s.io",
    version = "v1alpha1",
    kind = "SecretSync",
    plural = "secretsyncs",
    namespaced,
    status = "SecretSyncStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct SecretSyncSpec {
    /// Which controller serves this SecretSync; empty for any.
    #[serde(default)]
    #[schemars(extend("default" = ""))]
    pub secret_sync_controller_name: String,
    /// The SecretProviderClass, in the same namespace, to fetch from.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub secret_provider_class_name: String,
    /// The service account whose identity fetches (a token is requested for it).
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub service_account_name: String,
    /// The Secret to write.
    pub secret_object: SyncedSecret,
    /// Any new value forces a fetch and write.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 253), regex(pattern = FORCE_VALUE))]
    pub force_synchronization: String,
}

/// The synced Secret's type, keys, labels and annotations.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncedSecret {
    /// The Secret type; `Opaque` when not set.
    #[serde(default = "opaque", rename = "type")]
    #[schemars(length(max = 253), extend("default" = "Opaque"))]
    pub type_: String,
    /// Which fetched file goes under which key.
    #[schemars(length(min = 1), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["targetKey"]))]
    pub data: Vec<SyncedData>,
    /// Labels of the Secret, besides the controller's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "message": "Label keys must not exceed 317 characters (254 for prefix+separator, 63 for name), label values must not exceed 63 characters.",
            "rule": "(self.all(x, x.size() <= 317 && self[x].size() <= 63) == true)"
        },
        {
            "message": "Labels should not contain secrets-store.sync.x-k8s.io. This key is reserved for the controller.",
            "rule": "(self.all(x, x.startsWith('secrets-store.sync.x-k8s.io') == false))"
        }
    ]))]
    pub labels: BTreeMap<String, String>,
    /// Annotations of the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "message": "Annotations keys must not exceed 317 characters (254 for prefix+separator, 63 for name), annotation values must not exceed 256 kB.",
            "rule": "(self.all(x, x.size() < 317 && self[x].size() <= 262144) == true)"
        },
        {
            "message": "Annotations should not contain secrets-store.sync.x-k8s.io. This key is reserved for the controller.",
            "rule": "(self.all(x, x.startsWith('secrets-store.sync.x-k8s.io') == false))"
        }
    ]))]
    pub annotations: BTreeMap<String, String>,
}

fn opaque() -> String {
    "Opaque".to_owned()
}

/// One fetched file and the Secret key it becomes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncedData {
    /// The file's path in the provider's answer (an object name or alias).
    #[schemars(length(min = 1, max = 253), regex(pattern = DATA_KEY))]
    pub source_path: String,
    /// The key in the Secret's `data`.
    #[schemars(length(min = 1, max = 253), regex(pattern = DATA_KEY))]
    pub target_key: String,
}

/// What the controller last did, as upstream reports it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretSyncStatus {
    /// A keyed hash of the last written data and the objects' identities and generations:
    /// a change means the Secret must be written again. Never the data itself.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sync_hash: String,
    /// When the Secret was last written (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_sync_time: Option<String>,
    /// `SecretCreated` and `SecretUpdated`, with upstream's reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<SyncCondition>,
}

/// A `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncCondition {
    /// `SecretCreated` or `SecretUpdated`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// The SecretSync's generation this was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// A CamelCase cause, e.g. `ProviderError`.
    pub reason: String,
    /// The detail, for people; never a value.
    #[serde(default)]
    pub message: String,
}
