//! What one STOMP session does with each frame: SEND into the Hub, SUBSCRIBE as a
//! consumer of a broker queue (declared or bound as RabbitMQ's plugin would), ACK /
//! NACK in the subscription's mode, and transactions over SENDs and acks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use amq_protocol_types::{AMQPValue, FieldTable};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use polyport_broker::{Binding, Broker, Credit, Kind, Message, NewQueue, Out, Queue};
use polyport_core::hot_metrics::HotCounter;
use polyport_core::{AuthContext, Durability, EventDraft, HubError, Origin};
use tokio::sync::mpsc;

use crate::codec::{Command, Frame, Outgoing, Version};
use crate::destination::Destination;
use crate::props;

/// What queues send this session.
pub(crate) type Delivery = Out;

type Publishing = BoxFuture<'static, (Option<String>, Result<(), HubError>)>;

/// An error that ends the connection: an ERROR frame with `message` and a body.
pub(crate) struct Fatal {
    pub(crate) message: String,
    detail: String,
}

impl Fatal {
    pub(crate) fn new(message: &str, detail: String) -> Self {
        Self {
            message: message.to_string(),
            detail,
        }
    }

    pub(crate) fn frame(&self, receipt: Option<&str>) -> Frame {
        let mut f = Frame::new(Command::Error)
            .header("message", self.message.clone())
            .header("content-type", "text/plain");
        if let Some(r) = receipt {
            f = f.header("receipt-id", r);
        }
        f.body = bytes::Bytes::from(self.detail.clone());
        f
    }
}

mod lookup;

fn bad(message: &str, detail: impl Into<String>) -> Fatal {
    Fatal::new(message, detail.into())
}

fn internal(e: polyport_core::HubError) -> Fatal {
    bad("Internal error", e.to_string())
}

/// What the connection does after a frame.
pub(crate) enum Flow {
    Continue,
    Disconnect,
}

#[derive(Clone, Copy, PartialEq)]
enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

struct Sub {
    queue: Arc<Queue>,
    ack: AckMode,
}

struct Pending {
    sub: String,
    queue: Arc<Queue>,
    message: Message,
    credit: Arc<Credit>,
}

pub(crate) struct Session {
    pub(crate) broker: Arc<Broker>,
    ctx: AuthContext,
    pub(crate) conn: u64,
    version: Version,
    subs: HashMap<String, Sub>,
    unacked: BTreeMap<u64, Pending>,
    next: u64,
    deliveries: mpsc::Sender<Out>,
    txs: HashMap<String, Vec<Frame>>,
    /// `/temp-queue/{name}` → the private queue behind it.
    temps: HashMap<String, Arc<Queue>>,
    pub(crate) publishing: FuturesOrdered<Publishing>,
    pub(crate) out: Vec<Outgoing>,
    /// The caller's request-rate bucket: each SEND waits its turn (the socket is not read
    /// meanwhile); `None` when unlimited.
    pub(crate) rate: Option<Arc<polyport_core::rate::Bucket>>,
    /// Subscriptions this connection may hold at once.
    pub(crate) max_subs: usize,
}

impl Session {
    pub(crate) fn new(
        broker: Arc<Broker>,
        ctx: AuthContext,
        conn: u64,
        version: Version,
        deliveries: mpsc::Sender<Out>,
    ) -> Self {
        Self {
            broker,
            ctx,
            conn,
            version,
            subs: HashMap::new(),
            unacked: BTreeMap::new(),
            next: 0,
            deliveries,
            txs: HashMap::new(),
            temps: HashMap::new(),
            publishing: FuturesOrdered::new(),
            out: Vec::new(),
            rate: None,
            max_subs: usize::MAX,
        }
    }

    fn receipt(&mut self, f: &Frame) {
        if let Some(r) = f.get("receipt") {
            let receipt = Frame::new(Command::Receipt).header("receipt-id", r);
            self.out.push(Outgoing::Frame(receipt));
        }
    }

