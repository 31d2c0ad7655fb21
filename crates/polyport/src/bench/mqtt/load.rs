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
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;

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

    let delivered = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let sub_tasks: Vec<JoinHandle<SubEnd>> = subs
        .into_iter()
        .map(|(client, el)| {
            let (delivered, last, stop) = (delivered.clone(), last.clone(), stop.clone());
            tokio::spawn(subscriber(client, el, per_sub, delivered, last, stop))
        })
        .collect();
    // Let every broker-side subscription settle before the clock starts.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = nanos();
    let mut drivers = Vec::new();
    let mut senders = Vec::new();
    for (((client, el), topic), &n) in pubs.into_iter().zip(&load.topics).zip(&load.counts) {
        drivers.push(tokio::spawn(publisher_driver(el, load.qos, n)));
        let (topic, qos, size) = (topic.clone(), load.qos, load.payload);
        senders.push(tokio::spawn(async move {
            for _ in 0..n {
                let mut payload = vec![0u8; size];
                payload[..8].copy_from_slice(&nanos().to_le_bytes());
                client.publish(topic.clone(), qos, false, payload).await?;
            }
            anyhow::Ok(client)
        }));
    }
    let mut notes = Vec::new();
    let mut keep = Vec::new();
    let deadline = tokio::time::Instant::now() + PUBLISH_DEADLINE;
    for s in senders {
        match tokio::time::timeout_at(deadline, s).await {
            Ok(Ok(Ok(client))) => keep.push(client),
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

    let delivered = delivered.load(Ordering::Relaxed);
    let secs = last.load(Ordering::Relaxed).saturating_sub(started) as f64 / 1e9;
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

/// Counts deliveries and their latency until `expect` arrived or `stop` fires.
pub(super) async fn subscriber(
    client: AsyncClient,
    mut el: EventLoop,
    expect: usize,
    delivered: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
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
                delivered.fetch_add(1, Ordering::Relaxed);
                last.fetch_max(now, Ordering::Relaxed);
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
