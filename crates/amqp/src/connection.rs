//! One AMQP connection after its handshake (`handshake.rs`): a loop over the
//! socket, the deliveries from this connection's consumers, publishes on their way into
//! the Hub (confirmed in order once the Hub has them), heartbeats and shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{
    AMQPClass, basic, channel as chan, connection as conn, exchange, queue, tx,
};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use polyport_core::adapter::{Beat, Heartbeats, Peer, Stream};
use polyport_core::hot_metrics::HotCounter;
use polyport_core::{AuthContext, HubError};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::AmqpConfig;
use crate::channel::{Channel, Ctx, Ready};
use crate::codec::{Codec, CodecError, Incoming};
use crate::error::{Closing, Code};
use crate::handshake::{Negotiated, close_connection, handshake};
use crate::props::short;
use polyport_broker::Broker;
use polyport_broker::Out;

/// Frame size before tune: the spec's minimum.
pub(crate) const MIN_FRAME: usize = 4096;
/// Time to finish the handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Deliveries queued towards one connection before queues hold back.
const OUTBOX: usize = 1024;
/// Frames handled per step before the loop writes.
const BATCH: usize = 64;
/// Write-queue fill at which publishing connections are blocked (`connection.blocked`,
/// and their socket is not read), and at which they are let go again.
const BLOCK_AT: f32 = 0.9;
const UNBLOCK_AT: f32 = 0.5;
/// How often a blocked connection looks at the write queue.
const PRESSURE_POLL: Duration = Duration::from_millis(20);

pub(crate) type Transport = Framed<Stream, Codec>;

type Publishing = BoxFuture<'static, (u16, Option<u64>, Result<(), HubError>)>;

struct Connection {
    broker: Arc<Broker>,
    cfg: Arc<AmqpConfig>,
    id: u64,
    ctx: AuthContext,
    /// The caller's request-rate bucket: each publish waits its turn (the socket is not
    /// read meanwhile, as under RabbitMQ's flow control); `None` when unlimited.
    rate: Option<Arc<polyport_core::rate::Bucket>>,
    io: Transport,
    frame_max: usize,
    channel_max: u16,
    channels: HashMap<u16, Channel>,
    deliveries: mpsc::Sender<Out>,
    publishing: FuturesOrdered<Publishing>,
    out: Vec<AMQPFrame>,
    /// The client asked for `connection.blocked` notices (its capabilities table).
    notify_blocked: bool,
    /// This connection has published (only publishers are blocked, as in RabbitMQ).
    publishes: bool,
    blocked: bool,
    /// A publish failed because the store cannot take writes now: the connection is
    /// closed with this reason (after any nack), so the client reconnects, to another
    /// node if there is one.
    unavailable: Option<String>,
}

/// Serves one connection to its end.
pub(crate) async fn run(
    stream: Stream,
    peer: Peer,
    broker: Arc<Broker>,
    cfg: Arc<AmqpConfig>,
    stop: CancellationToken,
    refusal: Option<polyport_core::admission::Refusal>,
) {
    let mut io = Framed::new(stream, Codec::new(MIN_FRAME));
    let Some(Negotiated {
        ctx,
        frame_max,
        channel_max,
        heartbeat,
        notify_blocked,
    }) = tokio::time::timeout(HANDSHAKE, handshake(&mut io, &peer, &broker, &cfg, refusal))
        .await
        .ok()
        .flatten()
    else {
        return;
    };
    io.codec_mut().frame_max = frame_max;
    let id = broker.next_connection();
    let (tx, rx) = mpsc::channel(OUTBOX);
    let rate = broker.hub.rate_bucket(&ctx, peer.addr.map(|a| a.ip()));
    let mut c = Connection {
        broker: broker.clone(),
        cfg,
        id,
        ctx,
        rate,
        io,
        frame_max,
        channel_max,
        channels: HashMap::new(),
        deliveries: tx,
        publishing: FuturesOrdered::new(),
        out: Vec::new(),
        notify_blocked,
        publishes: false,
        blocked: false,
        unavailable: None,
    };
    metrics::gauge!("polyport_amqp_connections").increment(1.0);
    c.serve(rx, heartbeat, stop).await;
    for (ch, mut channel) in std::mem::take(&mut c.channels) {
        channel.close(&broker, id, ch).await;
    }
    // Publishes already accepted still reach the Hub.
    while c.publishing.next().await.is_some() {}
    broker.connection_closed(id).await;
    metrics::gauge!("polyport_amqp_connections").decrement(1.0);
}

