//! What names a group: whose quota a new one counts against, and the key its saved
//! position is stored under.

use std::sync::Arc;

use crate::auth::AuthContext;
use crate::subscription::SubscribeRequest;
use crate::topic::TopicFilter;

/// Whom a new named group counts against: the caller's identity (anonymous callers
/// together), never the server itself.
pub(crate) fn group_owner(ctx: &AuthContext) -> Option<Arc<str>> {
    match &ctx.identity {
        _ if ctx.is_system() => None,
        Some(id) => Some(Arc::from(id.id.as_str())),
        None => Some(Arc::from("(anonymous)")),
    }
}

/// A named group's key — its name, its filters (unless the position belongs to the name
/// alone), the record filter's canonical text, and whether it acks — and, for a record-filter group, the key release 1 used (with the
/// filter's `Debug` text), whose saved position the group adopts once.
pub(crate) fn group_keys(
    name: &str,
    filters: &[TopicFilter],
    req: &SubscribeRequest,
    ack: bool,
) -> (String, Option<String>) {
    let mut key = format!("{name}\n");
    if req.position_by_name {
        key.push_str("\0by-name\n");
    } else {
        for f in filters {
            key.push_str(f.as_str());
            key.push('\n');
        }
    }
    let suffix = if ack { "\nack" } else { "" };
    match &req.records {
        Some(r) => {
            let legacy = format!("{key}{:?}{suffix}", r.filter);
            match &r.filter {
                Some(f) => key.push_str(&format!("where {f}")),
                None => key.push_str("records"),
            }
            key.push_str(suffix);
            (key, Some(legacy))
        }
        None => {
            key.push_str(suffix);
            (key, None)
        }
    }
}
