//! Where the Hub applies collection rules ([`crate::rules`]): every record verb asks
//! [`Hub::rule`] for the caller's bound rule, and subscriptions carry a [`Guard`] that
//! drops changes to records the subscriber may not view — whatever the protocol.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;

use crate::auth::{AuthContext, Identity};
use crate::engine::Store;
use crate::error::{HubError, HubResult};
use crate::event::EventRef;
use crate::hub::Hub;
use crate::record::Record;
use crate::rules::{Bound, Rule, RuleEnv, RuleKind};
use crate::schema::Collection;
use crate::subscription::record_from_json;
use crate::topic::TopicFilter;

fn verb(kind: RuleKind) -> &'static str {
    match kind {
        RuleKind::List => "list",
        RuleKind::View => "read",
        RuleKind::Create => "create",
        RuleKind::Update => "change",
        RuleKind::Delete => "delete",
    }
}

/// The bound rule of `kind` for `who` on `c`: `Ok(None)` when none applies (no `rules`
/// on the collection), `Err(Forbidden)` when the rule is for admins only.
fn bind(
    c: &Collection,
    who: Option<&Identity>,
    kind: RuleKind,
    body: Option<&Value>,
) -> HubResult<Option<Bound>> {
    if who.is_some_and(Identity::is_admin) {
        return Ok(None);
    }
    let Some(rules) = &c.spec.rules else {
        return Ok(None);
    };
    let Some(text) = rules.get(kind) else {
        return Err(HubError::Forbidden(format!(
            "only admins may {} records of '{}'",
            verb(kind),
            c.name()
        )));
    };
    // Rules are checked when a collection is defined, so this only fails for a
    // definition stored by an older release: refuse rather than guess.
    let rule = Rule::parse(text).map_err(|e| {
        HubError::Forbidden(format!(
            "the {} rule of '{}' cannot be read ({e}): an admin must fix it",
            kind.name(),
            c.name()
        ))
    })?;
    Ok(Some(rule.bind(&RuleEnv { auth: who, body })))
}

impl Hub {
    /// The caller's bound rule of `kind` on `collection` (see [`bind`]).
    pub(crate) fn rule(
        &self,
        ctx: &AuthContext,
        collection: &str,
        kind: RuleKind,
        body: Option<&Value>,
    ) -> HubResult<Option<Bound>> {
        if ctx.is_admin() {
            return Ok(None);
        }
        match self.inner.store.collections().get(collection) {
            Some(c) => bind(c, ctx.identity.as_deref(), kind, body),
            None => Ok(None),
        }
    }

    /// Refuses a change to `current` the caller's `kind` rule does not admit: as not
    /// found when the caller may not even view it (so a refusal does not tell that it
    /// exists), else as forbidden.
    pub(crate) fn check_change(
        &self,
        ctx: &AuthContext,
        current: &Record,
        kind: RuleKind,
        body: Option<&Value>,
    ) -> HubResult<()> {
        let Some(rule) = self.rule(ctx, &current.collection, kind, body)? else {
            return Ok(());
        };
        if rule.admits(current) {
            return Ok(());
        }
        let visible = match self.rule(ctx, &current.collection, RuleKind::View, None) {
            Ok(Some(view)) => view.admits(current),
            Ok(None) => true,
            Err(_) => false,
        };
        if !visible {
            return Err(HubError::RecordNotFound {
                collection: current.collection.clone(),
                id: current.id.clone(),
            });
        }
        Err(HubError::Forbidden(format!(
            "the {} rule of '{}' does not admit this",
            kind.name(),
            current.collection
        )))
    }

    /// Whether `ctx` may route `filter` into something other callers consume (an AMQP
    /// queue binding, a STOMP exchange subscription): the filter must be one it may
    /// subscribe to, and — since a shared queue cannot apply each consumer's view rule —
    /// a caller bound by rules may not route changes of a collection that has them.
    pub fn authorize_route(&self, ctx: &AuthContext, filter: &TopicFilter) -> HubResult<()> {
        self.authorize(ctx, crate::auth::Action::Subscribe(filter.as_str()))?;
        if ctx.is_admin() {
            return Ok(());
        }
        for c in self.inner.store.collections().values() {
            if c.spec.rules.is_some()
                && overlaps(filter.as_str(), &format!("collections/{}/+", c.name()))
            {
                return Err(HubError::Forbidden(format!(
                    "'{}' has view rules, which a shared queue cannot apply to each consumer: \
                     subscribe to its topics directly, or have an admin bind the queue",
                    c.name()
                )));
            }
        }
        Ok(())
    }

    /// What a subscription by `ctx` must drop; `None` for admins.
    pub(crate) fn guard(&self, ctx: &AuthContext) -> Option<Arc<Guard>> {
        (!ctx.is_admin()).then(|| {
            Arc::new(Guard {
                store: self.inner.store.clone(),
                who: ctx.identity.clone(),
                bound: Mutex::default(),
            })
        })
    }
}

/// Whether some topic matches both filters.
pub(crate) fn overlaps(a: &str, b: &str) -> bool {
    let (mut x, mut y) = (a.split('/'), b.split('/'));
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (None, _) | (_, None) => return false,
            (Some(p), Some(q)) if p == "+" || q == "+" || p == q => {}
            _ => return false,
        }
    }
}

/// A subscriber's view rules, bound once per collection definition.
pub(crate) struct Guard {
    store: Arc<dyn Store>,
    who: Option<Arc<Identity>>,
    /// Collection → (the definition it was bound for, the bound view rule or `None` for
    /// admin-only).
    bound: Mutex<HashMap<String, BoundView>>,
}

/// A view rule bound for one definition of a collection.
type BoundView = (Arc<Collection>, Option<Bound>);

impl Guard {
    /// Whether the subscriber may see this event: anything but a change to a record of a
    /// collection whose view rule does not admit it.
    pub(crate) fn admits(&self, ev: &EventRef) -> bool {
        let mut seg = ev.topic.as_str().split('/');
        if seg.next() != Some("collections") {
            return true;
        }
        let Some(name) = seg.next() else { return true };
        let colls = self.store.collections();
        let Some(c) = colls.get(name) else {
            return true;
        };
        if c.spec.rules.is_none() {
            return true;
        }
        let view = {
            let mut cache = self.bound.lock();
            match cache.get(name) {
                Some((def, b)) if Arc::ptr_eq(def, c) => b.clone(),
                _ => {
                    let b = bind(c, self.who.as_deref(), RuleKind::View, None)
                        .ok()
                        .map(|b| b.unwrap_or(Bound::All));
                    cache.insert(name.to_string(), (c.clone(), b.clone()));
                    b
                }
            }
        };
        match view {
            None | Some(Bound::Nothing) => false,
            Some(Bound::All) => true,
            Some(b) => ev
                .json_payload()
                .and_then(|p| p.get("record").and_then(record_from_json))
                .is_some_and(|r| b.admits(&r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::overlaps;

    #[test]
    fn filters_overlap_when_some_topic_matches_both() {
        for (a, b) in [
            ("#", "collections/notes/+"),
            ("collections/#", "collections/notes/+"),
            ("collections/notes/b1", "collections/notes/+"),
            ("+/notes/#", "collections/notes/+"),
        ] {
            assert!(overlaps(a, b), "{a} {b}");
        }
        for (a, b) in [
            ("sensors/#", "collections/notes/+"),
            ("collections/posts/#", "collections/notes/+"),
            ("collections/notes", "collections/notes/+"),
            ("collections/notes/a/b", "collections/notes/+"),
        ] {
            assert!(!overlaps(a, b), "{a} {b}");
        }
    }
}
