//! The fanout benchmark: one write, N subscribers, delivery latency p50/p99.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::broadcast;

use super::{Summary, TestServer, chart, now_micros, start_baseline, summarize};

#[derive(clap::Args, Debug)]
pub(crate) struct FanoutArgs {
    /// Subscriber counts to measure (half SSE, half WebSocket).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    subscribers: Vec<usize>,
    /// Writes per run.
    #[arg(long, default_value_t = 20)]
    events: usize,
    /// Pause between writes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    /// Run Polyport only (no baseline, no ratio): for profiling it.
    #[arg(long)]
    polyport_only: bool,
    /// Run the baseline only: for profiling it the same way.
    #[arg(long, conflicts_with = "polyport_only")]
    baseline_only: bool,
    /// Draw p50/p99 latency against subscribers into this SVG file.
    #[arg(long)]
    chart: Option<std::path::PathBuf>,
    /// The WebSocket half subscribes through raw topic sockets (`/ws/topics/…`: each
    /// frame is the payload alone), and the baseline's WebSocket sends the payload alone.
    #[arg(long)]
    raw_ws: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ClientArgs {
    #[arg(long)]
    base: String,
    #[arg(long)]
    polyport: bool,
    #[arg(long)]
    sse: usize,
    #[arg(long)]
    ws: usize,
    /// WebSocket subscribers on raw topic sockets.
    #[arg(long)]
    raw_ws: bool,
    #[arg(long)]
    events: usize,
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

const TOPIC: &str = "bench/fanout";

pub(crate) async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    println!(
        "polyport bench fanout: {} writes per run, half SSE / half {} subscribers",
        args.events,
        if args.raw_ws {
            "raw topic socket (/ws/topics)"
        } else {
            "WebSocket"
        }
    );
    println!(
        "{:>11}  {:<9} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "subscribers", "server", "delivered", "p50 µs", "p99 µs", "max µs", "CPU µs/deliv"
    );
    let mut lines = chart::Series::named([
        "p50 baseline",
        "p50 Polyport",
        "p99 baseline",
        "p99 Polyport",
    ]);
    for &n in &args.subscribers {
        if args.polyport_only || args.baseline_only {
            let (s, cpu) = run_one(args.polyport_only, n, &args).await?;
            let name = if args.polyport_only {
                "polyport"
            } else {
                "baseline"
            };
            println!(
                "{:>11}  {:<9} {:>10} {:>10} {:>10} {:>10} {:>12.2}",
                n, name, s.count, s.p50, s.p99, s.max, cpu
            );
            continue;
        }
        let (base, base_cpu) = run_one(false, n, &args).await?;
        let (pp, pp_cpu) = run_one(true, n, &args).await?;
        for (name, s, cpu) in [("baseline", &base, base_cpu), ("polyport", &pp, pp_cpu)] {
            println!(
                "{:>11}  {:<9} {:>10} {:>10} {:>10} {:>10} {:>12.2}",
                n, name, s.count, s.p50, s.p99, s.max, cpu
            );
        }
        println!(
            "{:>11}  ratio polyport/baseline: p50 {:.2}x, p99 {:.2}x, server CPU {:.2}x (lower is better)",
            n,
            pp.p50 as f64 / base.p50.max(1) as f64,
            pp.p99 as f64 / base.p99.max(1) as f64,
            pp_cpu / base_cpu.max(1e-9)
        );
        let ms = |us: u64| us as f64 / 1000.0;
        for (line, y) in lines
            .iter_mut()
            .zip([base.p50, pp.p50, base.p99, pp.p99].map(ms))
        {
            line.points.push((n as f64, y));
        }
    }
    if let (Some(path), false) = (&args.chart, args.polyport_only || args.baseline_only) {
        chart::Chart {
            title: "One write fanned out: latency by subscribers (Polyport vs axum + broadcast)",
            x: "subscribers (half SSE, half WebSocket)",
            y: "write-to-delivery latency, ms",
            log_x: false,
            legend: plotters::prelude::SeriesLabelPosition::UpperLeft,
            series: lines.into(),
        }
        .write_svg(path)?;
    }
    println!(
        "(baseline: bare axum SSE/WebSocket over tokio::sync::broadcast, no storage; Polyport's write is durable before it fans out.)"
    );
    Ok(())
}

/// One run: the clients' latency summary, and the server's CPU time per delivery (this
/// process's, while the writes are published and delivered: the server runs in it, the
/// clients do not).
async fn run_one(polyport: bool, n: usize, args: &FanoutArgs) -> anyhow::Result<(Summary, f64)> {
    let (base, publish_url, stopper): (
        String,
        String,
        Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()>>,
    ) = if polyport {
        let s = TestServer::start().await?;
        let base = format!("http://{}", s.addr);
        let url = format!("{base}/api/topics/{TOPIC}");
        (base, url, Box::new(move || Box::pin(s.stop())))
    } else {
        let (tx, _) = broadcast::channel::<Published>(1024);
        let app = Router::new()
            .route("/sse", get(baseline_sse))
            .route("/ws", get(baseline_ws))
            .route("/ws/raw", get(baseline_raw_ws))
            .route("/publish", post(baseline_publish))
            .with_state(tx);
        let (addr, stop) = start_baseline(app).await?;
        let base = format!("http://{addr}");
        let url = format!("{base}/publish");
        (
            base,
            url,
            Box::new(move || Box::pin(async move { stop.cancel() })),
        )
    };
    let exe = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args([
        "bench",
        "fanout-clients",
        "--base",
        &base,
        "--sse",
        &(n / 2).to_string(),
        "--ws",
        &(n - n / 2).to_string(),
        "--events",
        &args.events.to_string(),
    ]);
    if polyport {
        cmd.arg("--polyport");
    }
    if args.raw_ws {
        cmd.arg("--raw-ws");
    }
    cmd.stdout(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().context("starting the client process")?;
    let stdout = child.stdout.take().context("client stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    match tokio::time::timeout(Duration::from_secs(180), lines.next_line()).await {
        Ok(Ok(Some(l))) if l == "ready" => {}
        other => bail!("client process did not get ready: {other:?}"),
    }
    let cpu_before = super::child::cpu_secs(std::process::id());
    let client = reqwest::Client::new();
    for _ in 0..args.events {
        let body = format!("{{\"t\":{}}}", now_micros());
        let r = client
            .post(&publish_url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("publish failed: {}", r.status());
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    let summary = match tokio::time::timeout(Duration::from_secs(180), lines.next_line()).await {
        Ok(Ok(Some(l))) => serde_json::from_str::<Summary>(&l).context("client summary")?,
        other => bail!("client process gave no summary: {other:?}"),
    };
    let cpu_after = super::child::cpu_secs(std::process::id());
    let cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => (a - b) * 1e6 / summary.count.max(1) as f64,
        _ => 0.0,
    };
    let _ = child.wait().await;
    stopper().await;
    Ok((summary, cpu))
}

/// The baseline broadcasts what Polyport sends for the same write, a CloudEvent of the
/// same shape and size, so both runs give the clients the same bytes to read and parse:
/// the ratio then compares the servers, not the payloads.
async fn baseline_publish(
    State(tx): State<broadcast::Sender<Published>>,
    body: Bytes,
) -> &'static str {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let data: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let event = serde_json::json!({
        "specversion": "1.0", "id": super::ulid_like(), "source": "/polyport/http",
        "type": "polyport.message", "subject": TOPIC,
        "time": chrono_free_now(), "sequence": seq,
        "datacontenttype": "application/json", "data": data,
    });
    let _ = tx.send(Published {
        event: Bytes::from(event.to_string()),
        payload: body,
    });
    "ok"
}

