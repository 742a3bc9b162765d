use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label that scopes an SPCPS to the node whose driver wrote it.
pub const NODE_NAME_LABEL: &str = "internal.secrets-store.csi.k8s.io/node-name";

/// The record of one pod's mount of one SecretProviderClass: which node, which target, which
/// object versions. Owned by the pod, so it is garbage-collected with it.
///
/// Written by hand rather than derived because the upstream type has no `spec`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretProviderClassPodStatus {
    /// Always `secrets-store.csi.x-k8s.io/v1` when written by this driver.
    #[serde(default)]
    pub api_version: String,
    /// Always `SecretProviderClassPodStatus`.
    #[serde(default)]
    pub kind: String,
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The mount's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SecretProviderClassPodStatusStatus>,
}

/// The observed state of one pod's mount.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretProviderClassPodStatusStatus {
    /// The pod's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    /// The SecretProviderClass mounted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_provider_class_name: String,
    /// Whether the volume is mounted; the driver only ever records `true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mounted: bool,
    /// Kubelet's target path of the volume.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_path: String,
    /// Object versions reported by the provider, sorted by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<SecretProviderClassObject>,
    /// The latest observations of the volume, such as whether its last rotation succeeded.
    /// An addition of this driver: upstream's CRD has no conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<PodStatusCondition>,
}

/// Condition type that says whether the mounted contents are current.
pub const READY_CONDITION: &str = "Ready";

/// One observation, shaped like the Kubernetes `metav1.Condition` that `kubectl wait` reads.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodStatusCondition {
    /// What is observed, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase cause, e.g. `RotationFailed`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The error or detail, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_transition_time: String,
}

/// One object's id and version as reported by its provider.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub struct SecretProviderClassObject {
    /// Provider-defined object id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Provider-defined version; changes when the content changes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

impl SecretProviderClassPodStatus {
    /// An object with `apiVersion` and `kind` set, as the API server requires on writes.
    pub fn new(metadata: ObjectMeta, status: SecretProviderClassPodStatusStatus) -> Self {
        Self {
            api_version: format!("{}/v1", super::GROUP),
            kind: "SecretProviderClassPodStatus".to_owned(),
            metadata,
            status: Some(status),
        }
    }
}

impl Resource for SecretProviderClassPodStatus {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "SecretProviderClassPodStatus".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        super::GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "secretproviderclasspodstatuses".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
