//! The load itself: rumqttc publishers and subscribers, one run of one shape.

use super::{Summary, summarize};
use anyhow::{Context, bail};
use futures::StreamExt;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet, QoS,
    SubscribeReasonCode,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::bench::child::cpu_secs;

/// What to publish where, and who listens.
pub(super) struct Load {
    pub(super) qos: QoS,
    /// One topic per publisher.
    pub(super) topics: Vec<String>,
    /// Messages per publisher.
    pub(super) counts: Vec<usize>,
    pub(super) filter: String,
    pub(super) subscribers: usize,
    pub(super) payload: usize,
    /// At most this many messages published and not yet delivered, over all publishers:
    /// a producer that waits for its consumer (a bounded queue) instead of flooding.
    pub(super) window: Option<u64>,
    /// A fixed rate over all publishers (msgs/s) instead of as fast as possible.
    pub(super) rate: Option<f64>,
}

impl Load {
    pub(super) fn fan_in(prefix: &str, broker: &str, qos: QoS, plan: &Plan, total: usize) -> Self {
        let base = format!("{prefix}/{broker}/fanin-q{}", qos as u8);
        let p = plan.publishers;
        Self {
            qos,
            topics: (0..p).map(|i| format!("{base}/{i}")).collect(),
            counts: (0..p)
                .map(|i| total / p + usize::from(i < total % p))
                .collect(),
            filter: format!("{base}/+"),
            subscribers: 1,
            payload: plan.payload,
            window: None,
            rate: None,
        }
    }

    /// Fan-in with few publishers kept at most `plan.window` messages ahead of the
    /// subscriber: throughput without a flood queued in front of it.
    pub(super) fn fan_in_window(prefix: &str, broker: &str, plan: &Plan) -> Self {
        let base = format!("{prefix}/{broker}/fanin-window");
        let p = plan.window_publishers;
        let total = plan.window_messages;
        Self {
            qos: QoS::AtMostOnce,
            topics: (0..p).map(|i| format!("{base}/{i}")).collect(),
            counts: (0..p)
                .map(|i| total / p + usize::from(i < total % p))
                .collect(),
            filter: format!("{base}/+"),
            subscribers: 1,
            payload: plan.payload,
            window: Some(plan.window as u64),
            rate: None,
        }
    }

    /// One publisher at a fixed rate to one subscriber: latency without queueing.
    pub(super) fn steady(prefix: &str, broker: &str, plan: &Plan) -> Self {
        let topic = format!("{prefix}/{broker}/steady");
        Self {
            qos: QoS::AtMostOnce,
            topics: vec![topic.clone()],
            counts: vec![plan.rate_messages],
            filter: topic,
            subscribers: 1,
            payload: plan.payload,
            window: None,
            rate: Some(plan.rate),
        }
    }

    pub(super) fn fan_out(prefix: &str, broker: &str, qos: QoS, plan: &Plan) -> Self {
        let topic = format!("{prefix}/{broker}/fanout-q{}", qos as u8);
        Self {
            qos,
            topics: vec![topic.clone()],
            counts: vec![plan.fanout],
            filter: topic,
            subscribers: plan.subscribers,
            payload: plan.payload,
            window: None,
            rate: None,
        }
    }
}

/// The result of one load against one broker.
pub(super) struct Outcome {
    pub(super) expected: u64,
    pub(super) delivered: u64,
    /// Deliveries per second, first publish to last receipt.
    pub(super) rate: f64,
    pub(super) lat: Summary,
    /// The broker process's CPU time per delivered message, when its pid is known.
    pub(super) cpu_us_per_msg: Option<f64>,
    pub(super) note: Option<String>,
}

impl Outcome {
    pub(super) fn lost_pct(&self) -> f64 {
        self.expected.saturating_sub(self.delivered) as f64 * 100.0 / self.expected.max(1) as f64
    }
}

