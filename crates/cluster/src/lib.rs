//! Polyport's cluster engine on NATS JetStream: which nodes are alive, and what crosses
//! between them.
//!
//! Every node writes a heartbeat (its [`Node`] as JSON) under its id in the JetStream KV
//! bucket `polyport-nodes` every [`ClusterConfig::heartbeat`]; the bucket's `max_age`
//! drops a key that has not been rewritten for [`ClusterConfig::ttl`], so a node killed
//! with `kill -9` disappears on its own, and one that stops cleanly deletes its key at
//! once. Each node follows the bucket with a watch (the last value of every key, then
//! each change) into a local view, so [`NatsMembership`] answers `GET /api/cluster`,
//! the `polyport_cluster_nodes` gauge and `/readyz` (not ready while the last heartbeat
//! failed) without a round trip; KV `keys()` was tried first and does not end while
//! heartbeats keep arriving.
//!
//! Why KV rather than core NATS pings: the list must be readable by a node that just
//! started (KV keeps the last value per key; a ping only reaches who is listening), and a
//! bucket's `max_age` gives expiry without any node having to sweep.
//!
//! On the Postgres store, named groups run on one node each and members on the other
//! nodes join them over NATS (`groups.rs`); ephemeral events cross over core NATS
//! (`relay.rs`); the event log is relayed to a JetStream stream whose sequence is the
//! event's (`log.rs`). Adapter state (MQTT sessions, retained messages) lives in the
//! Postgres store's `adapter_state`, not in KV: docs/cluster.md says why.

mod groups;
mod log;
mod relay;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use groups::NatsGroups;
pub use log::{stream_name as log_stream_name, subject as log_subject};
pub use relay::NatsRelay;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use chrono::Utc;
use futures::StreamExt;
use parking_lot::Mutex;
use polyport_core::HubResult;
use polyport_core::cluster::{Membership, Node};
use tokio_util::sync::CancellationToken;

/// The bucket every node of one deployment shares.
pub const NODES_BUCKET: &str = "polyport-nodes";

/// How a node joins.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `nats://host:port` (several separated by commas).
    pub nats_url: String,
    /// How often the heartbeat is written.
    pub heartbeat: Duration,
    /// How long a node stays listed after its last heartbeat (the bucket's `max_age`;
    /// every node of a deployment must use the same).
    pub ttl: Duration,
    /// Bucket name (tests isolate themselves with their own).
    pub bucket: String,
    /// How long joining may take before it fails.
    pub connect_timeout: Duration,
}

impl ClusterConfig {
    /// Heartbeat every 2 s, listed for 8 s after the last one.
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            heartbeat: Duration::from_secs(2),
            ttl: Duration::from_secs(8),
            bucket: NODES_BUCKET.to_string(),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A NATS connection named `name`, or why there is none within the connect timeout.
async fn connect(cfg: &ClusterConfig, name: String) -> Result<async_nats::Client, ClusterError> {
    let connect = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(cfg.connect_timeout)
        .connect(cfg.nats_url.as_str());
    let reason = match tokio::time::timeout(cfg.connect_timeout, connect).await {
        Ok(Ok(c)) => return Ok(c),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer in {:?}", cfg.connect_timeout),
    };
    Err(ClusterError::Connect {
        url: cfg.nats_url.clone(),
        reason,
    })
}

/// Deletes what a deployment keeps in NATS (its node bucket and its log stream), for a
/// deployment that is gone for good: a benchmark's or a test's. Missing parts are fine.
pub async fn forget_deployment(cfg: &ClusterConfig) -> Result<(), ClusterError> {
    let client = connect(cfg, "polyport forget".into()).await?;
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_key_value(&cfg.bucket).await;
    let _ = js.delete_stream(log::stream_name(&cfg.bucket)).await;
    Ok(())
}

/// Connects the deployment's group link for `hub` (a node on the shared store): named
/// groups then have one dispatcher in the deployment. Call before anything subscribes.
pub async fn link_groups(
    cfg: &ClusterConfig,
    hub: &polyport_core::Hub,
) -> Result<(), ClusterError> {
    let node = polyport_core::record::new_id();
    let client = connect(cfg, format!("polyport groups {node}")).await?;
    hub.set_group_link(NatsGroups::new(client, &cfg.bucket, node, hub.clone()));
    Ok(())
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS did not answer.
    #[error("cannot reach NATS at {url}: {reason}")]
    Connect {
        /// The configured address.
        url: String,
        /// What the client said.
        reason: String,
    },
    /// JetStream is off or refused the bucket.
    #[error(
        "NATS JetStream refused the node bucket {bucket:?}: {reason} (is the server started with -js?)"
    )]
    Bucket {
        /// The bucket.
        bucket: String,
        /// What the server said.
        reason: String,
    },
    /// The first heartbeat could not be written.
    #[error("the first heartbeat failed: {0}")]
    Heartbeat(String),
    /// The ephemeral-event relay could not subscribe.
    #[error("the event relay could not start: {0}")]
    Relay(String),
}

