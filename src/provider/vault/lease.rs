//! Leases of dynamic secrets (database credentials and the like), held per volume so that a
//! rotation renews the credential a pod already has instead of issuing a new one each time.
//!
//! A leased answer is kept with its lease. On a republish it is served again while less
//! than 2/3 of the time last granted has passed; after that the lease is renewed
//! (`sys/leases/renew`, asking for the first TTL again) and served again if Vault grants the
//! whole increment. A lease that is not renewable, whose renewal fails, or whose renewal comes
//! back cut short by the max TTL is replaced by a new read, while the old credential stays
//! valid for the rest of its time so the application can switch. When the volume is
//! unpublished its leases are revoked. Held in memory only: after a restart the next fetch of
//! a volume issues a new credential.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::auth::Identity;
use super::client::{Call, Transport};
use super::config::{ReadRequest, TlsConfig};
use super::read::Response;
use crate::limits::{ByteBudget, MAX_HELD_LEASE_BYTES, MAX_HELD_LEASES};
use crate::lock::lock;
use crate::redact::{Secret, SecretString};

/// One volume's read: leases are never shared between volumes.
pub type Key = (PathBuf, Identity, ReadRequest);

/// Where a lease lives and who may renew or revoke it.
#[derive(Debug, Clone)]
pub struct Site {
    /// Vault address.
    pub address: String,
    /// Vault namespace.
    pub namespace: Option<String>,
    /// TLS settings.
    pub tls: TlsConfig,
    /// The identity's token last used with the lease.
    pub token: SecretString,
}

#[derive(Debug)]
struct Held {
    response: Arc<Response>,
    site: Site,
    /// When the last grant (issue or renewal) was received.
    granted_at: Instant,
    /// The time it granted.
    granted: Duration,
    /// The first TTL, asked for again on each renewal.
    increment: Duration,
    renewable: bool,
}

impl Held {
    fn expires_at(&self) -> Instant {
        self.granted_at + self.granted
    }
}

/// What a republish does with a read it holds a lease for.
#[derive(Debug)]
pub enum Plan {
    /// Serve the held answer again: its lease is young.
    Reuse(Arc<Response>),
    /// Renew the lease, then serve the held answer if the whole increment is granted.
    Renew(Renewal),
    /// Read again: nothing held, or the lease cannot be kept.
    Issue,
}

/// A renewal to send.
#[derive(Debug)]
pub struct Renewal {
    /// The held answer.
    pub response: Arc<Response>,
    lease_id: SecretString,
    /// The TTL asked for.
    pub increment: Duration,
}

/// The leases held on this node, bounded in count and bytes.
#[derive(Debug, Default)]
pub struct Leases {
    held: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<Key, Held>,
    /// Bytes of the held answers.
    bytes: usize,
}

impl Table {
    fn insert(&mut self, key: Key, held: Held) {
        self.bytes += held.response.len();
        if let Some(old) = self.entries.insert(key, held) {
            self.bytes -= old.response.len();
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(old) = self.entries.remove(key) {
            self.bytes -= old.response.len();
        }
    }

    /// Drops the entries `keep` refuses.
    fn retain(&mut self, mut keep: impl FnMut(&Key, &Held) -> bool) {
        let bytes = &mut self.bytes;
        self.entries.retain(|key, held| {
            let kept = keep(key, held);
            if !kept {
                *bytes -= held.response.len();
            }
            kept
        });
    }
}

impl Leases {
    /// What to do for `key` now.
    pub fn plan(&self, key: &Key) -> Plan {
        let held = lock(&self.held);
        let Some(entry) = held.entries.get(key) else {
            return Plan::Issue;
        };
        let now = Instant::now();
        let (Some(lease), true) = (&entry.response.lease, now < entry.expires_at()) else {
            return Plan::Issue;
        };
        if now < entry.granted_at + entry.granted * 2 / 3 {
            Plan::Reuse(entry.response.clone())
        } else if entry.renewable {
            Plan::Renew(Renewal {
                response: entry.response.clone(),
                lease_id: lease.id.clone(),
                increment: entry.increment,
            })
        } else {
            Plan::Issue
        }
    }

