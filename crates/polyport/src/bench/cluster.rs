//! `polyport bench cluster`: what the cluster engine costs against the embedded one, on
//! the same load in one run: REST `POST` (a durable create) and `GET` by id through one
//! embedded server, one cluster node and three cluster nodes on one PostgreSQL schema
//! (requests spread over the three), then the way of one write to a subscriber: on the
//! embedded engine the writer's own node, on the cluster another node; then a named
//! group with an acknowledging member on each of three nodes draining a backlog, where
//! two of the three members are fed over NATS by the node running the group, against
//! the same group with its three members on one embedded server.
//!
//! On one machine the three nodes share its cores and its disk with Postgres: this shows
//! the engine's cost, not scaling.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use polyport_core::{AuthContext, Item, Origin, SubscribeRequest, TopicFilter};

use super::{Summary, TestServer, load, summarize};

#[derive(clap::Args, Debug)]
pub(crate) struct ClusterArgs {
    /// Seconds per scenario.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Concurrent client connections (a list runs each).
    #[arg(long, value_delimiter = ',', default_value = "8,64")]
    connections: Vec<usize>,
    /// The PostgreSQL database the cluster nodes use (fresh schemas, dropped after).
    #[arg(
        long,
        env = "POLYPORT_BENCH_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1/test"
    )]
    postgres: String,
    /// Writes timed on their way to a subscriber.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// The NATS server the three nodes' groups meet on (`--bus`).
    #[arg(
        long,
        env = "POLYPORT_BENCH_NATS",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats: String,
    /// Events in the backlog a group drains.
    #[arg(long, default_value_t = 20_000)]
    backlog: usize,
}

/// A deployment under test: its nodes' base URLs.
struct Deployment {
    name: &'static str,
    urls: Vec<String>,
}

pub(super) fn schema() -> String {
    format!(
        "bench_{}",
        polyport_core::record::new_id().to_ascii_lowercase()
    )
}

