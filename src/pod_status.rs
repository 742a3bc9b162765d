//! The SecretProviderClassPodStatus record of each mount: which node, target and versions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::PostParams;

use crate::crd::{
    NODE_NAME_LABEL, SecretProviderClassObject, SecretProviderClassPodStatus,
    SecretProviderClassPodStatusStatus,
};
use crate::provider::ObjectVersion;
use crate::publish::PodInfo;

/// Longest Kubernetes object name.
const MAX_NAME_LEN: usize = 253;
/// Optimistic-lock retries when another writer got there first.
const CONFLICT_RETRIES: usize = 5;

/// The record could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PodStatusError {
    /// `<pod>-<namespace>-<class>` is too long to be an object name.
    #[error(
        "failed to create secret provider class pod status {name:?}: the name is {len} characters, \
         more than 253; shorten the pod, namespace or SecretProviderClass name"
    )]
    NameTooLong {
        /// The generated name.
        name: String,
        /// Its length.
        len: usize,
    },
    /// The API server refused or could not be reached.
    #[error(
        "failed to create secret provider class pod status for pod {namespace}/{pod}, err: {source}"
    )]
    Api {
        /// The pod's namespace.
        namespace: String,
        /// The pod.
        pod: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

/// Writes SPCPS objects labelled with this node.
#[derive(Clone)]
pub struct PodStatusWriter {
    client: kube::Client,
    node_name: String,
}

impl std::fmt::Debug for PodStatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodStatusWriter")
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

impl PodStatusWriter {
    /// A writer for this node.
    pub fn new(client: kube::Client, node_name: &str) -> Self {
        Self {
            client,
            node_name: node_name.to_owned(),
        }
    }

    /// Creates or takes over `<pod>-<namespace>-<class>`: this node's label, the pod as owner,
    /// the versions sorted by id.
    pub async fn record(
        &self,
        pod: &PodInfo,
        class_name: &str,
        target_path: &str,
        versions: &[ObjectVersion],
    ) -> Result<(), PodStatusError> {
        let name = format!("{}-{}-{}", pod.name, pod.namespace, class_name);
        if name.len() > MAX_NAME_LEN {
            return Err(PodStatusError::NameTooLong {
                len: name.len(),
                name,
            });
        }
        let mut objects: Vec<SecretProviderClassObject> = versions
            .iter()
            .map(|v| SecretProviderClassObject {
                id: v.id.clone(),
                version: v.version.clone(),
            })
            .collect();
        objects.sort();
        let status = SecretProviderClassPodStatusStatus {
            pod_name: pod.name.clone(),
            secret_provider_class_name: class_name.to_owned(),
            mounted: true,
            target_path: target_path.to_owned(),
            objects,
        };
        let api_error = |source| PodStatusError::Api {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            source,
        };
        let api: Api<SecretProviderClassPodStatus> =
            Api::namespaced(self.client.clone(), &pod.namespace);
        let desired = SecretProviderClassPodStatus::new(self.metadata(&name, pod), status);
        match api.create(&PostParams::default(), &desired).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(response)) if response.code == 409 => {}
            Err(err) => return Err(api_error(err)),
        }
        // It exists: a remount, or a pod of the same name rescheduled from another node.
        let mut attempt = 0;
        loop {
            let mut existing = api.get(&name).await.map_err(api_error)?;
            let fresh = self.metadata(&name, pod);
            existing
                .metadata
                .labels
                .get_or_insert_default()
                .extend(fresh.labels.unwrap_or_default());
            existing.metadata.owner_references = fresh.owner_references;
            existing.status = desired.status.clone();
            match api.replace(&name, &PostParams::default(), &existing).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(response))
                    if response.code == 409 && attempt < CONFLICT_RETRIES =>
                {
                    attempt += 1;
                }
                Err(err) => return Err(api_error(err)),
            }
        }
    }

    fn metadata(&self, name: &str, pod: &PodInfo) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(pod.namespace.clone()),
            labels: Some([(NODE_NAME_LABEL.to_owned(), self.node_name.clone())].into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Pod".to_owned(),
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }
}
