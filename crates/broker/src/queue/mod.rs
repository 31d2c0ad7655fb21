//! A queue: a Hub group over the event log, whose filters are the queue's bindings.
//!
//! One feeder per queue is the group's only member on this node. It reads up to a
//! window of messages ahead of the consumers into `ready`, and hands them out to the
//! queue's consumers round-robin within each one's prefetch. An AMQP ack settles the
//! message with the group; a requeue puts it back at the front, flagged redelivered.
//! Messages past the window stay in the log (durable) or, if ephemeral and the window
//! is full, are dropped as a slow subscriber's would be. The group's position is kept
//! by name (`position_by_name`), so a new binding keeps the queue's place.
//!
//! A change of bindings changes the filters the group reads in place
//! ([`polyport_core::Refilter`]): messages published after it are routed by the new
//! bindings, those published before it by the old ones whether the group has read them
//! yet or not, and what consumers hold stays theirs (RabbitMQ's behaviour). On the cluster
//! engine every node applies every change: the node running the group refilters it
//! ([`polyport_core::Hub::refilter_hosted`]), the others only keep the new filters for
//! their feeder's next join. A feeder that has not joined yet joins with the new ones.
//!
//! On the cluster engine a queue's group spans the nodes, and each node's feeder is one
//! member: it joins only while the queue has consumers on this node (or for
//! [`GET_LINGER`] after a `basic.get`), so messages are not read ahead on a node where
//! nobody takes them. `message_count` is then what this node holds ready, not the
//! queue's backlog across the cluster (RabbitMQ differs: it counts the whole queue).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use polyport_core::subscription::Acker;
use polyport_core::{AuthContext, EventRef, Hub, HubError, TopicFilter};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

mod binding;
mod declared;
mod feeder;

pub use binding::{Binding, Routed};
pub use declared::{Declared, Limits, SavedBinding};

use crate::naming::{self, Kind};
use amq_protocol_types::{AMQPValue, FieldTable};

/// Acknowledgements are AMQP's to give: the group never redelivers on a timer.
const NO_REDELIVERY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// On the cluster engine, how long a queue without consumers on this node keeps
/// reading after a `basic.get`, so a loop of gets does not join and leave every time.
pub const GET_LINGER: Duration = Duration::from_secs(5);

/// How long a `basic.get` that started reading waits for a first message.
const FIRST_READ: Duration = Duration::from_millis(250);

/// How many earlier sets of routes a queue keeps for messages still arriving under
/// them (see `State::earlier_routes`).
const ROUTE_HISTORY: usize = 8;

/// How often a queue retries consumers that had no room.
const PUMP_EVERY: Duration = Duration::from_millis(20);

/// A message in a queue.
#[derive(Clone)]
pub struct Message {
    /// The event carrying it.
    pub event: EventRef,
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// It was handed out before and came back.
    pub redelivered: bool,
    /// Settles it with the group (none for ephemeral events).
    acker: Option<Acker>,
}

impl Message {
    /// Done with: the group moves past it.
    pub fn settle(&self) {
        if let (Some(a), Some(seq)) = (&self.acker, self.event.seq) {
            a.ack(seq);
        }
    }
}

/// Room a consumer (or, with `global` qos, a whole channel) has for unacked messages.
#[derive(Debug, Default)]
pub struct Credit {
    /// 0: unlimited.
    pub limit: AtomicUsize,
    pub(crate) used: AtomicUsize,
}

impl Credit {
    /// Room for `limit` messages (0: unlimited).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
        })
    }

    fn has_room(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        limit == 0 || self.used.load(Ordering::Relaxed) < limit
    }

    /// One message settled: room for another.
    pub fn release(&self) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| u.checked_sub(1));
    }
}