    /// Handles one client frame.
    pub(crate) async fn handle(&mut self, f: Frame) -> Result<Flow, Fatal> {
        let tx = f.get("transaction").map(str::to_string);
        match f.command {
            Command::Send | Command::Ack | Command::Nack if tx.is_some() => {
                let tx = tx.unwrap_or_default();
                let Some(ops) = self.txs.get_mut(&tx) else {
                    return Err(bad(
                        "Bad transaction",
                        format!("transaction '{tx}' was not begun"),
                    ));
                };
                let receipt = f.get("receipt").is_some();
                ops.push(f.clone());
                if receipt {
                    self.receipt(&f);
                }
            }
            Command::Send => self.send(f).await?,
            Command::Subscribe => {
                self.subscribe(&f).await?;
                self.receipt(&f);
            }
            Command::Unsubscribe => {
                self.unsubscribe(&f).await?;
                self.receipt(&f);
            }
            Command::Ack | Command::Nack => {
                self.ack(&f, f.command == Command::Nack)?;
                self.receipt(&f);
            }
            Command::Begin => {
                let tx =
                    tx.ok_or_else(|| bad("Bad transaction", "BEGIN needs a transaction header"))?;
                if self.txs.contains_key(&tx) {
                    return Err(bad(
                        "Bad transaction",
                        format!("transaction '{tx}' is already open"),
                    ));
                }
                self.txs.insert(tx, Vec::new());
                self.receipt(&f);
            }
            Command::Commit => {
                let tx =
                    tx.ok_or_else(|| bad("Bad transaction", "COMMIT needs a transaction header"))?;
                let ops = self.txs.remove(&tx).ok_or_else(|| {
                    bad(
                        "Bad transaction",
                        format!("transaction '{tx}' was not begun"),
                    )
                })?;
                for mut op in ops {
                    // Receipts of the parts were sent when they arrived.
                    op.headers
                        .retain(|(k, _)| k != "receipt" && k != "transaction");
                    match op.command {
                        Command::Send => self.send(op).await?,
                        _ => self.ack(&op, op.command == Command::Nack)?,
                    }
                }
                // Committed means published (durable where durable).
                while let Some((receipt, result)) = self.publishing.next().await {
                    self.published(receipt, result)?;
                }
                self.receipt(&f);
            }
            Command::Abort => {
                let tx =
                    tx.ok_or_else(|| bad("Bad transaction", "ABORT needs a transaction header"))?;
                if self.txs.remove(&tx).is_none() {
                    return Err(bad(
                        "Bad transaction",
                        format!("transaction '{tx}' was not begun"),
                    ));
                }
                self.receipt(&f);
            }
            Command::Disconnect => {
                while let Some((receipt, result)) = self.publishing.next().await {
                    self.published(receipt, result)?;
                }
                self.receipt(&f);
                return Ok(Flow::Disconnect);
            }
            Command::Connect | Command::Stomp => {
                return Err(bad("Already connected", "CONNECT was sent twice"));
            }
            c => {
                return Err(bad(
                    "Bad command",
                    format!("{} is a frame the server sends, not the client", c.as_str()),
                ));
            }
        }
        Ok(Flow::Continue)
    }

    fn destination(f: &Frame) -> Result<Destination, Fatal> {
        let d = f.get("destination").ok_or_else(|| {
            bad(
                "Missing destination",
                format!("{} needs a destination header", f.command.as_str()),
            )
        })?;
        Destination::parse(d).map_err(|e| bad("Bad destination", e.to_string()))
    }

    /// The queue `name`, declared durable (with the frame's `x-*` arguments) if missing.
    async fn declare_queue(&mut self, name: &str, f: &Frame) -> Result<Arc<Queue>, Fatal> {
        if let Some(q) = lookup::queue(&self.broker, name).await? {
            return Ok(q);
        }
        let args = polyport_broker::arguments::queue_arguments(&queue_args(f))
            .map_err(|e| bad("Bad queue arguments", e.to_string()))?;
        let (q, _) = self
            .broker
            .declare_saved_queue(
                name,
                NewQueue {
                    durable: true,
                    args,
                    ..NewQueue::default()
                },
            )
            .await
            .map_err(internal)?;
        Ok(q)
    }

