//! Refresh on demand: a new value of a class's `secrets-store.csi.k8s.io/refresh-requested-at`
//! annotation makes the next republish of each of its volumes fetch, whatever the rotation
//! interval. The node learns the values from a metadata-only watch of SecretProviderClasses,
//! so the interval gate reads no class and holds no class's spec in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use kube::ResourceExt as _;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio_util::sync::CancellationToken;

use crate::crd::SecretProviderClass;
use crate::lock::lock;

/// The annotation; any new value requests one fetch of every volume of the class.
pub const REFRESH_ANNOTATION: &str = "secrets-store.csi.k8s.io/refresh-requested-at";
/// Longest value kept; a longer one is cut (a change beyond it still counts, by its length).
const MAX_VALUE: usize = 128;
/// Most classes with the annotation remembered; beyond it new ones are ignored (logged).
const MAX_CLASSES: usize = 100_000;

/// The annotation's current value per class, `(namespace, name)`.
#[derive(Debug, Default)]
pub struct RefreshRequests {
    values: Mutex<HashMap<(String, String), String>>,
}

impl RefreshRequests {
    /// The value `namespace/name` carries now, if any.
    pub fn get(&self, namespace: &str, name: &str) -> Option<String> {
        lock(&self.values)
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Keeps the values current from the API server until `shutdown`.
    pub async fn watch(self: Arc<Self>, client: kube::Client, shutdown: CancellationToken) {
        let api: Api<PartialObjectMeta<SecretProviderClass>> = Api::all(client);
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
        let mut listing: Option<HashMap<(String, String), String>> = None;
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                event = events.next() => event,
            };
            match event {
                None => return,
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "watching SecretProviderClasses for refresh requests");
                }
                Some(Ok(watcher::Event::Init)) => listing = Some(HashMap::new()),
                Some(Ok(watcher::Event::InitApply(class))) => {
                    if let (Some(listing), Some((key, value))) = (listing.as_mut(), entry(&class))
                        && listing.len() < MAX_CLASSES
                    {
                        listing.insert(key, value);
                    }
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    if let Some(listing) = listing.take() {
                        *lock(&self.values) = listing;
                    }
                }
                Some(Ok(watcher::Event::Apply(class))) => self.apply(&class),
                Some(Ok(watcher::Event::Delete(class))) => {
                    lock(&self.values).remove(&key(&class));
                }
            }
        }
    }

    fn apply(&self, class: &PartialObjectMeta<SecretProviderClass>) {
        let mut values = lock(&self.values);
        match entry(class) {
            Some((key, value)) => {
                if values.len() >= MAX_CLASSES && !values.contains_key(&key) {
                    tracing::warn!(
                        limit = MAX_CLASSES,
                        "too many classes request refreshes; this one is ignored"
                    );
                    return;
                }
                values.insert(key, value);
            }
            None => {
                values.remove(&key(class));
            }
        }
    }
}

fn key(class: &PartialObjectMeta<SecretProviderClass>) -> (String, String) {
    (class.namespace().unwrap_or_default(), class.name_any())
}

fn entry(class: &PartialObjectMeta<SecretProviderClass>) -> Option<((String, String), String)> {
    let value = class.annotations().get(REFRESH_ANNOTATION)?;
    Some((key(class), bounded(value)))
}

/// `value`, cut to [`MAX_VALUE`] bytes on a character boundary with its length appended when
/// longer: memory stays bounded and a changed long value still differs (almost always).
pub fn bounded(value: &str) -> String {
    if value.len() <= MAX_VALUE {
        return value.to_owned();
    }
    let mut end = MAX_VALUE;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…{}", &value[..end], value.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_but_still_differ_by_length() {
        assert_eq!(bounded("2026-12-02T10:00:00Z"), "2026-12-02T10:00:00Z");
        let long = "x".repeat(500);
        let cut = bounded(&long);
        assert!(cut.len() < 140);
        assert_ne!(cut, bounded(&"x".repeat(501)));
    }
}