/// This node's membership in a NATS-backed deployment.
pub struct NatsMembership {
    kv: kv::Store,
    client: async_nats::Client,
    /// The deployment's name (its bucket), which names its relay subject too.
    bucket: String,
    me: Mutex<Node>,
    ttl: Duration,
    /// Every node's last heartbeat, kept current by a watch on the bucket: listing costs
    /// no round trip (KV `keys()` does not end while heartbeats keep arriving).
    view: Mutex<std::collections::HashMap<String, Node>>,
    /// Rung whenever the view changes (join waits to see its own heartbeat).
    changed: tokio::sync::Notify,
    /// When the last heartbeat was written, or why it failed.
    beat: Mutex<Result<Instant, String>>,
    /// Ends the heartbeat loop (a child of the token given to [`NatsMembership::join`]).
    stop: CancellationToken,
    /// The heartbeat loop, awaited by [`NatsMembership::leave`].
    beating: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for NatsMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsMembership")
            .field("node", &self.me.lock().id)
            .finish_non_exhaustive()
    }
}

impl NatsMembership {
    /// Connects, opens (or creates) the bucket, writes the first heartbeat and keeps
    /// beating until `stop` fires or [`NatsMembership::leave`] is called; then deletes
    /// this node's key. Fails when any of the
    /// first steps does, so a misconfigured node does not start serving alone.
    pub async fn join(
        cfg: ClusterConfig,
        me: Node,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, ClusterError> {
        let client = connect(&cfg, format!("polyport node {}", me.id)).await?;
        let js = jetstream::new(client.clone());
        let kv = open_bucket(&client, &js, &cfg).await?;
        let m = Arc::new(Self {
            kv,
            client: client.clone(),
            bucket: cfg.bucket.clone(),
            me: Mutex::new(me),
            ttl: cfg.ttl,
            view: Mutex::default(),
            changed: tokio::sync::Notify::new(),
            beat: Mutex::new(Err("no heartbeat yet".into())),
            stop: stop.child_token(),
            beating: Mutex::new(None),
        });
        tokio::spawn(watching(m.clone()));
        m.beat().await;
        if let Err(e) = &*m.beat.lock() {
            return Err(ClusterError::Heartbeat(e.clone()));
        }
        // Serve only once the view holds this node: the list is never missing itself.
        let id = m.me.lock().id.clone();
        let seen = async {
            loop {
                let changed = m.changed.notified();
                if m.view.lock().contains_key(&id) {
                    break;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(cfg.connect_timeout, seen)
            .await
            .is_err()
        {
            return Err(ClusterError::Heartbeat(
                "the node's own heartbeat never came back from the bucket".into(),
            ));
        }
        tracing::info!(node = %m.me.lock().id, nats = %cfg.nats_url, "joined the cluster");
        let task = tokio::spawn(beating(m.clone(), cfg.heartbeat));
        *m.beating.lock() = Some(task);
        Ok(m)
    }

    /// Writes this node's heartbeat; remembers whether it worked.
    async fn beat(&self) {
        let (id, body) = {
            let mut me = self.me.lock();
            me.seen_at = Utc::now();
            (me.id.clone(), serde_json::to_vec(&*me).unwrap_or_default())
        };
        let body: bytes::Bytes = body.into();
        let mut r = self.kv.put(id.as_str(), body.clone()).await;
        if r.is_err()
            && make_stream(&self.client, &self.bucket, self.ttl)
                .await
                .is_ok()
        {
            r = self.kv.put(id.as_str(), body).await;
        }
        let mut beat = self.beat.lock();
        match r {
            Ok(_) => *beat = Ok(Instant::now()),
            Err(e) => {
                if beat.is_ok() {
                    tracing::warn!(node = %id, error = %e, "cluster heartbeat failed");
                }
                *beat = Err(format!("the cluster heartbeat failed: {e}"));
            }
        }
    }

    /// Starts carrying `hub`'s ephemeral events to the deployment's other nodes and
    /// theirs to it (`relay.rs`), until the hub shuts down.
    pub async fn relay(&self, hub: &polyport_core::Hub) -> Result<(), ClusterError> {
        let subject = format!("polyport.{}.ephemeral", self.bucket);
        let node = self.me.lock().id.clone();
        let r = relay::start(self.client.clone(), subject, node, hub.clone()).await?;
        hub.set_relay(r);
        Ok(())
    }

    /// Relays the shared event log (the Postgres store) to the deployment's JetStream
    /// stream, while this node holds the relay's lease (`log.rs`), until the node stops.
    pub fn relay_log(&self, hub: &polyport_core::Hub) {
        let js = jetstream::new(self.client.clone());
        tokio::spawn(log::run(
            js,
            hub.clone(),
            self.bucket.clone(),
            self.stop.clone(),
        ));
    }

    /// Stops the heartbeat and removes this node from the list at once (a clean stop;
    /// otherwise it drops out after the ttl).
    pub async fn leave(&self) {
        self.stop.cancel();
        let task = self.beating.lock().take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// Deletes this node's heartbeat; after the loop's last beat, so none follows it.
    async fn remove(&self) {
        let id = self.me.lock().id.clone();
        if let Err(e) = self.kv.delete(id.as_str()).await {
            tracing::warn!(node = %id, error = %e, "leaving the cluster failed; the node expires instead");
        }
    }
}

/// Opens the bucket, creating it when no node has yet; a node that loses the race to
/// create it opens the winner's.
///
/// Created with the JetStream API request a KV bucket is (stream `KV_<bucket>` on
/// `$KV.<bucket>.>`, one message per subject, direct gets, `max_age` as the ttl) rather
/// than `create_key_value`: async-nats 0.50 cannot parse the reply of NATS 2.9 (Debian's
/// server) to a stream creation, though the stream is made. Reads and writes go through
/// its KV API as usual.
async fn open_bucket(
    client: &async_nats::Client,
    js: &jetstream::Context,
    cfg: &ClusterConfig,
) -> Result<kv::Store, ClusterError> {
    let err = |reason: String| ClusterError::Bucket {
        bucket: cfg.bucket.clone(),
        reason,
    };
    if let Ok(kv) = js.get_key_value(cfg.bucket.as_str()).await {
        return Ok(kv);
    }
    make_stream(client, &cfg.bucket, cfg.ttl)
        .await
        .map_err(err)?;
    js.get_key_value(cfg.bucket.as_str())
        .await
        .map_err(|e| err(e.to_string()))
}

/// Creates the bucket's stream unless it exists. Also after a NATS restart: the stream
/// is kept in memory (heartbeats need no disk), so a restarted server has lost it and the
/// next heartbeat makes it again.
async fn make_stream(
    client: &async_nats::Client,
    bucket: &str,
    ttl: Duration,
) -> Result<(), String> {
    let stream = format!("KV_{bucket}");
    let spec = serde_json::json!({
        "name": stream,
        "description": "Polyport nodes alive (heartbeats)",
        "subjects": [format!("$KV.{bucket}.>")],
        "max_msgs_per_subject": 1,
        "max_age": u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX),
        "storage": "memory",
        "num_replicas": 1,
        "discard": "new",
        "allow_rollup_hdrs": true,
        "deny_delete": true,
        "allow_direct": true,
    });
    let reply = client
        .request(
            format!("$JS.API.STREAM.CREATE.{stream}"),
            serde_json::to_vec(&spec).unwrap_or_default().into(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let answer: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
    // "stream name already in use" (10058): another node made it first.
    if let Some(e) = answer.get("error")
        && e.get("err_code").and_then(|c| c.as_u64()) != Some(10058)
    {
        return Err(e
            .get("description")
            .and_then(|d| d.as_str())
            .unwrap_or("stream creation refused")
            .to_string());
    }
    Ok(())
}

async fn beating(m: Arc<NatsMembership>, every: Duration) {
    let stop = m.stop.clone();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                m.beat().await;
                if let Ok(nodes) = m.nodes().await {
                    metrics::gauge!("polyport_cluster_nodes").set(nodes.len() as f64);
                }
            }
            _ = stop.cancelled() => break,
        }
    }
    m.remove().await;
}

/// Keeps the view current: the last heartbeat of every key, then each change. A watch
/// that fails is opened again (after a second) and the view rebuilt from it.
async fn watching(m: Arc<NatsMembership>) {
    loop {
        let watch = tokio::select! {
            w = m.kv.watch_with_history(">") => w,
            _ = m.stop.cancelled() => return,
        };
        match watch {
            Ok(mut w) => {
                m.view.lock().clear();
                loop {
                    let entry = tokio::select! {
                        e = w.next() => e,
                        _ = m.stop.cancelled() => return,
                    };
                    match entry {
                        Some(Ok(e)) => m.apply(e),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "cluster node watch failed; reopening");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the cluster's nodes; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = m.stop.cancelled() => return,
        }
    }
}

impl NatsMembership {
    /// One change of the bucket into the view.
    fn apply(&self, e: kv::Entry) {
        let mut view = self.view.lock();
        match e.operation {
            kv::Operation::Put => match serde_json::from_slice::<Node>(&e.value) {
                Ok(n) => {
                    view.insert(e.key, n);
                }
                Err(err) => {
                    tracing::debug!(key = %e.key, error = %err, "unreadable node heartbeat skipped");
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                view.remove(&e.key);
            }
        }
        drop(view);
        self.changed.notify_waiters();
    }
}

#[async_trait]
impl Membership for NatsMembership {
    fn engine(&self) -> &'static str {
        "cluster"
    }

    fn me(&self) -> Node {
        self.me.lock().clone()
    }

    async fn nodes(&self) -> HubResult<Vec<Node>> {
        // The bucket's max_age removes a dead node's key without a watch event, so a
        // heartbeat older than the ttl is what drops it here.
        let fresh_after = Utc::now()
            - chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::seconds(8));
        let mut nodes: Vec<Node> = self
            .view
            .lock()
            .values()
            .filter(|n| n.seen_at >= fresh_after)
            .cloned()
            .collect();
        nodes.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        Ok(nodes)
    }

    fn ready(&self) -> Result<(), String> {
        match &*self.beat.lock() {
            Ok(at) if at.elapsed() <= self.ttl => Ok(()),
            Ok(_) => Err("no cluster heartbeat written for longer than the ttl".into()),
            Err(e) => Err(e.clone()),
        }
    }
}
