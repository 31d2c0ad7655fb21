//! State shared by all MQTT connections: who is connected (for takeover), the sessions
//! whose clients are away, pending wills, the retained messages, and the `$SYS`
//! counters. Connections talk to each other only through this and the Hub.
//!
//! Persistent sessions and retained messages are kept in the Hub's adapter state, so
//! they survive a restart; the messages queued for an absent session are not copied
//! anywhere — they are the event log itself, read from the session's saved group
//! positions when the client returns.

use std::collections::{BTreeMap, HashMap};

use crate::session::{Map, Set};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use polyport_core::{AuthContext, Hub, HubError, Topic, TopicFilter};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::MqttConfig;
use crate::state::{self, SavedSession};
use crate::wire::MsgProps;

/// A retained message.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Retained {
    pub(crate) payload: Bytes,
    pub(crate) qos: u8,
    pub(crate) props: MsgProps,
    /// Unix milliseconds after which it is no longer delivered (MQTT 5 message expiry).
    pub(crate) expires_at: Option<u64>,
}

/// A connected client.
struct Live {
    conn: u64,
    /// Ends the connection (takeover, keep-alive, a stuck write); says when it is gone.
    watch: Arc<Watch>,
}

/// A one-shot signal: fired once, seen by every waiter then and after. What
/// `CancellationToken` does for a tree of tokens, in a third of its size, for the
/// signal every connection carries for a successor waiting on its hand-over.
#[derive(Default)]
pub(crate) struct Signal {
    fired: std::sync::atomic::AtomicBool,
    waiters: tokio::sync::Notify,
}

impl Signal {
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        self.waiters.notify_waiters();
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Resolves once fired. Cancel-safe.
    pub(crate) async fn fired(&self) {
        loop {
            let wait = self.waiters.notified();
            tokio::pin!(wait);
            // Registered before the check, so a fire between the two is not missed.
            wait.as_mut().enable();
            if self.is_fired() {
                return;
            }
            wait.await;
        }
    }
}

/// A one-shot signal with one waiter, the connection itself: what [`Signal`] does
/// for many waiters, in a waker's space, and with no future to keep pinned.
#[derive(Default)]
pub(crate) struct Bell {
    rung: std::sync::atomic::AtomicBool,
    waker: futures::task::AtomicWaker,
}

impl Bell {
    fn ring(&self) {
        self.rung.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    pub(crate) fn is_rung(&self) -> bool {
        self.rung.load(Ordering::SeqCst)
    }

    /// Ready once rung. Registers before the second check, so a ring between the two is
    /// not missed.
    pub(crate) fn poll_rung(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.is_rung() {
            return std::task::Poll::Ready(());
        }
        self.waker.register(cx.waker());
        match self.is_rung() {
            true => std::task::Poll::Ready(()),
            false => std::task::Poll::Pending,
        }
    }
}

/// Where connections come in (a listener, the `/mqtt` route), with the token that ends
/// them. One task per door waits for the token and kicks the door's live connections
/// ([`Kick::Shutdown`]), so no connection keeps a future of its own waiting on it.
pub(crate) struct Door {
    id: u32,
    pub(crate) stop: CancellationToken,
    broker: Arc<Broker>,
    armed: std::sync::Once,
}

impl Door {
    pub(crate) fn new(broker: Arc<Broker>, stop: CancellationToken) -> Arc<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        Arc::new(Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            stop,
            broker,
            armed: std::sync::Once::new(),
        })
    }

    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    pub(crate) fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Starts the door's watcher, once, from inside the runtime (a route is built
    /// before there may be one). A connection registered after the watcher has kicked
    /// sees the token cancelled when its loop starts.
    pub(crate) fn arm(&self) {
        self.armed.call_once(|| {
            let (broker, stop, id) = (self.broker.clone(), self.stop.clone(), self.id);
            tokio::spawn(async move {
                stop.cancelled().await;
                broker.kick_door(id);
            });
        });
    }
}

/// Why the broker ended a connection through its [`Watch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kick {
    /// Another connection took the client id over.
    TakenOver,
    /// Nothing heard from the client for 1.5 × its keep-alive.
    KeepAlive,
    /// A write has not finished for [`WRITE_TIMEOUT`]: the client stopped reading.
    WriteStuck,
    /// The connection's door closed: the listener stopped or the Hub is shutting down.
    Shutdown,
    /// The client connected to another node (the cluster engine), which has its
    /// session now: this node neither parks nor ends it.
    Elsewhere,
}

