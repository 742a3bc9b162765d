//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it:
//! a replica writes only while it holds an unexpired lease, renews it every retry period,
//! stops when it could not renew within the renew deadline, and releases it on shutdown so
//! another replica takes over at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio_util::sync::CancellationToken;

use crate::error::kube_message;
use crate::lock::lock;

/// Lease timings (client-go's defaults are 15 s, 10 s and 2 s).
#[derive(Debug, Clone)]
pub struct Timings {
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops writing.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

/// One replica's claim on a Lease.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
    /// Another holder's record as last seen, and when it was first seen by this replica's
    /// clock: a lease is expired when its record has not changed for its duration, so clocks
    /// of different nodes never have to agree.
    observed: Mutex<Option<(String, Instant)>>,
}

impl Elector {
    /// A claim on `namespace/name` as `identity` (the pod's name, unique per replica).
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timings: Timings,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timings,
            observed: Mutex::new(None),
        }
    }

    /// Waits until this replica holds the lease; `false` if shut down first.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> bool {
        let mut logged = false;
        loop {
            match self.try_hold().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return true;
                }
                Ok(false) if !logged => {
                    tracing::info!(lease = %self.name, "another replica is the leader; waiting");
                    logged = true;
                }
                Ok(false) => {}
                Err(message) => {
                    tracing::warn!(lease = %self.name, error = %message, "leader election failed")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(self.timings.retry_period) => {}
            }
        }
    }

    /// Renews the lease until it is lost (then `lost` is cancelled) or `shutdown` (then it is
    /// released).
    pub async fn hold(&self, shutdown: CancellationToken, lost: CancellationToken) {
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.release().await;
                    return;
                }
                () = tokio::time::sleep(self.timings.retry_period) => {}
            }
            match tokio::time::timeout(self.timings.retry_period, self.try_hold()).await {
                Ok(Ok(true)) => renewed = tokio::time::Instant::now(),
                Ok(Ok(false)) => {
                    tracing::error!(lease = %self.name, "another replica took the lease; stopping");
                    lost.cancel();
                    return;
                }
                Ok(Err(message)) => {
                    tracing::warn!(lease = %self.name, error = %message, "renewing the lease failed")
                }
                Err(_) => tracing::warn!(lease = %self.name, "renewing the lease timed out"),
            }
            if renewed.elapsed() > self.timings.renew_deadline {
                tracing::error!(
                    lease = %self.name,
                    deadline = ?self.timings.renew_deadline,
                    "could not renew the lease within the renew deadline; stopping"
                );
                lost.cancel();
                return;
            }
        }
    }

    /// Takes or renews the lease if it is ours or expired; `Ok(false)` if another holds it.
    async fn try_hold(&self) -> Result<bool, String> {
        let now = MicroTime(jiff::Timestamp::now());
        let seconds = i32::try_from(self.timings.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let existing = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| kube_message(&e))?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(err) => Err(kube_message(&err)),
            };
        };
        let spec = lease.spec.get_or_insert_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        if !ours && !holder.is_empty() && !self.expired(spec) {
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now);
        // The resourceVersion read above makes this a compare-and-swap.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(kube_message(&err)),
        }
    }

    /// Gives the lease up so that another replica need not wait for it to expire.
    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "released the lease"),
            Err(err) => {
                tracing::warn!(lease = %self.name, error = %kube_message(&err), "releasing the lease failed")
            }
        }
    }

    /// Whether another holder's record stayed unchanged for its lease duration.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let record = format!(
            "{}|{:?}",
            spec.holder_identity.as_deref().unwrap_or_default(),
            spec.renew_time.as_ref().map(|t| t.0)
        );
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        );
        let mut observed = lock(&self.observed);
        match observed.as_ref() {
            Some((seen, at)) if *seen == record => at.elapsed() > duration,
            _ => {
                *observed = Some((record, Instant::now()));
                false
            }
        }
    }
}