    /// The private queue behind `/temp-queue/{name}`: exclusive to this connection,
    /// gone with it, reachable as `/queue/{queue}` (the rewritten `reply-to`), from AMQP
    /// by its name, and from MQTT as the topic of that name (it is bound on `amq.topic`).
    async fn temp_queue(&mut self, name: &str) -> Result<Arc<Queue>, Fatal> {
        if let Some(q) = self.temps.get(name) {
            return Ok(q.clone());
        }
        let queue = format!("stomp-temp-{}-{}", self.conn, self.temps.len() + 1);
        let q = self.broker.declare_queue(
            &queue,
            NewQueue {
                exclusive: Some(self.conn),
                ..NewQueue::default()
            },
        );
        if let Some(b) = Binding::new("amq.topic", Kind::Topic, &queue, FieldTable::default()) {
            q.bind(b).await;
        }
        self.temps.insert(name.to_string(), q.clone());
        Ok(q)
    }

    async fn send(&mut self, mut f: Frame) -> Result<(), Fatal> {
        if let Some(bucket) = &self.rate {
            bucket.pace(Origin("stomp")).await;
        }
        let dest = Self::destination(&f)?;
        // A reply-to of `/temp-queue/x` names a private queue; replies reach this session
        // (as subscription `/temp-queue/x` unless it subscribed to it itself).
        if let Some(temp) = f
            .get("reply-to")
            .and_then(|r| r.strip_prefix("/temp-queue/"))
        {
            let temp = temp.to_string();
            let q = self.temp_queue(&temp).await?;
            let tag = format!("/temp-queue/{temp}");
            if !self.subs.values().any(|s| Arc::ptr_eq(&s.queue, &q)) {
                q.consume(
                    &tag,
                    0,
                    self.conn,
                    true,
                    Credit::new(0),
                    self.deliveries.clone(),
                );
                self.subs.insert(
                    tag,
                    Sub {
                        queue: q.clone(),
                        ack: AckMode::Auto,
                    },
                );
            }
            let to = format!("/queue/{}", q.name());
            if let Some(h) = f.headers.iter_mut().find(|(k, _)| k == "reply-to") {
                h.1 = to;
            }
        }
        let durable_queue = match &dest {
            Destination::Queue(q) => Some(self.declare_queue(q, &f).await?),
            // Anyone may publish to an exclusive queue; only its owner consumes.
            Destination::AmqQueue(q) | Destination::ReplyQueue(q) => {
                Some(lookup::queue(&self.broker, q).await?.ok_or_else(|| {
                    bad(
                        "not_found",
                        format!("NOT_FOUND - no queue '{q}' in vhost '/'"),
                    )
                })?)
            }
            _ => None,
        }
        .is_some_and(|q| q.declared.lock().durable);
        let (exchange, key) = dest.publish_target();
        let x = lookup::exchange(&self.broker, &exchange).await?;
        if x.internal {
            return Err(bad(
                "access_refused",
                format!(
                    "ACCESS_REFUSED - cannot publish to internal exchange '{exchange}' in vhost '/'"
                ),
            ));
        }
        let topic =
            polyport_broker::naming::publish_topic(&exchange, x.kind(), &key).ok_or_else(|| {
                bad(
                    "Bad destination",
                    format!("'{key}' cannot be a routing key"),
                )
            })?;
        let mut draft = EventDraft::new(topic, f.body.clone());
        props::inbound(&f, &mut draft, chrono::Utc::now());
        // Durable unless the operator made the queue's topic memory-only
        // (`events.ephemeral_topics`, as for AMQP); `persistent:true` forces the disk.
        if durable_queue && draft.durability != Durability::Durable {
            draft.durability = Durability::Auto;
        }
        static IN: HotCounter = HotCounter::new("polyport_stomp_messages_in_total");
        IN.increment(1);
        let receipt = f.get("receipt").map(str::to_string);
        // The queues it is routed to learn its sequence, so a SUBSCRIBE after the RECEIPT
        // waits until they hold it (and their length limits have applied), as on RabbitMQ.
        let queues = self
            .broker
            .queues_for(&polyport_broker::Routed::draft(&draft));
        // Queued now, in arrival order; the RECEIPT comes once the Hub has it.
        let submitted = self.broker.hub.submit_publish(&self.ctx, draft).await;
        self.publishing.push_back(
            async move {
                let r = match submitted {
                    Ok(p) => p.await.map(|receipt| {
                        if let Some(seq) = receipt.event.seq {
                            for q in &queues {
                                q.expect(seq);
                            }
                        }
                    }),
                    Err(e) => Err(e),
                };
                (receipt, r)
            }
            .boxed(),
        );
        Ok(())
    }