/// How long one write may take before the client counts as gone (it stopped reading).
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the broker watches on a live connection, and the one token that ends it.
///
/// Deadlines (keep-alive, a stuck write) are checked for every connection by one sweep
/// a second ([`Broker::sweep`]), as Mosquitto does, instead of each connection owning
/// timers: a connection then costs no timer memory and no timer-wheel work per packet,
/// and detection is at most a second late (the keep-alive window is already 1.5 ×).
pub(crate) struct Watch {
    /// Rung with the reason set first.
    pub(crate) end: Bell,
    /// The [`Door`] the connection came in by.
    door: u32,
    /// Fired once the connection has parked or dropped its session: a connection taking
    /// its client id over waits for it.
    pub(crate) done: Signal,
    reason: std::sync::atomic::AtomicU8,
    /// When the client was last heard from, in ms since the broker started.
    heard: AtomicU64,
    /// 1.5 × the keep-alive in ms; 0: none.
    window_ms: AtomicU64,
    /// When the write in progress began (ms since start); 0: none.
    writing_since: AtomicU64,
}

impl Watch {
    pub(crate) fn new(door: u32) -> Arc<Self> {
        Arc::new(Self {
            end: Bell::default(),
            door,
            done: Signal::default(),
            reason: Default::default(),
            heard: AtomicU64::new(0),
            window_ms: AtomicU64::new(0),
            writing_since: AtomicU64::new(0),
        })
    }

    /// Ends the connection for `why` (the first reason wins).
    pub(crate) fn kick(&self, why: Kick) {
        let code = match why {
            Kick::TakenOver => 1,
            Kick::KeepAlive => 2,
            Kick::WriteStuck => 3,
            Kick::Shutdown => 4,
            Kick::Elsewhere => 5,
        };
        let _ = self
            .reason
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
        self.end.ring();
    }

    /// Why the connection was ended; `None` while it was not.
    pub(crate) fn kicked(&self) -> Option<Kick> {
        match self.reason.load(Ordering::SeqCst) {
            1 => Some(Kick::TakenOver),
            2 => Some(Kick::KeepAlive),
            3 => Some(Kick::WriteStuck),
            4 => Some(Kick::Shutdown),
            5 => Some(Kick::Elsewhere),
            _ => None,
        }
    }

    /// Starts watching the keep-alive window (`None`: the client asked for none).
    pub(crate) fn keep_alive(&self, window: Option<Duration>, now_ms: u64) {
        self.heard.store(now_ms, Ordering::Relaxed);
        let ms = window.map_or(0, |w| w.as_millis().max(1) as u64);
        self.window_ms.store(ms, Ordering::Relaxed);
    }

    /// The client was heard from (or we are the ones not reading).
    pub(crate) fn heard(&self, now_ms: u64) {
        self.heard.store(now_ms, Ordering::Relaxed);
    }

    /// A write is in progress since `now_ms` (`None`: it finished).
    pub(crate) fn writing(&self, now_ms: Option<u64>) {
        // `max(1)`: 0 means "not writing".
        self.writing_since
            .store(now_ms.map_or(0, |n| n.max(1)), Ordering::Relaxed);
    }

    /// The reason this connection is overdue at `now_ms`, if it is.
    fn overdue(&self, now_ms: u64) -> Option<Kick> {
        let window = self.window_ms.load(Ordering::Relaxed);
        if window > 0 && now_ms.saturating_sub(self.heard.load(Ordering::Relaxed)) > window {
            return Some(Kick::KeepAlive);
        }
        let since = self.writing_since.load(Ordering::Relaxed);
        if since > 0 && now_ms.saturating_sub(since) > WRITE_TIMEOUT.as_millis() as u64 {
            return Some(Kick::WriteStuck);
        }
        None
    }
}

/// A persistent session whose client is away.
pub(crate) struct Parked {
    pub(crate) saved: SavedSession,
    /// Inbound QoS 2 packet ids released by PUBREL not yet received.
    pub(crate) awaiting_rel: Set<u16>,
    /// Outbound QoS 2 packet ids whose PUBCOMP has not arrived (PUBREL is resent).
    pub(crate) awaiting_comp: Vec<u16>,
    /// Sequences sent and not acknowledged, with their packet ids (resent with DUP).
    pub(crate) unacked: Map<u64, u16>,
    /// Packet ids of outbound messages the client may still hold: kept free on resume.
    pub(crate) reserved_ids: Set<u16>,
    pub(crate) since: Instant,
    /// Set while expiry is deleting the session's durable state; fires when done. A
    /// reconnect meanwhile waits for it, so the deletion cannot hit its new session.
    pub(crate) expiring: Option<CancellationToken>,
}