    /// Records a new leased answer for `key`; a read without a usable lease is not kept.
    pub fn issued(&self, key: Key, response: Arc<Response>, site: Site) {
        let Some(lease) = response.lease.clone().filter(|l| !l.duration.is_zero()) else {
            return;
        };
        if response.len() > MAX_HELD_LEASE_BYTES {
            return;
        }
        let mut held = lock(&self.held);
        let now = Instant::now();
        held.remove(&key);
        let full = |held: &Table| {
            held.entries.len() >= MAX_HELD_LEASES
                || held.bytes + response.len() > MAX_HELD_LEASE_BYTES
        };
        if full(&held) {
            held.retain(|_, entry| entry.expires_at() > now);
        }
        while full(&held) {
            let Some(soonest) = held
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.expires_at())
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            held.remove(&soonest);
        }
        held.insert(
            key,
            Held {
                response,
                site,
                granted_at: now,
                granted: lease.duration,
                increment: lease.duration,
                renewable: lease.renewable,
            },
        );
    }

    /// Records a renewal of `key`'s lease that granted `granted` at `at`.
    pub fn renewed(&self, key: &Key, at: Instant, granted: Duration, token: SecretString) {
        if let Some(entry) = lock(&self.held).entries.get_mut(key) {
            entry.granted_at = at;
            entry.granted = granted;
            entry.site.token = token;
        }
    }

    /// Forgets the leases of the volume at `target`, returning those still alive to revoke.
    pub fn release(&self, target: &Path) -> Vec<(SecretString, Site)> {
        let now = Instant::now();
        let mut released = Vec::new();
        lock(&self.held).retain(|(path, _, _), entry| {
            if path != target {
                return true;
            }
            if let Some(lease) = &entry.response.lease
                && entry.expires_at() > now
            {
                released.push((lease.id.clone(), entry.site.clone()));
            }
            false
        });
        released
    }
}

#[derive(Deserialize)]
struct RenewReply {
    #[serde(default)]
    lease_duration: u64,
}

/// Bytes a renewal or revocation answer may take.
const ANSWER_BYTES: usize = 64 << 10;

/// Asks Vault to extend the lease by the renewal's increment; the time it granted.
pub async fn renew(
    transport: &Transport,
    site: &Site,
    renewal: &Renewal,
    deadline: Instant,
) -> Result<Duration, String> {
    let body = serde_json::json!({
        "lease_id": renewal.lease_id.expose(),
        "increment": renewal.increment.as_secs(),
    });
    let reply = send(transport, site, "/v1/sys/leases/renew", &body, deadline).await?;
    if reply.status != 200 {
        return Err(format!("HTTP {}: {}", reply.status, reply.errors()));
    }
    let parsed: RenewReply = serde_json::from_slice(reply.body.expose())
        .map_err(|_| "the renewal answer is not JSON with lease_duration".to_owned())?;
    Ok(Duration::from_secs(parsed.lease_duration))
}

/// Asks Vault to revoke the lease now.
pub async fn revoke(
    transport: &Transport,
    site: &Site,
    lease_id: &SecretString,
    deadline: Instant,
) -> Result<(), String> {
    let body = serde_json::json!({"lease_id": lease_id.expose()});
    let reply = send(transport, site, "/v1/sys/leases/revoke", &body, deadline).await?;
    match reply.status {
        200 | 204 => Ok(()),
        403 => Err(format!(
            "HTTP 403: {}; grant the role's policy update on sys/leases/revoke, or run the \
             driver with --vault-revoke-leases=false to let leases expire",
            reply.errors()
        )),
        status => Err(format!("HTTP {status}: {}", reply.errors())),
    }
}

