//! `polyport bench mqtt`: Polyport's MQTT broker vs the Mosquitto broker already running
//! on this machine, driven by one load generator (rumqttc, MQTT 3.1.1, in this process)
//! with the same load, interleaved in one run.
//!
//! Polyport runs as a child process (`polyport serve` on ephemeral ports), not in-process,
//! for every scenario: Mosquitto is its own process too, so neither broker shares a tokio
//! runtime with the load generator, and the child's VmRSS is the broker's alone, which the
//! idle-connection scenario needs.
//!
//! The idle-connection scenario runs first, while neither broker's heap has been grown and
//! freed by earlier load (reused free memory would hide per-connection growth). Latency is
//! measured from a monotonic timestamp in the first 8 bytes of each payload, so it counts
//! queueing in the client, the kernel and the broker alike for both brokers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet, QoS,
    SubscribeReasonCode,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Summary, summarize, ulid_like};

#[derive(clap::Args, Debug)]
pub(crate) struct MqttArgs {
    /// Mosquitto to compare against (host:port); Polyport runs alone if it is not there.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mosquitto: String,
    /// Fan-in publishers [default: 16].
    #[arg(long)]
    publishers: Option<usize>,
    /// Fan-out subscribers [default: 100].
    #[arg(long)]
    subscribers: Option<usize>,
    /// Fan-in messages in total, at each QoS [default: 50000 at QoS 0, 20000 at QoS 1].
    #[arg(long)]
    messages: Option<usize>,
    /// Messages the fan-out publisher sends, at each QoS [default: 1000].
    #[arg(long)]
    fanout_messages: Option<usize>,
    /// Payload bytes (at least 8: the send timestamp).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Idle connections per broker for the memory scenario [default: 2000].
    #[arg(long)]
    idle: Option<usize>,
    /// Small counts (a smoke test); explicit flags still win.
    #[arg(long)]
    quick: bool,
}

/// The resolved counts.
struct Plan {
    publishers: usize,
    subscribers: usize,
    fanin_q0: usize,
    fanin_q1: usize,
    fanout: usize,
    payload: usize,
    idle: usize,
    /// How long delivery may stall after publishing ends before the rest counts as lost.
    quiet: Duration,
}

impl Plan {
    fn new(a: &MqttArgs) -> Self {
        let q = a.quick;
        Self {
            publishers: a.publishers.unwrap_or(if q { 4 } else { 16 }).max(1),
            subscribers: a.subscribers.unwrap_or(if q { 10 } else { 100 }).max(1),
            fanin_q0: a.messages.unwrap_or(if q { 2_000 } else { 50_000 }).max(1),
            fanin_q1: a.messages.unwrap_or(if q { 1_000 } else { 20_000 }).max(1),
            fanout: a
                .fanout_messages
                .unwrap_or(if q { 100 } else { 1_000 })
                .max(1),
            payload: a.payload.max(8),
            idle: a.idle.unwrap_or(if q { 200 } else { 2_000 }),
            quiet: Duration::from_secs(if q { 1 } else { 3 }),
        }
    }
}

/// Connections opened at once, so neither broker's accept backlog overflows.
const CONNECT_CONCURRENCY: usize = 64;
/// Longest wait for all publishers to finish (QoS 1: for every PUBACK).
const PUBLISH_DEADLINE: Duration = Duration::from_secs(180);
/// Longest wait for deliveries once publishing has ended, even while they still trickle in.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(120);

/// One broker under test.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// For VmRSS; `None` when the process cannot be identified.
    pid: Option<u32>,
}