pub(crate) async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.duration);
    let (one_schema, three_schema) = (schema(), schema());
    let pg = args.postgres.as_str();
    let embedded = TestServer::start().await?;
    let one = TestServer::start_on(Some((pg, &one_schema)))
        .await
        .with_context(|| format!("a cluster node on {pg}"))?;
    let mut three = Vec::new();
    for _ in 0..3 {
        three.push(TestServer::start_on(Some((pg, &three_schema))).await?);
    }
    let url = |s: &TestServer| format!("http://{}", s.addr);
    let deployments = [
        Deployment {
            name: "embedded",
            urls: vec![url(&embedded)],
        },
        Deployment {
            name: "1 node",
            urls: vec![url(&one)],
        },
        Deployment {
            name: "3 nodes",
            urls: three.iter().map(url).collect(),
        },
    ];
    let client = reqwest::Client::new();
    for d in &deployments {
        let r = client
            .post(format!("{}/api/collections/bench/records", d.urls[0]))
            .json(&serde_json::json!({"id": "r1", "title": "hello", "views": 1}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("seeding {}: {}", d.name, r.status());
        }
    }
    println!(
        "polyport bench cluster: {}s per scenario, connections {:?}; cluster nodes on {pg}",
        duration.as_secs(),
        args.connections
    );
    println!(
        "{:<16} {:>10} {:>18} {:>18}   {:>22}   {:>22}",
        "scenario",
        "embedded/s",
        "1 node/s (ratio)",
        "3 nodes/s (ratio)",
        "p50 µs emb/1/3",
        "p99 µs emb/1/3"
    );
    for &conns in &args.connections {
        for (what, op) in [
            ("POST create", Op::Create),
            ("POST publish", Op::Publish),
            ("GET by id", Op::Get),
        ] {
            let mut results: Vec<(f64, Summary)> = Vec::new();
            for d in &deployments {
                results.push(rest(duration, conns, &d.urls, op).await?);
            }
            let (e, o, t) = (results[0], results[1], results[2]);
            println!(
                "{:<16} {:>10.0} {:>10.0} ({:>4.2}x) {:>10.0} ({:>4.2}x)   {:>6}/{:>6}/{:>6}   {:>6}/{:>6}/{:>6}",
                format!("{what} {conns:>3}"),
                e.0,
                o.0,
                o.0 / e.0.max(1.0),
                t.0,
                t.0 / e.0.max(1.0),
                e.1.p50,
                o.1.p50,
                t.1.p50,
                e.1.p99,
                o.1.p99,
                t.1.p99,
            );
        }
    }
    let same = to_subscriber(&embedded, &embedded, args.samples).await?;
    let across = to_subscriber(&three[0], &three[1], args.samples).await?;
    println!(
        "write -> subscriber  embedded (same node) p50 {} µs p99 {} µs; cluster (other node) p50 {} µs p99 {} µs ({:.2}x / {:.2}x)",
        same.p50,
        same.p99,
        across.p50,
        across.p99,
        across.p50 as f64 / same.p50.max(1) as f64,
        across.p99 as f64 / same.p99.max(1) as f64,
    );
    // Groups: linked only now, before the first named group.
    let mut bus = polyport_cluster::ClusterConfig::new(args.nats.clone());
    bus.bucket = format!(
        "bench-{}",
        polyport_core::record::new_id().to_ascii_lowercase()
    );
    for s in &three {
        polyport_cluster::link_groups(&bus, &s.hub)
            .await
            .with_context(|| format!("NATS at {}", args.nats))?;
    }
    let embedded_members = [&embedded, &embedded, &embedded];
    let cluster_members = [&three[0], &three[1], &three[2]];
    for prefetch in [1, 64] {
        let (e, _) = drain(&embedded_members, args.backlog, prefetch).await?;
        let (c, shares) = drain(&cluster_members, args.backlog, prefetch).await?;
        println!(
            "group drain, 3 members, prefetch {prefetch:>2}: embedded {e:.0}/s; 3 nodes {c:.0}/s ({:.2}x; taken by the member on the group's node / the two remote: {:?})",
            c / e.max(1.0),
            shares
        );
    }
    let engine = super::cluster_brokers::Engine {
        postgres: &args.postgres,
        nats: &args.nats,
    };
    let broker_schemas = super::cluster_brokers::run(&engine).await?;
    println!(
        "(every write is durable on both engines: an fsync'd SQLite group commit, or a Postgres commit; one machine runs all nodes and Postgres)"
    );
    embedded.stop().await;
    one.stop().await;
    for s in three {
        s.stop().await;
    }
    forget_bucket(&args.nats, &bus.bucket).await;
    for s in [one_schema, three_schema].into_iter().chain(broker_schemas) {
        let url = args.postgres.clone();
        tokio::task::spawn_blocking(move || polyport_store::pg::drop_schema(&url, &s)).await??;
    }
    Ok(())
}

/// Deletes a finished deployment's NATS bucket and log stream.
pub(super) async fn forget_bucket(nats: &str, bucket: &str) {
    let mut cfg = polyport_cluster::ClusterConfig::new(nats.to_string());
    cfg.bucket = bucket.to_string();
    if let Err(e) = polyport_cluster::forget_deployment(&cfg).await {
        eprintln!("bench cluster: leaving NATS bucket {bucket}: {e}");
    }
}

/// What a REST scenario sends.
#[derive(Clone, Copy)]
enum Op {
    /// A record created (a row and its event).
    Create,
    /// A durable topic publish (an event only: what MQTT, AMQP and STOMP publishes cost).
    Publish,
    Get,
}

