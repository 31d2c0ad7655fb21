//! How a queue reads the log: its feeder, one member of the queue's Hub group, and on
//! the cluster engine when this node reads at all (only while it has consumers here, or
//! just after a `basic.get`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use polyport_core::subscription::Acker;
use polyport_core::{AckPolicy, Item, Overflow, SubscribeRequest, TopicFilter};
use tokio::sync::oneshot;

use super::{
    FIRST_READ, GET_LINGER, Message, NO_REDELIVERY, PUMP_EVERY, Queue, Routed, State, filters_of,
};

impl Queue {
    /// Starts a feeder with the current routes; what it returns resolves once that feeder
    /// reads the log, so a bind is answered only when what is published next is seen.
    pub(super) fn restart_feeder(self: &Arc<Self>) -> oneshot::Receiver<()> {
        let (live, is_live) = oneshot::channel();
        let filters: Vec<TopicFilter> = {
            let mut st = self.state.lock();
            if let Some(f) = st.feeder.take() {
                f.abort();
            }
            st.refilter = None;
            st.generation += 1;
            // Held for the old feeder's group membership: the group hands them back.
            self.hand_back(&mut st);
            filters_of(&st.routes)
        };
        let req = self.request(filters);
        let q = self.clone();
        let generation = self.state.lock().generation;
        let task = tokio::spawn(async move {
            match q.hub.subscribe(&q.ctx, req).await {
                Ok(sub) => {
                    {
                        let mut st = q.state.lock();
                        if st.generation == generation {
                            st.refilter = sub.refilter();
                        }
                    }
                    let _ = live.send(());
                    q.feed(sub, generation).await
                }
                Err(e) => {
                    tracing::warn!(queue = %q.name(), error = %e, "AMQP queue cannot read the log")
                }
            }
        });
        self.state.lock().feeder = Some(task);
        is_live
    }

    /// How the feeder joins the queue's group, reading `filters`.
    pub(super) fn request(&self, filters: Vec<TopicFilter>) -> SubscribeRequest {
        let since = self.declared.lock().since;
        SubscribeRequest {
            filters,
            since: Some(since),
            strict: false,
            group: Some(self.group()),
            position_by_name: true,
            ack: Some(AckPolicy {
                prefetch: self.window,
                ack_timeout: NO_REDELIVERY,
            }),
            overflow: Overflow::Notify,
            ..SubscribeRequest::default()
        }
    }

    async fn feed(self: &Arc<Self>, mut sub: polyport_core::Subscription, generation: u64) {
        let acker = sub.acker();
        let mut tick = tokio::time::interval(PUMP_EVERY);
        loop {
            tokio::select! {
                item = sub.next() => match item {
                    Some(Ok(Item::Event(d))) => {
                        if !self.arrive(d, &acker, generation) {
                            return;
                        }
                    }
                    Some(Ok(Item::Notice(n))) => {
                        tracing::debug!(queue = %self.name(), notice = ?n, "AMQP queue missed messages");
                    }
                    Some(Err(_)) | None => return,
                },
                _ = tick.tick() => {
                    if self.went_idle(generation) {
                        return;
                    }
                    self.dispatch()
                }
            }
        }
    }

    /// Whether this node should read the queue now.
    pub(super) fn wanted(&self, st: &State) -> bool {
        !self.shared
            || !st.consumers.is_empty()
            || self
                .wanted_until
                .lock()
                .is_some_and(|t| t > std::time::Instant::now())
    }

    /// On the cluster engine, stops the feeder of `generation` when nobody here wants
    /// the queue: what it held ready goes back to the group, for other nodes' consumers.
    fn went_idle(&self, generation: u64) -> bool {
        if !self.shared {
            return false;
        }
        let mut st = self.state.lock();
        if st.generation != generation || self.wanted(&st) {
            return false;
        }
        st.feeder = None;
        st.refilter = None;
        self.hand_back(&mut st);
        true
    }

