//! The audit trail: failed sign-ins, refusals and admin changes, published by the Hub
//! itself as durable events on `$SYS/audit/{auth,refused,admin}`, so they are tailed,
//! replayed and delivered like any other event (and only admins can read them).
//!
//! Only while an identity source exists (users, keys or JWTs): an open server has
//! nobody to attribute an entry to. Recording never waits: events go through a bounded queue to one task that publishes
//! at most [`RATE`] a second; the rest are counted in `polyport_audit_dropped_total`, so
//! a password-guessing flood cannot fill the log or slow the doors down.

use std::sync::Weak;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::auth::AuthContext;
use crate::event::{Durability, EventDraft, Origin};
use crate::hub::{Hub, HubInner};
use crate::topic::Topic;

/// Audit events published per second at most.
pub(crate) const RATE: u32 = 1000;
const QUEUE: usize = 4096;

/// One audit record: (`$SYS/audit/` suffix, event type suffix, data).
pub(crate) type Entry = (&'static str, &'static str, Value);

/// Starts the publishing task when there is a runtime to run it on.
pub(crate) fn start(hub: Weak<HubInner>) -> Option<mpsc::Sender<Entry>> {
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let (tx, mut rx) = mpsc::channel::<Entry>(QUEUE);
    rt.spawn(async move {
        let system = AuthContext::system(Origin("audit"));
        let (mut window, mut sent) = (Instant::now(), 0u32);
        while let Some((topic, kind, data)) = rx.recv().await {
            if window.elapsed() >= Duration::from_secs(1) {
                (window, sent) = (Instant::now(), 0);
            }
            if sent >= RATE {
                metrics::counter!("polyport_audit_dropped_total").increment(1);
                continue;
            }
            sent += 1;
            let Some(inner) = hub.upgrade() else { return };
            let hub = Hub { inner };
            let Ok(t) = Topic::new(&format!("$SYS/audit/{topic}")) else {
                continue;
            };
            let mut draft = EventDraft::new(t, data.to_string());
            draft.content_type = Some("application/json".into());
            draft.event_type = Some(format!("polyport.audit.{kind}"));
            draft.durability = Durability::Durable;
            // Submitted in order; not awaited, so a slow disk cannot back this up.
            if let Ok(pending) = hub.submit_publish(&system, draft).await {
                tokio::spawn(pending);
            }
        }
    });
    Some(tx)
}

impl Hub {
    fn record(&self, entry: Entry) {
        // With no identity source everyone is an admin and nothing is refused for who
        // they are: there is nobody to attribute an entry to.
        if self.inner.identities.is_open() {
            return;
        }
        if let Some(tx) = &self.inner.audit
            && tx.try_send(entry).is_err()
        {
            metrics::counter!("polyport_audit_dropped_total").increment(1);
        }
    }

    /// A credential was refused.
    pub(crate) fn audit_auth_failed(&self, origin: Origin, username: Option<&str>, reason: &str) {
        self.record((
            "auth",
            "auth_failed",
            json!({"origin": origin.0, "username": username, "reason": reason}),
        ));
    }

    /// The policy refused an action.
    pub(crate) fn audit_refused(&self, ctx: &AuthContext, action: &str, reason: &str) {
        self.record((
            "refused",
            "refused",
            json!({"who": ctx.principal(), "origin": ctx.origin.0, "action": action, "reason": reason}),
        ));
    }

    /// An admin changed users, keys, collections or webhook endpoints. The server's own
    /// changes (seeding, the environment's admin) are not a person's and are not recorded.
    pub(crate) fn audit_admin(&self, ctx: &AuthContext, op: &str, target: &str) {
        if ctx.is_system() {
            return;
        }
        self.record((
            "admin",
            "admin",
            json!({"who": ctx.principal(), "origin": ctx.origin.0, "op": op, "target": target}),
        ));
    }
}