pub(super) fn options(
    addr: SocketAddr,
    id: String,
    keep_alive: Duration,
    credentials: Option<&(String, String)>,
) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    if let Some((user, password)) = credentials {
        o.set_credentials(user, password);
    }
    o.set_keep_alive(keep_alive)
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, 64);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(10);
    el.set_network_options(net);
    (client, el)
}

/// Connects and waits for a successful CONNACK.
pub(super) async fn connect(
    addr: SocketAddr,
    id: String,
    keep_alive: Duration,
    credentials: Option<&(String, String)>,
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let (client, mut el) = options(addr, id, keep_alive, credentials);
    match tokio::time::timeout(Duration::from_secs(15), el.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => Ok((client, el)),
        Ok(Ok(other)) => bail!("expected CONNACK, got {other:?}"),
        Ok(Err(e)) => Err(e).context("MQTT connect"),
        Err(_) => bail!("no CONNACK within 15 s"),
    }
}

/// Subscribes and waits for a SUBACK that grants the subscription.
pub(super) async fn subscribe(
    client: &AsyncClient,
    el: &mut EventLoop,
    filter: &str,
    qos: QoS,
) -> anyhow::Result<()> {
    client.subscribe(filter, qos).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ev = tokio::time::timeout_at(deadline, el.poll())
            .await
            .context("no SUBACK within 15 s")??;
        if let Event::Incoming(Packet::SubAck(ack)) = ev {
            if ack
                .return_codes
                .iter()
                .any(|c| matches!(c, SubscribeReasonCode::Failure))
            {
                bail!("subscription to {filter} refused");
            }
            return Ok(());
        }
    }
}

/// Checks that an MQTT broker answers at `addr`.
pub(super) async fn probe(addr: &str, run_id: &str) -> anyhow::Result<SocketAddr> {
    let sock = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))?;
    let (client, mut el) = tokio::time::timeout(
        Duration::from_secs(5),
        connect(sock, client_id(run_id), Duration::from_secs(30), None),
    )
    .await
    .context("timed out")??;
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
    Ok(sock)
}

/// Runs `f(0..n)` with at most [`CONNECT_CONCURRENCY`] in flight; returns the successes
/// and the first error.
pub(super) async fn connect_all<T, F, Fut>(n: usize, f: F) -> (Vec<T>, Option<anyhow::Error>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let results: Vec<anyhow::Result<T>> = futures::stream::iter(0..n)
        .map(f)
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let mut ok = Vec::with_capacity(n);
    let mut first_err = None;
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    (ok, first_err)
}

/// What a subscriber task hands back; it keeps the connection open until dropped.
pub(super) struct SubEnd {
    pub(super) lat_ns: Vec<u64>,
    pub(super) error: Option<String>,
    pub(super) _conn: (AsyncClient, EventLoop),
}

