//! What a protocol crate tells `polyport serve` about itself.
//!
//! Each protocol crate exports one [`Spec`]. The server walks one list of them: it
//! binds each listener (a taken *default* port skips that face, a port the user chose
//! stops start-up), writes `listeners.json`, starts the faces and drains them on
//! shutdown. A spec's `name` is the contract with the user: it is the `[name]` section
//! of `polyport.toml`, the `--name` flag, the `POLYPORT_NAME` variable and the key in
//! `listeners.json` — so a new protocol gets all four by existing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio_util::sync::CancellationToken;

/// One face of the server.
#[derive(Debug)]
pub struct Spec {
    /// Lowercase, no spaces: section, flag, variable suffix and `listeners.json` key.
    pub name: &'static str,
    /// As printed in logs and errors (`MQTT`, `gRPC`).
    pub label: &'static str,
    /// One line on what clients find there.
    pub about: &'static str,
    /// Where its own listener goes by default; `None` for a face mounted on the
    /// HTTP listener (GraphQL, SOAP).
    pub default_addr: Option<SocketAddr>,
    /// Its TLS listener, served when a certificate is configured.
    pub tls: Option<TlsSpec>,
}

/// A face's TLS listener: a name of its own (its URL scheme), for the same four uses as
/// [`Spec::name`], and a default address.
#[derive(Debug)]
pub struct TlsSpec {
    /// `https`, `mqtts`, … — flag, variable suffix and `listeners.json` key.
    pub name: &'static str,
    /// Where it goes by default (the protocol's registered TLS port).
    pub default_addr: SocketAddr,
    /// Protocols offered by ALPN; empty lets any client through (the brokers': a
    /// mismatch would fail clients that send one of their own, like AWS IoT's).
    pub alpn: &'static [&'static str],
}

impl TlsSpec {
    /// The environment variable that sets this listener's address.
    pub fn env_var(&self) -> String {
        format!("POLYPORT_{}", self.name.to_ascii_uppercase())
    }
}

impl Spec {
    /// The environment variable that sets this face's listen address.
    pub fn env_var(&self) -> String {
        format!("POLYPORT_{}", self.name.to_ascii_uppercase())
    }
}

/// Heart-beats both ways on one timer. The connection loop marks what it sent and
/// heard; one interval, made once for the connection's life, decides when to beat and
/// when the peer is gone. Two deadlines re-armed on every turn of the loop instead
/// cost a timer-wheel insert and removal per frame.
///
/// Checked at a quarter of the shorter period, so a beat goes out between ¾ and all of
/// `send` after the last write (never late), and the peer is declared gone between
/// `expect` and `expect` + a quarter period after it was last heard.
pub struct Heartbeats {
    tick: Option<(tokio::time::Interval, std::time::Duration)>,
    send: Option<std::time::Duration>,
    expect: Option<std::time::Duration>,
    quiet_out: std::time::Duration,
    quiet_in: std::time::Duration,
    sent: bool,
    heard: bool,
}

/// What [`Heartbeats::due`] says is due.
#[derive(Debug, PartialEq, Eq)]
pub enum Beat {
    /// Send a heart-beat: nothing else went out for almost `send`.
    Send,
    /// Nothing heard for `expect`: the peer is gone.
    Dead,
}

impl Heartbeats {
    /// `send`: the longest we may stay silent; `expect`: how long the peer may.
    pub fn new(send: Option<std::time::Duration>, expect: Option<std::time::Duration>) -> Self {
        let shortest = match (send, expect) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let tick = shortest.map(|d| {
            let period = (d / 4).max(std::time::Duration::from_millis(10));
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            (i, period)
        });
        Self {
            tick,
            send,
            expect,
            quiet_out: std::time::Duration::ZERO,
            quiet_in: std::time::Duration::ZERO,
            sent: false,
            heard: false,
        }
    }

    /// Something went out.
    pub fn sent(&mut self) {
        self.sent = true;
    }

    /// Something came in.
    pub fn heard(&mut self) {
        self.heard = true;
    }

