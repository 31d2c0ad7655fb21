//! Subscriptions executed once for everyone who asked the same thing.
//!
//! async-graphql runs a subscription's selection for every event and every subscriber:
//! with 200 clients on `recordChanged(collection: "users")` each write was resolved 200
//! times. Here subscribers with the same schema, document, operation, variables and
//! caller share one execution (one Hub subscription, one resolution and one
//! serialisation per event), and every member sends the same bytes — the multiplexing
//! Hasura does for live queries.
//!
//! Only live subscriptions share: one with `since` replays history that a later joiner
//! would not get, so it runs on its own, as does anything that is not a subscription.
//! The responses are a pure function of the event and the caller (the `Event` and
//! `RecordChange` fields read nothing else), so a joiner sees what its own execution
//! would have shown it.
//!
//! The Hub never drops a durable event for a slow subscriber (it replays it from the
//! log); a shared execution keeps that promise. A subscriber that falls more than the
//! Hub's subscriber queue behind the others leaves the share and carries on alone from
//! the last sequence it received; if ephemeral events went by it, it ends with
//! `slow_consumer`, as its own Hub subscription would have.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use async_graphql::dynamic::Schema;
use async_graphql::parser::types::{DocumentOperations, OperationType, Selection};
use async_graphql::{Data, Request, Response};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use parking_lot::Mutex;
use polyport_core::{AuthContext, Hub, HubError};
use tokio::sync::broadcast;

use crate::ws::Out;

/// Set by a subscription field's stream to the sequence of the event it is about to
/// yield (0: none), so the execution driving it knows where each response stands.
#[derive(Clone, Default)]
pub(crate) struct SeqCell(pub(crate) Arc<AtomicU64>);

impl SeqCell {
    pub(crate) fn mark(&self, seq: Option<u64>) {
        self.0.store(seq.unwrap_or(0), Ordering::Relaxed);
    }
}

/// Where a subscription that left its share resumes (as if it had said `since`).
#[derive(Clone, Copy)]
pub(crate) struct ResumeAfter(pub(crate) u64);

/// The live shared executions, by what they execute.
pub(crate) struct Shares {
    hub: Hub,
    live: Mutex<HashMap<Key, Weak<Share>>>,
}

#[derive(Clone, Hash, PartialEq, Eq)]
struct Key {
    /// The schema generation (its address; a connection keeps its schema alive).
    schema: usize,
    query: String,
    operation: Option<String>,
    variables: String,
    /// The caller's identity as JSON: the same one sees the same records.
    caller: String,
}

/// One execution and its audience.
struct Share {
    /// `None` once the execution ended; joiners then start a new one.
    tx: Mutex<Option<broadcast::Sender<Shot>>>,
    /// The sequence of the newest event sent.
    last_seq: AtomicU64,
    /// Whether an event without a sequence went by (one a lagging joiner cannot replay).
    ephemeral: AtomicBool,
    task: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Share {
    fn drop(&mut self) {
        if let Some(t) = self.task.get() {
            t.abort();
        }
        metrics::gauge!(EXECUTIONS).decrement(1.0);
    }
}

/// Live shared executions, and the subscriptions they serve (in `/metrics`): how much
/// sharing saves is members ÷ executions.
const EXECUTIONS: &str = "polyport_graphql_shared_executions";
const MEMBERS: &str = "polyport_graphql_shared_subscriptions";

#[derive(Clone)]
struct Shot {
    seq: u64,
    /// The response, serialised once for every member.
    rendered: Arc<str>,
}

/// Whether a request may share: its operation is a subscription whose one root field
/// has no `since` (replay would differ by when each member joined).
fn shareable(req: &Request) -> bool {
    let Ok(doc) = async_graphql::parser::parse_query(&req.query) else {
        return false;
    };
    let op = match (&doc.operations, req.operation_name.as_deref()) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => match ops.get(name) {
            Some(op) => op,
            None => return false,
        },
        (DocumentOperations::Multiple(_), None) => return false,
    };
    if op.node.ty != OperationType::Subscription {
        return false;
    }
    let items = &op.node.selection_set.node.items;
    let [root] = items.as_slice() else {
        return false;
    };
    let Selection::Field(field) = &root.node else {
        return false;
    };
    !field
        .node
        .arguments
        .iter()
        .any(|(name, _)| name.node.as_str() == "since")
}

