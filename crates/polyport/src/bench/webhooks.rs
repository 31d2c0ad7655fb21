//! Webhook throughput: events published into the durable outbox and delivered, signed,
//! to a local receiver, vs a bare HTTP client posting the same bodies the same way (one
//! ordered stream per endpoint, endpoints in parallel; with `--concurrency N`, N streams
//! per endpoint and endpoints that give up order). `--receiver-delay-ms` plays a slow
//! receiver, where in-order delivery is bounded by its latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use axum::Router;
use axum::routing::post;
use polyport_core::{AuthContext, EventDraft, Origin, Topic};
use serde_json::json;

use super::{TestServer, start_baseline};

pub(crate) async fn run(
    events: usize,
    endpoints: usize,
    concurrency: usize,
    delay: Duration,
) -> anyhow::Result<()> {
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let receiver = Router::new().route(
        "/hook/{n}",
        post(move || {
            let c = counter.clone();
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                c.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let (raddr, rstop) = start_baseline(receiver).await?;
    let body = json!({"specversion": "1.0", "id": "01jbench", "source": "/polyport/bench",
        "type": "polyport.message", "subject": "bench/webhooks", "time": "2026-01-01T00:00:00Z",
        "sequence": 1, "datacontenttype": "application/json", "data": {"n": 1, "pad": "x".repeat(200)}})
    .to_string();

    // Baseline: a bare client, `concurrency` sequential streams per endpoint.
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (e, k) in (0..endpoints).flat_map(|e| (0..concurrency).map(move |k| (e, k))) {
        let (c, b) = (client.clone(), body.clone());
        let url = format!("http://{raddr}/hook/{e}");
        tasks.push(tokio::spawn(async move {
            for _ in (k..events).step_by(concurrency) {
                c.post(&url)
                    .header("content-type", "application/json")
                    .body(b.clone())
                    .send()
                    .await?
                    .error_for_status()?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let base_rate = (events * endpoints) as f64 / started.elapsed().as_secs_f64();
    received.store(0, Ordering::Relaxed);

    // Polyport: publish into the outbox, deliveries signed and sent by the engine.
    let server = TestServer::start().await?;
    let base = format!("http://{}", server.addr);
    let c = reqwest::Client::new();
    for e in 0..endpoints {
        c.post(format!("{base}/api/webhooks/endpoints"))
            .json(
                &json!({"url": format!("http://{raddr}/hook/{e}"), "topics": ["bench/#"],
                "concurrency": concurrency}),
            )
            .send()
            .await?
            .error_for_status()?;
    }
    let ctx = AuthContext::system(Origin("cli"));
    let topic = Topic::new("bench/webhooks")?;
    let started = Instant::now();
    let mut pubs = Vec::new();
    // Enough publishers that filling the outbox (one fsync per group commit) is not what
    // the delivery rate measures.
    const PUBLISHERS: usize = 64;
    for w in 0..PUBLISHERS {
        let (hub, ctx, topic) = (server.hub.clone(), ctx.clone(), topic.clone());
        pubs.push(tokio::spawn(async move {
            for i in (w..events).step_by(PUBLISHERS) {
                let mut d = EventDraft::new(
                    topic.clone(),
                    json!({"n": i, "pad": "x".repeat(200)}).to_string(),
                );
                d.content_type = Some("application/json".into());
                hub.publish(&ctx, d).await?;
            }
            anyhow::Ok(())
        }));
    }
    for p in pubs {
        p.await??;
    }
    let published = started.elapsed();
    let at_published = received.load(Ordering::Relaxed);
    let want = events * endpoints;
    let deadline = Instant::now() + Duration::from_secs(300);
    while received.load(Ordering::Relaxed) < want {
        if Instant::now() > deadline {
            bail!(
                "only {} of {want} deliveries arrived",
                received.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = started.elapsed();
    let pp_rate = want as f64 / total.as_secs_f64();
    let drain_rate = (want - at_published.min(want)) as f64
        / total.saturating_sub(published).as_secs_f64().max(1e-3);
    let how = match (concurrency, delay.as_millis()) {
        (1, 0) => String::new(),
        (c, d) => format!(" answering after {d} ms, {c} deliveries in flight per endpoint"),
    };
    println!(
        "polyport bench webhooks: {events} events × {endpoints} endpoints to a local receiver{how}"
    );
    println!("{:<44} {:>14}", "", "deliveries/s");
    println!(
        "{:<44} {:>14.0}",
        "bare HTTP client (same bodies, same streams)", base_rate
    );
    println!(
        "{:<44} {:>14.0}",
        "polyport (durable outbox, signed, logged)", pp_rate
    );
    println!(
        "{:<44} {:>14.0}",
        "polyport, once every event was published", drain_rate
    );
    println!(
        "ratio polyport/bare: {:.2}x (publishing all events took {} ms, with {at_published} delivered meanwhile; every delivery and attempt is written to disk)",
        pp_rate / base_rate.max(1.0),
        published.as_millis()
    );
    server.stop().await;
    rstop.cancel();
    Ok(())
}