/// What the queue sends a connection.
pub enum Out {
    /// A message for a consumer.
    Deliver {
        /// The channel the consumer is on (AMQP; 0 elsewhere).
        channel: u16,
        /// The consumer's tag.
        consumer_tag: String,
        /// Settled on delivery: no ack will come.
        no_ack: bool,
        /// Where it came from (for acks and requeues).
        queue: Arc<Queue>,
        /// The message.
        message: Message,
        /// The credit it took.
        credit: Arc<Credit>,
    },
    /// The queue is gone: the consumer is cancelled (`basic.cancel` from the server).
    Cancelled {
        /// The consumer's channel.
        channel: u16,
        /// The consumer's tag.
        consumer_tag: String,
    },
}

struct Consumer {
    tag: String,
    channel: u16,
    conn: u64,
    no_ack: bool,
    credit: Arc<Credit>,
    tx: mpsc::Sender<Out>,
}

#[derive(Default)]
struct State {
    /// The queue's own bindings, and those plus the paths to them through
    /// exchange-to-exchange bindings (what routing looks at).
    bindings: Vec<Binding>,
    routes: Vec<Binding>,
    /// The routes before the last few changes, newest last. The group routes a message
    /// by the bindings of its time, so one published just before an unbind can arrive
    /// after it; its exchange and routing key are then read from the routes that took it.
    earlier_routes: VecDeque<Vec<Binding>>,
    ready: VecDeque<Message>,
    consumers: Vec<Consumer>,
    rr: usize,
    feeder: Option<JoinHandle<()>>,
    /// Changes the feeder's filters without it leaving the group, when it can.
    refilter: Option<polyport_core::Refilter>,
    /// Bumped at each feeder restart: a feeder that was replaced (its abort may land
    /// only at its next await) must not add to `ready` what its successor re-reads.
    generation: u64,
    had_consumer: bool,
    deleted: bool,
}

/// How a change of routes reaches the group.
enum Reroute {
    /// A new feeder joined; resolves once it reads the log.
    Restarted(oneshot::Receiver<()>),
    /// The feeder's group reads with the new filters once this resolves.
    InPlace(oneshot::Receiver<Result<(), HubError>>),
}

/// The distinct topic filters of some routes, sorted.
fn filters_of(routes: &[Binding]) -> Vec<TopicFilter> {
    let mut fs: Vec<TopicFilter> = routes.iter().map(|b| b.filter.clone()).collect();
    fs.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    fs.dedup_by(|a, b| a.as_str() == b.as_str());
    fs
}

/// A queue: a Hub group over the log with its consumers.
pub struct Queue {
    name: String,
    message_ttl: Option<u64>,
    dead_letter: Option<(String, Option<String>)>,
    limits: Limits,
    /// The broker's exchanges, to route dead letters.
    exchanges: Arc<Mutex<std::collections::HashMap<String, crate::broker::Exchange>>>,
    /// The highest sequence the feeder has seen, and the highest a publish on this
    /// broker routed here: `basic.get` right after a publish waits for it to arrive.
    arrived: AtomicU64,
    expected: AtomicU64,
    arrival: tokio::sync::Notify,
    /// When the queue was last used, for `x-expires`.
    used: Mutex<std::time::Instant>,
    /// How it was declared (and its bindings).
    pub declared: Mutex<Declared>,
    hub: Hub,
    ctx: AuthContext,
    window: usize,
    state: Mutex<State>,
    /// The group spans nodes: read only while wanted here.
    shared: bool,
    /// Until when a `basic.get` wants the queue read here without consumers.
    wanted_until: Mutex<Option<std::time::Instant>>,
}

impl Queue {
    /// The queue, fed from the log from its declaration on.
    pub fn open(
        hub: Hub,
        ctx: AuthContext,
        declared: Declared,
        bindings: Vec<Binding>,
        window: usize,
        exchanges: Arc<Mutex<std::collections::HashMap<String, crate::broker::Exchange>>>,
    ) -> Arc<Self> {
        let mut all = Binding::new("", Kind::Direct, &declared.name, FieldTable::default())
            .into_iter()
            .collect::<Vec<_>>();
        all.extend(bindings);
        let q = Arc::new(Self {
            name: declared.name.clone(),
            message_ttl: declared.message_ttl,
            dead_letter: declared.dead_letter.clone(),
            limits: declared.limits.clone(),
            exchanges,
            arrived: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            arrival: tokio::sync::Notify::new(),
            used: Mutex::new(std::time::Instant::now()),
            declared: Mutex::new(declared),
            shared: hub.groups_span_nodes(),
            wanted_until: Mutex::new(None),
            hub,
            ctx,
            window,
            state: Mutex::new(State {
                bindings: all,
                ..State::default()
            }),
        });
        drop(q.start_reroute());
        q
    }