/// One write as the baseline broadcasts it: the CloudEvent (SSE, `/ws`) and the payload
/// alone (raw topic sockets).
#[derive(Clone)]
struct Published {
    event: Bytes,
    payload: Bytes,
}

/// An RFC 3339 timestamp's length and shape, for the baseline's event.
fn chrono_free_now() -> String {
    let us = now_micros();
    format!(
        "2026-01-01T00:00:{:02}.{:06}Z",
        (us / 1_000_000) % 60,
        us % 1_000_000
    )
}

async fn baseline_sse(
    State(tx): State<broadcast::Sender<Published>>,
) -> Sse<impl futures::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let rx = tx.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(p) => {
                    let ev = Event::default().data(String::from_utf8_lossy(&p.event));
                    return Some((Ok(ev), rx));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    });
    Sse::new(stream)
}

async fn baseline_ws(
    State(tx): State<broadcast::Sender<Published>>,
    ws: WebSocketUpgrade,
) -> axum::response::Response {
    // The envelope Polyport's /ws puts around each event.
    relay(ws, tx.subscribe(), |p| {
        format!(
            "{{\"type\":\"event\",\"subscription\":\"s1\",\"event\":{}}}",
            String::from_utf8_lossy(&p.event)
        )
    })
}

/// What a raw topic socket sends: each payload alone, as a text frame.
async fn baseline_raw_ws(
    State(tx): State<broadcast::Sender<Published>>,
    ws: WebSocketUpgrade,
) -> axum::response::Response {
    relay(ws, tx.subscribe(), |p| {
        String::from_utf8_lossy(&p.payload).into_owned()
    })
}

