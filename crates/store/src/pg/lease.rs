//! Leases across nodes: Postgres session advisory locks held on one connection per node.
//!
//! `pg_try_advisory_lock` on a name's 64-bit hash succeeds on one session at a time; a
//! node that dies loses its session and so its locks, and the next node to try gets
//! them. The connection is looked at every [`CHECK`]: when it has broken, every lease
//! it held is lost (`held` turns false at once, before a new connection exists), since
//! another node may hold them by now.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use polyport_core::cluster::Lease;
use polyport_core::{HubError, HubResult};
use postgres::Client;

/// How often the lease connection is checked.
const CHECK: Duration = Duration::from_secs(1);

/// This node's leases.
pub(crate) struct Leases {
    url: String,
    schema: String,
    state: Mutex<State>,
    /// Bumped whenever the connection (and every lock on it) is lost.
    generation: AtomicU64,
}

struct State {
    client: Option<Client>,
    /// Locks taken on `client` per key (they stack in Postgres).
    held: HashMap<i64, usize>,
}

/// A lock key: the schema and the name, hashed (FNV-1a, stable across releases).
fn key(schema: &str, name: &str) -> i64 {
    super::fnv1a(schema.bytes().chain([0]).chain(name.bytes())) as i64
}

impl Leases {
    pub(crate) fn new(url: String, schema: String) -> Arc<Self> {
        let leases = Arc::new(Self {
            url,
            schema,
            state: Mutex::new(State {
                client: None,
                held: HashMap::new(),
            }),
            generation: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&leases);
        let _ = std::thread::Builder::new()
            .name("polyport-leases".into())
            .spawn(move || {
                while let Some(l) = weak.upgrade() {
                    l.check();
                    drop(l);
                    std::thread::sleep(CHECK);
                }
            });
        leases
    }

    /// Loses every lease when the connection has broken.
    fn check(&self) {
        let mut st = self.state.lock();
        let broken = match st.client.as_mut() {
            Some(c) => c.is_closed() || c.simple_query("SELECT 1").is_err(),
            None => false,
        };
        if broken {
            self.lost(&mut st);
        }
    }

    fn lost(&self, st: &mut State) {
        st.client = None;
        if !st.held.is_empty() {
            tracing::warn!(
                leases = st.held.len(),
                "lost the Postgres session holding leases"
            );
        }
        st.held.clear();
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Blocking: takes the lease on `name` if no session holds it.
    pub(crate) fn try_take(self: &Arc<Self>, name: &str) -> HubResult<Option<Box<dyn Lease>>> {
        let k = key(&self.schema, name);
        let mut st = self.state.lock();
        // Always asked of Postgres: a session's locks stack, one unlock per lock, so a
        // guard still being released (on its own thread) cannot unlock a new one.
        if st.client.as_ref().is_none_or(Client::is_closed) {
            if st.client.is_some() {
                self.lost(&mut st);
            }
            let c = super::connect(&self.url, &self.schema).map_err(super::tx::pg_err)?;
            st.client = Some(c);
        }
        let Some(client) = st.client.as_mut() else {
            return Err(HubError::Unavailable("no lease connection".into()));
        };
        let got = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&k])
            .and_then(|r| r.try_get::<_, bool>(0));
        match got {
            Ok(true) => {
                *st.held.entry(k).or_default() += 1;
                Ok(Some(self.guard(k)))
            }
            Ok(false) => Ok(None),
            Err(e) => {
                let e = super::tx::pg_err(e);
                self.lost(&mut st);
                Err(e)
            }
        }
    }

    fn guard(self: &Arc<Self>, key: i64) -> Box<dyn Lease> {
        Box::new(Guard {
            leases: self.clone(),
            key,
            generation: self.generation.load(Ordering::SeqCst),
        })
    }

    fn release(&self, key: i64, generation: u64) {
        let mut st = self.state.lock();
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        match st.held.get_mut(&key) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                st.held.remove(&key);
            }
            None => return,
        }
        if let Some(c) = st.client.as_mut()
            && c.query_one("SELECT pg_advisory_unlock($1)", &[&key])
                .is_err()
        {
            self.lost(&mut st);
        }
    }
}

impl Drop for Leases {
    /// The blocking client closes through a runtime of its own: not on a Tokio thread.
    fn drop(&mut self) {
        if let Some(c) = self.state.get_mut().client.take() {
            let _ = std::thread::Builder::new()
                .name("polyport-pg-close".into())
                .spawn(move || drop(c));
        }
    }
}

struct Guard {
    leases: Arc<Leases>,
    key: i64,
    generation: u64,
}

impl Lease for Guard {
    fn held(&self) -> bool {
        self.leases.generation.load(Ordering::SeqCst) == self.generation
    }
}

impl Drop for Guard {
    /// Unlocks on a thread of its own: the blocking client must not run on a thread
    /// driving Tokio, where guards are usually dropped.
    fn drop(&mut self) {
        let (leases, key, generation) = (self.leases.clone(), self.key, self.generation);
        let _ = std::thread::Builder::new()
            .name("polyport-lease-release".into())
            .spawn(move || leases.release(key, generation));
    }
}

#[cfg(test)]
mod tests {
    use super::{Leases, key};
    use std::time::Duration;

    /// Against the real Postgres (`pg::test_url`): two nodes' lease sessions.
    #[test]
    fn a_lease_is_one_nodes_and_retaking_it_while_the_old_guard_goes_keeps_it() {
        let url = super::super::test_url();
        let schema = format!("lease_{}", polyport_core::record::new_id());
        let (a, b) = (
            Leases::new(url.clone(), schema.clone()),
            Leases::new(url, schema),
        );
        let taken = |l: &std::sync::Arc<Leases>| {
            l.try_take("webhook:x")
                .unwrap_or_else(|e| panic!("Postgres (scripts/services starts it): {e}"))
        };
        let first = taken(&a).unwrap_or_else(|| panic!("a free lease is taken"));
        assert!(taken(&b).is_none(), "held by the other node");
        drop(first);
        // Taken again at once, while the old guard is released on its own thread.
        let again = taken(&a).unwrap_or_else(|| panic!("this node's own lease again"));
        std::thread::sleep(Duration::from_millis(300));
        assert!(again.held());
        assert!(
            taken(&b).is_none(),
            "the old guard's release did not free the new one"
        );
        drop(again);
        std::thread::sleep(Duration::from_millis(300));
        assert!(taken(&b).is_some(), "free once its node lets go");
    }

    #[test]
    fn keys_differ_by_schema_and_name() {
        assert_ne!(key("a", "webhook:x"), key("b", "webhook:x"));
        assert_ne!(key("a", "webhook:x"), key("a", "webhook:y"));
        assert_eq!(key("a", "webhook:x"), key("a", "webhook:x"));
    }
}
