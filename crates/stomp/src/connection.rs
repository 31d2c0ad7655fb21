//! One STOMP connection: CONNECT (version, virtual host, login, heart-beats), then a loop
//! over the socket, this session's deliveries, SENDs on their way into the Hub (each
//! RECEIPT once the Hub has the message), heart-beats and shutdown. Anything the client
//! gets wrong is an ERROR frame naming the cause, then the close of this connection.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use polyport_broker::Broker;
use polyport_core::Origin;
use polyport_core::adapter::{Beat, Heartbeats, Peer, Stream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::StompConfig;
use crate::codec::{Codec, Command, Frame, Incoming, Outgoing, Version};
use crate::session::{Fatal, Flow, Session};

/// Time to send CONNECT.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Deliveries queued towards one connection before queues hold back.
const OUTBOX: usize = 1024;
/// Frames handled per step before the loop writes.
const BATCH: usize = 64;
/// Grace on top of the client's heart-beat interval before it counts as gone.
const HEARTBEAT_GRACE: f64 = 2.0;

type Transport = Framed<Stream, Codec>;

/// Serves one connection to its end.
pub(crate) async fn run(
    stream: Stream,
    peer: Peer,
    broker: Arc<Broker>,
    cfg: Arc<StompConfig>,
    stop: CancellationToken,
    refusal: Option<polyport_core::admission::Refusal>,
) {
    let mut io = Framed::new(stream, Codec::new(cfg.limits));
    let (tx, rx) = mpsc::channel(OUTBOX);
    let Ok(Some((session, beats))) = tokio::time::timeout(
        HANDSHAKE,
        handshake(&mut io, &peer, &broker, &cfg, tx, refusal),
    )
    .await
    else {
        return;
    };
    metrics::gauge!("polyport_stomp_connections").increment(1.0);
    let mut c = Connection { io, session };
    c.serve(rx, beats, stop).await;
    c.session.close().await;
    metrics::gauge!("polyport_stomp_connections").decrement(1.0);
}

/// Heart-beat intervals agreed in CONNECT: how often we send, how often they must.
#[derive(Clone, Copy)]
struct Beats {
    send: Option<Duration>,
    expect: Option<Duration>,
}

/// `heart-beat: cx,cy` against ours: send every max(ours, cy), expect every max(ours, cx).
fn negotiate(header: Option<&str>, ours: u64) -> (Beats, String) {
    let (cx, cy) = header
        .and_then(|h| h.split_once(','))
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)))
        .unwrap_or((0, 0));
    let pick =
        |theirs: u64| (ours > 0 && theirs > 0).then(|| Duration::from_millis(ours.max(theirs)));
    (
        Beats {
            send: pick(cy),
            expect: pick(cx),
        },
        format!("{ours},{ours}"),
    )
}

/// Sends an ERROR frame and closes, best effort.
async fn refuse(io: &mut Transport, f: Fatal, receipt: Option<&str>) {
    tracing::debug!(message = %f.message, "STOMP connection refused");
    let _ = io.send(Outgoing::Frame(f.frame(receipt))).await;
    let _ = io.close().await;
}

async fn handshake(
    io: &mut Transport,
    peer: &Peer,
    broker: &Arc<Broker>,
    cfg: &StompConfig,
    deliveries: mpsc::Sender<crate::session::Delivery>,
    refusal: Option<polyport_core::admission::Refusal>,
) -> Option<(Session, Beats)> {
    let frame = loop {
        match io.next().await? {
            Ok(Incoming::HeartBeat) => continue,
            Ok(Incoming::Frame(f)) => break f,
            Err(e) => {
                refuse(io, Fatal::new("malformed frame", e.to_string()), None).await;
                return None;
            }
        }
    };
    if !matches!(frame.command, Command::Connect | Command::Stomp) {
        let f = Fatal::new(
            "expected CONNECT",
            format!(
                "the first frame must be CONNECT or STOMP, not {}",
                frame.command.as_str()
            ),
        );
        refuse(io, f, frame.get("receipt")).await;
        return None;
    }
    if let Some(r) = refusal {
        refuse(
            io,
            Fatal::new("Connection limit reached", r.to_string()),
            frame.get("receipt"),
        )
        .await;
        return None;
    }
    let version = match frame.get("accept-version") {
        None => Some(Version::V1_0),
        Some(list) => list.split(',').filter_map(Version::parse).max(),
    };
    let Some(version) = version else {
        let _ = io
            .send(Outgoing::Frame(
                Fatal::new(
                    "Supported protocol versions are 1.0,1.1,1.2",
                    format!(
                        "none of '{}' is spoken here",
                        frame.get("accept-version").unwrap_or_default()
                    ),
                )
                .frame(None)
                .header("version", "1.0,1.1,1.2"),
            ))
            .await;
        return None;
    };
    if let Some(host) = frame.get("host")
        && host.starts_with('/')
        && host != "/"
    {
        let f = Fatal::new(
            "Bad CONNECT",
            format!("Virtual host '{host}' access denied"),
        );
        refuse(io, f, None).await;
        return None;
    }
    let ctx = match broker.hub.authenticate_peer(
        Origin("stomp"),
        peer,
        frame.get("login"),
        frame.get("passcode").map(str::as_bytes),
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, "STOMP login refused");
            let f = Fatal::new("Bad CONNECT", "Access refused for user".to_string());
            refuse(io, f, None).await;
            return None;
        }
    };
    let (beats, offer) = negotiate(frame.get("heart-beat"), cfg.heartbeat_ms);
    let conn = broker.next_connection();
    let mut connected = Frame::new(Command::Connected);
    if version > Version::V1_0 {
        connected = connected.header("version", version.as_str());
    }
    connected = connected
        .header("server", format!("Polyport/{}", env!("CARGO_PKG_VERSION")))
        .header("session", format!("session-{conn}"))
        .header("heart-beat", offer);
    io.send(Outgoing::Frame(connected)).await.ok()?;
    io.codec_mut().version = version;
    let rate = broker.hub.rate_bucket(&ctx, peer.addr.map(|a| a.ip()));
    let mut session = Session::new(broker.clone(), ctx, conn, version, deliveries);
    session.rate = rate;
    session.max_subs = cfg.max_subscriptions.max(1);
    Some((session, beats))
}