    /// Resolves when a beat is due or the peer is gone; never without heart-beats.
    /// Cancel-safe: a `select!` arm.
    pub async fn due(&mut self) -> Beat {
        let Some((tick, period)) = self.tick.as_mut() else {
            return std::future::pending().await;
        };
        let period = *period;
        loop {
            tick.tick().await;
            // Whole quiet periods: a lower bound of the real quiet time.
            self.quiet_in = match std::mem::take(&mut self.heard) {
                true => std::time::Duration::ZERO,
                false => self.quiet_in + period,
            };
            self.quiet_out = match std::mem::take(&mut self.sent) {
                true => std::time::Duration::ZERO,
                false => self.quiet_out + period,
            };
            if self.expect.is_some_and(|e| self.quiet_in >= e) {
                return Beat::Dead;
            }
            if self.send.is_some_and(|s| self.quiet_out + period >= s) {
                self.quiet_out = std::time::Duration::ZERO;
                return Beat::Send;
            }
        }
    }
}

/// A token cancelled as soon as either `a` or `b` is: a connection loop that would
/// otherwise watch both (the listener's stop and the Hub's shutdown) watches one, which
/// halves what each turn of its `select!` polls. One small task per call: make it per
/// listener, not per connection.
pub fn either_cancelled(a: &CancellationToken, b: &CancellationToken) -> CancellationToken {
    let either = a.child_token();
    let (b, fire) = (b.clone(), either.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = b.cancelled() => fire.cancel(),
            _ = fire.cancelled() => {}
        }
    });
    either
}

/// Read buffer of a WebSocket connection (axum's `WebSocketUpgrade::read_buffer_size`).
///
/// tungstenite's default is 128 KiB, and it zero-fills the free part of that buffer
/// before every read attempt: each idle WebSocket then held 128 KiB of resident memory,
/// and a write on a split socket (which wakes its reader) cost a 128 KiB memset, a sixth
/// of the server's CPU fanning one event out to 10,000 subscribers (`polyport bench
/// fanout`, perf). Larger messages still arrive whole: the buffer grows as a frame needs.
pub const WS_READ_BUFFER: usize = 4096;

/// A loopback address: every default binds loopback only, like Mosquitto 2.
pub const fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// How long a connection over a cap gets to hear its refusal in its protocol's words.
const REFUSAL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// A connection's byte stream, whatever carries it: TCP, TLS over TCP, a WebSocket.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A boxed [`Io`]: what a protocol's connection task reads and writes.
pub type Stream = Box<dyn Io>;

/// What a listener knows of whoever connected, beyond the bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// The client's address (none for an in-process stream).
    pub addr: Option<SocketAddr>,
    /// Whether the connection is encrypted (TLS).
    pub secure: bool,
    /// The subject (common name) of a client certificate the listener verified against
    /// its client CA: an identity for clients that send no credentials.
    pub certificate: Option<std::sync::Arc<str>>,
}

/// What TLS (or any other wrapping) made of an accepted TCP connection.
pub type Secured = (Stream, Option<std::sync::Arc<str>>);

/// Turns an accepted TCP connection into a secured stream: the TLS crate implements it,
/// so no protocol crate depends on a TLS library.
pub trait Handshake: Send + Sync + 'static {
    /// Runs the handshake; the error says why it failed (for the log, not the client).
    fn handshake(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> futures::future::BoxFuture<'static, std::io::Result<Secured>>;
}

