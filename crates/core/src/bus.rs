//! In-process fanout: every committed or ephemeral event is offered to each matching
//! subscriber's bounded queue without ever waiting.
//!
//! Overflow policy (field note 5): a full queue never slows the writer or other
//! subscribers. A durable event that does not fit sets the subscriber's `lagged` flag and
//! the subscriber re-reads the log from its position (nothing is lost); an ephemeral event
//! that does not fit is counted in `dropped`, reported to the subscriber in-band as a
//! `Notice::Dropped`, logged and exported as a metric.
//!
//! Subscribers are indexed by their filters in a trie over topic segments (literal, `+`,
//! `#`), so an event costs in proportion to the subscriptions it matches, not to all of
//! them: a broker with 100k devices each on its own topic does not scan 100k filters per
//! message.

/// The trie's maps: keys are topic segments and subscriber ids, hashed on every publish,
/// so a fast hasher (foldhash) rather than SipHash; the keys come from subscribers,
/// and foldhash's per-process seed still keeps their layout unpredictable.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Topic segments of one publish, on the stack for any usual depth.
type Segments<'a> = smallvec::SmallVec<[&'a str; 16]>;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::RwLock;
use tokio::sync::mpsc;

use crate::engine::EventSink;
use crate::event::EventRef;
use crate::hot_metrics::HotCounter;
use crate::topic::TopicFilter;

/// One subscriber's slot, shared between the bus (producer) and the subscription.
#[derive(Debug)]
pub(crate) struct Slot {
    filters: Vec<TopicFilter>,
    /// Skip ephemeral events (`SubscribeRequest::durable_only`).
    durable_only: bool,
    tx: mpsc::Sender<EventRef>,
    /// Set by the bus when a durable event did not fit; cleared by the subscription,
    /// which then catches up from the log.
    pub(crate) lagged: AtomicBool,
    /// Ephemeral events that did not fit since the subscription last looked.
    pub(crate) dropped: AtomicU64,
}

#[derive(Default, Debug)]
struct Inner {
    registry: RwLock<Registry>,
    next_id: AtomicU64,
}

#[derive(Default, Debug)]
struct Registry {
    count: usize,
    root: Node,
}

/// One level of the filter trie.
#[derive(Default, Debug)]
struct Node {
    lit: HashMap<Box<str>, Node>,
    one: Option<Box<Node>>,
    /// Filters ending in `#` here: this level and everything below it.
    rest: HashMap<u64, Arc<Slot>>,
    /// Filters ending exactly here.
    end: HashMap<u64, Arc<Slot>>,
}

impl Node {
    fn insert(&mut self, segs: &[&str], id: u64, slot: &Arc<Slot>) {
        match segs.split_first() {
            None => {
                self.end.insert(id, slot.clone());
            }
            Some((&"#", _)) => {
                self.rest.insert(id, slot.clone());
            }
            Some((&"+", more)) => self.one.get_or_insert_default().insert(more, id, slot),
            Some((lit, more)) => self
                .lit
                .entry((*lit).into())
                .or_default()
                .insert(more, id, slot),
        }
    }