struct Connection {
    io: Transport,
    session: Session,
}

impl Connection {
    async fn serve(
        &mut self,
        mut rx: mpsc::Receiver<crate::session::Delivery>,
        beats: Beats,
        stop: CancellationToken,
    ) {
        let mut hb = Heartbeats::new(beats.send, beats.expect.map(|b| b.mul_f64(HEARTBEAT_GRACE)));
        let shutdown = self.session.broker.hub.shutdown_token();
        // Made once: a turn of the loop then registers no waiter on either token.
        let stopped = stop.cancelled();
        let down = shutdown.cancelled();
        tokio::pin!(stopped, down);
        loop {
            if !self.session.out.is_empty() {
                for f in self.session.out.drain(..) {
                    if self.io.feed(f).await.is_err() {
                        return;
                    }
                }
                if self.io.flush().await.is_err() {
                    return;
                }
                hb.sent();
            }
            tokio::select! {
                f = self.io.next() => {
                    hb.heard();
                    let mut next = Some(f);
                    let mut handled = 0;
                    while let Some(f) = next.take() {
                        match f {
                            Some(Ok(Incoming::HeartBeat)) => {}
                            Some(Ok(Incoming::Frame(frame))) => {
                                let receipt = frame.get("receipt").map(str::to_string);
                                match self.session.handle(frame).await {
                                    Ok(Flow::Continue) => {}
                                    Ok(Flow::Disconnect) => {
                                        self.flush_out().await;
                                        return;
                                    }
                                    Err(fatal) => {
                                        self.fail(fatal, receipt.as_deref()).await;
                                        return;
                                    }
                                }
                            }
                            Some(Err(e)) => {
                                self.fail(Fatal::new("malformed frame", e.to_string()), None).await;
                                return;
                            }
                            None => return,
                        }
                        handled += 1;
                        if handled == BATCH {
                            break;
                        }
                        next = self.io.next().now_or_never();
                    }
                }
                Some(d) = rx.recv() => {
                    self.session.deliver(d);
                    for _ in 0..BATCH {
                        match rx.try_recv() {
                            Ok(d) => self.session.deliver(d),
                            Err(_) => break,
                        }
                    }
                }
                Some((receipt, result)) = self.session.publishing.next(), if !self.session.publishing.is_empty() => {
                    if let Err(fatal) = self.session.published(receipt, result) {
                        self.fail(fatal, None).await;
                        return;
                    }
                }
                beat = hb.due() => match beat {
                    Beat::Send => self.session.out.push(Outgoing::HeartBeat),
                    Beat::Dead => {
                        tracing::info!(conn = self.session.conn, "STOMP client missed heart-beats; closing");
                        return;
                    }
                },
                _ = &mut stopped => {
                    self.fail(Fatal::new("server shutting down", "the server is stopping".into()), None).await;
                    return;
                }
                _ = &mut down => return,
            }
        }
    }

    async fn flush_out(&mut self) {
        for f in self.session.out.drain(..) {
            let _ = self.io.feed(f).await;
        }
        let _ = self.io.flush().await;
    }

    async fn fail(&mut self, f: Fatal, receipt: Option<&str>) {
        tracing::debug!(conn = self.session.conn, message = %f.message, "STOMP ERROR");
        self.session.out.push(Outgoing::Frame(f.frame(receipt)));
        self.flush_out().await;
        let _ = self.io.close().await;
    }
}

use futures::FutureExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heart_beats_take_the_slower_of_both_sides() {
        let (b, offer) = negotiate(Some("1000,20000"), 10_000);
        assert_eq!(b.send, Some(Duration::from_millis(20_000)));
        assert_eq!(b.expect, Some(Duration::from_millis(10_000)));
        assert_eq!(offer, "10000,10000");
        let (b, _) = negotiate(Some("0,0"), 10_000);
        assert!(b.send.is_none() && b.expect.is_none());
        let (b, _) = negotiate(None, 10_000);
        assert!(b.send.is_none());
    }
}
