//! In-process fanout: every committed or ephemeral event is offered to each matching
//! subscriber's bounded queue without ever waiting.
//!
//! Overflow policy (field note 5): a full queue never slows the writer or other
//! subscribers. A durable event that does not fit sets the subscriber's `lagged` flag and
//! the subscriber re-reads the log from its position (nothing is lost); an ephemeral event
//! that does not fit is counted in `dropped`, reported to the subscriber in-band as a
//! `Notice::Dropped`, logged and exported as a metric.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::RwLock;
use tokio::sync::mpsc;

use crate::engine::EventSink;
use crate::event::EventRef;
use crate::topic::TopicFilter;

/// One subscriber's slot, shared between the bus (producer) and the subscription.
#[derive(Debug)]
pub(crate) struct Slot {
    filters: Vec<TopicFilter>,
    tx: mpsc::Sender<EventRef>,
    /// Set by the bus when a durable event did not fit; cleared by the subscription,
    /// which then catches up from the log.
    pub(crate) lagged: AtomicBool,
    /// Ephemeral events that did not fit since the subscription last looked.
    pub(crate) dropped: AtomicU64,
}

#[derive(Default, Debug)]
struct Inner {
    subs: RwLock<HashMap<u64, Arc<Slot>>>,
    next_id: AtomicU64,
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
        self.bus.inner.subs.write().remove(&self.id);
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
    ) -> (Registration, mpsc::Receiver<EventRef>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let slot = Arc::new(Slot {
            filters,
            tx,
            lagged: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner.subs.write().insert(id, slot.clone());
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
        self.inner.subs.read().len()
    }

    /// Offers one event to every matching subscriber.
    pub fn deliver(&self, ev: &EventRef) {
        let subs = self.inner.subs.read();
        let mut delivered = 0u64;
        for slot in subs.values() {
            if !slot.filters.iter().any(|f| f.matches(&ev.topic)) {
                continue;
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
        }
        metrics::counter!("polyport_events_fanned_out_total").increment(delivered);
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
        let (reg, mut rx) = bus.register(vec![TopicFilter::new("a/#").unwrap()], 1);
        let (_other, mut rx2) = bus.register(vec![TopicFilter::new("b").unwrap()], 4);
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
}
