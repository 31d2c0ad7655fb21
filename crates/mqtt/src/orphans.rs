//! Sessions whose node died (the cluster engine with a bus).
//!
//! A persistent session names the node that last took it, and only that node expires it
//! (`claims.rs`). When that node dies while its client is away, the survivors take the
//! expiry over: a session whose holder has been missing from the cluster's membership
//! (its heartbeat gone) for its expiry interval — and never less than [`GRACE`] — is
//! ended by whichever survivor looks first, after checking that the store still names
//! the dead node (the client may have come back through another node meanwhile).
//!
//! The clock starts when a survivor first sees the holder gone, not when the client left
//! (the dead node did not write that down), so such a session ends at the latest its
//! interval after the death, never before. Sessions that never expire (MQTT 3.1.1
//! `clean_session = 0`, or an interval of `0xFFFFFFFF`) are left for their client.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::broker::Broker;
use crate::state;

/// However short a session's interval, its holder must have been gone this long: a
/// node cut off from NATS for a moment looks dead to the others.
pub(crate) const GRACE: Duration = Duration::from_secs(10);

/// How often the stored sessions are looked through when nothing is pending.
const SCAN_EVERY: Duration = Duration::from_secs(30);

/// What a node has noticed.
#[derive(Default)]
pub(crate) struct Orphans {
    /// Client id → (its dead holder, when first seen dead).
    seen: HashMap<String, (String, Instant)>,
    /// The nodes alive at the last look.
    alive: HashSet<String>,
    /// When to scan again if no node leaves before: the first pending expiry, or
    /// [`SCAN_EVERY`] after the last scan.
    next_scan: Option<Instant>,
}

impl Broker {
    /// One look (called every second or so): scans the stored sessions when a node left
    /// since the last look, when a pending orphan is due, or every [`SCAN_EVERY`].
    pub(crate) async fn expire_orphans(&self) {
        let Ok(nodes) = self.hub.membership().nodes().await else {
            return;
        };
        let alive: HashSet<String> = nodes.into_iter().map(|n| n.id).collect();
        if !alive.contains(&self.instance) {
            // This node cannot see the cluster (or is leaving): it judges nobody.
            return;
        }
        let now = Instant::now();
        {
            let mut o = self.orphans.lock();
            let someone_left = o.alive.difference(&alive).next().is_some();
            let due = o.next_scan.is_none_or(|t| now >= t);
            o.alive = alive.clone();
            if !(someone_left || due) {
                return;
            }
        }
        let stored = match self.hub.load_state(&self.ctx, state::SESSIONS).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "reading the stored MQTT sessions failed");
                return;
            }
        };
        let mut expired = Vec::new();
        {
            let mut o = self.orphans.lock();
            let mut orphaned = HashSet::new();
            let mut next = now + SCAN_EVERY;
            for (client_id, bytes) in stored {
                let Some(holder) = state::session_holder(&bytes) else {
                    continue;
                };
                let Some(saved) = state::decode_session(&bytes) else {
                    continue;
                };
                if holder.is_empty() || alive.contains(&holder) || saved.expiry == u32::MAX {
                    continue;
                }
                let wait = Duration::from_secs(u64::from(saved.expiry)).max(GRACE);
                let since = match o.seen.get(&client_id) {
                    Some((h, since)) if *h == holder => *since,
                    _ => now,
                };
                if now >= since + wait {
                    expired.push((client_id, holder, saved));
                } else {
                    next = next.min(since + wait);
                    orphaned.insert(client_id.clone());
                    o.seen.insert(client_id, (holder, since));
                }
            }
            o.seen.retain(|k, _| orphaned.contains(k));
            o.next_scan = Some(next);
        }
        for (client_id, holder, saved) in expired {
            if self.held_by(&client_id, &holder).await {
                tracing::info!(client = %client_id, node = %holder, "MQTT session of a node that is gone expired");
                self.forget_session(&client_id, &saved).await;
            }
        }
    }
}