/// Nanoseconds since the first call: the shared clock of publishers and subscribers.
fn nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Unique client ids across the whole run, so no load ever takes over an earlier session.
fn client_id(run: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{run}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

pub(crate) async fn run(args: MqttArgs) -> anyhow::Result<()> {
    let mut plan = Plan::new(&args);
    // This process holds one socket per idle client; the Polyport child inherits the limit.
    let limit = raise_nofile(plan.idle as u64 + 1024);
    if limit < plan.idle as u64 + 512 {
        let capped = (limit as usize).saturating_sub(512);
        println!(
            "note: RLIMIT_NOFILE is {limit}; idle connections capped at {capped} (raise `ulimit -n` for more)"
        );
        plan.idle = capped;
    }
    let run_id = format!("pb{:x}", super::now_micros() & 0xffff_ffff_ffff);
    let prefix = format!("polyport-bench/{}", ulid_like());

    let pp_child = PolyportChild::start().await?;
    let pp = Target {
        name: "polyport",
        addr: pp_child.addr,
        pid: Some(pp_child.pid),
    };
    let mosq = match probe(&args.mosquitto, &run_id).await {
        Ok(addr) => {
            let pids = pids_named("mosquitto");
            Some(Target {
                name: "mosquitto",
                addr,
                pid: if pids.len() == 1 {
                    pids.first().copied()
                } else {
                    None
                },
            })
        }
        Err(e) => {
            println!(
                "Mosquitto not reachable at {}: {e:#}. Running Polyport only (no ratios).",
                args.mosquitto
            );
            None
        }
    };

    println!(
        "polyport bench mqtt: Polyport (`polyport serve` child, pid {}, {}) vs Mosquitto ({})",
        pp_child.pid,
        pp.addr,
        match &mosq {
            Some(m) => format!(
                "{}, pid {}",
                m.addr,
                m.pid.map_or("unknown".into(), |p| p.to_string())
            ),
            None => "not reachable".into(),
        }
    );
    println!(
        "one load generator for both: rumqttc (MQTT 3.1.1, clean sessions) in this process; topic prefix {prefix}/"
    );
    println!("ratio = Polyport / Mosquitto; `better` says which way is better for Polyport.");

    let result = scenarios(&plan, &pp, mosq.as_ref(), &run_id, &prefix).await;
    pp_child.stop().await;
    result?;
    if mosq.is_some() {
        println!(
            "(Polyport acknowledges a QoS 1 PUBLISH only once it is fsync'd to its event log; Mosquitto as configured here keeps messages in memory.)"
        );
    }
    Ok(())
}

async fn scenarios(
    plan: &Plan,
    pp: &Target,
    mosq: Option<&Target>,
    run_id: &str,
    prefix: &str,
) -> anyhow::Result<()> {
    // 1. Memory per idle connection.
    println!();
    println!(
        "idle connections: {} per broker, RSS growth of the broker process",
        plan.idle
    );
    header("");
    if plan.idle > 0 {
        let p = idle_rss(pp, plan.idle, run_id).await?;
        let m = match mosq {
            Some(t) => idle_rss(t, plan.idle, run_id).await.unwrap_or_else(|e| {
                println!("  mosquitto: {e:#}");
                Idle::default()
            }),
            None => Idle::default(),
        };
        num_row(
            "",
            "KiB/conn",
            p.kib_per_conn,
            m.kib_per_conn,
            1,
            Better::Lower,
        );
        num_row(
            "",
            "RSS before KiB",
            p.before.map(|v| v as f64),
            m.before.map(|v| v as f64),
            0,
            Better::Lower,
        );
        num_row(
            "",
            "RSS after KiB",
            p.after.map(|v| v as f64),
            m.after.map(|v| v as f64),
            0,
            Better::Lower,
        );
        text_row(
            "",
            "connected",
            &format!("{}/{}", p.connected, plan.idle),
            mosq.map(|_| format!("{}/{}", m.connected, plan.idle)),
        );
    }

    // 2. Fan-in.
    println!();
    println!(
        "fan-in: {} publishers -> 1 subscriber (wildcard), {}-byte payload, {} msgs at QoS 0, {} at QoS 1",
        plan.publishers, plan.payload, plan.fanin_q0, plan.fanin_q1
    );
    println!(
        "(publishers send as fast as their connection takes it: latencies are under saturation, mostly queueing)"
    );
    header("QoS");
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let total = if qos == QoS::AtMostOnce {
            plan.fanin_q0
        } else {
            plan.fanin_q1
        };
        let load = |t: &Target| Load::fan_in(prefix, t.name, qos, plan, total);
        compare(pp, mosq, load, run_id, plan.quiet).await?;
    }

    // 3. Fan-out.
    println!();
    println!(
        "fan-out: 1 publisher -> {} subscribers, {}-byte payload, {} msgs at each QoS ({} deliveries)",
        plan.subscribers,
        plan.payload,
        plan.fanout,
        plan.fanout * plan.subscribers
    );
    header("QoS");
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let load = |t: &Target| Load::fan_out(prefix, t.name, qos, plan);
        compare(pp, mosq, load, run_id, plan.quiet).await?;
    }
    Ok(())
}

