//! `polyport bench amqp`: Polyport's AMQP broker and the local RabbitMQ under the same
//! lapin load in one run, printed as ratios (Polyport ÷ RabbitMQ; > 1 is better for
//! throughput, < 1 for latency).
//!
//! Shapes: publish → consume with auto-ack (1×1 and 4×4 clients), manual acks with
//! publisher confirms, persistent messages to a durable queue (1 and 4 publishers, each
//! with a consumer), fanout to 10 queues, and latency at a fixed rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use super::child::PolyportChild;
use super::peer::{Figure, against_rabbitmq, print_row};
use super::{summarize, ulid_like};

#[derive(clap::Args, Debug)]
pub(crate) struct AmqpArgs {
    /// The peer broker to compare with.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    rabbitmq: String,
    /// Messages per throughput scenario (fewer make a run of well under a second,
    /// whose ratio is mostly noise).
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages per second for the latency scenario (run for 3 s).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Idle connections for the memory scenario (0: skip it). Opened one by one with
    /// lapin; a few hundred is what it handles quickly.
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Run only the scenarios whose name contains this (e.g. `persistent`).
    #[arg(long)]
    only: Option<String>,
    /// Times Polyport and RabbitMQ take turns at each scenario; the row shows the medians.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Publishes a confirming publisher sends before it waits for their confirms.
    #[arg(long, default_value_t = 256)]
    window: usize,
}

pub(crate) async fn run(args: AmqpArgs) -> anyhow::Result<()> {
    // One queue's messages are memory-only on Polyport, as RabbitMQ keeps transient ones.
    let config = format!("[events]\nephemeral_topics = [\"amqp/q/{MEMORY_QUEUE}\"]\n");
    let child = PolyportChild::start_with("amqp", &config).await?;
    let pp = format!("amqp://guest:guest@{}/%2f", child.addr);
    let rabbit_up = Connection::connect(&args.rabbitmq, ConnectionProperties::default())
        .await
        .is_ok();
    if !rabbit_up {
        println!(
            "RabbitMQ not reachable at {}: Polyport figures only",
            args.rabbitmq
        );
    }
    let scenarios: [(&str, Scenario); 8] = [
        (
            "auto-ack, 1 publisher → 1 consumer",
            Scenario::AutoAck { clients: 1 },
        ),
        (
            "auto-ack, 4 publishers → 4 consumers",
            Scenario::AutoAck { clients: 4 },
        ),
        (
            "manual ack + confirms",
            Scenario::Confirmed {
                persistent: false,
                clients: 1,
            },
        ),
        (
            "persistent → durable queue, confirms",
            Scenario::Confirmed {
                persistent: true,
                clients: 1,
            },
        ),
        (
            "persistent + confirms, 4 publishers",
            Scenario::Confirmed {
                persistent: true,
                clients: 4,
            },
        ),
        (
            "fanout to 10 queues (deliveries/s)",
            Scenario::Fanout { queues: 10 },
        ),
        (
            "latency, transient message, p50 / p99 µs",
            Scenario::Latency { memory: false },
        ),
        (
            "latency, memory-only topic, p50 / p99 µs",
            Scenario::Latency { memory: true },
        ),
    ];
    println!(
        "confirming publishers wait for their confirms every {} publishes (--window)",
        args.window.max(1)
    );
    let scenarios: Vec<_> = scenarios
        .into_iter()
        .filter(|(name, _)| args.only.as_deref().is_none_or(|o| name.contains(o)))
        .collect();
    against_rabbitmq(&child, rabbit_up, args.rounds, &scenarios, |s, peer| {
        let uri = if peer {
            args.rabbitmq.clone()
        } else {
            pp.clone()
        };
        let args = &args;
        async move { s.run(&uri, args).await }
    })
    .await?;
    println!(
        "(a transient message is written to Polyport's event log before it is delivered, so it\n \
         survives a crash of the process; RabbitMQ keeps it in memory. The memory-only row puts\n \
         its queue's topic in Polyport's `events.ephemeral_topics`, RabbitMQ's semantics.)"
    );
    if args.idle > 0 {
        super::child::raise_nofile(args.idle as u64 + 1024);
        let name = format!("memory per idle connection ({}), KiB", args.idle);
        let a = idle(&pp, Some(child.pid), args.idle).await?;
        let rabbit_pid = super::child::pids_named("beam.smp").into_iter().next();
        let b = match rabbit_up {
            true => Some(idle(&args.rabbitmq, rabbit_pid, args.idle).await?),
            false => None,
        };
        print_row(&name, &a, b.as_ref());
    }
    child.stop().await;
    Ok(())
}