/// Closed-loop REST load spread over `urls` round-robin.
async fn rest(
    duration: Duration,
    conns: usize,
    urls: &[String],
    op: Op,
) -> anyhow::Result<(f64, Summary)> {
    let targets: Arc<Vec<String>> = Arc::new(
        urls.iter()
            .map(|u| match op {
                Op::Create => format!("{u}/api/collections/bench/records"),
                Op::Publish => format!("{u}/api/topics/bench/readings"),
                Op::Get => format!("{u}/api/collections/bench/records/r1"),
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let payload = serde_json::json!({"title": "bench", "views": 3}).to_string();
    load(duration, conns, move |c: reqwest::Client| {
        let i = next.fetch_add(1, Ordering::Relaxed) % targets.len();
        let url = targets[i].clone();
        let payload = payload.clone();
        async move {
            let r = match op {
                Op::Create | Op::Publish => {
                    c.post(&url)
                        .header("content-type", "application/json")
                        .body(payload)
                        .send()
                        .await?
                }
                Op::Get => c.get(&url).send().await?,
            };
            if !r.status().is_success() {
                bail!("unexpected status {}", r.status());
            }
            Ok(())
        }
    })
    .await
}

/// Times `samples` writes through `writer`'s REST face until `reader`'s subscriber
/// has each.
async fn to_subscriber(
    writer: &TestServer,
    reader: &TestServer,
    samples: usize,
) -> anyhow::Result<Summary> {
    let ctx = AuthContext::system(Origin("bench"));
    let mut sub = reader
        .hub
        .subscribe(
            &ctx,
            SubscribeRequest {
                filters: vec![TopicFilter::new("collections/latency/#")?],
                ..SubscribeRequest::default()
            },
        )
        .await?;
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/collections/latency/records", writer.addr);
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        let r = client
            .post(&url)
            .json(&serde_json::json!({ "i": i }))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("write {i}: {}", r.status());
        }
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(Some(Ok(Item::Event(_)))) => lat.push(t.elapsed().as_micros() as u64),
            other => bail!("write {i} did not reach the subscriber: {other:?}"),
        }
    }
    Ok(summarize(lat))
}

/// Publishes `backlog` durable events through the first node, then times a named group
/// with one acknowledging member on each of `nodes` (the first joins first, so its node
/// runs the group) until every event is acknowledged; events per second, and how many
/// each member took.
async fn drain(
    nodes: &[&TestServer],
    backlog: usize,
    prefetch: usize,
) -> anyhow::Result<(f64, Vec<usize>)> {
    let ctx = AuthContext::system(Origin("bench"));
    let run = polyport_core::record::new_id().to_ascii_lowercase();
    let topic = format!("bench/group/{run}");
    let head = nodes[0].hub.log_state().last_seq;
    let publishers = 32;
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let hub = nodes[0].hub.clone();
        let (ctx, topic) = (ctx.clone(), polyport_core::Topic::new(&topic)?);
        tasks.push(tokio::spawn(async move {
            for _ in (p..backlog).step_by(publishers) {
                let d = polyport_core::EventDraft::new(topic.clone(), &b"0123456789abcdef"[..]);
                hub.publish(&ctx, d).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let req = SubscribeRequest {
        filters: vec![TopicFilter::new(&topic)?],
        since: Some(head),
        group: Some(format!("drain-{run}")),
        ack: Some(polyport_core::AckPolicy {
            prefetch,
            ack_timeout: Duration::from_secs(60),
        }),
        ..SubscribeRequest::default()
    };
    let done = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(tokio::sync::Notify::new());
    let started = Instant::now();
    let mut members = Vec::new();
    for n in nodes {
        let mut sub = n.hub.subscribe(&ctx, req.clone()).await?;
        let (done, all) = (done.clone(), all.clone());
        let mine = Arc::new(AtomicUsize::new(0));
        let counted = mine.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(Item::Event(d))) = sub.next().await {
                if let Some(seq) = d.event.seq {
                    sub.ack(seq);
                }
                counted.fetch_add(1, Ordering::Relaxed);
                if done.fetch_add(1, Ordering::Relaxed) + 1 >= backlog {
                    all.notify_one();
                }
            }
        });
        members.push((task, mine));
    }
    let finished = all.notified();
    if done.load(Ordering::Relaxed) < backlog
        && tokio::time::timeout(Duration::from_secs(120), finished)
            .await
            .is_err()
    {
        bail!(
            "the group delivered {} of {backlog} events in 120 s",
            done.load(Ordering::Relaxed)
        );
    }
    let rate = backlog as f64 / started.elapsed().as_secs_f64();
    let shares = members
        .into_iter()
        .map(|(task, n)| {
            task.abort();
            n.load(Ordering::Relaxed)
        })
        .collect();
    Ok((rate, shares))
}
