//! Subscriptions: a topic filter, a start position, an optional group and ack mode.
//!
//! A subscription is always registered on the bus *before* it reads the log, so the
//! hand-over from replay to live delivery cannot miss an event; duplicates across the
//! seam are dropped by sequence (sequences are gap-free and increase, so "seen" is one
//! number). A subscriber that lags is switched back to replay from its position.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;

use crate::bus::Registration;
use crate::engine::Store;
use crate::error::HubResult;
use crate::event::{EventRef, Notice};
use crate::group::Member;
use crate::query::Filter;
use crate::record::Record;
use crate::topic::TopicFilter;

/// Restricts a subscription to changes of records of one collection (optionally one id)
/// that match a filter expression.
#[derive(Clone, Debug)]
pub struct RecordSelector {
    /// Collection.
    pub collection: String,
    /// One record only.
    pub id: Option<String>,
    /// Filter over the changed record (for deletes: the record as it was).
    pub filter: Option<Filter>,
}

/// Policy for ephemeral events a slow subscriber could not take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// End the subscription with [`HubError::SlowConsumer`], a clear reason the client
    /// can act on.
    #[default]
    Disconnect,
    /// Keep going and report the loss in-band with [`Notice::Dropped`].
    Notify,
}

/// Ack mode: events must be acknowledged or they are redelivered.
#[derive(Clone, Copy, Debug)]
pub struct AckPolicy {
    /// Unacknowledged events a member may hold at once.
    pub prefetch: usize,
    /// Redeliver after this long without an ack.
    pub ack_timeout: std::time::Duration,
}

/// What to subscribe to.
#[derive(Clone, Debug, Default)]
pub struct SubscribeRequest {
    /// Topic filters (any match). May be empty when `records` is set.
    pub filters: Vec<TopicFilter>,
    /// Record changes to follow (adds its topic filter).
    pub records: Option<RecordSelector>,
    /// Resume after this sequence (0 = from the beginning of the log). `None` = live only.
    pub since: Option<u64>,
    /// The epoch the client's position belongs to, when it knows it.
    pub epoch: Option<String>,
    /// When the position is no longer available: `true` fails the subscribe, `false`
    /// resumes from the oldest retained event with an in-band [`Notice::ResumedFrom`].
    pub strict: bool,
    /// What to do when ephemeral events had to be dropped because this subscriber fell
    /// behind (durable events are never dropped: they are replayed from the log).
    pub overflow: Overflow,
    /// Share the stream with other members of this group (competing consumers).
    pub group: Option<String>,
    /// The group's saved position belongs to its name alone, so its filters may change
    /// from one run to the next (a JetStream durable consumer whose subjects are edited;
    /// an AMQP queue that gains a binding). Off: name and filters together name the
    /// group, so two clients using one name with different filters do not share.
    pub position_by_name: bool,
    /// Require acknowledgements.
    pub ack: Option<AckPolicy>,
    /// Events buffered for this subscriber before it counts as lagging (default: the
    /// hub's `subscriber_queue`). Room is only allocated as it fills.
    pub queue: Option<usize>,
    /// The adapter creates and deletes this group itself (an MQTT session's
    /// subscriptions, gone when the session expires), so it is not one of the caller's
    /// named groups (`max_groups_per_identity`).
    pub adapter_managed: bool,
    /// Only events in the log: ephemeral ones are never offered to this subscriber, so
    /// a consumer that only cares about durable positions (the webhook engine's wake-up)
    /// costs nothing per ephemeral message.
    pub durable_only: bool,
}

impl SubscribeRequest {
    /// The topic filters the bus should route, including the record selector's.
    pub(crate) fn all_filters(&self) -> Vec<TopicFilter> {
        let mut f = self.filters.clone();
        if let Some(r) = &self.records {
            let tf = match &r.id {
                Some(id) => TopicFilter::new(&format!("collections/{}/{id}", r.collection))
                    .unwrap_or_else(|_| TopicFilter::for_collection(&r.collection)),
                None => TopicFilter::for_collection(&r.collection),
            };
            f.push(tf);
        }
        f
    }
}

/// One event handed to a subscriber.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The event.
    pub event: EventRef,
    /// How many times it was handed out before (0 on first delivery).
    pub redeliveries: u32,
}

/// What a subscription yields.
#[derive(Clone, Debug)]
pub enum Item {
    /// An event.
    Event(Delivery),
    /// A fact about the stream itself.
    Notice(Notice),
}

/// A live subscription. Dropping it unsubscribes.
pub struct Subscription {
    pub(crate) inner: Inner,
    pub(crate) epoch: String,
    pub(crate) start_position: u64,
}

pub(crate) enum Inner {
    Direct(Box<Direct>),
    Member(Member),
}