/// A bound listener: plain TCP, or TLS over it.
pub struct Listener {
    /// The socket.
    pub tcp: tokio::net::TcpListener,
    /// The handshake every connection goes through first, if any.
    pub tls: Option<std::sync::Arc<dyn Handshake>>,
    /// How long a client has to finish the handshake.
    pub handshake_timeout: std::time::Duration,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("tcp", &self.tcp)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl From<tokio::net::TcpListener> for Listener {
    fn from(tcp: tokio::net::TcpListener) -> Self {
        Self {
            tcp,
            tls: None,
            handshake_timeout: std::time::Duration::from_secs(10),
        }
    }
}

impl Listener {
    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Whether connections are encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The socket, and what secures each connection accepted on it (which connection
    /// tasks keep, so the socket closes when the accept loop ends).
    pub fn into_parts(self) -> (tokio::net::TcpListener, Securer) {
        let securer = Securer {
            tls: self.tls,
            timeout: self.handshake_timeout,
        };
        (self.tcp, securer)
    }
}

/// Accepts the next connection (with `TCP_NODELAY`) and its address; no handshake yet.
pub async fn accept(
    tcp: &tokio::net::TcpListener,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    let (stream, addr) = tcp.accept().await?;
    let _ = stream.set_nodelay(true);
    Ok((stream, addr))
}

/// A listener's handshake, shared by its connection tasks.
#[derive(Clone)]
pub struct Securer {
    tls: Option<std::sync::Arc<dyn Handshake>>,
    timeout: std::time::Duration,
}

impl Securer {
    /// The connection as a stream, after the handshake (within its deadline) on a TLS
    /// listener. A failed or slow handshake ends the connection here, counted and logged
    /// at debug: it is the client's mistake, or a scan.
    pub async fn secure(
        &self,
        label: &'static str,
        stream: tokio::net::TcpStream,
        addr: SocketAddr,
    ) -> Option<(Stream, Peer)> {
        let mut peer = Peer {
            addr: Some(addr),
            ..Peer::default()
        };
        let Some(tls) = &self.tls else {
            return Some((Box::new(stream), peer));
        };
        let why = match tokio::time::timeout(self.timeout, tls.handshake(stream)).await {
            Ok(Ok((io, certificate))) => {
                peer.secure = true;
                peer.certificate = certificate;
                return Some((io, peer));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the handshake took too long".to_string(),
        };
        metrics::counter!("polyport_tls_handshake_failures_total", "listener" => label)
            .increment(1);
        tracing::debug!(%addr, error = %why, "{label}: TLS handshake failed");
        None
    }
}

/// The accept loop every TCP face shares: each connection is admitted against
/// `admission`'s caps, secured (the TLS handshake, off the accept loop) and runs
/// `serve(stream, peer, None)` on `tracker`, holding its place until it ends; a
/// connection over a cap runs `serve(stream, peer, Some(refusal))`, which answers it in
/// the protocol's words, within a short deadline. Stops at `stop` or `shutdown`, then
/// waits for the connections to finish. An accept error (out of descriptors, say) backs
/// off instead of spinning.
pub async fn accept_loop<F, Fut>(
    listener: Listener,
    stop: CancellationToken,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
    admission: &std::sync::Arc<crate::admission::Admission>,
    serve: F,
) where
    F: Fn(Stream, Peer, Option<crate::admission::Refusal>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tcp, securer) = listener.into_parts();
    let serve = std::sync::Arc::new(serve);
    let label = admission.label();
    loop {
        let accepted = tokio::select! {
            a = accept(&tcp) => a,
            _ = stop.cancelled() => break,
            _ = shutdown.cancelled() => break,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "{label} accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (l, serve) = (securer.clone(), serve.clone());
        match admission.admit(addr.ip()) {
            Ok(permit) => {
                // One box for all the task starts with: an upvar keeps its slot in the
                // task for the connection's whole life, a local only while it lives.
                let start = Box::new((l, stream, addr, serve, permit, label));
                tracker.spawn(async move {
                    // Scoped, so that only the connection and its permit keep slots
                    // in the task while it is served (the permit is held to the end:
                    // the admission slot is the connection's).
                    let (conn, _permit) = {
                        // Into a local: the upvar would keep the box to the end.
                        let start = start;
                        let (l, stream, addr, serve, permit, label) = *start;
                        let Some((io, peer)) = l.secure(label, stream, addr).await else {
                            return;
                        };
                        (serve(io, peer, None), permit)
                    };
                    conn.await
                });
            }
            Err(refusal) => {
                // Past a bound of refusals in flight, close without an answer.
                if let Some(slot) = admission.answer_slot() {
                    tracker.spawn(async move {
                        let _slot = slot;
                        let answer = async {
                            if let Some((io, peer)) = l.secure(label, stream, addr).await {
                                serve(io, peer, Some(refusal)).await
                            }
                        };
                        let _ = tokio::time::timeout(REFUSAL_DEADLINE, answer).await;
                    });
                }
            }
        }
    }
    drop(tcp);
    tracker.close();
    tracker.wait().await;
}

/// Streams merged into one (a connection's subscriptions), with no allocation per item
/// while there is only one of them: `futures`' `SelectAll` allocates a task node for
/// every item it yields, and most connections follow a single subscription.
#[derive(Default)]
pub enum Merge<S> {
    /// Nothing to poll: yields `None`.
    #[default]
    Empty,
    /// One stream, polled directly.
    One(S),
    /// Several.
    Many(futures::stream::SelectAll<S>),
}

impl<S: futures::Stream + Unpin> Merge<S> {
    /// Adds a stream.
    pub fn push(&mut self, s: S) {
        *self = match std::mem::take(self) {
            Merge::Empty => Merge::One(s),
            Merge::One(a) => Merge::Many(futures::stream::select_all([a, s])),
            Merge::Many(mut m) => {
                m.push(s);
                Merge::Many(m)
            }
        };
    }