impl Connection {
    async fn serve(
        &mut self,
        mut rx: mpsc::Receiver<Out>,
        heartbeat: u16,
        stop: CancellationToken,
    ) {
        let beat = (heartbeat > 0).then(|| Duration::from_secs(u64::from(heartbeat)));
        // As RabbitMQ: a frame at least every half interval, gone after two silent ones.
        let mut beats = Heartbeats::new(beat.map(|b| b / 2), beat.map(|b| b * 2));
        let shutdown = self.broker.hub.shutdown_token();
        // Made once: a turn of the loop then registers no waiter on either token.
        let stopped = stop.cancelled();
        let down = shutdown.cancelled();
        tokio::pin!(stopped, down);
        loop {
            if let Some(why) = self.unavailable.take() {
                let text =
                    format!("CONNECTION_FORCED - the store is unavailable ({why}); reconnect");
                self.close(Closing::Connection {
                    code: Code::ConnectionForced,
                    text,
                    class_id: 0,
                    method_id: 0,
                })
                .await;
                return;
            }
            if !self.out.is_empty() {
                for f in self.out.drain(..) {
                    if self.io.feed(f).await.is_err() {
                        return;
                    }
                }
                if self.io.flush().await.is_err() {
                    return;
                }
                beats.sent();
            }
            tokio::select! {
                f = self.io.next(), if !self.blocked => {
                    beats.heard();
                    // Frames that arrived together are handled together; the next one
                    // is only taken when it will be handled.
                    let mut next = Some(f);
                    let mut handled = 0;
                    while let Some(f) = next.take() {
                        match f {
                            Some(Ok(Incoming::Frame(frame))) => {
                                if let Err(end) = self.frame(*frame).await {
                                    match end {
                                        Some(closing) => self.close(closing).await,
                                        None => self.flush_out().await,
                                    }
                                    return;
                                }
                            }
                            Some(Err(CodecError::TooLarge { size, max })) => {
                                let text = format!("FRAME_ERROR - frame of {size} bytes exceeds frame_max {max}");
                                self.close(Closing::Connection { code: Code::FrameError, text, class_id: 0, method_id: 0 }).await;
                                return;
                            }
                            Some(Err(CodecError::Malformed)) => {
                                let text = "FRAME_ERROR - malformed frame or unknown method".to_string();
                                self.close(Closing::Connection { code: Code::FrameError, text, class_id: 0, method_id: 0 }).await;
                                return;
                            }
                            _ => return,
                        }
                        handled += 1;
                        self.check_pressure();
                        if handled == BATCH || self.blocked {
                            break;
                        }
                        next = self.io.next().now_or_never();
                    }
                }
                _ = tokio::time::sleep(PRESSURE_POLL), if self.blocked => {
                    // Not reading is not the client's silence.
                    beats.heard();
                    self.check_pressure();
                }
                Some(d) = rx.recv() => {
                    self.outbound(d);
                    for _ in 0..BATCH {
                        match rx.try_recv() {
                            Ok(d) => self.outbound(d),
                            Err(_) => break,
                        }
                    }
                }
                Some((ch, confirm, result)) = self.publishing.next(), if !self.publishing.is_empty() => {
                    self.confirmed(ch, confirm, result);
                    // A commit settles several publishes at once: confirm them in one
                    // write (and one `multiple` ack where they follow each other).
                    while let Some(Some((ch, confirm, result))) = self.publishing.next().now_or_never() {
                        self.confirmed(ch, confirm, result);
                    }
                }
                beat = beats.due() => match beat {
                    Beat::Send => self.out.push(AMQPFrame::Heartbeat),
                    Beat::Dead => {
                        tracing::info!(conn = self.id, "AMQP client missed heartbeats; closing");
                        return;
                    }
                },
                _ = &mut stopped => {
                    let text = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'".to_string();
                    self.close(Closing::Connection { code: Code::ConnectionForced, text, class_id: 0, method_id: 0 }).await;
                    return;
                }
                _ = &mut down => return,
            }
        }
    }