impl Subscription {
    /// The next item; `None` when the hub shuts down. Cancel-safe.
    pub async fn next(&mut self) -> Option<HubResult<Item>> {
        match &mut self.inner {
            Inner::Direct(d) => d.next().await,
            Inner::Member(m) => m.next().await,
        }
    }

    /// The next item if one is available without waiting for new events (history still
    /// to replay counts as available); `None` otherwise. Cancel-safe.
    pub async fn try_next(&mut self) -> Option<HubResult<Item>> {
        match &mut self.inner {
            Inner::Direct(d) => d.try_next().await,
            Inner::Member(m) => m.try_next(),
        }
    }

    /// Acknowledges a delivered durable event by sequence (no-op without ack mode).
    pub fn ack(&self, seq: u64) {
        if let Inner::Member(m) = &self.inner {
            m.ack(seq);
        }
    }

    /// What changes a group's topic filters in place, where that is possible (a group
    /// positioned by name whose dispatcher runs on this node); `None` otherwise, and the
    /// caller subscribes again.
    pub fn refilter(&self) -> Option<crate::group::Refilter> {
        match &self.inner {
            Inner::Direct(_) => None,
            Inner::Member(m) => m.refilter.as_deref().cloned(),
        }
    }

    /// A cloneable handle that acknowledges for this subscription from another task.
    pub fn acker(&self) -> Acker {
        match &self.inner {
            Inner::Direct(_) => Acker(None),
            Inner::Member(m) => Acker(Some(m.ack_handle())),
        }
    }

    /// How far this subscription has read the log: every durable event at or below this
    /// sequence has been delivered or did not match. `None` for group members, whose
    /// position is the group's.
    pub fn position(&self) -> Option<u64> {
        match &self.inner {
            // Replayed events still buffered have not been delivered yet.
            Inner::Direct(d) => Some(
                d.buffer
                    .front()
                    .and_then(|e| e.seq)
                    .map_or(d.last, |s| s.saturating_sub(1)),
            ),
            Inner::Member(_) => None,
        }
    }

    /// The log's epoch at subscribe time.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The position live delivery started after (the log head at subscribe time, or the
    /// resume point).
    pub fn start_position(&self) -> u64 {
        self.start_position
    }
}

/// Acknowledges deliveries of one subscription; cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Acker(Option<crate::group::AckHandle>);

impl Acker {
    /// Acknowledges a durable event by sequence (no-op without ack mode).
    pub fn ack(&self, seq: u64) {
        if let Some(h) = &self.0 {
            h.ack(seq);
        }
    }
}

/// Events per log read during replay.
const REPLAY_PAGE: usize = 512;

/// A subscription delivering every matching event to one consumer.
pub(crate) struct Direct {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) reg: Registration,
    pub(crate) rx: tokio::sync::mpsc::Receiver<EventRef>,
    pub(crate) filters: Vec<TopicFilter>,
    /// Filters that still decide for events up to a sequence, oldest first: a group's
    /// change of filters takes effect where it was made in the log, not where the group
    /// had read to (see [`crate::group::Refilter`]). Each entry covers the sequences
    /// after the one before it; `filters` decide after the last.
    pub(crate) earlier: VecDeque<(u64, Vec<TopicFilter>)>,
    /// The bus matches more than `filters` (theirs and `earlier`'s): live events are
    /// checked again here.
    pub(crate) wide: bool,
    pub(crate) records: Option<RecordSelector>,
    /// Record changes the subscriber may not view, dropped (collection rules).
    pub(crate) guard: Option<Arc<crate::rules_hub::Guard>>,
    /// Highest durable sequence seen (delivered or skipped).
    pub(crate) last: u64,
    pub(crate) replaying: bool,
    pub(crate) buffer: VecDeque<EventRef>,
    pub(crate) notices: VecDeque<Notice>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) overflow: Overflow,
    /// Set after a terminal error; `next` then returns `None`.
    pub(crate) closed: bool,
}

impl Direct {
    /// The filters that decide for `ev`: those of its time (an ephemeral event's is now).
    fn topic_wanted(&mut self, ev: &EventRef) -> bool {
        let filters = match ev.seq {
            Some(s) => {
                // Sequences only grow: what ended before this one is done with.
                while self.earlier.front().is_some_and(|(until, _)| *until < s) {
                    self.earlier.pop_front();
                }
                self.earlier.front().map_or(&self.filters, |(_, f)| f)
            }
            None => &self.filters,
        };
        filters.iter().any(|f| f.matches(&ev.topic))
    }

    fn wants(&mut self, ev: &EventRef) -> bool {
        if !self.topic_wanted(ev) {
            return false;
        }
        let selected = match &self.records {
            None => true,
            Some(sel) => record_matches(sel, ev),
        };
        selected && self.guard.as_ref().is_none_or(|g| g.admits(ev))
    }