    /// Whether there is nothing to poll.
    pub fn is_empty(&self) -> bool {
        match self {
            Merge::Empty => true,
            Merge::One(_) => false,
            Merge::Many(m) => m.is_empty(),
        }
    }
}

impl<S: futures::Stream + Unpin> futures::Stream for Merge<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        match this {
            Merge::Empty => Poll::Ready(None),
            Merge::One(s) => match std::pin::Pin::new(s).poll_next(cx) {
                Poll::Ready(None) => {
                    *this = Merge::Empty;
                    Poll::Ready(None)
                }
                other => other,
            },
            Merge::Many(m) => std::pin::Pin::new(m).poll_next(cx),
        }
    }
}

#[cfg(test)]
mod merge_tests {
    use super::Merge;
    use futures::StreamExt;

    #[tokio::test]
    async fn merged_streams_yield_everything_then_end() {
        let mut m = Merge::default();
        assert!(m.is_empty());
        assert_eq!(m.next().await, None::<u8>);
        m.push(futures::stream::iter(vec![1u8, 2]).boxed());
        assert!(matches!(m, Merge::One(_)));
        assert_eq!(m.next().await, Some(1));
        m.push(futures::stream::iter(vec![10u8]).boxed());
        let mut rest = Vec::new();
        while let Some(x) = m.next().await {
            rest.push(x);
        }
        rest.sort();
        assert_eq!(rest, vec![2, 10]);
        assert!(m.is_empty());
    }
}

#[cfg(test)]
mod heartbeat_tests {
    use super::{Beat, Heartbeats};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn beats_before_the_period_ends_and_declares_a_silent_peer_gone() {
        let start = tokio::time::Instant::now();
        let mut h = Heartbeats::new(Some(Duration::from_secs(4)), Some(Duration::from_secs(8)));
        // Quiet both ways: a beat at 3 s (not late), then the peer is gone at 8 s.
        h.heard();
        assert_eq!(h.due().await, Beat::Send);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        let mut beats = 1;
        let dead = loop {
            match h.due().await {
                Beat::Send => beats += 1,
                Beat::Dead => break start.elapsed(),
            }
        };
        assert_eq!(beats, 2, "one every 3 s of silence (3 s, 6 s)");
        assert_eq!(
            dead,
            Duration::from_secs(9),
            "gone 8 s after it was last heard (at ~1 s)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_both_ways_keeps_the_timer_quiet() {
        let mut h = Heartbeats::new(Some(Duration::from_secs(4)), Some(Duration::from_secs(8)));
        for _ in 0..40 {
            h.sent();
            h.heard();
            let due = tokio::time::timeout(Duration::from_millis(900), h.due()).await;
            assert!(due.is_err(), "nothing is due while frames flow: {due:?}");
        }
        let mut none = Heartbeats::new(None, None);
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), none.due())
                .await
                .is_err()
        );
    }
}