/// The document without what GraphQL ignores — whitespace, commas and comments outside
/// strings — so one query formatted two ways (gql prints the documents it sends) shares
/// one execution. A document with a block string is left as it is.
fn canonical(q: &str) -> String {
    if q.contains("\"\"\"") {
        return q.to_string();
    }
    let namey = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(q.len());
    let mut gap = false;
    let mut chars = q.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' | ',' | '\u{feff}' => gap = true,
            '#' => {
                gap = true;
                for c in chars.by_ref() {
                    if c == '\n' || c == '\r' {
                        break;
                    }
                }
            }
            _ => {
                if gap && namey(c) && out.chars().next_back().is_some_and(namey) {
                    out.push(' ');
                }
                gap = false;
                out.push(c);
                if c == '"' {
                    let mut escaped = false;
                    for c in chars.by_ref() {
                        out.push(c);
                        match c {
                            '\\' if !escaped => escaped = true,
                            '"' if !escaped => break,
                            _ => escaped = false,
                        }
                    }
                }
            }
        }
    }
    out
}

/// The request again (a [`Request`] is not `Clone`: its data is not).
fn rebuild(req: &Request) -> Request {
    let mut r = Request::new(req.query.clone()).variables(req.variables.clone());
    if let Some(op) = &req.operation_name {
        r = r.operation_name(op.clone());
    }
    r
}

fn caller_of(data: &Data) -> Option<String> {
    let c = data
        .get(&std::any::TypeId::of::<AuthContext>())?
        .downcast_ref::<AuthContext>()?;
    serde_json::to_string(&c.identity.as_deref()).ok()
}

impl Shares {
    pub(crate) fn new(hub: Hub) -> Arc<Self> {
        Arc::new(Self {
            hub,
            live: Mutex::default(),
        })
    }

    /// Joins the execution of `req` as `data`'s caller, starting it if nobody runs it.
    fn join(
        self: &Arc<Self>,
        schema: &Schema,
        schema_id: usize,
        req: Request,
        data: Arc<Data>,
        caller: String,
    ) -> BoxStream<'static, Out> {
        let key = Key {
            schema: schema_id,
            query: canonical(&req.query),
            operation: req.operation_name.clone(),
            variables: serde_json::to_string(&req.variables).unwrap_or_default(),
            caller,
        };
        let (share, rx) = {
            let mut live = self.live.lock();
            let found = live.get(&key).and_then(Weak::upgrade).and_then(|s| {
                let rx = s.tx.lock().as_ref().map(broadcast::Sender::subscribe)?;
                Some((s, rx))
            });
            match found {
                Some(found) => found,
                None => {
                    live.retain(|_, w| w.strong_count() > 0);
                    let (share, rx) = self.start(schema, &req, data.clone(), key.clone());
                    live.insert(key, Arc::downgrade(&share));
                    (share, rx)
                }
            }
        };
        let joined_at = share
            .last_seq
            .load(Ordering::Relaxed)
            .max(self.hub.log_state().last_seq);
        metrics::gauge!(MEMBERS).increment(1.0);
        let state = Member {
            share: Some(share),
            rx,
            last: joined_at,
        };
        let schema = schema.clone();
        let alone = move |after: u64| {
            let mut r = rebuild(&req);
            r.data.insert(ResumeAfter(after));
            schema.execute_stream_with_session_data(r, data)
        };
        member_stream(state, alone)
    }

    /// Starts executing `req`; the execution ends with its stream or when the last
    /// member leaves (dropping the [`Share`] aborts it).
    fn start(
        self: &Arc<Self>,
        schema: &Schema,
        req: &Request,
        data: Arc<Data>,
        key: Key,
    ) -> (Arc<Share>, broadcast::Receiver<Shot>) {
        let capacity = self.hub.subscriber_queue().max(16);
        let (tx, rx) = broadcast::channel(capacity);
        metrics::gauge!(EXECUTIONS).increment(1.0);
        let share = Arc::new(Share {
            tx: Mutex::new(Some(tx)),
            last_seq: AtomicU64::new(0),
            ephemeral: AtomicBool::new(false),
            task: std::sync::OnceLock::new(),
        });
        let cell = SeqCell::default();
        let mut r = rebuild(req);
        r.data.insert(cell.clone());
        let mut responses = schema.execute_stream_with_session_data(r, data);
        let (weak, shares) = (Arc::downgrade(&share), Arc::downgrade(self));
        let task = tokio::spawn(async move {
            while let Some(response) = responses.next().await {
                let Some(share) = weak.upgrade() else { return };
                let seq = cell.0.swap(0, Ordering::Relaxed);
                if seq == 0 {
                    share.ephemeral.store(true, Ordering::Relaxed);
                } else {
                    share.last_seq.store(seq, Ordering::Relaxed);
                }
                // A failing execution takes no new members: they get their own.
                if !response.errors.is_empty()
                    && let Some(shares) = shares.upgrade()
                {
                    shares.retire(&key, &share);
                }
                let rendered = match serde_json::to_string(&response) {
                    Ok(r) => Arc::from(r),
                    Err(e) => {
                        tracing::error!(error = %e, "a GraphQL response did not serialise");
                        continue;
                    }
                };
                if let Some(tx) = share.tx.lock().as_ref() {
                    let _ = tx.send(Shot { seq, rendered });
                }
            }
            if let (Some(share), Some(shares)) = (weak.upgrade(), shares.upgrade()) {
                shares.retire(&key, &share);
                // Members see the end once they have read what was sent.
                share.tx.lock().take();
            }
        });
        let _ = share.task.set(task.abort_handle());
        (share, rx)
    }

    fn retire(&self, key: &Key, share: &Arc<Share>) {
        let mut live = self.live.lock();
        if live
            .get(key)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(share)))
        {
            live.remove(key);
        }
    }
}

