//! Bounds on what comes from outside the driver: kubelet's volume attributes (the pod
//! author's), SecretProviderClasses (a namespace admin's), and what providers and backends
//! answer. The driver runs as root on every node, so a bound missing here is a way for one
//! tenant to crash the node's driver or starve the others. Each bound is checked once, before
//! the work it protects, by the code named in its comment.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::lock::lock;

/// Volume attributes one NodePublishVolume may carry (`csi::request`).
pub const MAX_ATTRIBUTES: usize = 128;
/// Entries of a SecretProviderClass's `parameters` (`class::check`).
pub const MAX_PARAMETERS: usize = 128;
/// Bytes of a volume's attributes, and separately of its class's parameters, keys and values
/// together (`csi::request`, `class::check`). Kubernetes stores whole objects of 1.5 MiB.
pub const MAX_PARAMETER_BYTES: usize = 1 << 20;

/// Objects one volume may list, and files one provider answer may hold (each provider's
/// parser; `volume::payload`).
pub const MAX_FILES: usize = 1000;
/// Default of `--max-call-recv-msg-size`: the bytes one volume's provider answer may hold,
/// upstream's bound for plugins. Built-in providers get the same budget for everything they
/// read from their backend for one volume (`ByteBudget`).
pub const DEFAULT_VOLUME_BYTES: usize = 4 << 20;

/// Longest file path in a volume (Linux `PATH_MAX`, as upstream).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest path element (Linux `NAME_MAX`).
pub const MAX_ELEMENT_LEN: usize = 255;
/// Most elements of a file path: deeper trees cost a directory handle per level to walk.
pub const MAX_PATH_DEPTH: usize = 16;

/// Longest `jmesPath` expression (`provider::aws::jmes`).
pub const MAX_JMES_LEN: usize = 512;
/// Most operators and brackets in one `jmesPath` expression: the parser and the interpreter
/// recurse once per level, on a worker thread's stack.
pub const MAX_JMES_OPERATORS: usize = 64;
/// Most a `jmesPath` expression may multiply the size of its secret by: multi-selects under
/// projections and flattens multiply, so a few dozen operators could build billions of values.
pub const MAX_JMES_GROWTH: u64 = 16;
/// Largest secret `jmesPath` runs on: Secrets Manager's own limit, which keeps the parsed
/// document and what an expression builds from it small.
pub const MAX_JMES_SECRET_BYTES: usize = 64 << 10;

/// Deepest nesting of a YAML or JSON document a class or source holds (`provider::yaml`).
pub const MAX_DOCUMENT_DEPTH: usize = 32;
/// Most nodes (scalars, lists, maps) of such a document.
pub const MAX_DOCUMENT_NODES: usize = 100_000;

/// Digits of a `grpc-timeout` header value (the gRPC spec's maximum).
pub const MAX_GRPC_TIMEOUT_DIGITS: usize = 8;

/// Bytes of backend answers a built-in provider keeps to share between pods of one identity.
pub const MAX_SHARED_READ_BYTES: usize = 16 << 20;
/// Dynamic-secret leases the Vault provider holds to renew, over all volumes of the node.
pub const MAX_HELD_LEASES: usize = 10_000;
/// Bytes of leased answers held with them.
pub const MAX_HELD_LEASE_BYTES: usize = 16 << 20;
/// Vault HTTP clients kept, one per distinct TLS setting.
pub const MAX_TLS_CLIENTS: usize = 32;
/// Largest TLS file (CA bundle, client certificate or key) read for a class.
pub const MAX_TLS_FILE_BYTES: u64 = 1 << 20;
/// Most files read from a `vaultCADirectory`.
pub const MAX_CA_DIRECTORY_FILES: usize = 256;
/// Largest answer of the EKS Pod Identity agent.
pub const MAX_AGENT_ANSWER_BYTES: usize = 64 << 10;

/// Default of `--max-concurrent-fetches`: volumes fetching from providers at once on a node.
/// With `DEFAULT_VOLUME_BYTES` each, this bounds what secrets in flight can take.
pub const DEFAULT_CONCURRENT_FETCHES: usize = 16;
/// The share of those one namespace may hold, as a divisor: no tenant takes more than a
/// quarter of the node's fetch slots, however many volumes its pods have.
pub const NAMESPACE_SHARE_DIVISOR: usize = 4;

/// Distinct values one metric label takes before further ones are counted as `other`.
pub const MAX_LABEL_VALUES: usize = 32;
/// Longest metric label value.
pub const MAX_LABEL_LEN: usize = 64;

/// Bytes one volume may still read from its backend; shared by the volume's concurrent
/// requests, so the bound holds for their sum.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    used: AtomicUsize,
}

/// A budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    /// The budget's limit in bytes.
    pub limit: usize,
}