/// Runs one load against Polyport, then Mosquitto, and prints its rows.
async fn compare(
    pp: &Target,
    mosq: Option<&Target>,
    load: impl Fn(&Target) -> Load,
    run_id: &str,
    quiet: Duration,
) -> anyhow::Result<()> {
    let l = load(pp);
    let label = if l.qos == QoS::AtMostOnce { "0" } else { "1" };
    let p = run_load(pp, &l, run_id, quiet).await?;
    let m = match mosq {
        Some(t) => match run_load(t, &load(t), run_id, quiet).await {
            Ok(o) => Some(o),
            Err(e) => {
                println!("  mosquitto QoS {label}: {e:#}");
                None
            }
        },
        None => None,
    };
    num_row(
        label,
        "delivered msgs/s",
        Some(p.rate),
        m.as_ref().map(|m| m.rate),
        0,
        Better::Higher,
    );
    let lat = |o: &Outcome, f: fn(&Summary) -> u64| f(&o.lat) as f64;
    num_row(
        label,
        "p50 µs",
        Some(lat(&p, |s| s.p50)),
        m.as_ref().map(|m| lat(m, |s| s.p50)),
        0,
        Better::Lower,
    );
    num_row(
        label,
        "p99 µs",
        Some(lat(&p, |s| s.p99)),
        m.as_ref().map(|m| lat(m, |s| s.p99)),
        0,
        Better::Lower,
    );
    text_row(
        label,
        "delivered",
        &format!("{}/{}", p.delivered, p.expected),
        m.as_ref()
            .map(|m| format!("{}/{}", m.delivered, m.expected)),
    );
    // A ratio of loss percentages says nothing; the note below says what loss means.
    text_row(
        label,
        "lost %",
        &format!("{:.1}", p.lost_pct()),
        m.as_ref().map(|m| format!("{:.1}", m.lost_pct())),
    );
    for (name, o) in [("polyport", Some(&p)), ("mosquitto", m.as_ref())] {
        let Some(o) = o else { continue };
        if o.delivered < o.expected {
            println!(
                "  note ({name}, QoS {label}): the broker dropped {} of {} deliveries; its msgs/s and latencies cover delivered messages only",
                o.expected - o.delivered,
                o.expected
            );
        }
        if let Some(note) = o.note.as_deref() {
            println!("  note ({name}, QoS {label}): {note}");
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

fn header(first: &str) {
    println!(
        "  {:<4} {:<18} {:>14} {:>14} {:>8}  better",
        first, "metric", "polyport", "mosquitto", "ratio"
    );
}

fn num_row(
    label: &str,
    metric: &str,
    pp: Option<f64>,
    mosq: Option<f64>,
    decimals: usize,
    better: Better,
) {
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.decimals$}"));
    let ratio = match (pp, mosq) {
        (Some(p), Some(m)) if m > 0.0 => format!("{:.2}x", p / m),
        _ => "-".into(),
    };
    let better = match better {
        Better::Higher => "higher",
        Better::Lower => "lower",
    };
    println!(
        "  {:<4} {:<18} {:>14} {:>14} {:>8}  {better}",
        label,
        metric,
        fmt(pp),
        fmt(mosq),
        ratio
    );
}

fn text_row(label: &str, metric: &str, pp: &str, mosq: Option<String>) {
    println!(
        "  {:<4} {:<18} {:>14} {:>14} {:>8}",
        label,
        metric,
        pp,
        mosq.as_deref().unwrap_or("-"),
        ""
    );
}

/// What to publish where, and who listens.
struct Load {
    qos: QoS,
    /// One topic per publisher.
    topics: Vec<String>,
    /// Messages per publisher.
    counts: Vec<usize>,
    filter: String,
    subscribers: usize,
    payload: usize,
}

impl Load {
    fn fan_in(prefix: &str, broker: &str, qos: QoS, plan: &Plan, total: usize) -> Self {
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

    fn fan_out(prefix: &str, broker: &str, qos: QoS, plan: &Plan) -> Self {
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
struct Outcome {
    expected: u64,
    delivered: u64,
    /// Deliveries per second, first publish to last receipt.
    rate: f64,
    lat: Summary,
    note: Option<String>,
}

impl Outcome {
    fn lost_pct(&self) -> f64 {
        self.expected.saturating_sub(self.delivered) as f64 * 100.0 / self.expected.max(1) as f64
    }
}

fn options(addr: SocketAddr, id: String, keep_alive: Duration) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
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
async fn connect(
    addr: SocketAddr,
    id: String,
    keep_alive: Duration,
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let (client, mut el) = options(addr, id, keep_alive);
    match tokio::time::timeout(Duration::from_secs(15), el.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => Ok((client, el)),
        Ok(Ok(other)) => bail!("expected CONNACK, got {other:?}"),
        Ok(Err(e)) => Err(e).context("MQTT connect"),
        Err(_) => bail!("no CONNACK within 15 s"),
    }
}

/// Subscribes and waits for a SUBACK that grants the subscription.
async fn subscribe(
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
async fn probe(addr: &str, run_id: &str) -> anyhow::Result<SocketAddr> {
    let sock = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))?;
    let (client, mut el) = tokio::time::timeout(
        Duration::from_secs(5),
        connect(sock, client_id(run_id), Duration::from_secs(30)),
    )
    .await
    .context("timed out")??;
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
    Ok(sock)
}

/// Runs `f(0..n)` with at most [`CONNECT_CONCURRENCY`] in flight; returns the successes
/// and the first error.
async fn connect_all<T, F, Fut>(n: usize, f: F) -> (Vec<T>, Option<anyhow::Error>)
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
struct SubEnd {
    lat_ns: Vec<u64>,
    error: Option<String>,
    _conn: (AsyncClient, EventLoop),
}

async fn run_load(
    t: &Target,
    load: &Load,
    run_id: &str,
    quiet: Duration,
) -> anyhow::Result<Outcome> {
    let per_sub: usize = load.counts.iter().sum();
    let expected = (per_sub * load.subscribers) as u64;
    let keep_alive = Duration::from_secs(60);
    let (subs, err) = connect_all(load.subscribers, |_| async {
        let (c, mut el) = connect(t.addr, client_id(run_id), keep_alive).await?;
        subscribe(&c, &mut el, &load.filter, load.qos).await?;
        anyhow::Ok((c, el))
    })
    .await;
    if let Some(e) = err {
        bail!("{}: subscriber setup failed: {e:#}", t.name);
    }
    let (pubs, err) = connect_all(load.topics.len(), |_| {
        connect(t.addr, client_id(run_id), keep_alive)
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
async fn publisher_driver(
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
async fn subscriber(
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

#[derive(Default)]
struct Idle {
    connected: usize,
    before: Option<u64>,
    after: Option<u64>,
    kib_per_conn: Option<f64>,
}

/// Opens `n` idle connections and reads the broker's VmRSS before and after.
async fn idle_rss(t: &Target, n: usize, run_id: &str) -> anyhow::Result<Idle> {
    let rss = || t.pid.and_then(vm_rss_kib);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss();
    // A long keep-alive: nothing polls these connections while they sit idle.
    let (conns, err) = connect_all(n, |_| {
        connect(t.addr, client_id(run_id), Duration::from_secs(600))
    })
    .await;
    if let Some(e) = &err {
        println!(
            "  {}: {} of {n} idle connections failed, first: {e:#}",
            t.name,
            n - conns.len()
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss();
    let connected = conns.len();
    drop(conns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kib_per_conn = match (before, after) {
        (Some(b), Some(a)) if connected > 0 => Some(a.saturating_sub(b) as f64 / connected as f64),
        _ => None,
    };
    Ok(Idle {
        connected,
        before,
        after,
        kib_per_conn,
    })
}

/// VmRSS of a process in KiB, from /proc.
fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Pids whose /proc/<pid>/comm is `name`.
fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// Raises the soft RLIMIT_NOFILE to `want` (at most the hard limit); returns the limit
/// now in force.
#[cfg(unix)]
#[allow(unsafe_code)]
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed by exclusive reference.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return want;
    }
    if lim.rlim_cur >= want {
        return lim.rlim_cur;
    }
    let raised = libc::rlimit {
        rlim_cur: want.min(lim.rlim_max),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct passed by shared reference.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        raised.rlim_cur
    } else {
        lim.rlim_cur
    }
}

#[cfg(not(unix))]
fn raise_nofile(want: u64) -> u64 {
    want
}

/// `polyport serve` on ephemeral ports over a throw-away data directory.
struct PolyportChild {
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
    dir: PathBuf,
}

impl PolyportChild {
    async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("polyport-bench-mqtt-{}", ulid_like()));
        std::fs::create_dir_all(&dir)?;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("serve")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .args(["--mqtt", "127.0.0.1:0"])
            // No stray ./polyport.toml or POLYPORT_CONFIG changes what is measured.
            .current_dir(&dir)
            .env_remove("POLYPORT_CONFIG")
            // Warnings (e.g. slow-subscriber drops) would split the tables; the tables
            // report loss themselves. POLYPORT_LOG=warn brings them back.
            .env(
                "POLYPORT_LOG",
                std::env::var("POLYPORT_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting `polyport serve`")?;
        let pid = child.id().context("`polyport serve` has no pid")?;
        let listeners = dir.join("listeners.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(b) = std::fs::read(&listeners)
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b)
                && let Some(a) = v.get("mqtt").and_then(|m| m.as_str())
            {
                break a
                    .parse::<SocketAddr>()
                    .with_context(|| format!("MQTT address {a:?} in listeners.json"))?;
            }
            if let Some(st) = child.try_wait()? {
                bail!("`polyport serve` exited early ({st})");
            }
            if Instant::now() > deadline {
                bail!("`polyport serve` wrote no MQTT listener to listeners.json within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(Self {
            child,
            pid,
            addr,
            dir,
        })
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