/// Counters behind `$SYS/broker/…`.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) messages_received: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) connections_total: AtomicU64,
}

pub(crate) struct Broker {
    pub(crate) hub: Hub,
    /// The broker's own identity, for its adapter state (sessions, retained messages)
    /// and `$SYS`: not any client's.
    pub(crate) ctx: AuthContext,
    pub(crate) cfg: MqttConfig,
    pub(crate) stats: Stats,
    started: Instant,
    /// Keyed by the client id the connection's session shares (one allocation).
    live: Mutex<HashMap<Arc<str>, Live>>,
    parked: Mutex<HashMap<String, Parked>>,
    /// Wills waiting out their delay, by client id: (connection, cancel).
    wills: Mutex<HashMap<String, (u64, CancellationToken)>>,
    retained: RwLock<BTreeMap<String, Retained>>,
    next_conn: AtomicU64,
    /// Sessions live on any node (the cluster engine with a bus): a connect claims its
    /// client id on every node, and a session is read from the store, not this node's
    /// memory.
    pub(crate) shared: bool,
    /// This broker among the nodes (names it as a session's holder).
    pub(crate) instance: String,
    /// Sessions held by nodes that are gone, and since when this node has seen them so.
    pub(crate) orphans: Mutex<crate::orphans::Orphans>,
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Broker {
    /// Loads persistent sessions and retained messages from the Hub's adapter state.
    pub(crate) async fn load(hub: Hub, cfg: MqttConfig) -> Result<Arc<Self>, HubError> {
        let ctx = AuthContext::system(polyport_core::Origin("mqtt"));
        let now = Instant::now();
        let mut parked = HashMap::new();
        let shared = hub.groups_span_nodes();
        let instance = hub.node_id();
        // On the cluster engine a session is read from the store when its client comes
        // back, on whichever node: none is parked here at start.
        let sessions = match shared {
            true => Vec::new(),
            false => hub.load_state(&ctx, state::SESSIONS).await?,
        };
        for (client_id, bytes) in sessions {
            match state::decode_session(&bytes) {
                // Expiry counts from the restart: when the client left is not kept.
                Some(saved) => {
                    parked.insert(
                        client_id,
                        Parked {
                            saved,
                            awaiting_rel: Set::default(),
                            awaiting_comp: Vec::new(),
                            unacked: Map::default(),
                            reserved_ids: Set::default(),
                            since: now,
                            expiring: None,
                        },
                    );
                }
                None => {
                    tracing::warn!(client = %client_id, "unreadable saved MQTT session skipped")
                }
            }
        }
        let mut retained = BTreeMap::new();
        for (topic, bytes) in hub.load_state(&ctx, state::RETAINED).await? {
            match state::decode_retained(&bytes) {
                Some(r) => {
                    retained.insert(topic, r);
                }
                None => tracing::warn!(topic = %topic, "unreadable retained message skipped"),
            }
        }
        if !parked.is_empty() || !retained.is_empty() {
            tracing::info!(
                sessions = parked.len(),
                retained = retained.len(),
                "MQTT state restored"
            );
        }
        Ok(Arc::new(Self {
            hub,
            ctx,
            cfg,
            stats: Stats::default(),
            started: now,
            live: Mutex::new(HashMap::new()),
            parked: Mutex::new(parked),
            wills: Mutex::new(HashMap::new()),
            retained: RwLock::new(retained),
            next_conn: AtomicU64::new(1),
            shared,
            instance,
            orphans: Default::default(),
        }))
    }

    pub(crate) fn next_connection(&self) -> u64 {
        self.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection under its client id, ending any earlier connection with the
    /// same id (takeover) and cancelling a will still waiting out its delay. Returns the
    /// earlier connection's watch: its session is only handed over once `done` fires.
    pub(crate) fn claim(
        &self,
        client_id: &Arc<str>,
        conn: u64,
        watch: Arc<Watch>,
    ) -> Option<Arc<Watch>> {
        self.cancel_will(client_id);
        let old = self
            .live
            .lock()
            .insert(client_id.clone(), Live { conn, watch });
        old.map(|l| {
            l.watch.kick(Kick::TakenOver);
            l.watch
        })
    }

    /// Milliseconds since the broker started: the clock of every [`Watch`].
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Ends every live connection past its keep-alive or stuck in a write.
    pub(crate) fn sweep(&self) {
        let now = self.now_ms();
        let overdue: Vec<(Arc<Watch>, Kick)> = self
            .live
            .lock()
            .values()
            .filter_map(|l| l.watch.overdue(now).map(|k| (l.watch.clone(), k)))
            .collect();
        for (w, why) in overdue {
            w.kick(why);
        }
    }

    /// Ends every live connection that came in by `door` (see [`Door`]).
    fn kick_door(&self, door: u32) {
        let doomed: Vec<Arc<Watch>> = self
            .live
            .lock()
            .values()
            .filter(|l| l.watch.door == door)
            .map(|l| l.watch.clone())
            .collect();
        for w in doomed {
            w.kick(Kick::Shutdown);
        }
    }

    /// Cancels a will still waiting out its delay: the client is back.
    pub(crate) fn cancel_will(&self, client_id: &str) {
        if let Some((_, w)) = self.wills.lock().remove(client_id) {
            w.cancel();
        }
    }

    /// Removes the registration if it is still this connection's.
    pub(crate) fn release(&self, client_id: &str, conn: u64) {
        let mut s = self.live.lock();
        if s.get(client_id).is_some_and(|l| l.conn == conn) {
            s.remove(client_id);
        }
    }

    pub(crate) fn connected(&self) -> usize {
        self.live.lock().len()
    }

    /// Takes the parked session of a client, if any.
    pub(crate) fn unpark(&self, client_id: &str) -> Option<Parked> {
        self.parked.lock().remove(client_id)
    }

    pub(crate) fn park(&self, client_id: &str, p: Parked) {
        self.parked.lock().insert(client_id.to_string(), p);
    }

    /// Registers the delayed will of a connection so a reconnect within the delay can
    /// cancel it.
    pub(crate) fn delay_will(&self, client_id: &str, conn: u64) -> CancellationToken {
        let t = CancellationToken::new();
        let old = self
            .wills
            .lock()
            .insert(client_id.to_string(), (conn, t.clone()));
        if let Some((_, old)) = old {
            old.cancel();
        }
        t
    }

    /// Forgets a connection's will once it was published or cancelled.
    pub(crate) fn will_done(&self, client_id: &str, conn: u64) {
        let mut w = self.wills.lock();
        if w.get(client_id).is_some_and(|(c, _)| *c == conn) {
            w.remove(client_id);
        }
    }

    /// Drops a session's durable traces: its saved state and its group positions.
    pub(crate) async fn forget_session(&self, client_id: &str, saved: &SavedSession) {
        if let Err(e) = self
            .hub
            .put_state(&self.ctx, state::SESSIONS, client_id, None)
            .await
        {
            tracing::warn!(client = %client_id, error = %e, "dropping MQTT session state failed");
        }
        self.forget_groups(client_id, &saved.generation).await;
    }

    /// What a new session records as its holder (empty on one node).
    pub(crate) fn holder(&self) -> String {
        match self.shared {
            true => self.instance.clone(),
            false => String::new(),
        }
    }

    /// Whether this node may end the client's stored session: always on one node; on
    /// the cluster engine only while the store still names this node its holder (the
    /// client may have come back through another node, which has it now).
    async fn held_here(&self, client_id: &str) -> bool {
        !self.shared || self.held_by(client_id, &self.instance).await
    }

    /// Whether the store names `holder` the holder of the client's session.
    pub(crate) async fn held_by(&self, client_id: &str, holder: &str) -> bool {
        match self
            .hub
            .get_state(&self.ctx, state::SESSIONS, client_id)
            .await
        {
            Ok(Some(b)) => state::session_holder(&b).is_some_and(|h| h == holder),
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(client = %client_id, error = %e, "cannot tell who holds an expired MQTT session; keeping it");
                false
            }
        }
    }

    /// Another node took `client_id` (the cluster engine): a connection here ends
    /// without parking, a parked copy here is stale, a delayed will is cancelled.
    pub(crate) fn claimed_elsewhere(&self, client_id: &str) {
        self.cancel_will(client_id);
        if let Some(l) = self.live.lock().get(client_id) {
            l.watch.kick(Kick::Elsewhere);
        }
        self.parked.lock().remove(client_id);
    }

    /// Drops the group positions of one generation of a session.
    pub(crate) async fn forget_groups(&self, client_id: &str, generation: &str) {
        if generation.is_empty() {
            return; // it never had any
        }
        if let Err(e) = self
            .hub
            .delete_groups_with_prefix(&self.ctx, &session_groups(generation))
            .await
        {
            tracing::warn!(client = %client_id, error = %e, "dropping MQTT session positions failed");
        }
    }

    /// Ends parked sessions whose expiry has passed.
    pub(crate) async fn expire_sessions(&self) {
        let now = Instant::now();
        let expired: Vec<(String, SavedSession, CancellationToken)> = {
            let mut parked = self.parked.lock();
            parked
                .iter_mut()
                .filter(|(_, p)| {
                    p.expiring.is_none()
                        && p.saved.expiry != u32::MAX
                        && p.since + Duration::from_secs(u64::from(p.saved.expiry)) <= now
                })
                .map(|(k, p)| {
                    let t = CancellationToken::new();
                    p.expiring = Some(t.clone());
                    (k.clone(), p.saved.clone(), t)
                })
                .collect()
        };
        for (client_id, saved, done) in expired {
            tracing::debug!(client = %client_id, "MQTT session expired");
            if self.held_here(&client_id).await {
                self.forget_session(&client_id, &saved).await;
            }
            {
                let mut parked = self.parked.lock();
                if parked.get(&client_id).is_some_and(|p| p.expiring.is_some()) {
                    parked.remove(&client_id);
                }
            }
            done.cancel();
        }
    }

    /// Sets (or, with an empty payload, clears) the retained message of a topic, in
    /// memory at once and durably before returning.
    pub(crate) async fn retain(&self, topic: &str, r: Retained) -> Result<(), HubError> {
        let value = (!r.payload.is_empty()).then(|| state::encode_retained(&r));
        self.retain_in_memory(topic, r);
        if topic.starts_with('$') {
            // `$SYS` values are regenerated, never persisted.
            return Ok(());
        }
        self.hub
            .put_state(&self.ctx, state::RETAINED, topic, value)
            .await
    }

    /// Sets (or clears) a topic's retained message in this node's memory only.
    pub(crate) fn retain_in_memory(&self, topic: &str, r: Retained) {
        if r.payload.is_empty() {
            self.retained.write().remove(topic);
        } else {
            self.retained.write().insert(topic.to_string(), r);
        }
    }

    /// Whether `client_id` is connected to this node.
    pub(crate) fn is_live(&self, client_id: &str) -> bool {
        self.live.lock().contains_key(client_id)
    }

    /// Retained messages matching a filter that have not expired.
    pub(crate) fn retained_for(&self, filter: &TopicFilter) -> Vec<(String, Retained)> {
        let now = now_ms();
        self.retained
            .read()
            .iter()
            .filter(|(_, r)| r.expires_at.is_none_or(|e| e > now))
            .filter(|(t, _)| Topic::new(t).is_ok_and(|t| filter.matches(&t)))
            .map(|(t, r)| (t.clone(), r.clone()))
            .collect()
    }

    fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    /// The `$SYS/broker/…` topics and their current values.
    pub(crate) fn sys_values(&self) -> Vec<(&'static str, String)> {
        let parked = self.parked.lock().len();
        let connected = self.connected();
        vec![
            (
                "$SYS/broker/version",
                format!("polyport {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "$SYS/broker/uptime",
                format!("{} seconds", self.started.elapsed().as_secs()),
            ),
            ("$SYS/broker/clients/connected", connected.to_string()),
            ("$SYS/broker/clients/disconnected", parked.to_string()),
            (
                "$SYS/broker/clients/total",
                (connected + parked).to_string(),
            ),
            (
                "$SYS/broker/clients/connections",
                self.stats
                    .connections_total
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
            (
                "$SYS/broker/messages/received",
                self.stats
                    .messages_received
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
            (
                "$SYS/broker/messages/sent",
                self.stats.messages_sent.load(Ordering::Relaxed).to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                self.retained_count().to_string(),
            ),
        ]
    }
}

/// The Hub group name of one subscription of a persistent session. The generation
/// changes with every new session and the nonce with every new subscription, so
/// positions left by an earlier one are never resumed.
pub(crate) fn session_group(client_id: &str, generation: &str, nonce: &str) -> String {
    format!("{}{nonce}:{client_id}", session_groups(generation))
}

/// The prefix of every group name of one session (generations are unique ULIDs).
pub(crate) fn session_groups(generation: &str) -> String {
    format!("mqtt-session:{generation}:")
}