    /// Blocks a publishing connection while the store's write queue is nearly full, and
    /// unblocks it once it has drained to half, telling clients that asked.
    fn check_pressure(&mut self) {
        if !self.publishes {
            return;
        }
        let p = self.broker.hub.write_pressure();
        let m = if !self.blocked && p >= BLOCK_AT {
            tracing::info!(
                conn = self.id,
                "AMQP publisher blocked: the store's write queue is full"
            );
            metrics::counter!("polyport_amqp_blocked_total").increment(1);
            self.blocked = true;
            conn::AMQPMethod::Blocked(conn::Blocked {
                reason: short("low on disk throughput: the write queue is full"),
            })
        } else if self.blocked && p <= UNBLOCK_AT {
            self.blocked = false;
            conn::AMQPMethod::Unblocked(conn::Unblocked {})
        } else {
            return;
        };
        if self.notify_blocked {
            self.out
                .push(AMQPFrame::Method(0, AMQPClass::Connection(m)));
        }
    }

    fn confirmed(&mut self, ch: u16, confirm: Option<u64>, result: Result<(), HubError>) {
        if let Err(e) = &result {
            tracing::warn!(conn = self.id, error = %e, "AMQP publish refused by the hub");
            if let HubError::Unavailable(why) = e {
                self.unavailable = Some(why.clone());
            }
        }
        let Some(tag) = confirm else { return };
        if !self.channels.contains_key(&ch) {
            return;
        }
        confirm_into(&mut self.out, ch, tag, result.is_ok());
    }

    fn outbound(&mut self, d: Out) {
        let (ch, frame_max) = match &d {
            Out::Deliver { channel, .. } | Out::Cancelled { channel, .. } => {
                (*channel, self.frame_max)
            }
        };
        let Some(channel) = self.channels.get_mut(&ch) else {
            if let Out::Deliver {
                queue,
                message,
                credit,
                no_ack,
                ..
            } = d
                && !no_ack
            {
                credit.release();
                queue.requeue(vec![message]);
            }
            return;
        };
        let mut cx = Ctx {
            broker: &self.broker,
            conn: self.id,
            id: ch,
            out: &mut self.out,
            deliveries: &self.deliveries,
            frame_max,
            auth: &self.ctx,
        };
        match d {
            Out::Deliver {
                consumer_tag,
                no_ack,
                queue,
                message,
                credit,
                ..
            } => channel.deliver(&mut cx, consumer_tag, no_ack, queue, message, credit),
            Out::Cancelled { consumer_tag, .. } => channel.cancelled(&mut cx, &consumer_tag),
        }
    }

    /// Handles one frame. `Err(None)`: the connection ended cleanly; `Err(Some)`: it
    /// must be closed with that error.
    async fn frame(&mut self, f: AMQPFrame) -> Result<(), Option<Closing>> {
        match f {
            AMQPFrame::Heartbeat => Ok(()),
            AMQPFrame::Method(0, m) => self.connection_method(m),
            AMQPFrame::Method(ch, m) => self.channel_method(ch, m).await.map_err(Some),
            AMQPFrame::Header(ch, h) => {
                let max = self.cfg.max_message;
                let ready = self.with_channel(ch, |c| c.header(h, max))?;
                self.publish(ch, ready).await;
                Ok(())
            }
            AMQPFrame::Body(ch, b) => {
                let ready = self.with_channel(ch, |c| c.body(b))?;
                self.publish(ch, ready).await;
                Ok(())
            }
            AMQPFrame::ProtocolHeader(_) | AMQPFrame::InvalidHeartbeat(_) => {
                Err(Some(Closing::Connection {
                    code: Code::UnexpectedFrame,
                    text: "UNEXPECTED_FRAME - unexpected frame".into(),
                    class_id: 0,
                    method_id: 0,
                }))
            }
        }
    }

    fn with_channel<T>(
        &mut self,
        ch: u16,
        f: impl FnOnce(&mut Channel) -> Result<Option<T>, Closing>,
    ) -> Result<Option<T>, Option<Closing>> {
        match self.channels.get_mut(&ch) {
            Some(c) if c.closing => Ok(None),
            Some(c) => f(c).map_err(Some),
            None => Err(Some(Closing::Connection {
                code: Code::ChannelError,
                text: format!("CHANNEL_ERROR - expected 'channel.open' on channel {ch}"),
                class_id: 0,
                method_id: 0,
            })),
        }
    }

