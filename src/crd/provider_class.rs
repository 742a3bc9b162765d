use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a pod's volume should contain: which provider to ask, with which parameters, and which
/// Kubernetes Secrets to mirror the mounted files into.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "secrets-store.csi.x-k8s.io",
    version = "v1",
    kind = "SecretProviderClass",
    plural = "secretproviderclasses",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct SecretProviderClassSpec {
    /// Provider name: a built-in provider or `<provider dir>/<provider>.sock`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider: String,
    /// Provider-specific parameters, merged with the pod's volume attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    /// Kubernetes Secrets to create from the mounted files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_objects: Vec<SecretObject>,
}

/// One Kubernetes Secret to keep in sync with mounted files.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretObject {
    /// Name of the Secret in the pod's namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_name: String,
    /// Secret type, such as `Opaque` or `kubernetes.io/tls`.
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub type_: String,
    /// Labels added to the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Which mounted file goes under which key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<SecretObjectData>,
}

/// Maps a mounted file to a key of the synced Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretObjectData {
    /// Path of the mounted file, relative to the volume root (an object name or alias).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object_name: String,
    /// Key in the Secret's `data`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
}

/// The deprecated `v1alpha1` version, still served by clusters that never upgraded their CRDs.
pub mod v1alpha1 {
    use super::*;

    /// The `v1alpha1` spec: identical to `v1`.
    #[derive(
        CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema,
    )]
    #[kube(
        group = "secrets-store.csi.x-k8s.io",
        version = "v1alpha1",
        kind = "SecretProviderClass",
        plural = "secretproviderclasses",
        namespaced
    )]
    #[serde(rename_all = "camelCase")]
    pub struct SecretProviderClassSpec {
        /// See [`super::SecretProviderClassSpec::provider`].
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pub provider: String,
        /// See [`super::SecretProviderClassSpec::parameters`].
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub parameters: BTreeMap<String, String>,
        /// See [`super::SecretProviderClassSpec::secret_objects`].
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub secret_objects: Vec<SecretObject>,
    }

    impl From<SecretProviderClassSpec> for super::SecretProviderClassSpec {
        fn from(spec: SecretProviderClassSpec) -> Self {
            Self {
                provider: spec.provider,
                parameters: spec.parameters,
                secret_objects: spec.secret_objects,
            }
        }
    }
}
