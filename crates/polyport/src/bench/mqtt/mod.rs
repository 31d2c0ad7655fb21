//! `polyport bench mqtt`: Polyport's MQTT broker vs the Mosquitto broker already running
//! on this machine, driven by one load generator (rumqttc, MQTT 3.1.1, in this process)
//! with the same load, interleaved in one run.
//!
//! Polyport runs as a child process (`polyport serve` on ephemeral ports), not in-process,
//! for every scenario: Mosquitto is its own process too, so neither broker shares a tokio
//! runtime with the load generator, and the child's VmRSS is the broker's alone, which the
//! idle-connection scenario needs.
//!
//! Scenarios (`--only` picks some): `idle` (memory per idle connection), `fanin` (16
//! publishers flooding one wildcard subscriber), `window` (4 publishers kept at most
//! `--window` messages ahead of their subscriber: few publishers, no flood to batch),
//! `steady` (one publisher at `--rate` msgs/s: latency when nothing queues) and `fanout`
//! (1 → 100). Each row also shows the broker process's CPU time per delivered message,
//! from /proc, which is steadier than rates on a shared machine.
//!
//! The idle-connection scenario runs first, while neither broker's heap has been grown and
//! freed by earlier load (reused free memory would hide per-connection growth). Latency is
//! measured from a monotonic timestamp in the first 8 bytes of each payload, so it counts
//! queueing in the client, the kernel and the broker alike for both brokers.

mod idle;
mod load;

use idle::*;
use load::*;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rumqttc::QoS;

use super::child::{PolyportChild, pids_named, raise_nofile};
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
    /// Publishers of the bounded-window fan-in [default: 4].
    #[arg(long)]
    window_publishers: Option<usize>,
    /// Messages the bounded-window publishers may be ahead of their subscriber.
    #[arg(long, default_value_t = 2000)]
    window: usize,
    /// Rate of the fixed-rate latency scenario, msgs/s.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Seconds of the fixed-rate latency scenario [default: 4].
    #[arg(long)]
    rate_secs: Option<f64>,
    /// Idle connections per broker for the memory scenario [default: 2000].
    #[arg(long)]
    idle: Option<usize>,
    /// Small counts (a smoke test); explicit flags still win.
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (repeatable) [default: all].
    #[arg(long, value_enum)]
    only: Vec<Scenario>,
}

/// The scenarios, in the order they run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Memory per idle connection.
    Idle,
    /// Many publishers flooding one subscriber.
    Fanin,
    /// Few publishers kept a bounded window ahead of one subscriber.
    Window,
    /// Latency at a fixed rate.
    Steady,
    /// One publisher to many subscribers.
    Fanout,
}

/// The resolved counts.
struct Plan {
    publishers: usize,
    subscribers: usize,
    fanin_q0: usize,
    fanin_q1: usize,
    fanout: usize,
    payload: usize,
    window_publishers: usize,
    window: usize,
    /// Messages of the bounded-window fan-in.
    window_messages: usize,
    rate: f64,
    rate_messages: usize,
    idle: usize,
    only: Vec<Scenario>,
    /// How long delivery may stall after publishing ends before the rest counts as lost.
    quiet: Duration,
}

impl Plan {
    fn runs(&self, s: Scenario) -> bool {
        self.only.is_empty() || self.only.contains(&s)
    }

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
            window_publishers: a.window_publishers.unwrap_or(4).max(1),
            window: a.window.max(1),
            window_messages: a
                .messages
                .unwrap_or(if q { 20_000 } else { 200_000 })
                .max(1),
            rate: a.rate.max(1.0),
            rate_messages: (a.rate.max(1.0) * a.rate_secs.unwrap_or(if q { 1.0 } else { 4.0 }))
                as usize,
            idle: a.idle.unwrap_or(if q { 200 } else { 2_000 }),
            only: a.only.clone(),
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
    /// User name and password every client of a load signs in with.
    credentials: Option<(String, String)>,
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