    /// A SEND reached the Hub (or was refused).
    pub(crate) fn published(
        &mut self,
        receipt: Option<String>,
        result: Result<(), HubError>,
    ) -> Result<(), Fatal> {
        match result {
            Err(HubError::Unavailable(why)) => {
                return Err(bad(
                    "Server unavailable",
                    format!(
                        "the store cannot take messages now ({why}); reconnect, to another node if there is one"
                    ),
                ));
            }
            Err(e) => return Err(bad("Message not accepted", e.to_string())),
            Ok(()) => {}
        }
        if let Some(r) = receipt {
            let receipt = Frame::new(Command::Receipt).header("receipt-id", r);
            self.out.push(Outgoing::Frame(receipt));
        }
        Ok(())
    }

    fn sub_id(&self, f: &Frame) -> Result<String, Fatal> {
        match (f.get("id"), self.version) {
            (Some(id), _) => Ok(id.to_string()),
            (None, Version::V1_0) => f
                .get("destination")
                .map(str::to_string)
                .ok_or_else(|| bad("Missing id", "SUBSCRIBE needs an id or a destination")),
            (None, _) => Err(bad(
                "Missing id",
                format!(
                    "{} needs an id header in STOMP {}",
                    f.command.as_str(),
                    self.version.as_str()
                ),
            )),
        }
    }

    async fn subscribe(&mut self, f: &Frame) -> Result<(), Fatal> {
        let id = self.sub_id(f)?;
        if self.subs.contains_key(&id) {
            return Err(bad(
                "Duplicated subscription identifier",
                format!("subscription '{id}' exists"),
            ));
        }
        if self.subs.len() >= self.max_subs {
            polyport_core::admission::limit_hit("stomp.max_subscriptions");
            return Err(bad(
                "Too many subscriptions",
                format!(
                    "this connection holds its maximum of {} subscriptions ([stomp] max_subscriptions); UNSUBSCRIBE some first",
                    self.max_subs
                ),
            ));
        }
        let ack = match f.get("ack").unwrap_or("auto") {
            "auto" => AckMode::Auto,
            "client" => AckMode::Client,
            "client-individual" => AckMode::ClientIndividual,
            other => {
                return Err(bad(
                    "Bad ack mode",
                    format!("ack '{other}' is not auto, client or client-individual"),
                ));
            }
        };
        let dest = Self::destination(f)?;
        let queue = match &dest {
            Destination::Queue(q) => self.declare_queue(q, f).await?,
            Destination::AmqQueue(q) => lookup::existing_queue(&self.broker, self.conn, q).await?,
            Destination::Topic(_) | Destination::Exchange { .. } => {
                self.subscription_queue(&id, &dest, f).await?
            }
            Destination::TempQueue(name) => {
                let q = self.temp_queue(name).await?;
                // Replies that arrived before this SUBSCRIBE went to the implicit one.
                let implicit = format!("/temp-queue/{name}");
                if implicit != id && self.subs.remove(&implicit).is_some() {
                    q.cancel(self.conn, 0, &implicit);
                }
                q
            }
            Destination::ReplyQueue(q) => {
                lookup::existing_queue(&self.broker, self.conn, q).await?
            }
        };
        queue.settled().await;
        let prefetch = f
            .get("prefetch-count")
            .and_then(|p| p.trim().parse::<usize>().ok())
            .unwrap_or(0);
        queue.consume(
            &id,
            0,
            self.conn,
            ack == AckMode::Auto,
            Credit::new(prefetch),
            self.deliveries.clone(),
        );
        self.subs.insert(id, Sub { queue, ack });
        Ok(())
    }

