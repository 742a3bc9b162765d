//! The SecretProviderClassPodStatus record of each mount: which node, target and versions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::PostParams;

use crate::crd::{
    NODE_NAME_LABEL, PodStatusCondition, READY_CONDITION, SecretProviderClassObject,
    SecretProviderClassPodStatus, SecretProviderClassPodStatusStatus,
};
use crate::error::KubeError;
use crate::pod::PodInfo;
use crate::provider::ObjectVersion;

/// Longest Kubernetes object name.
const MAX_NAME_LEN: usize = 253;
/// `Ready` reason of a rotation that found nothing new; a `Ready=True` condition is then kept
/// as it is, so a quiet rotation writes nothing.
const UNCHANGED_REASON: &str = "Current";

/// What a successful fetch did to the volume, as the record reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// First mount of the volume.
    Mounted,
    /// A rotation swapped in new contents.
    Rotated,
    /// A rotation found nothing new.
    Unchanged,
}

impl Fetch {
    fn reason(self) -> &'static str {
        match self {
            Self::Mounted => "Mounted",
            Self::Rotated => "Rotated",
            Self::Unchanged => UNCHANGED_REASON,
        }
    }
}
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
        source: KubeError,
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
    /// the versions sorted by id, and `Ready=True` with the fetch's reason. A first mount tries
    /// to create the record; a rotation, whose record normally exists, edits it first.
    pub async fn record(
        &self,
        pod: &PodInfo,
        class_name: &str,
        target_path: &str,
        versions: &[ObjectVersion],
        fetch: Fetch,
    ) -> Result<(), PodStatusError> {
        let reason = fetch.reason();
        let name = status_name(pod, class_name)?;
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
            conditions: vec![ready(true, reason, "")],
        };
        let api_error = |source: kube::Error| PodStatusError::Api {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            source: source.into(),
        };
        let api: Api<SecretProviderClassPodStatus> =
            Api::namespaced(self.client.clone(), &pod.namespace);
        let desired = SecretProviderClassPodStatus::new(self.metadata(&name, pod), status);
        if fetch == Fetch::Mounted {
            match api.create(&PostParams::default(), &desired).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(response)) if response.code == 409 => {}
                Err(err) => return Err(api_error(err)),
            }
        }
        // It exists: a remount, or a pod of the same name rescheduled from another node.
        let fresh = self.metadata(&name, pod);
        let found = edit(&api, &name, |existing| {
            let before = existing.clone();
            existing
                .metadata
                .labels
                .get_or_insert_default()
                .extend(fresh.labels.clone().unwrap_or_default());
            existing
                .metadata
                .owner_references
                .clone_from(&fresh.owner_references);
            let mut status = desired.status.clone().unwrap_or_default();
            status.conditions = merged_conditions(
                existing
                    .status
                    .take()
                    .map(|s| s.conditions)
                    .unwrap_or_default(),
                ready(true, reason, ""),
            );
            existing.status = Some(status);
            // A rotation that changed nothing writes nothing (and wakes no watcher).
            *existing != before
        })
        .await
        .map_err(api_error)?;
        if !found {
            // Missing (deleted meanwhile, or a rotation's record was removed): create it.
            api.create(&PostParams::default(), &desired)
                .await
                .map_err(api_error)?;
        }
        Ok(())
    }

    /// Marks the record `Ready=False` with the rotation error; the mounted versions stay as
    /// they are. A missing record (deleted meanwhile) is left missing.
    pub async fn record_rotation_failure(
        &self,
        pod: &PodInfo,
        class_name: &str,
        message: &str,
    ) -> Result<(), PodStatusError> {
        let name = status_name(pod, class_name)?;
        let api: Api<SecretProviderClassPodStatus> =
            Api::namespaced(self.client.clone(), &pod.namespace);
        edit(&api, &name, |existing| {
            let mut status = existing.status.take().unwrap_or_default();
            status.conditions = merged_conditions(
                std::mem::take(&mut status.conditions),
                ready(false, "RotationFailed", message),
            );
            existing.status = Some(status);
            true
        })
        .await
        .map(drop)
        .map_err(|source| PodStatusError::Api {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            source: source.into(),
        })
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

/// Reads `name`, lets `change` edit it (returning whether there is anything to write) and
/// replaces it, retrying on conflicts with other writers. `Ok(false)` if it does not exist,
/// or stopped existing before the write (the garbage collector removed it meanwhile).
async fn edit(
    api: &Api<SecretProviderClassPodStatus>,
    name: &str,
    mut change: impl FnMut(&mut SecretProviderClassPodStatus) -> bool,
) -> Result<bool, kube::Error> {
    let mut attempt = 0;
    loop {
        let Some(mut existing) = api.get_opt(name).await? else {
            return Ok(false);
        };
        if !change(&mut existing) {
            return Ok(true);
        }
        match api.replace(name, &PostParams::default(), &existing).await {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(response)) if response.code == 404 => return Ok(false),
            Err(kube::Error::Api(response))
                if response.code == 409 && attempt < CONFLICT_RETRIES =>
            {
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// `<pod>-<namespace>-<class>`, upstream's record name.
fn status_name(pod: &PodInfo, class_name: &str) -> Result<String, PodStatusError> {
    let name = format!("{}-{}-{}", pod.name, pod.namespace, class_name);
    if name.len() > MAX_NAME_LEN {
        return Err(PodStatusError::NameTooLong {
            len: name.len(),
            name,
        });
    }
    Ok(name)
}

fn ready(ok: bool, reason: &str, message: &str) -> PodStatusCondition {
    PodStatusCondition {
        type_: READY_CONDITION.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .map(|t| t.to_string())
            .unwrap_or_default(),
    }
}

/// `existing` with `new` in place of its type; the transition time moves only when the status
/// does, as the API conventions ask.
fn merged_conditions(
    mut existing: Vec<PodStatusCondition>,
    mut new: PodStatusCondition,
) -> Vec<PodStatusCondition> {
    if let Some(old) = existing.iter_mut().find(|c| c.type_ == new.type_) {
        if old.status == new.status && new.reason == UNCHANGED_REASON {
            return existing;
        }
        if old.status == new.status {
            new.last_transition_time = std::mem::take(&mut old.last_transition_time);
        }
        *old = new;
    } else {
        existing.push(new);
    }
    existing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let mut first = ready(true, "Mounted", "");
        first.last_transition_time = "2026-01-01T00:00:00Z".to_owned();
        let kept = merged_conditions(vec![first], ready(true, "Rotated", ""));
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].reason, "Rotated");
        assert_eq!(kept[0].last_transition_time, "2026-01-01T00:00:00Z");
        let changed = merged_conditions(kept, ready(false, "RotationFailed", "vault is sealed"));
        assert_eq!(changed[0].status, "False");
        assert_eq!(changed[0].message, "vault is sealed");
        assert_ne!(changed[0].last_transition_time, "2026-01-01T00:00:00Z");
        let recovered = merged_conditions(changed, ready(true, UNCHANGED_REASON, ""));
        assert_eq!(recovered[0].status, "True");
        assert_eq!(recovered[0].reason, UNCHANGED_REASON);
        let quiet = merged_conditions(recovered.clone(), ready(true, UNCHANGED_REASON, ""));
        assert_eq!(quiet, recovered, "a quiet rotation changes nothing");
    }
}
