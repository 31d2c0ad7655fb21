//! `polyport bench stomp`: Polyport's STOMP broker and RabbitMQ's STOMP plugin under the
//! same load in one run, printed as ratios (Polyport ÷ RabbitMQ; > 1 is better for
//! throughput, < 1 for latency).
//!
//! The load generator speaks STOMP 1.2 through Polyport's own frame codec (there is no
//! maintained Rust STOMP client); both servers get exactly the same frames. The plugin
//! is enabled on the local RabbitMQ for the run if it was off, and disabled again after.
//!
//! Shapes: SEND → MESSAGE with `ack:auto` (1×1 and 4×4 clients), `client-individual`
//! acks with a prefetch window, receipted SENDs (one in flight per client, the
//! "durable" round trip), and latency at a fixed rate.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::{SinkExt, StreamExt};
use polyport_stomp::codec::{Codec, Command, Frame, Incoming, Outgoing, Version};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::child::PolyportChild;
use super::peer::{Figure, against_rabbitmq};
use super::{summarize, ulid_like};

#[derive(clap::Args, Debug)]
pub(crate) struct StompArgs {
    /// The peer broker (RabbitMQ's STOMP plugin).
    #[arg(long, default_value = "127.0.0.1:61613")]
    rabbitmq: SocketAddr,
    /// The same RabbitMQ over AMQP, through which the queues a run declared there (STOMP
    /// cannot delete one) are deleted after it.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    rabbitmq_amqp: String,
    /// Messages per throughput scenario.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages per second for the latency scenario (run for 3 s).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Times Polyport and RabbitMQ take turns at each scenario; the row shows the medians.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Run only the scenarios whose name contains this (e.g. `latency`).
    #[arg(long)]
    only: Option<String>,
}

type Conn = Framed<TcpStream, Codec>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
    let mut io = Framed::new(
        TcpStream::connect(addr).await?,
        Codec::new(polyport_stomp::Limits::default()),
    );
    io.send(Outgoing::Frame(
        Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("host", "/")
            .header("login", "guest")
            .header("passcode", "guest")
            .header("heart-beat", "0,0"),
    ))
    .await?;
    match next_frame(&mut io).await? {
        f if f.command == Command::Connected => {}
        f => bail!(
            "CONNECT answered with {:?}: {:?}",
            f.command,
            f.get("message")
        ),
    }
    io.codec_mut().version = Version::V1_2;
    Ok(io)
}

async fn next_frame(io: &mut Conn) -> anyhow::Result<Frame> {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), io.next()).await {
            Ok(Some(Ok(Incoming::Frame(f)))) => {
                if f.command == Command::Error {
                    bail!(
                        "ERROR: {:?} {}",
                        f.get("message"),
                        String::from_utf8_lossy(&f.body)
                    );
                }
                return Ok(f);
            }
            Ok(Some(Ok(Incoming::HeartBeat))) => continue,
            Ok(Some(Err(e))) => bail!("bad frame: {e}"),
            Ok(None) => bail!("the server closed the connection"),
            Err(_) => bail!("no frame for 15 s"),
        }
    }
}

fn send(dest: &str, body: &[u8]) -> Outgoing {
    let mut f = Frame::new(Command::Send)
        .header("destination", dest)
        .header("content-length", body.len().to_string());
    f.body = bytes::Bytes::copy_from_slice(body);
    Outgoing::Frame(f)
}

async fn subscribe(io: &mut Conn, dest: &str, ack: &str, prefetch: usize) -> anyhow::Result<()> {
    io.send(Outgoing::Frame(
        Frame::new(Command::Subscribe)
            .header("destination", dest)
            .header("id", "0")
            .header("ack", ack)
            .header("prefetch-count", prefetch.to_string())
            .header("receipt", "sub"),
    ))
    .await?;
    let f = next_frame(io).await?;
    anyhow::ensure!(f.command == Command::Receipt, "SUBSCRIBE not receipted");
    Ok(())
}

#[derive(Clone, Copy)]
enum Scenario {
    Auto { clients: usize },
    Acked,
    Receipted,
    Latency(Dest),
}

/// Where the latency scenario sends.
#[derive(Clone, Copy)]
enum Dest {
    /// A durable `/queue`: Polyport delivers once fsync'd.
    Queue,
    /// A `/queue` whose topic is in Polyport's `events.ephemeral_topics`: memory-only, as
    /// RabbitMQ keeps a SEND without `persistent:true`.
    MemoryQueue,
    Topic,
}

/// The memory-only queue (a fixed name: `ephemeral_topics` names its topic).
const MEMORY_QUEUE: &str = "polyport-bench-stomp-memory-only";

