//! The CustomResourceDefinitions, generated from the Rust types (`secrets-store-csi-driver
//! crdgen`), so the manifests and the code cannot drift apart: `v1` stored, the deprecated
//! `v1alpha1` still served, no subresources, as upstream.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt as _;
use kube::core::crd::merge_crds;

use super::provider_class::{SecretProviderClass, v1alpha1};
use super::secret_sync::SecretSync;

const DEPRECATED: &str =
    "secrets-store.csi.x-k8s.io/v1alpha1 is deprecated. Use secrets-store.csi.x-k8s.io/v1 instead.";

/// Schema-only twins of the pod status resource: upstream's type has no `spec`, which
/// kube-derive requires, so the derived `spec` is removed after generation.
mod pod_status_schema {
    use kube::CustomResource;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    pub use crate::crd::SecretProviderClassPodStatusStatus as Status;

    /// No fields: only `status` is real.
    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
    #[kube(
        group = "secrets-store.csi.x-k8s.io",
        version = "v1",
        kind = "SecretProviderClassPodStatus",
        plural = "secretproviderclasspodstatuses",
        namespaced,
        status = "Status"
    )]
    pub struct Spec {}

    /// The deprecated version: the same status.
    pub mod v1alpha1 {
        use super::*;

        /// No fields: only `status` is real.
        #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
        #[kube(
            group = "secrets-store.csi.x-k8s.io",
            version = "v1alpha1",
            kind = "SecretProviderClassPodStatus",
            plural = "secretproviderclasspodstatuses",
            namespaced,
            status = "Status"
        )]
        pub struct Spec {}
    }
}

/// The driver's two CRDs, SecretProviderClass first, then the sync controller's SecretSync.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = driver_crds();
    let mut secret_sync = SecretSync::crd();
    for version in &mut secret_sync.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema.description = Some(
                "A Secret synced from a SecretProviderClass with a service account's identity, without a pod."
                    .to_owned(),
            );
        }
    }
    crds.push(secret_sync);
    crds
}

/// The CRDs of upstream's driver: `v1` stored, `v1alpha1` deprecated, no subresources.
fn driver_crds() -> Vec<CustomResourceDefinition> {
    let provider_class = merge_crds(
        vec![
            SecretProviderClass::crd(),
            v1alpha1::SecretProviderClass::crd(),
        ],
        "v1",
    );
    let pod_status = merge_crds(
        vec![
            pod_status_schema::SecretProviderClassPodStatus::crd(),
            pod_status_schema::v1alpha1::SecretProviderClassPodStatus::crd(),
        ],
        "v1",
    );
    // The inputs are fixed and valid; a failure here is a programming error caught by tests.
    let mut crds: Vec<CustomResourceDefinition> = [provider_class, pod_status]
        .into_iter()
        .map(|crd| crd.expect("the built-in CRD versions merge"))
        .collect();
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            version.subresources = None;
            if version.name == "v1alpha1" {
                version.deprecated = Some(true);
                version.deprecation_warning = Some(DEPRECATED.to_owned());
            }
        }
        let pod_status = crd.spec.names.kind == "SecretProviderClassPodStatus";
        if pod_status {
            remove_spec(crd);
        }
        let description = if pod_status {
            "One pod's mount of one SecretProviderClass on one node: target path and object versions."
        } else {
            "Which provider fills a pod's secrets volume, with which parameters, and which Secrets to sync."
        };
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                schema.description = Some(description.to_owned());
            }
        }
    }
    crds
}

fn remove_spec(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        if let Some(properties) = schema.properties.as_mut() {
            properties.remove("spec");
        }
        if let Some(required) = schema.required.as_mut() {
            required.retain(|field| field != "spec");
        }
        if schema.required.as_ref().is_some_and(Vec::is_empty) {
            schema.required = None;
        }
    }
}

/// The header of the committed CRD files.
const HEADER: &str =
    "# Generated from the Rust types by `secrets-store-csi-driver crdgen`; do not edit.\n";

/// Each CRD as `(file name, YAML)`, as committed in the chart's `crds/` and in `deploy/`.
pub fn crd_files() -> Vec<(String, String)> {
    crds()
        .iter()
        .map(|crd| {
            // A CRD is plain data; serializing it cannot fail.
            let yaml = serde_saphyr::to_string(crd).expect("a CRD serializes to YAML");
            (
                format!("{}.yaml", crd.spec.names.plural),
                format!("{HEADER}---\n{yaml}"),
            )
        })
        .collect()
}

/// The CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    crd_files().into_iter().map(|(_, yaml)| yaml).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_crds_store_v1_and_serve_a_deprecated_v1alpha1() {
        let crds = driver_crds();
        let names: Vec<&str> = crds
            .iter()
            .map(|c| c.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "secretproviderclasses.secrets-store.csi.x-k8s.io",
                "secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io"
            ]
        );
        for crd in &crds {
            assert_eq!(crd.spec.scope, "Namespaced");
            let stored: Vec<&str> = crd
                .spec
                .versions
                .iter()
                .filter(|v| v.storage)
                .map(|v| v.name.as_str())
                .collect();
            assert_eq!(stored, ["v1"]);
            for version in &crd.spec.versions {
                assert!(version.served);
                assert!(version.subresources.is_none());
                assert_eq!(
                    version.deprecated,
                    (version.name == "v1alpha1").then_some(true)
                );
            }
        }
        let status = serde_json::to_value(&crds[1]).unwrap();
        let properties = &status["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        assert!(properties.get("spec").is_none());
        assert!(properties["status"]["properties"]["objects"].is_object());
    }

    #[test]
    fn secret_sync_has_a_status_subresource_and_upstreams_rules() {
        let crd = serde_json::to_value(crds().pop().unwrap()).unwrap();
        assert_eq!(crd["metadata"]["name"], "secretsyncs.secret-sync.x-k8s.io");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(version["subresources"]["status"].is_object());
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let object = &spec["properties"]["secretObject"]["properties"];
        assert_eq!(object["type"]["default"], "Opaque");
        assert_eq!(object["data"]["x-kubernetes-list-map-keys"][0], "targetKey");
        let rules = object["labels"]["x-kubernetes-validations"]
            .as_array()
            .unwrap();
        assert!(
            rules[1]["rule"]
                .as_str()
                .unwrap()
                .contains("startsWith('secrets-store.sync.x-k8s.io')")
        );
        assert_eq!(spec["properties"]["serviceAccountName"]["maxLength"], 253);
        let mut required: Vec<&str> = spec["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        required.sort_unstable();
        assert_eq!(
            required,
            [
                "secretObject",
                "secretProviderClassName",
                "serviceAccountName"
            ]
        );
    }
}
