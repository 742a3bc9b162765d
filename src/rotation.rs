//! Rotation (DESIGN §2 stage 7): what the driver remembers of each mounted volume between
//! kubelet's republish calls, when a mounted volume is due for a fresh fetch, and how the
//! outcome is reported. A failed rotation keeps the old files (kubernetes#121271) and says so
//! where people look: an Event on the pod, the `Ready` condition of its status record and the
//! rotation metric.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::events::{self, Recorder, Regarding, Severity};
use crate::lock::lock;
use crate::pod::PodInfo;
use crate::pod_status::PodStatusWriter;
use crate::provider::ObjectVersion;
use crate::volume::AtomicWriter;

/// What the driver remembers of a mounted volume between calls.
#[derive(Debug, Clone)]
struct VolumeState {
    fetched_at: SystemTime,
    versions: Vec<ObjectVersion>,
    /// The class's own rotation interval, as of the last fetch.
    interval: Option<Duration>,
    /// The class's refresh request, as of the last fetch.
    refresh: Option<String>,
}

/// The mounted volumes of this process, by target path.
#[derive(Debug, Default)]
pub struct Volumes {
    states: Mutex<HashMap<PathBuf, VolumeState>>,
}

impl Volumes {
    /// The versions last fetched into `target`; empty if none are known.
    pub fn versions(&self, target: &Path) -> Vec<ObjectVersion> {
        lock(&self.states)
            .get(target)
            .map(|state| state.versions.clone())
            .unwrap_or_default()
    }

    /// Records a successful fetch into `target`, with its class's own interval and refresh
    /// request.
    pub fn remember(
        &self,
        target: &Path,
        versions: Vec<ObjectVersion>,
        interval: Option<Duration>,
        refresh: Option<String>,
    ) {
        let state = VolumeState {
            fetched_at: SystemTime::now(),
            versions,
            interval,
            refresh,
        };
        lock(&self.states).insert(target.to_owned(), state);
    }

    /// Drops what is known of `target` (unpublished, or its first mount failed).
    pub fn forget(&self, target: &Path) {
        lock(&self.states).remove(target);
    }

    /// Whether a mounted volume's rotation interval (its class's, else the node's) has passed,
    /// or its class requests a refresh (`refresh`) it was not fetched for. After a restart, the
    /// time of the last content swap stands in for the last fetch, and a refresh request
    /// counts as new: one fetch too many rather than one request missed.
    pub fn due(&self, target: &Path, node_interval: Duration, refresh: Option<&str>) -> bool {
        let state = lock(&self.states).get(target).cloned();
        if let Some(requested) = refresh
            && state
                .as_ref()
                .is_none_or(|s| s.refresh.as_deref() != Some(requested))
        {
            return true;
        }
        let interval = state
            .as_ref()
            .and_then(|s| s.interval)
            .unwrap_or(node_interval);
        let last = state
            .map(|s| s.fetched_at)
            .or_else(|| AtomicWriter::swapped_at(target).ok());
        last.and_then(|at| at.elapsed().ok())
            .is_none_or(|age| age >= interval)
    }
}

/// Where rotation outcomes go besides the metrics; both are absent outside a cluster.
#[derive(Debug, Clone, Copy)]
pub struct Reports<'a> {
    /// Pod Events.
    pub events: Option<&'a Recorder>,
    /// The status records.
    pub pod_status: Option<&'a PodStatusWriter>,
}

impl Reports<'_> {
    /// A Normal Event: new contents of `class_name` are mounted.
    pub async fn rotated(&self, pod: &PodInfo, class_name: &str) {
        if let Some(recorder) = self.events {
            let note = format!(
                "rotated SecretProviderClass {}/{class_name}: new contents are mounted",
                pod.namespace
            );
            recorder
                .record(
                    &pod_ref(pod),
                    Severity::Normal,
                    events::MOUNT_ROTATION_COMPLETE,
                    &note,
                )
                .await;
        }
    }

    /// A Warning Event and `Ready=False` on the status record; the old contents stay.
    pub async fn failed(&self, pod: &PodInfo, class_name: &str, message: &str) {
        if let Some(recorder) = self.events {
            let note = format!(
                "rotation of SecretProviderClass {}/{class_name} failed; the previous contents \
                 stay mounted: {message}",
                pod.namespace
            );
            recorder
                .record(
                    &pod_ref(pod),
                    Severity::Warning,
                    events::MOUNT_ROTATION_FAILED,
                    &note,
                )
                .await;
        }
        if let Some(writer) = self.pod_status
            && let Err(err) = writer
                .record_rotation_failure(pod, class_name, message)
                .await
        {
            tracing::warn!(error = %err, "failed to record the rotation failure on the SecretProviderClassPodStatus");
        }
    }
}

fn pod_ref(pod: &PodInfo) -> Regarding {
    Regarding::pod(&pod.namespace, &pod.name, &pod.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(v: &str) -> Vec<ObjectVersion> {
        vec![ObjectVersion {
            id: "a".into(),
            version: v.into(),
        }]
    }

    #[test]
    fn a_volume_is_due_when_its_own_interval_else_the_nodes_has_passed() {
        let volumes = Volumes::default();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path();
        assert!(
            volumes.due(target, Duration::from_secs(3600), None),
            "nothing known and nothing written: due"
        );
        volumes.remember(target, version("1"), None, None);
        assert!(!volumes.due(target, Duration::from_secs(3600), None));
        assert!(volumes.due(target, Duration::ZERO, None));
        volumes.remember(target, version("2"), Some(Duration::ZERO), None);
        assert!(
            volumes.due(target, Duration::from_secs(3600), None),
            "the class's interval wins"
        );
        assert_eq!(volumes.versions(target), version("2"));
        volumes.forget(target);
        assert!(volumes.versions(target).is_empty());
    }

    #[test]
    fn a_new_refresh_request_makes_a_volume_due_once() {
        let volumes = Volumes::default();
        let dir = tempfile::tempdir().unwrap();
        let (target, hour) = (dir.path(), Duration::from_secs(3600));
        volumes.remember(target, version("1"), None, None);
        assert!(!volumes.due(target, hour, None));
        assert!(volumes.due(target, hour, Some("1")), "a first request");
        volumes.remember(target, version("1"), None, Some("1".into()));
        assert!(
            !volumes.due(target, hour, Some("1")),
            "the same request again"
        );
        assert!(volumes.due(target, hour, Some("2")), "a new value");
        assert!(!volumes.due(target, hour, None), "a request withdrawn");
        volumes.forget(target);
        assert!(
            volumes.due(target, hour, Some("2")),
            "unknown after a restart: fetch"
        );
    }
}
