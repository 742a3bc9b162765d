//! Kubernetes Events on pods and SecretSyncs: what `kubectl describe` shows about sync and
//! rotation.
//!
//! Core `v1` Events, as upstream records them (same component name, so existing alerts match).
//! A repeat of the same reason and message on the same object within ten minutes bumps the count
//! of the first Event instead of creating another. Messages name objects and files, never
//! their values.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::lock::lock;

/// Upstream's event source component, kept so existing alerts and filters match.
pub const COMPONENT: &str = "csi-secrets-store-controller";

/// A sync entry could not be written (upstream's reason).
pub const FAILED_TO_CREATE_SECRET: &str = "FailedToCreateSecret";
/// A rotation failed; the previous files stay mounted.
pub const MOUNT_ROTATION_FAILED: &str = "MountRotationFailed";
/// A rotation swapped in new contents.
pub const MOUNT_ROTATION_COMPLETE: &str = "MountRotationComplete";
/// A synced Secret changed and the pod's owner was asked to roll out.
pub const ROLLOUT_TRIGGERED: &str = "RolloutTriggered";

/// How long a repeat is folded into the first Event.
const SERIES_WINDOW: Duration = Duration::from_secs(600);
/// Most distinct Events remembered for folding.
const MAX_REMEMBERED: usize = 4096;
/// Kubernetes truncates longer messages; we do it ourselves, on a character boundary.
const MAX_MESSAGE: usize = 1024;

/// Normal or Warning, as `kubectl get events` filters them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// Something worked.
    Normal,
    /// Something needs a person.
    Warning,
}

/// The sync controller's event source component, as upstream's controller names it.
pub const SYNC_CONTROLLER_COMPONENT: &str = "secret-sync-controller";

/// The object an Event is about: a pod, or a SecretSync of the sync controller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Regarding {
    /// `apiVersion`, e.g. `v1`.
    pub api_version: String,
    /// `kind`, e.g. `Pod`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID, so an Event never attaches to a later object of the same name.
    pub uid: String,
}

impl Regarding {
    /// A pod.
    pub fn pod(namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            api_version: "v1".to_owned(),
            kind: "Pod".to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    object: Regarding,
    severity: Severity,
    reason: String,
    message: String,
}

#[derive(Debug)]
struct Series {
    name: String,
    count: i32,
    last_sent: Instant,
}

/// Records Events for this node's driver, or for the sync controller.
pub struct Recorder {
    client: kube::Client,
    host: String,
    component: &'static str,
    series: Mutex<HashMap<SeriesKey, Series>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder that signs Events with this node's name.
    pub fn new(client: kube::Client, node_name: &str) -> Self {
        Self::for_component(client, node_name, COMPONENT)
    }

    /// A recorder of another component (the sync controller), signed with `host`.
    pub fn for_component(client: kube::Client, host: &str, component: &'static str) -> Self {
        Self {
            client,
            host: host.to_owned(),
            component,
            series: Mutex::new(HashMap::new()),
        }
    }

    /// Records an Event on `object`. Failing to record is logged, never returned: an Event is
    /// a courtesy, not part of the operation it reports.
    pub async fn record(
        &self,
        object: &Regarding,
        severity: Severity,
        reason: &str,
        message: &str,
    ) {
        let message = truncate(message);
        let key = SeriesKey {
            object: object.clone(),
            severity,
            reason: reason.to_owned(),
            message: message.clone(),
        };
        let now = Time(jiff::Timestamp::now());
        let repeat = {
            let mut series = lock(&self.series);
            series.retain(|_, s| s.last_sent.elapsed() < SERIES_WINDOW);
            series.get_mut(&key).map(|s| {
                s.count += 1;
                s.last_sent = Instant::now();
                (s.name.clone(), s.count)
            })
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &object.namespace);
        let result = match repeat {
            Some((name, count)) => {
                let patch = json!({"count": count, "lastTimestamp": now});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    // The series' first Event expired or was deleted: start a new series.
                    Err(kube::Error::Api(status)) if status.code == 404 => {
                        self.forget(&key);
                        self.create(&api, key, object, severity, reason, &message, &now)
                            .await
                    }
                    other => other.map(drop),
                }
            }
            None => {
                self.create(&api, key, object, severity, reason, &message, &now)
                    .await
            }
        };
        if let Err(err) = result {
            tracing::warn!(
                object = %object.name,
                namespace = %object.namespace,
                reason,
                error = %err,
                "failed to record an event"
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        api: &Api<Event>,
        key: SeriesKey,
        object: &Regarding,
        severity: Severity,
        reason: &str,
        message: &str,
        now: &Time,
    ) -> Result<(), kube::Error> {
        let name = format!(
            "{}.{:x}",
            object.name,
            jiff::Timestamp::now().as_nanosecond()
        );
        let event = self.event(&name, object, severity, reason, message, now);
        api.create(&PostParams::default(), &event).await?;
        let mut series = lock(&self.series);
        if series.len() < MAX_REMEMBERED {
            series.insert(
                key,
                Series {
                    name,
                    count: 1,
                    last_sent: Instant::now(),
                },
            );
        }
        Ok(())
    }

    fn forget(&self, key: &SeriesKey) {
        lock(&self.series).remove(key);
    }

    fn event(
        &self,
        name: &str,
        object: &Regarding,
        severity: Severity,
        reason: &str,
        message: &str,
        now: &Time,
    ) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(object.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(object.api_version.clone()),
                kind: Some(object.kind.clone()),
                name: Some(object.name.clone()),
                namespace: Some(object.namespace.clone()),
                uid: Some(object.uid.clone()),
                ..Default::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(
                match severity {
                    Severity::Normal => "Normal",
                    Severity::Warning => "Warning",
                }
                .to_owned(),
            ),
            source: Some(EventSource {
                component: Some(self.component.to_owned()),
                host: Some(self.host.clone()),
            }),
            reporting_component: Some(self.component.to_owned()),
            reporting_instance: Some(self.host.clone()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now.clone()),
            count: Some(1),
            ..Default::default()
        }
    }
}

fn truncate(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let message = "é".repeat(MAX_MESSAGE);
        let cut = truncate(&message);
        assert!(cut.len() <= MAX_MESSAGE);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate("short"), "short");
    }
}