impl Scenario {
    /// Runs on queue `/queue/bench-{id}` (or the memory-only one).
    async fn run(self, addr: SocketAddr, id: &str, a: &StompArgs) -> anyhow::Result<Figure> {
        let queue = format!("/queue/bench-{id}");
        match self {
            Scenario::Auto { clients } => throughput(addr, &queue, clients, "auto", a).await,
            Scenario::Acked => throughput(addr, &queue, 1, "client-individual", a).await,
            Scenario::Receipted => receipted(addr, &queue, a).await,
            Scenario::Latency(Dest::Queue) => latency(addr, &queue, a).await,
            Scenario::Latency(Dest::MemoryQueue) => {
                latency(addr, &format!("/queue/{MEMORY_QUEUE}"), a).await
            }
            Scenario::Latency(Dest::Topic) => latency(addr, &format!("/topic/bench-{id}"), a).await,
        }
    }
}

/// `clients` producers and as many consumers on one queue; messages per second from
/// the first SEND to the last MESSAGE.
async fn throughput(
    addr: SocketAddr,
    queue: &str,
    clients: usize,
    ack: &'static str,
    a: &StompArgs,
) -> anyhow::Result<Figure> {
    let per = a.messages / clients;
    let total = per * clients;
    let remaining = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(total));
    // The consumer that takes the last message says so (the others stay blocked).
    let done = std::sync::Arc::new(tokio::sync::Notify::new());
    let all_in = done.notified();
    tokio::pin!(all_in);
    all_in.as_mut().enable();
    let mut consumers = Vec::new();
    for _ in 0..clients {
        let mut io = connect(addr).await?;
        subscribe(&mut io, queue, ack, 256).await?;
        let (remaining, done) = (remaining.clone(), done.clone());
        consumers.push(tokio::spawn(async move {
            while remaining.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                let f = match tokio::time::timeout(Duration::from_secs(15), io.next()).await {
                    Ok(Some(Ok(Incoming::Frame(f)))) => f,
                    // RabbitMQ ends each frame with an EOL.
                    Ok(Some(Ok(Incoming::HeartBeat))) => continue,
                    _ => break,
                };
                if f.command != Command::Message {
                    continue;
                }
                if ack != "auto"
                    && let Some(id) = f.get("ack")
                {
                    let ackf = Frame::new(Command::Ack).header("id", id);
                    if io.feed(Outgoing::Frame(ackf)).await.is_err() {
                        break;
                    }
                    if io.read_buffer().is_empty() && io.flush().await.is_err() {
                        break;
                    }
                }
                if remaining.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 1 {
                    done.notify_one();
                }
            }
            let _ = io.flush().await;
        }));
    }
    let body = vec![b'x'; a.size];
    let start = Instant::now();
    let mut producers = Vec::new();
    for _ in 0..clients {
        let mut io = connect(addr).await?;
        let (queue, body) = (queue.to_string(), body.clone());
        producers.push(tokio::spawn(async move {
            for _ in 0..per {
                io.feed(send(&queue, &body)).await?;
            }
            io.flush().await?;
            // Keep the connection until its messages are read.
            tokio::time::sleep(Duration::from_secs(30)).await;
            anyhow::Ok(())
        }));
    }
    let _ = tokio::time::timeout(Duration::from_secs(60), all_in).await;
    let elapsed = start.elapsed();
    for c in consumers {
        c.abort();
    }
    for p in producers {
        p.abort();
    }
    let left = remaining.load(std::sync::atomic::Ordering::Relaxed);
    anyhow::ensure!(left == 0, "{left} of {total} messages never arrived");
    Ok(Figure::Rate(total as f64 / elapsed.as_secs_f64()))
}

/// SENDs each waiting for its RECEIPT (to a durable queue: on disk first), 4 clients.
async fn receipted(addr: SocketAddr, queue: &str, a: &StompArgs) -> anyhow::Result<Figure> {
    let clients = 4;
    let per = (a.messages / 4 / clients).max(1);
    let body = vec![b'x'; a.size];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut io = connect(addr).await?;
        let (queue, body) = (queue.to_string(), body.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let Outgoing::Frame(mut f) = send(&queue, &body) else {
                    unreachable!("send builds a frame")
                };
                f = f
                    .header("receipt", i.to_string())
                    .header("persistent", "true");
                io.send(Outgoing::Frame(f)).await?;
                let r = next_frame(&mut io).await?;
                anyhow::ensure!(r.command == Command::Receipt, "expected RECEIPT");
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(Figure::Rate(
        (per * clients) as f64 / start.elapsed().as_secs_f64(),
    ))
}

async fn latency(addr: SocketAddr, queue: &str, a: &StompArgs) -> anyhow::Result<Figure> {
    let mut sub = connect(addr).await?;
    subscribe(&mut sub, queue, "auto", 0).await?;
    let mut publ = connect(addr).await?;
    let total = (a.rate * 3) as usize;
    let origin = Instant::now();
    let reader = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(total);
        while lat.len() < total {
            let Ok(f) = next_frame(&mut sub).await else {
                break;
            };
            if f.command != Command::Message || f.body.len() < 8 {
                continue;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&f.body[..8]);
            let sent = u64::from_le_bytes(b);
            lat.push((origin.elapsed().as_micros() as u64).saturating_sub(sent));
        }
        lat
    });
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / a.rate.max(1)));
    let mut body = vec![0u8; a.size.max(8)];
    for _ in 0..total {
        tick.tick().await;
        let sent = origin.elapsed().as_micros() as u64;
        body[..8].copy_from_slice(&sent.to_le_bytes());
        publ.send(send(queue, &body)).await?;
    }
    let s = summarize(reader.await?);
    anyhow::ensure!(s.count == total, "{} of {total} messages arrived", s.count);
    Ok(Figure::Latency {
        p50: s.p50,
        p99: s.p99,
    })
}