    fn connection_method(&mut self, m: AMQPClass) -> Result<(), Option<Closing>> {
        match m {
            AMQPClass::Connection(conn::AMQPMethod::Close(_)) => {
                self.out.push(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(conn::AMQPMethod::CloseOk(conn::CloseOk {})),
                ));
                Err(None)
            }
            AMQPClass::Connection(conn::AMQPMethod::CloseOk(_)) => Err(None),
            AMQPClass::Connection(
                conn::AMQPMethod::Blocked(_) | conn::AMQPMethod::Unblocked(_),
            ) => Ok(()),
            other => Err(Some(Closing::Connection {
                code: Code::CommandInvalid,
                text: "COMMAND_INVALID - unexpected method on channel 0".into(),
                class_id: other.get_amqp_class_id(),
                method_id: other.get_amqp_method_id(),
            })),
        }
    }

    async fn channel_method(&mut self, ch: u16, m: AMQPClass) -> Result<(), Closing> {
        match &m {
            AMQPClass::Channel(chan::AMQPMethod::Open(_)) => {
                if self.channels.contains_key(&ch) || ch > self.channel_max {
                    return Err(Closing::Connection {
                        code: Code::ChannelError,
                        text: format!(
                            "CHANNEL_ERROR - channel {ch} is already open or out of range"
                        ),
                        class_id: 20,
                        method_id: 10,
                    });
                }
                self.channels.insert(ch, Channel::default());
                self.out.push(AMQPFrame::Method(
                    ch,
                    AMQPClass::Channel(chan::AMQPMethod::OpenOk(chan::OpenOk {})),
                ));
                return Ok(());
            }
            AMQPClass::Channel(chan::AMQPMethod::Close(_)) => {
                if let Some(mut c) = self.channels.remove(&ch) {
                    c.close(&self.broker, self.id, ch).await;
                }
                self.out.push(AMQPFrame::Method(
                    ch,
                    AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                ));
                return Ok(());
            }
            AMQPClass::Channel(chan::AMQPMethod::CloseOk(_)) => {
                if let Some(mut c) = self.channels.remove(&ch) {
                    c.close(&self.broker, self.id, ch).await;
                }
                return Ok(());
            }
            _ => {}
        }
        let Some(channel) = self.channels.get_mut(&ch) else {
            return Err(Closing::Connection {
                code: Code::ChannelError,
                text: format!("CHANNEL_ERROR - expected 'channel.open' on channel {ch}"),
                class_id: m.get_amqp_class_id(),
                method_id: m.get_amqp_method_id(),
            });
        };
        if channel.closing {
            return Ok(());
        }
        // Routing is decided as a queue reads the log: a bind, unbind, purge or delete
        // that overtook this connection's publishes would route them by what came after.
        let reads = matches!(
            m,
            AMQPClass::Basic(basic::AMQPMethod::Get(_) | basic::AMQPMethod::Consume(_))
                | AMQPClass::Queue(
                    queue::AMQPMethod::Bind(_)
                        | queue::AMQPMethod::Unbind(_)
                        | queue::AMQPMethod::Purge(_)
                        | queue::AMQPMethod::Delete(_)
                )
                | AMQPClass::Exchange(
                    exchange::AMQPMethod::Bind(_)
                        | exchange::AMQPMethod::Unbind(_)
                        | exchange::AMQPMethod::Delete(_)
                )
        );
        if reads && !self.publishing.is_empty() {
            // This connection's publishes reach their queues before it reads or re-routes one.
            while let Some((c, confirm, result)) = self.publishing.next().await {
                self.confirmed(c, confirm, result);
            }
        }
        if matches!(m, AMQPClass::Basic(basic::AMQPMethod::Consume(_))) {
            let open: usize = self.channels.values().map(Channel::consumer_count).sum();
            if open >= self.cfg.max_consumers {
                polyport_core::admission::limit_hit("amqp.max_consumers");
                let text = format!(
                    "PRECONDITION_FAILED - reached maximum ({}) of consumers per connection ([amqp] max_consumers); cancel some first",
                    self.cfg.max_consumers
                );
                self.close_channel(ch, Code::PreconditionFailed, text, 60, 20)
                    .await;
                return Ok(());
            }
        }
        let Some(channel) = self.channels.get_mut(&ch) else {
            return Ok(());
        };
        if channel.pending_publish().is_some() {
            return Err(Closing::Connection {
                code: Code::UnexpectedFrame,
                text: "UNEXPECTED_FRAME - a method arrived while a publish's content was expected"
                    .into(),
                class_id: m.get_amqp_class_id(),
                method_id: m.get_amqp_method_id(),
            });
        }
        let mut cx = Ctx {
            broker: &self.broker,
            conn: self.id,
            id: ch,
            out: &mut self.out,
            deliveries: &self.deliveries,
            frame_max: self.frame_max,
            auth: &self.ctx,
        };
        let commit = matches!(m, AMQPClass::Tx(tx::AMQPMethod::Commit(_)));
        match channel.method(&mut cx, m).await {
            Ok(()) if commit => {
                let publishes = channel
                    .tx
                    .as_mut()
                    .map(|t| std::mem::take(&mut t.publishes))
                    .unwrap_or_default();
                for r in publishes {
                    self.publish_now(ch, r).await;
                }
                // Committed means published (durable where durable).
                while let Some((c, confirm, result)) = self.publishing.next().await {
                    self.confirmed(c, confirm, result);
                }
                self.out.push(AMQPFrame::Method(
                    ch,
                    AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                ));
                Ok(())
            }
            Ok(()) => Ok(()),
            Err(Closing::Channel {
                code,
                text,
                class_id,
                method_id,
            }) => {
                self.close_channel(ch, code, text, class_id, method_id)
                    .await;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Closes one channel with an error, as the server (the connection lives on).
    async fn close_channel(
        &mut self,
        ch: u16,
        code: Code,
        text: String,
        class_id: u16,
        method_id: u16,
    ) {
        let Some(channel) = self.channels.get_mut(&ch) else {
            return;
        };
        tracing::debug!(conn = self.id, channel = ch, %text, "AMQP channel closed");
        channel.closing = true;
        channel.content = None;
        let mut c = std::mem::take(channel);
        c.closing = true;
        c.close(&self.broker, self.id, ch).await;
        self.channels.insert(ch, c);
        self.out.push(AMQPFrame::Method(
            ch,
            AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
                reply_code: code.value(),
                reply_text: short(&text),
                class_id,
                method_id,
            })),
        ));
    }

    /// Sends a complete publish into the Hub; a mandatory one no queue takes comes back
    /// as `basic.return` (it still reaches the tree's other subscribers).
    async fn publish(&mut self, ch: u16, ready: Option<Ready>) {
        let Some(r) = ready else { return };
        if let Some(bucket) = &self.rate {
            bucket.pace(polyport_core::Origin("amqp")).await;
        }
        // A topic the connection may not publish on closes the channel with 403, as
        // RabbitMQ does for an exchange without write permission.
        if let Some(d) = &r.draft
            && let Err(e) = self.broker.hub.authorize(
                &self.ctx,
                polyport_core::auth::Action::Publish(d.topic.as_str()),
            )
        {
            let text = format!("ACCESS_REFUSED - {e}");
            self.close_channel(ch, Code::AccessRefused, text, 60, 40)
                .await;
            return;
        }
        if let Some(t) = self.channels.get_mut(&ch).and_then(|c| c.tx.as_mut()) {
            t.publishes.push(r);
            return;
        }
        self.publish_now(ch, r).await;
    }

    async fn publish_now(&mut self, ch: u16, r: Ready) {
        let queues = r
            .draft
            .as_ref()
            .map(|d| self.broker.queues_for(&polyport_broker::Routed::draft(d)))
            .unwrap_or_default();
        if r.method.mandatory && queues.is_empty() {
            let m = AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: Code::NoRoute.value(),
                reply_text: short("NO_ROUTE"),
                exchange: r.method.exchange.clone(),
                routing_key: r.method.routing_key.clone(),
            }));
            let mut cx = Ctx {
                broker: &self.broker,
                conn: self.id,
                id: ch,
                out: &mut self.out,
                deliveries: &self.deliveries,
                frame_max: self.frame_max,
                auth: &self.ctx,
            };
            cx.send_content(m, r.properties.clone(), &r.body);
        }
        static IN: HotCounter = HotCounter::new("polyport_amqp_messages_in_total");
        IN.increment(1);
        self.publishes = true;
        let confirm = r.confirm;
        let Some(draft) = r.draft else {
            self.publishing
                .push_back(async move { (ch, confirm, Ok(())) }.boxed());
            return;
        };
        // Queued now, in arrival order (so the log keeps the client's order); confirmed
        // in order once published.
        let submitted = self.broker.hub.submit_publish(&self.ctx, draft).await;
        self.publishing.push_back(
            async move {
                let r = match submitted {
                    Ok(published) => published.await.map(|receipt| {
                        if let Some(seq) = receipt.event.seq {
                            for q in &queues {
                                q.expect(seq);
                            }
                        }
                    }),
                    Err(e) => Err(e),
                };
                (ch, confirm, r)
            }
            .boxed(),
        );
    }

    /// Writes what is queued (a last `close-ok`), best effort.
    async fn flush_out(&mut self) {
        for f in self.out.drain(..) {
            let _ = self.io.feed(f).await;
        }
        let _ = self.io.flush().await;
    }

    async fn close(&mut self, c: Closing) {
        let (code, text, class_id, method_id) = match c {
            Closing::Connection {
                code,
                text,
                class_id,
                method_id,
            }
            | Closing::Channel {
                code,
                text,
                class_id,
                method_id,
            } => (code, text, class_id, method_id),
        };
        tracing::debug!(conn = self.id, %text, "AMQP connection closed");
        for f in self.out.drain(..) {
            let _ = self.io.feed(f).await;
        }
        close_connection(&mut self.io, code, &text, class_id, method_id).await;
    }
}