/// `bench cluster`'s AMQP row: persistent messages into a durable queue with publisher
/// confirms, one publisher and one manual-ack consumer on `uri`; messages/s.
pub(crate) async fn persistent_confirmed(uri: &str, messages: usize) -> anyhow::Result<f64> {
    let a = AmqpArgs {
        rabbitmq: String::new(),
        messages,
        size: 64,
        rate: 1000,
        idle: 0,
        only: None,
        rounds: 1,
        window: 256,
    };
    match (Scenario::Confirmed {
        persistent: true,
        clients: 1,
    })
    .run(uri, &a)
    .await?
    {
        Figure::Rate(r) => Ok(r),
        _ => anyhow::bail!("the confirmed scenario measures a rate"),
    }
}

/// The queue of the memory-only latency row (a fixed name: `ephemeral_topics` names it).
const MEMORY_QUEUE: &str = "polyport-bench-memory-only";

#[derive(Clone, Copy)]
enum Scenario {
    AutoAck {
        clients: usize,
    },
    /// Manual acks and publisher confirms (in windows of `--window`) on one queue.
    Confirmed {
        persistent: bool,
        clients: usize,
    },
    Fanout {
        queues: usize,
    },
    Latency {
        memory: bool,
    },
}

async fn connect(uri: &str) -> anyhow::Result<(Connection, Channel)> {
    let c = Connection::connect(uri, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to {uri}"))?;
    let ch = c.create_channel().await?;
    Ok((c, ch))
}

async fn declare(ch: &Channel, name: &str, durable: bool) -> anyhow::Result<()> {
    let opts = QueueDeclareOptions {
        durable,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(name.into(), opts, FieldTable::default())
        .await?;
    Ok(())
}

/// Consumes until `want` messages arrived (or 60 s passed); returns how many.
async fn consume(
    uri: String,
    queue: String,
    want: usize,
    manual: bool,
    got: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let (_c, ch) = connect(&uri).await?;
    if manual {
        ch.basic_qos(256, BasicQosOptions::default()).await?;
    }
    let opts = BasicConsumeOptions {
        no_ack: !manual,
        ..BasicConsumeOptions::default()
    };
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            opts,
            FieldTable::default(),
        )
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.load(Ordering::Relaxed) < want {
        let next = tokio::time::timeout_at(deadline, consumer.next()).await;
        let Ok(Some(Ok(d))) = next else { break };
        if manual {
            d.ack(BasicAckOptions::default()).await?;
        }
        got.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

async fn publish(
    uri: String,
    exchange: String,
    key: String,
    n: usize,
    size: usize,
    confirms: Option<usize>,
    persistent: bool,
) -> anyhow::Result<()> {
    let (_c, ch) = connect(&uri).await?;
    if confirms.is_some() {
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
    }
    let body = vec![b'x'; size];
    let props = match persistent {
        true => BasicProperties::default().with_delivery_mode(2),
        false => BasicProperties::default(),
    };
    let mut pending = Vec::new();
    for i in 0..n {
        let c = ch
            .basic_publish(
                exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            )
            .await?;
        if let Some(window) = confirms {
            pending.push(c);
            if pending.len() >= window || i + 1 == n {
                for c in pending.drain(..) {
                    c.await?;
                }
            }
        }
    }
    if confirms.is_none() {
        // A round trip after the last publish: everything before it was handed over.
        ch.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    }
    Ok(())
}

fn run_id() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default();
    format!("bench-{}-{t}", ulid_like())
}

impl Scenario {
    async fn run(self, uri: &str, a: &AmqpArgs) -> anyhow::Result<Figure> {
        let id = run_id();
        let (_c, ch) = connect(uri).await?;
        let figure = match self {
            Scenario::AutoAck { clients } => {
                let q = format!("{id}-q");
                declare(&ch, &q, false).await?;
                let r = self.flow(uri, &q, "", &q, clients, a, false, false).await?;
                ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await?;
                r
            }
            Scenario::Confirmed {
                persistent,
                clients,
            } => {
                let q = format!("{id}-q");
                declare(&ch, &q, persistent).await?;
                let r = self
                    .flow(uri, &q, "", &q, clients, a, true, persistent)
                    .await?;
                ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await?;
                r
            }
            Scenario::Fanout { queues } => {
                let x = format!("{id}-x");
                ch.exchange_declare(
                    x.as_str().into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await?;
                let names: Vec<String> = (0..queues).map(|i| format!("{id}-q{i}")).collect();
                for q in &names {
                    declare(&ch, q, false).await?;
                    ch.queue_bind(
                        q.as_str().into(),
                        x.as_str().into(),
                        "".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                }
                let n = a.messages / queues;
                let got = Arc::new(AtomicUsize::new(0));
                let consumers: Vec<_> = names
                    .iter()
                    .map(|q| {
                        tokio::spawn(consume(
                            uri.to_string(),
                            q.clone(),
                            usize::MAX,
                            false,
                            got.clone(),
                        ))
                    })
                    .collect();
                tokio::time::sleep(Duration::from_millis(200)).await;
                let started = Instant::now();
                publish(
                    uri.to_string(),
                    x.clone(),
                    String::new(),
                    n,
                    a.size,
                    None,
                    false,
                )
                .await?;
                let want = n * queues;
                wait_for(&got, want).await;
                let secs = started.elapsed().as_secs_f64();
                for c in consumers {
                    c.abort();
                }
                for q in &names {
                    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await?;
                }
                Figure::Rate(got.load(Ordering::Relaxed) as f64 / secs)
            }
            Scenario::Latency { memory } => {
                let q = match memory {
                    true => MEMORY_QUEUE.to_string(),
                    false => format!("{id}-q"),
                };
                declare(&ch, &q, false).await?;
                let r = latency(uri, &q, a).await?;
                ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await?;
                r
            }
        };
        Ok(figure)
    }

    /// `clients` publishers share `a.messages` to `exchange`/`key`; as many consumers
    /// read `queue`. The rate is messages received per second from the first publish.
    #[allow(clippy::too_many_arguments)]
    async fn flow(
        self,
        uri: &str,
        queue: &str,
        exchange: &str,
        key: &str,
        clients: usize,
        a: &AmqpArgs,
        manual: bool,
        persistent: bool,
    ) -> anyhow::Result<Figure> {
        let per = a.messages / clients;
        let want = per * clients;
        let got = Arc::new(AtomicUsize::new(0));
        let consumers: Vec<_> = (0..clients)
            .map(|_| {
                tokio::spawn(consume(
                    uri.to_string(),
                    queue.to_string(),
                    want,
                    manual,
                    got.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let publishers: Vec<_> = (0..clients)
            .map(|_| {
                tokio::spawn(publish(
                    uri.to_string(),
                    exchange.to_string(),
                    key.to_string(),
                    per,
                    a.size,
                    manual.then_some(a.window),
                    persistent,
                ))
            })
            .collect();
        for p in publishers {
            p.await??;
        }
        wait_for(&got, want).await;
        let secs = started.elapsed().as_secs_f64();
        for c in consumers {
            c.abort();
        }
        let n = got.load(Ordering::Relaxed);
        if n < want {
            println!("  (only {n} of {want} messages arrived within 60 s)");
        }
        Ok(Figure::Rate(n as f64 / secs))
    }
}

/// Opens `n` idle connections (one channel each) and reads how much the broker's
/// resident memory grew.
async fn idle(uri: &str, pid: Option<u32>, n: usize) -> anyhow::Result<Figure> {
    let rss = || pid.and_then(super::child::vm_rss_kib);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss();
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        match connect(uri).await {
            Ok(c) => conns.push(c),
            Err(e) => {
                println!(
                    "  {} of {n} idle connections opened; then: {e:#}",
                    conns.len()
                );
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss();
    let opened = conns.len();
    drop(conns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Figure::Memory(match (before, after) {
        (Some(b), Some(a)) if opened > 0 => Some(a.saturating_sub(b) as f64 / opened as f64),
        _ => None,
    }))
}

/// One publisher at `a.rate` messages/s for 3 s, each carrying its send time; one
/// consumer records the delay.
async fn latency(uri: &str, queue: &str, a: &AmqpArgs) -> anyhow::Result<Figure> {
    let (_c, ch) = connect(uri).await?;
    let (_c2, sub) = connect(uri).await?;
    let opts = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let mut consumer = sub
        .basic_consume(queue.into(), "".into(), opts, FieldTable::default())
        .await?;
    let total = (a.rate * 3) as usize;
    let origin = Instant::now();
    let reader = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(total);
        while lat.len() < total {
            let next = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await;
            let Ok(Some(Ok(d))) = next else { break };
            let mut b = [0u8; 8];
            b.copy_from_slice(&d.data[..8]);
            let sent = u64::from_le_bytes(b);
            let now = origin.elapsed().as_micros() as u64;
            lat.push(now.saturating_sub(sent));
        }
        lat
    });
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / a.rate.max(1)));
    let mut body = vec![0u8; a.size.max(8)];
    for _ in 0..total {
        tick.tick().await;
        let sent = origin.elapsed().as_micros() as u64;
        body[..8].copy_from_slice(&sent.to_le_bytes());
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        )
        .await?;
    }
    let s = summarize(reader.await?);
    Ok(Figure::Latency {
        p50: s.p50,
        p99: s.p99,
    })
}

/// Waits (up to a minute) until the consumers have counted `want` deliveries.
async fn wait_for(got: &AtomicUsize, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