    /// Its name.
    pub fn name(&self) -> String {
        self.name.clone()
    }

    fn group(&self) -> String {
        format!("amqp:/:{}", self.name)
    }

    /// Ready messages (up to the read-ahead window).
    pub fn message_count(&self) -> u32 {
        self.state.lock().ready.len() as u32
    }

    /// Consumers now.
    pub fn consumer_count(&self) -> u32 {
        self.state.lock().consumers.len() as u32
    }

    /// A use that restarts the `x-expires` clock.
    pub fn touch(&self) {
        *self.used.lock() = std::time::Instant::now();
    }

    /// Whether `x-expires` has run out: no consumers, and unused for that long.
    pub fn unused_past_expiry(&self) -> bool {
        let Some(ms) = self.declared.lock().expires else {
            return false;
        };
        self.consumer_count() == 0 && self.used.lock().elapsed() >= Duration::from_millis(ms)
    }

    /// Whether a message on `topic` would land here.
    pub fn routes(&self, m: &Routed<'_>) -> bool {
        self.state
            .lock()
            .routes
            .iter()
            .any(|b| b.route(m).is_some())
    }

    /// Hands ready messages to consumers with room, round-robin.
    pub fn dispatch(self: &Arc<Self>) {
        let me = self;
        let mut st = self.state.lock();
        // Expired messages leave from the head even without consumers (the feeder's
        // tick comes here), as RabbitMQ expires them.
        if self.message_ttl.is_some() {
            while st.ready.front().is_some_and(|m| self.expired(m)) {
                if let Some(m) = st.ready.pop_front() {
                    self.dead_letter(m, "expired");
                }
            }
        }
        let n = st.consumers.len();
        if n == 0 {
            return;
        }
        let mut idle = 0;
        while !st.ready.is_empty() && idle < n {
            let idx = st.rr % n;
            st.rr = st.rr.wrapping_add(1);
            let c = &st.consumers[idx];
            if !c.no_ack && !c.credit.has_room() {
                idle += 1;
                continue;
            }
            let tx = c.tx.clone();
            let permit = match tx.try_reserve() {
                Ok(p) => p,
                Err(_) => {
                    idle += 1;
                    continue;
                }
            };
            idle = 0;
            let Some(message) = st.ready.pop_front() else {
                break;
            };
            if self.expired(&message) {
                self.dead_letter(message, "expired");
                continue;
            }
            let c = &st.consumers[idx];
            if c.no_ack {
                message.settle();
            } else {
                c.credit.used.fetch_add(1, Ordering::Relaxed);
            }
            permit.send(Out::Deliver {
                channel: c.channel,
                consumer_tag: c.tag.clone(),
                no_ack: c.no_ack,
                queue: me.clone(),
                message,
                credit: c.credit.clone(),
            });
        }
    }

    /// A consumer starts; `Err` names why not (an exclusive consumer holds the queue).
    pub fn consume(
        self: &Arc<Self>,
        tag: &str,
        channel: u16,
        conn: u64,
        no_ack: bool,
        credit: Arc<Credit>,
        tx: mpsc::Sender<Out>,
    ) {
        {
            let mut st = self.state.lock();
            st.had_consumer = true;
            st.consumers.push(Consumer {
                tag: tag.to_string(),
                channel,
                conn,
                no_ack,
                credit,
                tx,
            });
        }
        drop(self.wake());
        self.dispatch();
    }