    /// The queue behind a topic or exchange subscription: exclusive to this connection,
    /// or, with `durable:true` (`persistent:true`), a durable one named after the id
    /// that keeps collecting while the subscriber is away.
    async fn subscription_queue(
        &mut self,
        id: &str,
        dest: &Destination,
        f: &Frame,
    ) -> Result<Arc<Queue>, Fatal> {
        let (exchange, key) = dest.publish_target();
        let x = lookup::exchange(&self.broker, &exchange).await?;
        let durable = is_true(f.get("durable")) || is_true(f.get("persistent"));
        let name = if durable {
            format!("stomp-subscription-{id}")
        } else {
            format!("stomp-subscription-{}-{id}", self.conn)
        };
        let queue = match lookup::queue(&self.broker, &name).await? {
            Some(q) if durable => q,
            _ => {
                let args = polyport_broker::arguments::queue_arguments(&queue_args(f))
                    .map_err(|e| bad("Bad queue arguments", e.to_string()))?;
                self.broker.declare_queue(
                    &name,
                    NewQueue {
                        durable,
                        auto_delete: !durable,
                        exclusive: (!durable).then_some(self.conn),
                        args,
                    },
                )
            }
        };
        // A topic key maps `.`-words to the tree; other exchanges take the key as is.
        let kind = if exchange == "amq.topic" {
            Kind::Topic
        } else {
            x.kind()
        };
        let binding =
            Binding::new(&exchange, kind, &key, FieldTable::default()).ok_or_else(|| {
                bad(
                    "Bad destination",
                    format!("'{key}' cannot be a binding key"),
                )
            })?;
        self.broker
            .hub
            .authorize_route(&self.ctx, binding.filter())
            .map_err(|e| bad("Access refused", e.to_string()))?;
        self.broker
            .bind_queue(&queue, binding)
            .await
            .map_err(internal)?;
        Ok(queue)
    }