/// Deletes RabbitMQ's `queues` (a STOMP `/queue` is a durable queue there, which would
/// outlive the run with whatever it still holds), best effort.
async fn delete_queues(amqp: &str, queues: &[String]) {
    use lapin::options::QueueDeleteOptions;
    let Ok(c) = lapin::Connection::connect(amqp, lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    for q in queues {
        // A channel each: deleting a queue that is not there closes the channel.
        if let Ok(ch) = c.create_channel().await {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    let _ = c.close(200, "bye".into()).await;
}

/// Enables RabbitMQ's STOMP plugin if its port is closed; `true` when this run did.
async fn enable_plugin(addr: SocketAddr) -> bool {
    if TcpStream::connect(addr).await.is_ok() {
        return false;
    }
    let ok = tokio::process::Command::new("rabbitmq-plugins")
        .args(["enable", "rabbitmq_stomp"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if ok {
        for _ in 0..50 {
            if TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    ok
}

async fn disable_plugin() {
    let _ = tokio::process::Command::new("rabbitmq-plugins")
        .args(["disable", "rabbitmq_stomp"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
}

pub(crate) async fn run(args: StompArgs) -> anyhow::Result<()> {
    let config = format!("[events]\nephemeral_topics = [\"amqp/q/{MEMORY_QUEUE}\"]\n");
    let child = PolyportChild::start_with("stomp", &config).await?;
    let enabled_here = enable_plugin(args.rabbitmq).await;
    let result = versus_rabbitmq(&child, &args).await;
    if enabled_here {
        disable_plugin().await;
    }
    child.stop().await;
    result
}

async fn versus_rabbitmq(child: &PolyportChild, args: &StompArgs) -> anyhow::Result<()> {
    let pp = child.addr;
    let rabbit_up = connect(args.rabbitmq).await.is_ok();
    if !rabbit_up {
        println!(
            "RabbitMQ's STOMP plugin not reachable at {}: Polyport figures only",
            args.rabbitmq
        );
    }
    let scenarios: [(&str, Scenario); 7] = [
        (
            "ack:auto, 1 producer → 1 consumer",
            Scenario::Auto { clients: 1 },
        ),
        (
            "ack:auto, 4 producers → 4 consumers",
            Scenario::Auto { clients: 4 },
        ),
        ("client-individual acks (prefetch 256)", Scenario::Acked),
        ("receipted persistent SENDs, 4 clients", Scenario::Receipted),
        (
            "latency, SEND to a /queue, p50 / p99 µs",
            Scenario::Latency(Dest::Queue),
        ),
        (
            "latency, memory-only /queue, p50 / p99 µs",
            Scenario::Latency(Dest::MemoryQueue),
        ),
        (
            "latency, SEND to a /topic, p50 / p99 µs",
            Scenario::Latency(Dest::Topic),
        ),
    ];
    let scenarios: Vec<_> = scenarios
        .into_iter()
        .filter(|(name, _)| args.only.as_deref().is_none_or(|o| name.contains(o)))
        .collect();
    against_rabbitmq(child, rabbit_up, args.rounds, &scenarios, |s, peer| {
        let addr = if peer { args.rabbitmq } else { pp };
        async move {
            let id = ulid_like();
            let r = s.run(addr, &id, args).await;
            if peer {
                let queues = [format!("bench-{id}"), MEMORY_QUEUE.to_string()];
                delete_queues(&args.rabbitmq_amqp, &queues).await;
            }
            r
        }
    })
    .await?;
    println!(
        "(a SEND to a /queue lands in a durable queue: Polyport delivers it once fsync'd, as its\n \
         RECEIPT promises; RabbitMQ keeps a SEND without `persistent:true` in memory. The\n \
         memory-only row puts its queue's topic in Polyport's `events.ephemeral_topics`, RabbitMQ's\n \
         semantics. A SEND to a /topic is transient on both: Polyport writes it to its log\n \
         without waiting for the disk.)"
    );
    Ok(())
}