    let pp_child = PolyportChild::start("mqtt").await?;
    let pp = Target {
        name: "polyport",
        addr: pp_child.addr,
        pid: Some(pp_child.pid),
        credentials: None,
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
                credentials: None,
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
    if plan.runs(Scenario::Idle) {
        idle_scenario(plan, pp, mosq, run_id).await?;
    }
    if plan.runs(Scenario::Fanin) {
        fan_in_scenario(plan, pp, mosq, run_id, prefix).await?;
    }
    if plan.runs(Scenario::Window) {
        window_scenario(plan, pp, mosq, run_id, prefix).await?;
    }
    if plan.runs(Scenario::Steady) {
        steady_scenario(plan, pp, mosq, run_id, prefix).await?;
    }
    if plan.runs(Scenario::Fanout) {
        fan_out_scenario(plan, pp, mosq, run_id, prefix).await?;
    }
    Ok(())
}

/// Memory per idle connection.
async fn idle_scenario(
    plan: &Plan,
    pp: &Target,
    mosq: Option<&Target>,
    run_id: &str,
) -> anyhow::Result<()> {
    println!();
    println!(
        "idle connections: {} per broker, RSS growth of the broker process (each freshly started)",
        plan.idle
    );
    header("");
    if plan.idle > 0 {
        let p = idle_rss(pp, plan.idle, run_id).await?;
        // A fresh Mosquitto, as Polyport's child is fresh; the shared one if there is
        // no binary to start.
        let fresh = match mosq {
            Some(_) => idle::FreshMosquitto::start(run_id).await.map_err(|e| {
                println!("  (a fresh Mosquitto did not start: {e:#}; measuring the shared one)");
            }),
            None => Err(()),
        };
        let target = fresh.as_ref().map(|f| &f.target).ok().or(mosq);
        let m = match target {
            Some(t) => idle_rss(t, plan.idle, run_id).await.unwrap_or_else(|e| {
                println!("  mosquitto: {e:#}");
                Idle::default()
            }),
            None => Idle::default(),
        };
        if let Ok(f) = fresh {
            f.stop().await;
        }
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

    Ok(())
}

async fn fan_in_scenario(
    plan: &Plan,
    pp: &Target,
    mosq: Option<&Target>,
    run_id: &str,
    prefix: &str,
) -> anyhow::Result<()> {
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

    Ok(())
}

/// Few publishers that wait for their subscriber: the load where batching has the least
/// to work with.
async fn window_scenario(
    plan: &Plan,
    pp: &Target,
    mosq: Option<&Target>,
    run_id: &str,
    prefix: &str,
) -> anyhow::Result<()> {
    println!();
    println!(
        "fan-in, bounded window: {} publishers -> 1 subscriber, at most {} messages ahead of it, {}-byte payload, {} msgs at QoS 0",
        plan.window_publishers, plan.window, plan.payload, plan.window_messages
    );
    header("QoS");
    compare(
        pp,
        mosq,
        |t: &Target| Load::fan_in_window(prefix, t.name, plan),
        run_id,
        plan.quiet,
    )
    .await
}

/// Latency when nothing queues.
async fn steady_scenario(
    plan: &Plan,
    pp: &Target,
    mosq: Option<&Target>,
    run_id: &str,
    prefix: &str,
) -> anyhow::Result<()> {
    println!();
    println!(
        "latency at a fixed rate: 1 publisher -> 1 subscriber, {} msgs/s, {}-byte payload, {} msgs at QoS 0",
        plan.rate, plan.payload, plan.rate_messages
    );
    header("QoS");
    compare(
        pp,
        mosq,
        |t: &Target| Load::steady(prefix, t.name, plan),
        run_id,
        plan.quiet,
    )
    .await
}

async fn fan_out_scenario(
    plan: &Plan,
    pp: &Target,
    mosq: Option<&Target>,
    run_id: &str,
    prefix: &str,
) -> anyhow::Result<()> {
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
    num_row(
        label,
        "CPU µs/msg",
        p.cpu_us_per_msg,
        m.as_ref().and_then(|m| m.cpu_us_per_msg),
        2,
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

/// A QoS 0 fan-in (`publishers` → one wildcard subscriber) against a broker at `addr`,
/// every client signed in with `credentials` (or none): `bench auth`'s MQTT rows.
pub(crate) async fn fan_in_qos0(
    addr: SocketAddr,
    credentials: Option<(String, String)>,
    publishers: usize,
    messages: usize,
) -> anyhow::Result<(f64, Summary, f64)> {
    let plan = Plan {
        publishers: publishers.max(1),
        subscribers: 1,
        fanin_q0: messages.max(1),
        fanin_q1: 0,
        fanout: 0,
        payload: 64,
        window_publishers: 0,
        window: 0,
        window_messages: 0,
        rate: 0.0,
        rate_messages: 0,
        idle: 0,
        only: vec![Scenario::Fanin],
        quiet: Duration::from_secs(3),
    };
    let t = Target {
        name: "polyport",
        addr,
        pid: None,
        credentials,
    };
    let run_id = format!("pa{:x}", super::now_micros() & 0xffff_ffff_ffff);
    let prefix = format!("polyport-bench/{}", ulid_like());
    let load = Load::fan_in(&prefix, "auth", QoS::AtMostOnce, &plan, plan.fanin_q0);
    let o = run_load(&t, &load, &run_id, plan.quiet).await?;
    Ok((o.rate, o.lat, o.lost_pct()))
}
