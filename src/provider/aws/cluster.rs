//! What the AWS provider asks Kubernetes: the IAM role of a service account (IRSA) and the
//! region of a node. Both are cached briefly so a rollout does not turn into API load
//! (aws#359).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::Api;

use super::NAME;
use crate::provider::ProviderError;
use crate::provider::shared_cache::SharedCache;

/// The service-account annotation naming the IAM role for IRSA.
pub const ROLE_ARN_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
/// The node label holding its region.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// How long a service account's role is reused: an edited annotation takes effect this fast.
const ROLE_TTL: Duration = Duration::from_secs(30);
/// Nodes do not change region.
const REGION_TTL: Duration = Duration::from_secs(24 * 3600);

/// Cached Kubernetes lookups.
pub struct Cluster {
    client: Option<kube::Client>,
    /// This node's name, when known (node mode), so the region needs no pod lookup.
    node_name: Option<String>,
    roles: SharedCache<(String, String), String>,
    regions: SharedCache<String, String>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("kube", &self.client.is_some())
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Lookups through `client`; without one every lookup fails with what to set instead.
    pub fn new(client: Option<kube::Client>, node_name: Option<String>) -> Self {
        Self {
            client,
            node_name,
            roles: SharedCache::new(1000),
            regions: SharedCache::new(16),
        }
    }

    /// The role ARN annotated on the pod's service account.
    pub async fn role_arn(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<String, ProviderError> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| ProviderError::Unauthenticated {
                provider: NAME.to_owned(),
                message: "IRSA needs the Kubernetes API to read the service account's role; \
                      outside a cluster credentials come from the AWS environment"
                    .to_owned(),
            })?;
        let key = (namespace.to_owned(), service_account.to_owned());
        let (role, _) = self
            .roles
            .get_or_fetch(&key, |_| async {
                let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
                let account = api
                    .get_opt(service_account)
                    .await
                    .map_err(|err| crate::provider::service_account_error(NAME, &format!("reading service account {namespace}/{service_account}"), &err))?;
                let role = account
                    .and_then(|a| a.metadata.annotations)
                    .and_then(|mut a| a.remove(ROLE_ARN_ANNOTATION))
                    .filter(|r| !r.trim().is_empty())
                    .ok_or_else(|| ProviderError::Unauthenticated {
                        provider: NAME.to_owned(),
                        message: format!(
                            "An IAM role must be associated with service account {service_account} \
                             (namespace: {namespace}): annotate it with {ROLE_ARN_ANNOTATION}, or set \
                             usePodIdentity: \"true\" to use EKS Pod Identity"
                        ),
                    })?;
                Ok::<_, ProviderError>((role.trim().to_owned(), ROLE_TTL))
            })
            .await?;
        Ok(role)
    }

    /// The region of the node the pod runs on (label `topology.kubernetes.io/region`).
    pub async fn node_region(&self, namespace: &str, pod: &str) -> Result<String, ProviderError> {
        let not_found = |why: String| ProviderError::InvalidParameters {
            provider: NAME.to_owned(),
            message: format!(
                "Region not found: {why}; set the region parameter in the SecretProviderClass \
                 or AWS_REGION (Helm value aws.region) on the driver"
            ),
        };
        let Some(client) = &self.client else {
            return Err(not_found(
                "no Kubernetes API to read the node's region label".to_owned(),
            ));
        };
        let node =
            match &self.node_name {
                Some(node) => node.clone(),
                None => {
                    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
                    let found = api.get(pod).await.map_err(|err| {
                        not_found(format!("reading pod {namespace}/{pod}: {err}"))
                    })?;
                    found.spec.and_then(|s| s.node_name).ok_or_else(|| {
                        not_found(format!("pod {namespace}/{pod} has no node yet"))
                    })?
                }
            };
        let (region, _) = self
            .regions
            .get_or_fetch(&node, |_| async {
                let api: Api<Node> = Api::all(client.clone());
                let found = api.get(&node).await.map_err(|err| {
                    not_found(format!("failed to retrieve region from node {node}: {err}"))
                })?;
                let region = found
                    .metadata
                    .labels
                    .and_then(|mut l| l.remove(REGION_LABEL))
                    .filter(|r| !r.is_empty())
                    .ok_or_else(|| not_found(format!("node {node} has no {REGION_LABEL} label")))?;
                Ok::<_, ProviderError>((region, REGION_TTL))
            })
            .await?;
        Ok(region)
    }
}