/// One subscriber of a share, counted in [`MEMBERS`] until it ends or leaves.
struct Member {
    /// Kept so the execution runs while anyone reads it.
    share: Option<Arc<Share>>,
    rx: broadcast::Receiver<Shot>,
    /// The newest sequence this member has (or, before any, where it joined).
    last: u64,
}

impl Drop for Member {
    fn drop(&mut self) {
        metrics::gauge!(MEMBERS).decrement(1.0);
    }
}

enum Phase<F> {
    Shared(Member, F),
    Alone(BoxStream<'static, Response>),
}

/// A member's responses: the share's, then (if it fell behind) its own execution's.
fn member_stream<F>(member: Member, alone: F) -> BoxStream<'static, Out>
where
    F: FnOnce(u64) -> BoxStream<'static, Response> + Send + 'static,
{
    futures::stream::unfold(Some(Phase::Shared(member, alone)), |phase| async move {
        match phase? {
            Phase::Alone(mut s) => {
                let r = s.next().await?;
                Some((Out::Response(Box::new(r)), Some(Phase::Alone(s))))
            }
            Phase::Shared(mut m, alone) => match m.rx.recv().await {
                Ok(shot) => {
                    m.last = m.last.max(shot.seq);
                    Some((Out::Rendered(shot.rendered), Some(Phase::Shared(m, alone))))
                }
                Err(broadcast::error::RecvError::Closed) => None,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let ephemeral = m
                        .share
                        .take()
                        .is_some_and(|s| s.ephemeral.load(Ordering::Relaxed));
                    if ephemeral {
                        let mut e = crate::schema::gql_err(HubError::SlowConsumer { dropped: n })
                            .into_server_error(Default::default());
                        e.locations.clear();
                        let r = Response::from_errors(vec![e]);
                        return Some((Out::Response(Box::new(r)), None));
                    }
                    let mut s = alone(m.last);
                    let r = s.next().await?;
                    Some((Out::Response(Box::new(r)), Some(Phase::Alone(s))))
                }
            },
        }
    })
    .boxed()
}

/// A connection's executor: queries and mutations as the schema runs them, live
/// subscriptions through [`Shares`].
#[derive(Clone)]
pub(crate) struct SharingExecutor {
    pub(crate) schema: Arc<Schema>,
    pub(crate) shares: Arc<Shares>,
}

impl SharingExecutor {
    /// The results of one operation sent over the connection, as its caller (`data`).
    pub(crate) fn stream(&self, request: Request, data: Arc<Data>) -> BoxStream<'static, Out> {
        match caller_of(&data) {
            Some(caller) if shareable(&request) => {
                let id = Arc::as_ptr(&self.schema) as usize;
                self.shares.join(&self.schema, id, request, data, caller)
            }
            _ => self
                .schema
                .execute_stream_with_session_data(request, data)
                .map(|r| Out::Response(Box::new(r)))
                .boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn one_query_formatted_two_ways_is_one_key_and_strings_are_kept() {
        let printed = "subscription {\n  recordChanged(collection: \"notes\", filter: \"a  = 1\") {\n    id # the id\n    record\n  }\n}";
        let compact =
            "subscription{recordChanged(collection:\"notes\" filter:\"a  = 1\"){id record}}";
        assert_eq!(canonical(printed), canonical(compact));
        assert_eq!(
            canonical(compact),
            "subscription{recordChanged(collection:\"notes\"filter:\"a  = 1\"){id record}}"
        );
        let other = compact.replace("a  = 1", "a = 1");
        assert_ne!(canonical(&other), canonical(compact));
        let escaped = r#"subscription { events(topic: "a\"  b") { id } }"#;
        assert!(
            canonical(escaped).contains(r#""a\"  b""#),
            "{}",
            canonical(escaped)
        );
        assert_eq!(canonical("query { a  b }"), "query{a b}");
    }
}