    /// Removes `id` under `segs`, pruning levels left empty.
    fn remove(&mut self, segs: &[&str], id: u64) {
        match segs.split_first() {
            None => {
                self.end.remove(&id);
            }
            Some((&"#", _)) => {
                self.rest.remove(&id);
            }
            Some((&"+", more)) => {
                if let Some(n) = self.one.as_mut() {
                    n.remove(more, id);
                    if n.is_empty() {
                        self.one = None;
                    }
                }
            }
            Some((lit, more)) => {
                if let Some(n) = self.lit.get_mut(*lit) {
                    n.remove(more, id);
                    if n.is_empty() {
                        self.lit.remove(*lit);
                    }
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.lit.is_empty() && self.one.is_none() && self.rest.is_empty() && self.end.is_empty()
    }

    /// Calls `f` for every subscriber whose filter matches the topic `segs`, by the
    /// trie's rule (`+` one segment, `#` the rest, zero segments included).
    fn matching<'a>(&'a self, segs: &[&str], f: &mut impl FnMut(u64, &'a Arc<Slot>)) {
        for (id, s) in &self.rest {
            f(*id, s);
        }
        let Some((first, more)) = segs.split_first() else {
            for (id, s) in &self.end {
                f(*id, s);
            }
            return;
        };
        if let Some(n) = self.lit.get(*first) {
            n.matching(more, f);
        }
        if let Some(n) = &self.one {
            n.matching(more, f);
        }
    }
}

fn segments(f: &TopicFilter) -> Vec<&str> {
    f.as_str().split('/').collect()
}

/// The embedded fanout.
#[derive(Clone, Default, Debug)]
pub struct Bus {
    inner: Arc<Inner>,
}

/// Removes the slot from the bus when the subscription is dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    bus: Bus,
    id: u64,
    pub(crate) slot: Arc<Slot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        {
            let mut r = self.bus.inner.registry.write();
            for f in &self.slot.filters {
                r.root.remove(&segments(f), self.id);
            }
            r.count -= 1;
        }
        metrics::gauge!("polyport_subscribers").decrement(1.0);
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a subscriber; events start flowing into the returned receiver at once.
    pub(crate) fn register(
        &self,
        filters: Vec<TopicFilter>,
        capacity: usize,
        durable_only: bool,
    ) -> (Registration, mpsc::Receiver<EventRef>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let slot = Arc::new(Slot {
            filters,
            durable_only,
            tx,
            lagged: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut r = self.inner.registry.write();
            for f in &slot.filters {
                r.root.insert(&segments(f), id, &slot);
            }
            r.count += 1;
        }
        metrics::gauge!("polyport_subscribers").increment(1.0);
        (
            Registration {
                bus: self.clone(),
                id,
                slot,
            },
            rx,
        )
    }

    /// Number of registered subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.inner.registry.read().count
    }

    /// Offers one event to every matching subscriber.
    pub fn deliver(&self, ev: &EventRef) {
        let name = ev.topic.as_str();
        let segs: Segments<'_> = name.split('/').collect();
        // The trie matches as filters do except for `$` topics, which wildcards at the
        // first level must not match: those are checked filter by filter.
        let dollar = name.starts_with('$');
        let ephemeral = ev.seq.is_none();
        let registry = self.inner.registry.read();
        let mut seen: Option<std::collections::HashSet<u64>> = None;
        let mut delivered = 0u64;
        registry.root.matching(&segs, &mut |id, slot| {
            if (ephemeral && slot.durable_only)
                || (dollar && !slot.filters.iter().any(|f| f.matches(&ev.topic)))
            {
                return;
            }
            // A subscriber with several filters may match through more than one.
            if slot.filters.len() > 1 && !seen.get_or_insert_default().insert(id) {
                return;
            }
            match slot.tx.try_send(ev.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if ev.seq.is_some() {
                        if !slot.lagged.swap(true, Ordering::SeqCst) {
                            metrics::counter!("polyport_subscriber_lagged_total").increment(1);
                        }
                    } else {
                        slot.dropped.fetch_add(1, Ordering::SeqCst);
                        metrics::counter!("polyport_events_dropped_total").increment(1);
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        });
        static FANNED_OUT: HotCounter = HotCounter::new("polyport_events_fanned_out_total");
        FANNED_OUT.increment(delivered);
    }
}

impl EventSink for Bus {
    fn committed(&self, events: &[EventRef]) {
        for e in events {
            self.deliver(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Origin};
    use crate::topic::Topic;
    use bytes::Bytes;

    fn ev(seq: Option<u64>, topic: &str) -> EventRef {
        Arc::new(Event::new(
            seq,
            "x".into(),
            Topic::new(topic).unwrap(),
            "t".into(),
            chrono::Utc::now(),
            None,
            vec![],
            Bytes::new(),
            Origin::HUB,
        ))
    }

    #[tokio::test]
    async fn full_queue_sets_lagged_or_counts_drops_without_blocking() {
        let bus = Bus::new();
        let (reg, mut rx) = bus.register(vec![TopicFilter::new("a/#").unwrap()], 1, false);
        let (_other, mut rx2) = bus.register(vec![TopicFilter::new("b").unwrap()], 4, false);
        bus.deliver(&ev(Some(1), "a/x"));
        bus.deliver(&ev(Some(2), "a/x"));
        bus.deliver(&ev(None, "a/y"));
        bus.deliver(&ev(None, "b"));
        assert!(reg.slot.lagged.load(Ordering::SeqCst));
        assert_eq!(reg.slot.dropped.load(Ordering::SeqCst), 1);
        assert_eq!(rx.recv().await.unwrap().seq, Some(1));
        assert_eq!(rx2.recv().await.unwrap().topic.as_str(), "b");
        assert_eq!(bus.subscriber_count(), 2);
        drop(reg);
        assert_eq!(bus.subscriber_count(), 1);
    }

    #[tokio::test]
    async fn a_durable_only_subscriber_is_offered_logged_events_only() {
        let bus = Bus::new();
        let (_reg, mut rx) = bus.register(vec![TopicFilter::new("#").unwrap()], 8, true);
        bus.deliver(&ev(None, "a"));
        bus.deliver(&ev(Some(7), "a"));
        assert_eq!(rx.recv().await.unwrap().seq, Some(7));
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn the_trie_delivers_exactly_what_the_filters_match_once_each() {
        // Every filter and topic over a small alphabet, `$` topics and overlapping
        // filters included: each subscriber gets each matching event once, no other.
        let lits = ["a", "b", "$SYS"];
        let mut filters = vec!["#".to_string(), "+".to_string()];
        let mut topics = Vec::new();
        for x in lits {
            filters.push(x.into());
            topics.push(x.to_string());
            for y in ["a", "b", "+", "#"] {
                filters.push(format!("{x}/{y}"));
                filters.push(format!("+/{y}"));
                if y != "+" && y != "#" {
                    topics.push(format!("{x}/{y}"));
                    topics.push(format!("{x}/{y}/c"));
                }
            }
        }
        filters.sort();
        filters.dedup();
        let bus = Bus::new();
        let mut subs = Vec::new();
        for (i, f) in filters.iter().enumerate() {
            // Some subscribers hold two overlapping filters.
            let mut fs = vec![TopicFilter::new(f).unwrap()];
            if i % 3 == 0 {
                fs.push(TopicFilter::new("#").unwrap());
            }
            let (reg, rx) = bus.register(fs.clone(), 1024, false);
            subs.push((fs, reg, rx));
        }
        for t in &topics {
            bus.deliver(&ev(None, t));
        }
        for (fs, _reg, rx) in &mut subs {
            let mut got = Vec::new();
            while let Ok(e) = rx.try_recv() {
                got.push(e.topic.as_str().to_string());
            }
            let want: Vec<String> = topics
                .iter()
                .filter(|t| fs.iter().any(|f| f.matches(&Topic::new(t).unwrap())))
                .cloned()
                .collect();
            assert_eq!(got, want, "filters {fs:?}");
        }
        // Dropping every subscriber leaves an empty trie.
        subs.clear();
        assert_eq!(bus.subscriber_count(), 0);
        assert!(bus.inner.registry.read().root.is_empty());
    }
}