/// Queues the confirm of publish `tag` on channel `ch`. When the ack just before it on
/// that channel has not gone out yet, the two become one `multiple` ack, as RabbitMQ
/// confirms a batch: every earlier tag was settled before it, confirms being in order.
fn confirm_into(out: &mut Vec<AMQPFrame>, ch: u16, tag: u64, ok: bool) {
    if ok
        && let Some(AMQPFrame::Method(c, AMQPClass::Basic(basic::AMQPMethod::Ack(a)))) =
            out.last_mut()
        && *c == ch
        && a.delivery_tag + 1 == tag
    {
        a.delivery_tag = tag;
        a.multiple = true;
        return;
    }
    let m = match ok {
        true => basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple: false,
        }),
        false => basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: tag,
            multiple: false,
            requeue: false,
        }),
    };
    out.push(AMQPFrame::Method(ch, AMQPClass::Basic(m)));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the client reads: (channel, tag, multiple, ack?) per confirm frame.
    fn confirms(out: &[AMQPFrame]) -> Vec<(u16, u64, bool, bool)> {
        out.iter()
            .filter_map(|f| match f {
                AMQPFrame::Method(ch, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => {
                    Some((*ch, a.delivery_tag, a.multiple, true))
                }
                AMQPFrame::Method(ch, AMQPClass::Basic(basic::AMQPMethod::Nack(n))) => {
                    Some((*ch, n.delivery_tag, n.multiple, false))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn confirms_settled_together_go_out_as_one_multiple_ack() {
        let mut out = Vec::new();
        for tag in 1..=4 {
            confirm_into(&mut out, 1, tag, true);
        }
        assert_eq!(confirms(&out), vec![(1, 4, true, true)]);
    }

    #[test]
    fn a_nack_or_another_channel_breaks_the_run() {
        let mut out = Vec::new();
        confirm_into(&mut out, 1, 1, true);
        confirm_into(&mut out, 1, 2, true);
        confirm_into(&mut out, 1, 3, false);
        confirm_into(&mut out, 1, 4, true);
        confirm_into(&mut out, 2, 1, true);
        confirm_into(&mut out, 1, 5, true);
        assert_eq!(
            confirms(&out),
            vec![
                (1, 2, true, true),
                (1, 3, false, false),
                (1, 4, false, true),
                (2, 1, false, true),
                (1, 5, false, true),
            ]
        );
    }

    #[test]
    fn an_ack_already_followed_by_another_frame_is_not_widened() {
        let mut out = Vec::new();
        confirm_into(&mut out, 1, 1, true);
        out.push(AMQPFrame::Heartbeat);
        confirm_into(&mut out, 1, 2, true);
        assert_eq!(
            confirms(&out),
            vec![(1, 1, false, true), (1, 2, false, true)]
        );
    }
}