pub(super) async fn run_load(
    t: &Target,
    load: &Load,
    run_id: &str,
    quiet: Duration,
) -> anyhow::Result<Outcome> {
    let per_sub: usize = load.counts.iter().sum();
    let expected = (per_sub * load.subscribers) as u64;
    let keep_alive = Duration::from_secs(60);
    let (subs, err) = connect_all(load.subscribers, |_| async {
        let (c, mut el) = connect(
            t.addr,
            client_id(run_id),
            keep_alive,
            t.credentials.as_ref(),
        )
        .await?;
        subscribe(&c, &mut el, &load.filter, load.qos).await?;
        anyhow::Ok((c, el))
    })
    .await;
    if let Some(e) = err {
        bail!("{}: subscriber setup failed: {e:#}", t.name);
    }
    let (pubs, err) = connect_all(load.topics.len(), |_| {
        connect(
            t.addr,
            client_id(run_id),
            keep_alive,
            t.credentials.as_ref(),
        )
    })
    .await;
    if let Some(e) = err {
        bail!("{}: publisher setup failed: {e:#}", t.name);
    }

    let progress = Progress::default();
    let stop = CancellationToken::new();
    let sub_tasks: Vec<JoinHandle<SubEnd>> = subs
        .into_iter()
        .map(|(client, el)| {
            let (progress, stop) = (progress.clone(), stop.clone());
            tokio::spawn(subscriber(client, el, per_sub, progress, stop))
        })
        .collect();
    // Let every broker-side subscription settle before the clock starts.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let cpu_before = t.pid.and_then(cpu_secs);
    let started = nanos();
    let start_at = tokio::time::Instant::now();
    let mut drivers = Vec::new();
    let mut senders = Vec::new();
    // Each publisher's share of a fixed rate: the gap between its own messages.
    let gap = load
        .rate
        .map(|r| Duration::from_secs_f64(load.topics.len() as f64 / r.max(1.0)));
    for (((client, el), topic), &n) in pubs.into_iter().zip(&load.topics).zip(&load.counts) {
        drivers.push(tokio::spawn(publisher_driver(el, load.qos, n)));
        let (topic, qos, size) = (topic.clone(), load.qos, load.payload);
        let (window, progress) = (load.window, progress.clone());
        senders.push(tokio::spawn(async move {
            let mut stalled = false;
            for k in 0..n {
                if let Some(gap) = gap {
                    tokio::time::sleep_until(start_at + gap * k as u32).await;
                }
                if let Some(w) = window {
                    stalled |= !progress.wait_for_room(w).await;
                }
                let mut payload = vec![0u8; size];
                payload[..8].copy_from_slice(&nanos().to_le_bytes());
                client.publish(topic.clone(), qos, false, payload).await?;
                progress.published.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((client, stalled))
        }));
    }
    let mut notes = Vec::new();
    let mut keep = Vec::new();
    let deadline = tokio::time::Instant::now() + PUBLISH_DEADLINE;
    for s in senders {
        match tokio::time::timeout_at(deadline, s).await {
            Ok(Ok(Ok((client, stalled)))) => {
                if stalled {
                    notes.push(
                        "the subscriber stopped catching up; the window was let go (messages lost?)"
                            .into(),
                    );
                }
                keep.push(client)
            }
            Ok(Ok(Err(e))) => notes.push(format!("publisher: {e:#}")),
            Ok(Err(e)) => notes.push(format!("publisher task: {e}")),
            Err(_) => notes.push("publishers did not finish in time".into()),
        }
    }
    let mut pub_conns = Vec::new();
    for d in drivers {
        match tokio::time::timeout_at(deadline, d).await {
            Ok(Ok((el, Ok(())))) => pub_conns.push(el),
            Ok(Ok((el, Err(e)))) => {
                notes.push(format!("publisher connection: {e}"));
                pub_conns.push(el);
            }
            Ok(Err(e)) => notes.push(format!("publisher task: {e}")),
            Err(_) => notes.push(format!(
                "publishers not {} within {}s",
                if load.qos == QoS::AtMostOnce {
                    "done writing"
                } else {
                    "acknowledged"
                },
                PUBLISH_DEADLINE.as_secs()
            )),
        }
    }

    // Wait for the rest, counting it lost once deliveries stall for `quiet`.
    let cap = Instant::now() + DELIVERY_DEADLINE;
    let delivered = &progress.delivered;
    let (mut seen, mut since) = (delivered.load(Ordering::Relaxed), Instant::now());
    loop {
        let d = delivered.load(Ordering::Relaxed);
        if d >= expected || Instant::now() > cap {
            break;
        }
        if d != seen {
            (seen, since) = (d, Instant::now());
        } else if since.elapsed() > quiet {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    let mut lat = Vec::with_capacity(expected as usize);
    let mut ends = Vec::new();
    for s in sub_tasks {
        match s.await {
            Ok(mut end) => {
                lat.append(&mut end.lat_ns);
                if let Some(e) = end.error.take() {
                    notes.push(format!("subscriber: {e}"));
                }
                ends.push(end);
            }
            Err(e) => notes.push(format!("subscriber task: {e}")),
        }
    }
    drop((ends, pub_conns, keep));
    // Give the broker a moment to tear the connections down before the next load.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let delivered = progress.delivered.load(Ordering::Relaxed);
    let last = progress.last.load(Ordering::Relaxed);
    let secs = last.saturating_sub(started) as f64 / 1e9;
    // Read after the teardown pause: the broker's share of the run includes delivering
    // the last messages, and the pause adds only the idle teardown of a few sockets.
    let cpu_after = t.pid.and_then(cpu_secs);
    notes.dedup();
    Ok(Outcome {
        expected,
        delivered,
        rate: if secs > 0.0 {
            delivered as f64 / secs
        } else {
            0.0
        },
        lat: summarize(lat.into_iter().map(|ns| ns / 1_000).collect()),
        cpu_us_per_msg: match (cpu_before, cpu_after) {
            (Some(b), Some(a)) if delivered > 0 => Some((a - b) * 1e6 / delivered as f64),
            _ => None,
        },
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    })
}

/// Drives a publisher's connection until all `n` messages are written (QoS 0) or
/// acknowledged (QoS 1); hands the connection back so it stays open until the load ends.
pub(super) async fn publisher_driver(
    mut el: EventLoop,
    qos: QoS,
    n: usize,
) -> (EventLoop, Result<(), rumqttc::ConnectionError>) {
    let mut done = 0;
    while done < n {
        match el.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) if qos == QoS::AtLeastOnce => done += 1,
            Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == QoS::AtMostOnce => done += 1,
            Ok(_) => {}
            Err(e) => return (el, Err(e)),
        }
    }
    (el, Ok(()))
}

/// What publishers and subscribers of one load share: counts, and a wake-up for
/// publishers waiting for room in their window.
#[derive(Clone, Default)]
pub(super) struct Progress {
    inner: Arc<ProgressInner>,
}

#[derive(Default)]
pub(super) struct ProgressInner {
    published: AtomicU64,
    delivered: AtomicU64,
    /// `nanos()` of the latest delivery.
    last: AtomicU64,
    room: Notify,
}

impl std::ops::Deref for Progress {
    type Target = ProgressInner;
    fn deref(&self) -> &ProgressInner {
        &self.inner
    }
}

/// Deliveries between two wake-ups of waiting publishers.
const WAKE_EVERY: u64 = 64;
/// How long a window may see no delivery before publishers stop waiting for it.
const WINDOW_STALL: Duration = Duration::from_secs(2);

impl Progress {
    /// Waits until fewer than `window` messages are in flight; `false` if deliveries
    /// stalled and the wait was given up.
    async fn wait_for_room(&self, window: u64) -> bool {
        let mut since = Instant::now();
        let mut seen = self.delivered.load(Ordering::Relaxed);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a wake-up between the two is not lost.
            room.as_mut().enable();
            let d = self.delivered.load(Ordering::Relaxed);
            if self.published.load(Ordering::Relaxed) < d + window {
                return true;
            }
            if d != seen {
                (seen, since) = (d, Instant::now());
            } else if since.elapsed() > WINDOW_STALL {
                return false;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), room).await;
        }
    }

    fn delivered_one(&self, now: u64) {
        let d = self.delivered.fetch_add(1, Ordering::Relaxed) + 1;
        self.last.fetch_max(now, Ordering::Relaxed);
        if d.is_multiple_of(WAKE_EVERY) {
            self.room.notify_waiters();
        }
    }
}

/// Counts deliveries and their latency until `expect` arrived or `stop` fires.
pub(super) async fn subscriber(
    client: AsyncClient,
    mut el: EventLoop,
    expect: usize,
    progress: Progress,
    stop: CancellationToken,
) -> SubEnd {
    let mut lat_ns = Vec::with_capacity(expect);
    let mut got = 0;
    let mut error = None;
    while got < expect {
        let ev = tokio::select! {
            _ = stop.cancelled() => break,
            ev = el.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let now = nanos();
                if let Some(sent) = p
                    .payload
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_le_bytes)
                {
                    lat_ns.push(now.saturating_sub(sent));
                }
                got += 1;
                progress.delivered_one(now);
            }
            Ok(_) => {}
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    SubEnd {
        lat_ns,
        error,
        _conn: (client, el),
    }
}