    async fn unsubscribe(&mut self, f: &Frame) -> Result<(), Fatal> {
        let id = self.sub_id(f)?;
        let Some(sub) = self.subs.remove(&id) else {
            return Err(bad("Bad subscription", format!("no subscription '{id}'")));
        };
        let held: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, p)| p.sub == id)
            .map(|(n, _)| *n)
            .collect();
        let back = held
            .into_iter()
            .filter_map(|n| self.unacked.remove(&n))
            .collect();
        settle(back, Settle::Requeue);
        let gone = sub.queue.cancel(self.conn, 0, &id);
        let drop_durable = sub.queue.declared.lock().durable
            && sub.queue.name().starts_with("stomp-subscription-")
            && (is_true(f.get("durable")) || is_true(f.get("persistent")));
        if gone || drop_durable {
            self.broker
                .delete_queue(&sub.queue.name())
                .await
                .map_err(internal)?;
        }
        Ok(())
    }

    fn ack(&mut self, f: &Frame, nack: bool) -> Result<(), Fatal> {
        let header = if self.version >= Version::V1_2 {
            "id"
        } else {
            "message-id"
        };
        let id = f.get(header).ok_or_else(|| {
            bad(
                "Missing id",
                format!("{} needs a '{header}' header", f.command.as_str()),
            )
        })?;
        let n = parse_delivery(id, self.conn)
            .filter(|n| self.unacked.contains_key(n))
            .ok_or_else(|| {
                bad(
                    "Unknown message",
                    format!("no unacknowledged message '{id}'"),
                )
            })?;
        let Some(first) = self.unacked.get(&n) else {
            return Err(bad(
                "Unknown message",
                format!("no unacknowledged message '{id}'"),
            ));
        };
        let sub = first.sub.clone();
        let cumulative = self
            .subs
            .get(&sub)
            .is_some_and(|s| s.ack == AckMode::Client);
        let taken: Vec<Pending> = if cumulative {
            let keys: Vec<u64> = self
                .unacked
                .range(..=n)
                .filter(|(_, p)| p.sub == sub)
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter()
                .filter_map(|k| self.unacked.remove(&k))
                .collect()
        } else {
            self.unacked.remove(&n).into_iter().collect()
        };
        let how = match (nack, f.get("requeue")) {
            (false, _) => Settle::Ack,
            (true, Some("false")) => Settle::DeadLetter,
            (true, _) => Settle::Requeue,
        };
        settle(taken, how);
        Ok(())
    }

    /// A delivery from one of this session's subscriptions, as a MESSAGE frame.
    pub(crate) fn deliver(&mut self, d: Out) {
        let Out::Deliver {
            consumer_tag,
            no_ack,
            queue,
            message,
            credit,
            ..
        } = d
        else {
            if let Out::Cancelled { consumer_tag, .. } = d {
                // The queue was deleted under the subscription.
                tracing::debug!(subscription = %consumer_tag, "STOMP subscription's queue deleted");
                self.subs.remove(&consumer_tag);
            }
            return;
        };
        let Some(sub) = self.subs.get(&consumer_tag) else {
            if !no_ack {
                credit.release();
                queue.requeue(vec![message]);
            }
            return;
        };
        let Some(extra) = props::outbound(&message.event, chrono::Utc::now()) else {
            message.settle();
            if !no_ack {
                credit.release();
            }
            queue.dispatch();
            return;
        };
        self.next += 1;
        let n = self.next;
        let id = format!("T_{consumer_tag}@@session-{}@@{n}", self.conn);
        let mut f = Frame::new(Command::Message)
            .header("subscription", consumer_tag.clone())
            .header(
                "destination",
                Destination::of_delivery(&message.exchange, &message.routing_key),
            )
            .header("message-id", id.clone());
        if sub.ack != AckMode::Auto && self.version >= Version::V1_2 {
            f = f.header("ack", id);
        }
        if message.redelivered {
            f = f.header("redelivered", "true");
        }
        f.headers.extend(extra);
        f = f.header("content-length", message.event.payload.len().to_string());
        f.body = message.event.payload.clone();
        static OUT: HotCounter = HotCounter::new("polyport_stomp_messages_out_total");
        OUT.increment(1);
        self.out.push(Outgoing::Frame(f));
        if !no_ack {
            self.unacked.insert(
                n,
                Pending {
                    sub: consumer_tag,
                    queue,
                    message,
                    credit,
                },
            );
        }
    }

    /// The connection ends: unacknowledged messages go back, consumers leave, this
    /// connection's subscription queues go.
    pub(crate) async fn close(&mut self) {
        settle(
            std::mem::take(&mut self.unacked).into_values().collect(),
            Settle::Requeue,
        );
        while self.publishing.next().await.is_some() {}
        self.broker.connection_closed(self.conn).await;
    }
}

fn is_true(v: Option<&str>) -> bool {
    v.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The delivery number in a `message-id` / `ack` this session handed out.
fn parse_delivery(id: &str, conn: u64) -> Option<u64> {
    let (session, n) = id.rsplit_once("@@")?;
    session
        .ends_with(&format!("@@session-{conn}"))
        .then(|| n.parse().ok())
        .flatten()
}

/// The `x-*` headers of a SUBSCRIBE or SEND as queue arguments (numbers as integers).
fn queue_args(f: &Frame) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in &f.headers {
        if !k.starts_with("x-") || t.inner().contains_key(k.as_str()) {
            continue;
        }
        let value = match v.trim().parse::<i64>() {
            Ok(n) => AMQPValue::LongLongInt(n),
            Err(_) => AMQPValue::LongString(v.as_bytes().to_vec().into()),
        };
        t.insert(k.as_str().into(), value);
    }
    t
}

enum Settle {
    Ack,
    Requeue,
    DeadLetter,
}

fn settle(taken: Vec<Pending>, how: Settle) {
    let mut by_queue: Vec<(Arc<Queue>, Vec<Message>)> = Vec::new();
    for p in taken {
        p.credit.release();
        match how {
            Settle::Ack => {
                p.message.settle();
                p.queue.dispatch();
            }
            Settle::DeadLetter => {
                p.queue.dead_letter(p.message, "rejected");
                p.queue.dispatch();
            }
            Settle::Requeue => match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &p.queue)) {
                Some((_, v)) => v.push(p.message),
                None => by_queue.push((p.queue, vec![p.message])),
            },
        }
    }
    for (q, msgs) in by_queue {
        q.requeue(msgs);
    }
}