async fn send(
    transport: &Transport,
    site: &Site,
    path: &str,
    body: &serde_json::Value,
    deadline: Instant,
) -> Result<super::client::Reply, String> {
    let body = Secret::new(body.to_string());
    let call = Call {
        method: "PUT",
        address: &site.address,
        path_and_query: path,
        token: Some(&site.token),
        namespace: site.namespace.as_deref(),
        body: Some(&body),
    };
    transport
        .send(&site.tls, &call, deadline, &ByteBudget::new(ANSWER_BYTES))
        .await
        .map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    use super::super::client::Reply;
    use super::super::config::{self, Defaults};
    use super::super::read;
    use super::*;
    use crate::provider::PodInfo;

    fn key(target: &str) -> Key {
        let parameters = BTreeMap::from([
            ("roleName".to_owned(), "app".to_owned()),
            ("vaultAddress".to_owned(), "http://vault:8200".to_owned()),
            (
                "objects".to_owned(),
                "- {objectName: u, secretPath: database/creds/app, secretKey: username}\n"
                    .to_owned(),
            ),
        ]);
        let config = config::parse(&parameters, &PodInfo::default(), &Defaults::default()).unwrap();
        let request = config.objects[0].request.clone();
        (PathBuf::from(target), Identity::of(&config), request)
    }

    fn answer(body: &str) -> Arc<Response> {
        let reply = Reply {
            status: 200,
            body: Secret::new(Bytes::from(body.to_owned())),
        };
        Arc::new(read::classify(reply).unwrap())
    }

    fn leased(ttl: u64, renewable: bool) -> Arc<Response> {
        answer(&format!(
            r#"{{"lease_id":"database/creds/app/x1","lease_duration":{ttl},"renewable":{renewable},"data":{{"username":"u"}}}}"#
        ))
    }

    fn site() -> Site {
        Site {
            address: "http://vault:8200".to_owned(),
            namespace: None,
            tls: TlsConfig::default(),
            token: SecretString::new("t".to_owned()),
        }
    }

    /// Moves `key`'s last grant `ago` into the past.
    fn age(leases: &Leases, key: &Key, ago: Duration) {
        lock(&leases.held).entries.get_mut(key).unwrap().granted_at = Instant::now() - ago;
    }

    #[test]
    fn a_young_lease_is_reused_an_older_one_renewed_and_an_expired_one_issued_again() {
        let leases = Leases::default();
        let key = key("/pods/a/volumes/v");
        assert!(matches!(leases.plan(&key), Plan::Issue));
        leases.issued(key.clone(), leased(12, true), site());
        assert!(matches!(leases.plan(&key), Plan::Reuse(_)));
        age(&leases, &key, Duration::from_secs(9));
        let Plan::Renew(renewal) = leases.plan(&key) else {
            panic!("past 2/3 of the TTL a renewable lease is renewed");
        };
        assert_eq!(renewal.increment, Duration::from_secs(12));
        leases.renewed(
            &key,
            Instant::now(),
            Duration::from_secs(12),
            SecretString::new("t2".to_owned()),
        );
        assert!(matches!(leases.plan(&key), Plan::Reuse(_)));
        age(&leases, &key, Duration::from_secs(13));
        assert!(matches!(leases.plan(&key), Plan::Issue));
    }

    #[test]
    fn a_lease_that_cannot_be_renewed_is_issued_again_past_two_thirds() {
        let leases = Leases::default();
        let key = key("/pods/a/volumes/v");
        leases.issued(key.clone(), leased(12, false), site());
        assert!(matches!(leases.plan(&key), Plan::Reuse(_)));
        age(&leases, &key, Duration::from_secs(9));
        assert!(matches!(leases.plan(&key), Plan::Issue));
    }

    #[test]
    fn reads_without_a_lease_are_never_held() {
        let leases = Leases::default();
        let key = key("/pods/a/volumes/v");
        leases.issued(key.clone(), answer(r#"{"data":{"username":"u"}}"#), site());
        leases.issued(key.clone(), leased(0, true), site());
        assert!(matches!(leases.plan(&key), Plan::Issue));
    }

    #[test]
    fn releasing_a_volume_returns_its_live_leases_only() {
        let leases = Leases::default();
        let (a, b, c) = (key("/a"), key("/b"), key("/c"));
        leases.issued(a.clone(), leased(12, true), site());
        leases.issued(b.clone(), leased(12, true), site());
        leases.issued(c.clone(), leased(12, true), site());
        age(&leases, &c, Duration::from_secs(20));
        let released = leases.release(Path::new("/a"));
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].0.expose(), "database/creds/app/x1");
        assert!(matches!(leases.plan(&a), Plan::Issue));
        assert!(matches!(leases.plan(&b), Plan::Reuse(_)));
        assert!(
            leases.release(Path::new("/c")).is_empty(),
            "expired: nothing to revoke"
        );
    }

    #[test]
    fn the_table_is_bounded_and_keeps_its_byte_count() {
        let leases = Leases::default();
        for i in 0..MAX_HELD_LEASES + 5 {
            leases.issued(key(&format!("/v{i}")), leased(60, true), site());
        }
        let held = lock(&leases.held);
        assert_eq!(held.entries.len(), MAX_HELD_LEASES);
        let bytes: usize = held.entries.values().map(|e| e.response.len()).sum();
        assert_eq!(held.bytes, bytes);
    }
}