    /// Ends a consumer; `true` when that leaves an auto-delete queue without any.
    pub fn cancel(&self, conn: u64, channel: u16, tag: &str) -> bool {
        self.touch();
        let mut st = self.state.lock();
        st.consumers
            .retain(|c| !(c.conn == conn && c.channel == channel && c.tag == tag));
        st.consumers.is_empty() && st.had_consumer && self.declared.lock().auto_delete
    }

    /// A publish routed here got sequence `seq`.
    pub fn expect(&self, seq: u64) {
        self.expected.fetch_max(seq, Ordering::Relaxed);
    }

    /// `basic.get`: the next ready message, if any.
    pub fn get(&self) -> Option<(Message, u32)> {
        self.touch();
        let mut st = self.state.lock();
        loop {
            let m = st.ready.pop_front()?;
            if self.expired(&m) {
                self.dead_letter(m, "expired");
                continue;
            }
            return Some((m, st.ready.len() as u32));
        }
    }

    /// Settles a message that is rejected (without requeue) or expired, republishing it
    /// to the dead-letter exchange first when the queue has one, with an `x-death`
    /// entry as RabbitMQ writes it. A dead-letter exchange that does not exist drops it.
    pub fn dead_letter(&self, m: Message, reason: &'static str) {
        let Some((exchange, key)) = &self.dead_letter else {
            m.settle();
            return;
        };
        let kind = self.exchanges.lock().get(exchange).map(|x| x.kind());
        let key = key.clone().unwrap_or_else(|| m.routing_key.clone());
        let topic = kind.and_then(|k| naming::publish_topic(exchange, k, &key));
        let Some(topic) = topic else {
            m.settle();
            return;
        };
        let e = &m.event;
        let mut table = e
            .attrs
            .typed_headers
            .as_deref()
            .and_then(|j| serde_json::from_str::<FieldTable>(j).ok())
            .unwrap_or_else(|| {
                let mut t = FieldTable::default();
                for (k, v) in &e.headers {
                    t.insert(
                        crate::values::short(k),
                        AMQPValue::LongString(v.as_bytes().to_vec().into()),
                    );
                }
                t
            });
        let mut death = FieldTable::default();
        let text = |s: &str| AMQPValue::LongString(s.as_bytes().to_vec().into());
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        death.insert("reason".into(), text(reason));
        death.insert("queue".into(), text(&self.name));
        death.insert("exchange".into(), text(&m.exchange));
        death.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(vec![text(&m.routing_key)].into()),
        );
        death.insert(
            "time".into(),
            AMQPValue::Timestamp(chrono::Utc::now().timestamp().max(0) as u64),
        );
        table.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        );
        let mut d = polyport_core::EventDraft::new(topic, e.payload.clone());
        d.content_type = e.content_type.clone();
        d.attrs = e.attrs.clone();
        d.attrs.expires_at = None;
        d.attrs.typed_headers = serde_json::to_string(&table).ok().map(Into::into);
        d.headers = table
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), crate::values::value_text(v)))
            .collect();
        if e.event_type != polyport_core::event::DEFAULT_EVENT_TYPE {
            d.event_type = Some(e.event_type.clone());
        }
        let (hub, ctx) = (self.hub.clone(), self.ctx.clone());
        // Settled only once the dead letter is published: a crash in between gives the
        // message back to the queue (at least once), never loses it.
        tokio::spawn(async move {
            match hub.publish(&ctx, d).await {
                Ok(_) => m.settle(),
                Err(e) => tracing::warn!(error = %e, "dead-lettering an AMQP message failed"),
            }
        });
    }

    /// Past the queue's `x-message-ttl` (counted from when Polyport accepted it).
    fn expired(&self, m: &Message) -> bool {
        self.message_ttl.is_some_and(|ttl| {
            let age = chrono::Utc::now() - m.event.time;
            age.num_milliseconds() > ttl as i64
        })
    }

    /// Puts unacknowledged messages back at the front, in their order, flagged
    /// redelivered.
    pub fn requeue(self: &Arc<Self>, messages: Vec<Message>) {
        {
            let mut st = self.state.lock();
            if st.deleted {
                return;
            }
            // Back where they were: the ready list is in log order, and a client that
            // returns its unacked messages one by one must not reverse them.
            for mut m in messages.into_iter().rev() {
                m.redelivered = true;
                let at = match m.event.seq {
                    Some(seq) => st
                        .ready
                        .iter()
                        .position(|r| r.event.seq.is_some_and(|s| s > seq))
                        .unwrap_or(st.ready.len()),
                    None => 0,
                };
                st.ready.insert(at, m);
            }
        }
        self.dispatch();
    }

    /// Adds a binding (a no-op if present); the feeder restarts with the new filters.
    pub async fn bind(self: &Arc<Self>, b: Binding) {
        {
            let mut st = self.state.lock();
            if st
                .bindings
                .iter()
                .any(|x| x.exchange == b.exchange && x.key == b.key && x.args == b.args)
            {
                return;
            }
            self.declared.lock().bindings.push(SavedBinding {
                exchange: b.exchange.clone(),
                kind: b.kind.as_str().to_string(),
                key: b.key.clone(),
                args: b.args.clone(),
            });
            st.bindings.push(b);
        }
        self.reroute().await;
    }

    /// Takes the bindings another node saved (the cluster engine); a no-op when they
    /// are this node's already.
    pub(crate) async fn rebind(self: &Arc<Self>, saved: Vec<SavedBinding>, bindings: Vec<Binding>) {
        {
            // In `bind`'s order: the state, then the declaration.
            let mut st = self.state.lock();
            let mut declared = self.declared.lock();
            if declared.bindings == saved {
                return;
            }
            declared.bindings = saved;
            st.bindings = Binding::new("", Kind::Direct, &self.name, FieldTable::default())
                .into_iter()
                .chain(bindings)
                .collect();
        }
        self.reroute().await;
    }

    /// Recomputes the routes after a change of bindings (the queue's, or between
    /// exchanges) and returns once the queue reads the log with them.
    pub async fn reroute(self: &Arc<Self>) {
        // A message published before a change of bindings is routed by the old ones, as
        // on RabbitMQ. A change made in place takes effect where it is made in the log
        // (`polyport_core::Refilter`), read or not; a feeder that must rejoin first
        // reads what was published under the old ones (unless its window is full).
        let (feeder, in_place) = {
            let st = self.state.lock();
            (st.feeder.is_some(), st.refilter.is_some())
        };
        if feeder && !in_place {
            self.caught_up().await;
        }
        match self.start_reroute() {
            Some(Reroute::Restarted(live)) => {
                // A feeder that cannot subscribe says so in the log; the client is answered.
                let _ = tokio::time::timeout(Duration::from_secs(10), live).await;
            }
            Some(Reroute::InPlace(done)) => {
                let r = tokio::time::timeout(Duration::from_secs(10), done).await;
                if let Ok(Err(_) | Ok(Err(_))) = r {
                    // The group stopped, or its new source failed: rejoin instead.
                    let live = self.restart_feeder();
                    let _ = tokio::time::timeout(Duration::from_secs(10), live).await;
                }
            }
            None => {}
        }
        if self.shared {
            // The node running the queue's group refilters it, consumers here or not.
            let filters = filters_of(&self.state.lock().routes);
            if let Err(e) = self
                .hub
                .refilter_hosted(&self.ctx, &self.request(filters))
                .await
            {
                tracing::warn!(queue = %self.name(), error = %e, "the queue's group could not take its new bindings");
            }
        }
    }

    /// The routes are recomputed; the feeder restarts only when the topic filters change
    /// (`Some`: resolves when the new one reads the log).
    fn start_reroute(self: &Arc<Self>) -> Option<Reroute> {
        let own = self.state.lock().bindings.clone();
        let routes = {
            let exchanges = self.exchanges.lock();
            binding::expand(&own, &|name| {
                exchanges
                    .get(name)
                    .map(|x| {
                        x.sources
                            .iter()
                            .filter_map(|s| {
                                let kind = exchanges.get(&s.exchange)?.kind();
                                Some((s.exchange.clone(), kind, s.rule()))
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            })
        };
        let changed = {
            let mut st = self.state.lock();
            let before = filters_of(&st.routes);
            let old = std::mem::replace(&mut st.routes, routes);
            let after = filters_of(&st.routes);
            let differ = before
                .iter()
                .map(|f| f.as_str())
                .ne(after.iter().map(|f| f.as_str()));
            // A binding declared again (every Celery worker does at start) is no change:
            // it must not push real ones out of the history.
            if differ {
                st.earlier_routes.push_back(old);
                if st.earlier_routes.len() > ROUTE_HISTORY {
                    st.earlier_routes.pop_front();
                }
            }
            if st.deleted || !self.wanted(&st) || (st.feeder.is_some() && !differ) {
                return None;
            }
            // Sent under the lock: changes reach the group in the order they were made.
            match (&st.feeder, &st.refilter) {
                (Some(_), Some(r)) => r.send(after).ok(),
                _ => None,
            }
        };
        Some(match changed {
            Some(done) => Reroute::InPlace(done),
            None => Reroute::Restarted(self.restart_feeder()),
        })
    }

    /// Removes a binding; `false` when there was none.
    pub async fn unbind(self: &Arc<Self>, exchange: &str, key: &str) -> bool {
        {
            let mut st = self.state.lock();
            let before = st.bindings.len();
            st.bindings
                .retain(|x| exchange.is_empty() || !(x.exchange == exchange && x.key == key));
            if st.bindings.len() == before {
                return false;
            }
            self.declared
                .lock()
                .bindings
                .retain(|b| !(b.exchange == exchange && b.key == key));
        }
        self.reroute().await;
        true
    }

    /// Whether a binding names `exchange`.
    pub fn bound_to(&self, exchange: &str) -> bool {
        self.state
            .lock()
            .bindings
            .iter()
            .any(|b| b.exchange == exchange)
    }

    /// Drops the bindings of a deleted exchange.
    pub async fn forget_exchange(self: &Arc<Self>, exchange: &str) {
        let had = self
            .state
            .lock()
            .bindings
            .iter()
            .any(|b| b.exchange == exchange);
        if had {
            self.state
                .lock()
                .bindings
                .retain(|b| b.exchange != exchange);
            self.declared
                .lock()
                .bindings
                .retain(|b| b.exchange != exchange);
            self.reroute().await;
        }
    }

    /// `queue.purge`: settles every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        let mut st = self.state.lock();
        let n = st.ready.len() as u32;
        for m in st.ready.drain(..) {
            m.settle();
        }
        n
    }

    /// Stops the queue: its consumers are cancelled, its feeder ends, its group's
    /// position is forgotten. Returns the messages it held.
    pub async fn delete(&self) -> Result<u32, HubError> {
        let n = self.close().await;
        self.hub.delete_group(&self.ctx, &self.group()).await?;
        Ok(n)
    }

    /// Stops the queue on this node (another node deleted it, and its group): its
    /// consumers are cancelled, its feeder ends. Returns the messages it held.
    pub(crate) async fn close(&self) -> u32 {
        let (consumers, n) = {
            let mut st = self.state.lock();
            st.deleted = true;
            if let Some(f) = st.feeder.take() {
                f.abort();
            }
            st.refilter = None;
            let n = st.ready.len() as u32;
            st.ready.clear();
            (std::mem::take(&mut st.consumers), n)
        };
        for c in consumers {
            let _ =
                c.tx.send(Out::Cancelled {
                    channel: c.channel,
                    consumer_tag: c.tag,
                })
                .await;
        }
        n
    }

    /// Consumers of a closing connection leave.
    pub fn drop_connection(&self, conn: u64) {
        self.touch();
        self.state.lock().consumers.retain(|c| c.conn != conn);
    }

    /// Whether `conn` has consumers here.
    pub fn consumers_of(&self, conn: u64) -> bool {
        self.state.lock().consumers.iter().any(|c| c.conn == conn)
    }
}