/// Sends each broadcast write as the text frame `frame` makes of it.
fn relay(
    ws: WebSocketUpgrade,
    mut rx: broadcast::Receiver<Published>,
    frame: fn(&Published) -> String,
) -> axum::response::Response {
    ws.on_upgrade(move |mut socket| async move {
        loop {
            match rx.recv().await {
                Ok(p) => {
                    if socket.send(Message::Text(frame(&p).into())).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
    })
}

/// Finds the publish timestamp in whichever envelope the server used.
fn stamp(text: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("t")
        .or_else(|| v.get("data").and_then(|d| d.get("t")))
        .or_else(|| {
            v.get("event")
                .and_then(|e| e.get("data"))
                .and_then(|d| d.get("t"))
        })
        .and_then(|t| t.as_u64())
}

pub(crate) async fn clients(args: ClientArgs) -> anyhow::Result<()> {
    let lat = Arc::new(parking_lot_free::Lat::default());
    let mut ready = Vec::new();
    let mut tasks = Vec::new();
    let connect_limit = Arc::new(tokio::sync::Semaphore::new(256));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    for i in 0..(args.sse + args.ws) {
        let (rtx, rrx) = tokio::sync::oneshot::channel::<()>();
        ready.push(rrx);
        let lat = lat.clone();
        let base = args.base.clone();
        let limit = connect_limit.clone();
        let events = args.events;
        let polyport = args.polyport;
        let raw = args.raw_ws;
        let http = http.clone();
        let sse = i < args.sse;
        tasks.push(tokio::spawn(async move {
            let permit = limit.acquire_owned().await;
            if sse {
                let url = if polyport {
                    format!("{base}/api/events?topic={TOPIC}")
                } else {
                    format!("{base}/sse")
                };
                let res = http.get(url).send().await?;
                drop(permit);
                let _ = rtx.send(());
                let mut stream = res.bytes_stream();
                let mut buf = Vec::new();
                let mut got = 0;
                while got < events {
                    let Some(chunk) = stream.next().await else {
                        break;
                    };
                    buf.extend_from_slice(&chunk?);
                    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        let line = String::from_utf8_lossy(&line);
                        if let Some(data) = line.strip_prefix("data:")
                            && let Some(t) = stamp(data.trim())
                        {
                            lat.push(now_micros().saturating_sub(t));
                            got += 1;
                        }
                    }
                }
            } else {
                let ws_base = base.replacen("http", "ws", 1);
                let url = match (raw, polyport) {
                    (false, _) => format!("{ws_base}/ws"),
                    (true, true) => format!("{ws_base}/ws/topics/{TOPIC}"),
                    (true, false) => format!("{ws_base}/ws/raw"),
                };
                // tungstenite zero-fills its read buffer before each read (128 KiB by
                // default): for 10k clients that memset took most of this process's CPU,
                // which it shares with the server being measured.
                let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .read_buffer_size(4096);
                let (mut ws, _) =
                    tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
                if polyport && !raw {
                    ws.send(tokio_tungstenite::tungstenite::Message::Text(
                        format!("{{\"id\":1,\"op\":\"subscribe\",\"topic\":\"{TOPIC}\"}}").into(),
                    ))
                    .await?;
                    // Wait for the subscribe acknowledgement.
                    while let Some(m) = ws.next().await {
                        if let tokio_tungstenite::tungstenite::Message::Text(t) = m?
                            && t.contains("\"ok\"")
                        {
                            break;
                        }
                    }
                }
                drop(permit);
                let _ = rtx.send(());
                let mut got = 0;
                while got < events {
                    let Some(m) = ws.next().await else { break };
                    if let tokio_tungstenite::tungstenite::Message::Text(t) = m?
                        && let Some(ts) = stamp(&t)
                    {
                        lat.push(now_micros().saturating_sub(ts));
                        got += 1;
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for r in ready {
        let _ = r.await;
    }
    // The server side may still be registering the last subscription.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("ready");
    let deadline = Duration::from_secs(args.timeout);
    let _ = tokio::time::timeout(deadline, futures::future::join_all(tasks)).await;
    let s = summarize(lat.take());
    println!("{}", serde_json::to_string(&s)?);
    Ok(())
}

mod parking_lot_free {
    //! A latency sink shared by thousands of client tasks.
    use std::sync::Mutex;

    #[derive(Default)]
    pub(crate) struct Lat(Mutex<Vec<u64>>);

    impl Lat {
        pub(crate) fn push(&self, v: u64) {
            if let Ok(mut g) = self.0.lock() {
                g.push(v);
            }
        }
        pub(crate) fn take(&self) -> Vec<u64> {
            self.0
                .lock()
                .map(|mut g| std::mem::take(&mut *g))
                .unwrap_or_default()
        }
    }
}