    pub(crate) async fn next(&mut self) -> Option<HubResult<Item>> {
        self.next_inner(true).await
    }

    /// Like `next`, but returns `None` instead of waiting for new live events.
    pub(crate) async fn try_next(&mut self) -> Option<HubResult<Item>> {
        self.next_inner(false).await
    }

    async fn next_inner(&mut self, wait: bool) -> Option<HubResult<Item>> {
        loop {
            if let Some(n) = self.notices.pop_front() {
                return Some(Ok(Item::Notice(n)));
            }
            if let Some(e) = self.buffer.pop_front() {
                return Some(Ok(deliver(e)));
            }
            if self.closed {
                return None;
            }
            if self.reg.slot.lagged.swap(false, Ordering::SeqCst) {
                tracing::debug!(
                    position = self.last,
                    "subscriber lagged; replaying from log"
                );
                self.replaying = true;
            }
            if self.replaying {
                let page = match self.store.read_events(self.last, REPLAY_PAGE).await {
                    Ok(p) => p,
                    Err(e) => return Some(Err(e)),
                };
                if page.len() < REPLAY_PAGE {
                    self.replaying = false;
                }
                for e in page {
                    if let Some(s) = e.seq {
                        self.last = self.last.max(s);
                    }
                    if self.wants(&e) {
                        self.buffer.push_back(e);
                    }
                }
                continue;
            }
            let ev = match self.rx.try_recv() {
                Ok(ev) => Some(ev),
                Err(_) => {
                    // Queue drained: report what was lost (after what was kept), then wait.
                    if let Some(r) = self.take_dropped() {
                        return Some(r);
                    }
                    if wait {
                        // The queue first: a ready event costs no registration with the
                        // shutdown token (a lock), and a queue being drained at shutdown
                        // ends at the next wait.
                        tokio::select! {
                            biased;
                            ev = self.rx.recv() => ev,
                            _ = self.shutdown.cancelled() => None,
                        }
                    } else {
                        None
                    }
                }
            };
            let ev = ev?;
            if self.wide && !self.topic_wanted(&ev) {
                if let Some(s) = ev.seq {
                    self.last = self.last.max(s);
                }
                continue;
            }
            if let Some(s) = ev.seq {
                if s <= self.last {
                    continue;
                }
                self.last = s;
            }
            // Live events already matched the bus's topic filters.
            let selected = self
                .records
                .as_ref()
                .is_none_or(|sel| record_matches(sel, &ev));
            if selected && self.guard.as_ref().is_none_or(|g| g.admits(&ev)) {
                return Some(Ok(deliver(ev)));
            }
        }
    }
}

impl Direct {
    /// Applies the overflow policy to ephemeral events dropped since the last look.
    fn take_dropped(&mut self) -> Option<HubResult<Item>> {
        let dropped = self.reg.slot.dropped.swap(0, Ordering::SeqCst);
        if dropped == 0 {
            return None;
        }
        tracing::warn!(dropped, policy = ?self.overflow, "slow subscriber: ephemeral events dropped");
        if self.overflow == Overflow::Disconnect {
            self.closed = true;
            metrics::counter!("polyport_slow_consumers_disconnected_total").increment(1);
            return Some(Err(crate::error::HubError::SlowConsumer { dropped }));
        }
        Some(Ok(Item::Notice(Notice::Dropped { count: dropped })))
    }
}

fn deliver(event: EventRef) -> Item {
    Item::Event(Delivery {
        event,
        redeliveries: 0,
    })
}

/// Applies a record selector to a change event's payload (`record` is the flat record).
fn record_matches(sel: &RecordSelector, ev: &EventRef) -> bool {
    let Some(filter) = &sel.filter else {
        return true;
    };
    let Some(rec) = ev.json_payload().and_then(|p| p.get("record")) else {
        return false;
    };
    match record_from_json(rec) {
        Some(r) => filter.matches(&r),
        None => false,
    }
}

/// Rebuilds a [`Record`] from its flat JSON form.
pub fn record_from_json(v: &serde_json::Value) -> Option<Record> {
    let o = v.as_object()?;
    let mut data = o.clone();
    for k in crate::record::SYSTEM_FIELDS {
        data.remove(*k);
    }
    Some(Record {
        collection: o.get("collection")?.as_str()?.to_string(),
        id: o.get("id")?.as_str()?.to_string(),
        created_at: crate::record::parse_time(o.get("created_at")?.as_str()?)?,
        updated_at: crate::record::parse_time(o.get("updated_at")?.as_str()?)?,
        version: o.get("version")?.as_u64()?,
        data,
    })
}
