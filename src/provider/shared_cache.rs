//! Single-flight sharing of backend results (logins, reads) between the mounts of one workload
//! identity, so 50 pods of a Deployment starting together make one login, not 50.
//!
//! Callers choose the key; a key must contain the whole identity (namespace, service account,
//! backend, role), because a value is handed to every caller with an equal key.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::lock::lock;

type Slot<V> = Arc<tokio::sync::Mutex<Option<Cached<V>>>>;

struct Cached<V> {
    value: V,
    /// When the fetch that produced it began: the backend's state it reflects is no older.
    fetched_at: Instant,
    fresh_until: Instant,
    weight: usize,
}

/// A bounded map of values that are shared while fresh and fetched by one caller at a time.
/// Bounded in keys and, with [`SharedCache::weighed`], in the total size of the values.
pub struct SharedCache<K, V> {
    slots: Mutex<HashMap<K, Slot<V>>>,
    capacity: usize,
    max_weight: usize,
    weigh: fn(&V) -> usize,
    weight: AtomicUsize,
}

impl<K, V> std::fmt::Debug for SharedCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCache")
            .field("capacity", &self.capacity)
            .field("max_weight", &self.max_weight)
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SharedCache<K, V> {
    /// A cache holding at most about `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            max_weight: usize::MAX,
            weigh: |_| 0,
            weight: AtomicUsize::new(0),
        }
    }

    /// A cache that also keeps values of at most `max_weight` in all, as `weigh` measures
    /// them (bytes): a value that does not fit is handed to its callers but not kept.
    pub fn weighed(capacity: usize, max_weight: usize, weigh: fn(&V) -> usize) -> Self {
        Self {
            max_weight,
            weigh,
            ..Self::new(capacity)
        }
    }

    /// The fresh value for `key`, or the result of `fetch`, which gets the stale value (to
    /// renew rather than start over) and returns the new value with how long it stays fresh.
    ///
    /// Concurrent callers with one key wait for a single fetch and share its value; a failed
    /// fetch is not cached, and the next waiter tries again. `true` means this call fetched.
    pub async fn get_or_fetch<F, Fut, E>(&self, key: &K, fetch: F) -> Result<(V, bool), E>
    where
        F: FnOnce(Option<V>) -> Fut,
        Fut: Future<Output = Result<(V, Duration), E>>,
    {
        self.get_or_fetch_since(key, None, fetch).await
    }

    /// [`SharedCache::get_or_fetch`], taking a fresh value only if its fetch began at or
    /// after `since`: a rotation shares reads that started after it did, never older ones, so
    /// a value changed before the rotation is always seen.
    pub async fn get_or_fetch_since<F, Fut, E>(
        &self,
        key: &K,
        since: Option<Instant>,
        fetch: F,
    ) -> Result<(V, bool), E>
    where
        F: FnOnce(Option<V>) -> Fut,
        Fut: Future<Output = Result<(V, Duration), E>>,
    {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        let usable = |e: &&Cached<V>| {
            e.fresh_until > Instant::now() && since.is_none_or(|since| e.fetched_at >= since)
        };
        if let Some(entry) = cached.as_ref().filter(usable) {
            return Ok((entry.value.clone(), false));
        }
        let stale = cached.take().map(|entry| {
            self.weight.fetch_sub(entry.weight, Ordering::AcqRel);
            entry.value
        });
        let fetched_at = Instant::now();
        let (value, fresh_for) = fetch(stale).await?;
        let weight = (self.weigh)(&value);
        if self.reserve(weight) {
            *cached = Some(Cached {
                value: value.clone(),
                fetched_at,
                fresh_until: Instant::now() + fresh_for,
                weight,
            });
        }
        Ok((value, true))
    }

    /// Takes `weight` from what may be kept, first dropping expired values if needed.
    fn reserve(&self, weight: usize) -> bool {
        let fits = |this: &Self| {
            this.weight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                    held.checked_add(weight).filter(|t| *t <= this.max_weight)
                })
                .is_ok()
        };
        if fits(self) {
            return true;
        }
        self.drop_expired();
        fits(self)
    }

    /// Drops the value for `key` if `is_bad` says so (a token the backend just refused),
    /// leaving a value another caller already replaced it with.
    pub async fn invalidate_if(&self, key: &K, is_bad: impl Fn(&V) -> bool) {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        if cached.as_ref().is_some_and(|entry| is_bad(&entry.value))
            && let Some(entry) = cached.take()
        {
            self.weight.fetch_sub(entry.weight, Ordering::AcqRel);
        }
    }

    /// Drops every expired value nobody is using, so shared secret values do not outlive
    /// their window in memory.
    pub fn drop_expired(&self) {
        self.retain_fresh(&mut self.lock());
    }

    /// Number of keys held, for tests and metrics.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The weight of the values kept, for tests.
    pub fn weight(&self) -> usize {
        self.weight.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Slot<V>>> {
        lock(&self.slots)
    }

    fn slot(&self, key: &K) -> Slot<V> {
        let mut slots = self.lock();
        if let Some(slot) = slots.get(key) {
            return slot.clone();
        }
        if slots.len() >= self.capacity {
            self.evict(&mut slots);
        }
        let slot = Slot::default();
        slots.insert(key.clone(), slot.clone());
        slot
    }

    /// Removes expired or empty slots nobody is using.
    fn retain_fresh(&self, slots: &mut HashMap<K, Slot<V>>) {
        let now = Instant::now();
        slots.retain(|_, slot| {
            match slot.try_lock() {
                Ok(mut cached) => {
                    let fresh = cached.as_ref().is_some_and(|e| e.fresh_until > now);
                    if !fresh && let Some(entry) = cached.take() {
                        self.weight.fetch_sub(entry.weight, Ordering::AcqRel);
                    }
                    fresh
                }
                // Someone is fetching or reading it: keep it.
                Err(_) => true,
            }
        });
    }

    /// Frees room: first expired or empty slots nobody is using, then any unused slot.
    fn evict(&self, slots: &mut HashMap<K, Slot<V>>) {
        self.retain_fresh(slots);
        if slots.len() >= self.capacity {
            let unused: Vec<K> = slots
                .iter()
                .filter(|(_, slot)| Arc::strong_count(slot) == 1)
                .map(|(key, _)| key.clone())
                .take(slots.len() + 1 - self.capacity)
                .collect();
            for key in unused {
                if let Some(slot) = slots.remove(&key)
                    && let Ok(mut cached) = slot.try_lock()
                    && let Some(entry) = cached.take()
                {
                    self.weight.fetch_sub(entry.weight, Ordering::AcqRel);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let cache = Arc::new(SharedCache::<&str, u32>::new(10));
        let fetches = Arc::new(AtomicUsize::new(0));
        let calls = (0..20).map(|_| {
            let cache = cache.clone();
            let fetches = fetches.clone();
            tokio::spawn(async move {
                cache
                    .get_or_fetch(&"identity", |_| async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, ()>((7, Duration::from_secs(60)))
                    })
                    .await
                    .unwrap()
                    .0
            })
        });
        for call in futures::future::join_all(calls).await {
            assert_eq!(call.unwrap(), 7);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn stale_values_are_handed_to_the_next_fetch_and_errors_are_not_kept() {
        let cache = SharedCache::<&str, u32>::new(10);
        cache
            .get_or_fetch(&"k", |_| async { Ok::<_, ()>((1, Duration::ZERO)) })
            .await
            .unwrap();
        let (value, fetched) = cache
            .get_or_fetch(&"k", |stale| async move {
                Ok::<_, ()>((stale.unwrap() + 1, Duration::from_secs(60)))
            })
            .await
            .unwrap();
        assert_eq!((value, fetched), (2, true));
        assert!(
            cache
                .get_or_fetch(&"other", |_| async { Err::<(u32, Duration), _>("down") })
                .await
                .is_err()
        );
        let (value, fetched) = cache
            .get_or_fetch(&"other", |_| async {
                Ok::<_, ()>((5, Duration::from_secs(60)))
            })
            .await
            .unwrap();
        assert_eq!((value, fetched), (5, true));
    }

    #[tokio::test]
    async fn a_rotation_takes_only_reads_that_began_after_it() {
        let cache = SharedCache::<&str, u32>::new(10);
        let fetch = |v: u32| move |_| async move { Ok::<_, ()>((v, Duration::from_secs(60))) };
        cache.get_or_fetch(&"k", fetch(1)).await.unwrap();
        let rotation = Instant::now();
        // A fresh value read before the rotation began is not taken...
        assert_eq!(
            cache
                .get_or_fetch_since(&"k", Some(rotation), fetch(2))
                .await
                .unwrap(),
            (2, true)
        );
        // ...one read after it is shared, with rotations and first mounts alike.
        assert_eq!(
            cache
                .get_or_fetch_since(&"k", Some(rotation), fetch(3))
                .await
                .unwrap(),
            (2, false)
        );
        assert_eq!(
            cache.get_or_fetch(&"k", fetch(4)).await.unwrap(),
            (2, false)
        );
    }

    #[tokio::test]
    async fn invalidation_only_drops_the_refused_value() {
        let cache = SharedCache::<&str, u32>::new(10);
        let fresh = |v: u32| move |_| async move { Ok::<_, ()>((v, Duration::from_secs(60))) };
        cache.get_or_fetch(&"k", fresh(1)).await.unwrap();
        cache.invalidate_if(&"k", |v| *v == 2).await;
        assert_eq!(
            cache.get_or_fetch(&"k", fresh(3)).await.unwrap(),
            (1, false)
        );
        cache.invalidate_if(&"k", |v| *v == 1).await;
        assert_eq!(cache.get_or_fetch(&"k", fresh(3)).await.unwrap(), (3, true));
    }

    #[tokio::test]
    async fn expired_values_can_be_dropped_at_once() {
        let cache = SharedCache::<u32, u32>::new(10);
        for (key, ttl) in [(1, Duration::ZERO), (2, Duration::from_secs(60))] {
            cache
                .get_or_fetch(&key, |_| async move { Ok::<_, ()>((key, ttl)) })
                .await
                .unwrap();
        }
        cache.drop_expired();
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn the_cache_stays_bounded() {
        let cache = SharedCache::<u32, u32>::new(4);
        for key in 0..100 {
            cache
                .get_or_fetch(&key, |_| async move {
                    Ok::<_, ()>((key, Duration::from_secs(60)))
                })
                .await
                .unwrap();
        }
        assert!(cache.len() <= 4, "{}", cache.len());
    }

    #[tokio::test]
    async fn weighed_values_beyond_the_bound_are_handed_out_but_not_kept() {
        let cache = SharedCache::<u32, Vec<u8>>::weighed(100, 10, Vec::len);
        let keep = |len: usize| {
            move |_| async move { Ok::<_, ()>((vec![0; len], Duration::from_secs(60))) }
        };
        assert_eq!(cache.get_or_fetch(&1, keep(6)).await.unwrap().0.len(), 6);
        assert_eq!(cache.weight(), 6);
        // Too big to keep beside the first: the caller still gets it.
        assert_eq!(cache.get_or_fetch(&2, keep(6)).await.unwrap().0.len(), 6);
        assert_eq!(cache.weight(), 6);
        let (_, fetched) = cache.get_or_fetch(&2, keep(6)).await.unwrap();
        assert!(fetched, "the value that did not fit was not shared");
        let (_, fetched) = cache.get_or_fetch(&1, keep(6)).await.unwrap();
        assert!(!fetched);
        cache.invalidate_if(&1, |_| true).await;
        assert_eq!(cache.weight(), 0);
    }
}