impl ByteBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes `bytes` from the budget, or fails (taking nothing) when they do not fit.
    pub fn charge(&self, bytes: usize) -> Result<(), Exhausted> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .map(drop)
            .map_err(|_| Exhausted { limit: self.limit })
    }
}

/// The node's fetch slots: at most `total` volumes fetch from providers at once, and at most
/// a quarter of them (`NAMESPACE_SHARE_DIVISOR`) for one namespace, so a tenant whose pods
/// point at a slow or hostile backend delays only itself. Waiters are served in order.
#[derive(Debug)]
pub struct FetchSlots {
    node: Arc<Semaphore>,
    share: usize,
    namespaces: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A held fetch slot; dropping it frees the slot.
#[derive(Debug)]
pub struct FetchSlot {
    _namespace: OwnedSemaphorePermit,
    _node: OwnedSemaphorePermit,
}

impl FetchSlots {
    /// `total` slots for the node (at least one), a quarter of them (at least one) for each
    /// namespace.
    pub fn new(total: usize) -> Self {
        let total = total.max(1);
        Self {
            node: Arc::new(Semaphore::new(total)),
            share: (total / NAMESPACE_SHARE_DIVISOR).max(1),
            namespaces: Mutex::new(HashMap::new()),
        }
    }

    /// How many slots one namespace may hold.
    pub fn namespace_share(&self) -> usize {
        self.share
    }

    /// Waits for a slot of `namespace` and of the node (callers bound the wait).
    pub async fn acquire(&self, namespace: &str) -> FetchSlot {
        let namespace_slots = {
            let mut namespaces = lock(&self.namespaces);
            if namespaces.len() > 64 {
                // Nobody holds or waits for an idle namespace's semaphore but the map.
                namespaces.retain(|_, slots| Arc::strong_count(slots) > 1);
            }
            namespaces
                .entry(namespace.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.share)))
                .clone()
        };
        // Neither semaphore is ever closed.
        let namespace = namespace_slots
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("fetch slots are never closed"));
        let node = self
            .node
            .clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("fetch slots are never closed"));
        FetchSlot {
            _namespace: namespace,
            _node: node,
        }
    }
}

/// Why a file path a provider or class names cannot be written into a volume.
pub fn check_file_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("the path is empty");
    }
    if path.len() > MAX_PATH_LEN {
        return Err("the path is longer than 4096 bytes");
    }
    if path.contains('\0') {
        return Err("the path contains a NUL byte");
    }
    if path.starts_with('/') {
        return Err("the path is absolute; it must be relative to the volume");
    }
    let mut depth = 0;
    for element in path.split('/') {
        depth += 1;
        match element {
            ".." => return Err("the path contains '..'"),
            "" | "." => return Err("the path is not clean (empty, '.' or trailing '/' element)"),
            e if e.len() > MAX_ELEMENT_LEN => {
                return Err("a path element is longer than 255 bytes");
            }
            _ => {}
        }
    }
    if depth > MAX_PATH_DEPTH {
        return Err("the path is more than 16 directories deep");
    }
    if path.starts_with("..") {
        return Err("the first element starts with '..', which is reserved for the writer");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_holds_for_the_sum_and_a_refused_charge_takes_nothing() {
        let budget = ByteBudget::new(10);
        assert!(budget.charge(6).is_ok());
        assert_eq!(budget.charge(5), Err(Exhausted { limit: 10 }));
        assert!(budget.charge(4).is_ok());
        assert!(budget.charge(1).is_err());
        assert!(budget.charge(usize::MAX).is_err());
    }

    #[tokio::test]
    async fn one_namespace_cannot_take_more_than_its_share_of_fetch_slots() {
        let slots = FetchSlots::new(8);
        assert_eq!(slots.namespace_share(), 2);
        let held = [slots.acquire("noisy").await, slots.acquire("noisy").await];
        let third =
            tokio::time::timeout(std::time::Duration::from_millis(50), slots.acquire("noisy"));
        assert!(third.await.is_err(), "a third slot for one namespace");
        let other =
            tokio::time::timeout(std::time::Duration::from_millis(50), slots.acquire("quiet"));
        assert!(other.await.is_ok(), "another namespace still gets a slot");
        drop(held);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), slots.acquire("noisy"))
                .await
                .is_ok()
        );
    }

    #[test]
    fn paths_are_bounded_in_depth() {
        let deep = vec!["d"; MAX_PATH_DEPTH].join("/");
        assert!(check_file_path(&deep).is_ok());
        let deeper = vec!["d"; MAX_PATH_DEPTH + 1].join("/");
        assert!(check_file_path(&deeper).unwrap_err().contains("16"));
        let hostile = vec!["d"; 2000].join("/");
        assert!(check_file_path(&hostile).is_err());
    }
}
