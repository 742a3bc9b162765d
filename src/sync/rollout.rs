//! Optional rolling restart of the workloads that use a synced Secret whose values changed:
//! environment variables from a Secret are only read when a container starts.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

/// The pod-template annotation whose change starts a rollout (as `kubectl rollout restart`
/// does with its own annotation).
pub const RESTARTED_AT_ANNOTATION: &str = "secrets-store.csi.k8s.io/restartedAt";

/// A workload that was asked to roll out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restarted {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// Annotates the pod template of every workload behind `owners` (ReplicaSets resolve to their
/// Deployment). Owners that are not workloads (a bare pod's status record) are skipped.
pub async fn restart_owners(
    client: &kube::Client,
    namespace: &str,
    owners: &[OwnerReference],
) -> Vec<Result<Restarted, kube::Error>> {
    let mut results = Vec::new();
    let mut seen = Vec::new();
    for owner in owners {
        let workload = match owner.kind.as_str() {
            "ReplicaSet" => match deployment_of(client, namespace, &owner.name).await {
                Ok(Some(name)) => ("Deployment", name),
                Ok(None) => continue,
                Err(err) => {
                    results.push(Err(err));
                    continue;
                }
            },
            "StatefulSet" => ("StatefulSet", owner.name.clone()),
            "DaemonSet" => ("DaemonSet", owner.name.clone()),
            _ => continue,
        };
        if seen.contains(&workload) {
            continue;
        }
        seen.push(workload.clone());
        results.push(restart(client, namespace, workload.0, &workload.1).await);
    }
    results
}

async fn deployment_of(
    client: &kube::Client,
    namespace: &str,
    replica_set: &str,
) -> Result<Option<String>, kube::Error> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let Some(rs) = api.get_opt(replica_set).await? else {
        return Ok(None);
    };
    Ok(rs
        .metadata
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .find(|o| o.kind == "Deployment" && o.controller == Some(true))
        .map(|o| o.name))
}

async fn restart(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Result<Restarted, kube::Error> {
    let now = jiff::Timestamp::now().to_string();
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: now}}}}});
    let params = PatchParams::default();
    let patch = Patch::Merge(&patch);
    match kind {
        "Deployment" => Api::<Deployment>::namespaced(client.clone(), namespace)
            .patch(name, &params, &patch)
            .await
            .map(drop)?,
        "StatefulSet" => Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .patch(name, &params, &patch)
            .await
            .map(drop)?,
        _ => Api::<DaemonSet>::namespaced(client.clone(), namespace)
            .patch(name, &params, &patch)
            .await
            .map(drop)?,
    }
    Ok(Restarted {
        kind: kind.to_owned(),
        name: name.to_owned(),
    })
}