    /// Drops what the feeder held ready (its group gives it to another member, or to
    /// the next feeder here), and lowers the arrival mark below it: a `basic.get`
    /// waiting for a publish must wait for it to be read again, not count it as here.
    fn hand_back(&self, st: &mut State) {
        if let Some(first) = st.ready.iter().filter_map(|m| m.event.seq).min() {
            self.arrived
                .fetch_min(first.saturating_sub(1), Ordering::Relaxed);
        }
        st.ready.clear();
    }

    /// Starts reading when the queue is wanted here and nothing reads it (the cluster
    /// engine); resolves once it reads the log.
    pub(super) fn wake(self: &Arc<Self>) -> Option<oneshot::Receiver<()>> {
        let idle = {
            let st = self.state.lock();
            self.shared && st.feeder.is_none() && !st.deleted && self.wanted(&st)
        };
        idle.then(|| self.restart_feeder())
    }

    /// Adds a message from the group; `false` when this feeder has been replaced.
    fn arrive(
        self: &Arc<Self>,
        d: polyport_core::Delivery,
        acker: &Acker,
        generation: u64,
    ) -> bool {
        if let Some(seq) = d.event.seq {
            self.arrived.fetch_max(seq, Ordering::Relaxed);
            self.arrival.notify_waiters();
        }
        let route = {
            let st = self.state.lock();
            // Published before a change of bindings, it may arrive after it.
            std::iter::once(&st.routes)
                .chain(st.earlier_routes.iter().rev())
                .flatten()
                .find_map(|b| {
                    b.route(&Routed::event(&d.event))
                        .map(|key| (b.exchange.clone(), key))
                })
        };
        let message = Message {
            acker: Some(acker.clone()),
            exchange: route.as_ref().map(|r| r.0.clone()).unwrap_or_default(),
            routing_key: route.as_ref().map(|r| r.1.clone()).unwrap_or_default(),
            redelivered: d.redeliveries > 0,
            event: d.event,
        };
        if route.is_none() {
            // A widened filter (a `#` mid-pattern) that the AMQP pattern rejects.
            message.settle();
            return true;
        }
        {
            let mut st = self.state.lock();
            if st.generation != generation {
                return false;
            }
            st.ready.push_back(message);
            // Length limits count what is ready (not what consumers hold), as RabbitMQ.
            loop {
                let bytes = || st.ready.iter().map(|m| m.event.payload.len()).sum();
                if !self.limits.over(st.ready.len(), bytes) {
                    break;
                }
                let gone = match self.limits.reject_new {
                    true => st.ready.pop_back(),
                    false => st.ready.pop_front(),
                };
                let Some(gone) = gone else { break };
                let reason = if self.limits.reject_new {
                    "rejected"
                } else {
                    "maxlen"
                };
                self.dead_letter(gone, reason);
            }
        }
        self.dispatch();
        true
    }

    /// Waits (briefly) until what publishes routed here has reached the queue, so a
    /// `basic.get` after a publish sees it, as on RabbitMQ.
    pub async fn settled(self: &Arc<Self>) {
        if self.shared {
            *self.wanted_until.lock() = Some(std::time::Instant::now() + GET_LINGER);
            if let Some(live) = self.wake() {
                let _ = tokio::time::timeout(Duration::from_secs(2), live).await;
                // A feeder that just joined replays from the group's position.
                let deadline = tokio::time::Instant::now() + FIRST_READ;
                loop {
                    let wait = self.arrival.notified();
                    if !self.state.lock().ready.is_empty() {
                        break;
                    }
                    if tokio::time::timeout_at(deadline, wait).await.is_err() {
                        break;
                    }
                }
            }
        }
        self.caught_up().await;
    }

    /// Waits (briefly) until what this node's publishes routed here has reached the
    /// queue, or its window is full: routing is decided as the log is read, so filters
    /// about to change must first have seen what was published under them.
    pub(super) async fn caught_up(&self) {
        // What was published up to now; later publishes are not waited for.
        let target = self.expected.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            let wait = self.arrival.notified();
            let backlogged = self.state.lock().ready.len() >= self.window;
            if backlogged || self.arrived.load(Ordering::Relaxed) >= target {
                return;
            }
            if tokio::time::timeout_at(deadline, wait).await.is_err() {
                return;
            }
        }
    }
}
