//! `polyport bench …`: benchmarks that run Polyport and a baseline on the same load in
//! one run and print the ratio, because absolute figures on shared machines are noise.
//!
//! - `http`: REST `GET` by id and `POST` against a bare axum handler serving the same
//!   JSON.
//! - `fanout`: one REST write fanned out to N subscribers (half SSE, half WebSocket),
//!   against a bare axum + `tokio::sync::broadcast` server; clients run in a child
//!   process so each side of 10k connections has its own file-descriptor budget.
//! - `soap`: SOAP Get/Create/List against REST on the same records.
//! - `auth`: REST `GET` signed in with each kind of credential against anonymous.
//! - `filters`: publish cost as subscriptions on unrelated topics grow.
//! - `cluster`: the embedded engine against one and three cluster nodes on PostgreSQL.
//! - `mqtt`: Polyport's MQTT broker vs the local Mosquitto under one rumqttc load
//!   generator: memory per idle connection, fan-in flooding and with few publishers kept
//!   a bounded window ahead, latency at a fixed rate, fan-out; each with the broker's
//!   CPU time per message.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use polyport_core::{Bus, Hub, HubConfig};
use polyport_store::{SqliteStore, StoreConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod amqp;
mod auth;
mod chart;
mod child;
mod cluster;
mod cluster_brokers;
mod commits;
mod fanout;
mod filters;
mod graphql;
mod grpc;
mod http_load;
mod mqtt;
mod peer;
mod soap;
mod stomp;
mod webhooks;

#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(clap::Subcommand, Debug)]
enum Which {
    /// REST GET by id and POST vs a bare axum handler, at one or more connection counts.
    Http(HttpArgs),
    /// One write fanned out to N subscribers (SSE + WebSocket) vs axum + broadcast.
    Fanout(fanout::FanoutArgs),
    /// REST writes and reads on the embedded engine vs one and three cluster nodes
    /// (PostgreSQL), with a write's way to another node's subscriber.
    Cluster(cluster::ClusterArgs),
    /// A GraphQL page of users with their posts vs the equivalent REST calls.
    Graphql {
        /// Users on the page (each with 2 posts).
        #[arg(long, default_value_t = 50)]
        users: usize,
        /// Users (each with 2 posts) beyond the page: a posts collection larger than the
        /// page shows whether a page costs what it reads or what the collection holds.
        #[arg(long, default_value_t = 0)]
        more_users: usize,
        /// Read the page from the cluster engine on this PostgreSQL database (a fresh
        /// schema, dropped after) instead of the embedded one; the subscription
        /// scenario stays on the embedded engine.
        #[arg(long)]
        postgres: Option<String>,
        /// Seconds per scenario.
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// WebSocket subscribers for the subscription fanout scenario.
        #[arg(long, default_value_t = 200)]
        subscribers: usize,
        /// Writes for the subscription fanout scenario.
        #[arg(long, default_value_t = 500)]
        writes: usize,
    },
    /// gRPC unary Get vs a bare tonic handler, and Watch fanout throughput.
    Grpc {
        /// Seconds per unary scenario.
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Watch streams for the fanout scenario.
        #[arg(long, default_value_t = 200)]
        watchers: usize,
        /// Writes for the fanout scenario.
        #[arg(long, default_value_t = 500)]
        writes: usize,
    },
    /// Signed webhook deliveries/s through the durable outbox vs a bare HTTP client.
    Webhooks {
        /// Events per run.
        #[arg(long, default_value_t = 5000)]
        events: usize,
        /// Endpoints (each delivers in order; endpoints run in parallel).
        #[arg(long, default_value_t = 4)]
        endpoints: usize,
        /// Deliveries in flight per endpoint (the endpoint's `concurrency`; above 1 order
        /// is given up); the bare client runs as many streams per endpoint.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// The receiver answers after this many milliseconds (a slow receiver).
        #[arg(long, default_value_t = 0)]
        receiver_delay_ms: u64,
    },
    /// Polyport's MQTT broker vs the local Mosquitto: fan-in, fan-out, idle memory.
    Mqtt(mqtt::MqttArgs),
    /// Polyport's AMQP broker vs the local RabbitMQ under the same lapin load.
    Amqp(amqp::AmqpArgs),
    /// Polyport's STOMP broker vs RabbitMQ's STOMP plugin under the same load.
    Stomp(stomp::StompArgs),
    /// SOAP Get/Create/List vs REST on the same records.
    Soap(soap::SoapArgs),
    /// REST GET signed in (Basic argon2id, API key, JWT) vs anonymous, and the cost of
    /// one uncached check.
    Auth(auth::AuthArgs),
    /// Publish cost as subscriptions on other topics grow (10, 10k, 100k filters).
    Filters(filters::FiltersArgs),
    /// (internal) the client side of `fanout`, run in a child process.
    #[command(hide = true)]
    FanoutClients(fanout::ClientArgs),
    /// (internal) the client side of `http --client-process`.
    #[command(hide = true)]
    HttpLoad(http_load::LoadArgs),
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.which {
        Which::Http(a) => http(a).await,
        Which::Fanout(a) => fanout::run(a).await,
        Which::Webhooks {
            events,
            endpoints,
            concurrency,
            receiver_delay_ms,
        } => {
            let delay = Duration::from_millis(receiver_delay_ms);
            webhooks::run(events, endpoints, concurrency.max(1), delay).await
        }
        Which::Graphql {
            users,
            more_users,
            postgres,
            duration,
            concurrency,
            subscribers,
            writes,
        } => {
            let page = graphql::Page {
                users,
                more_users,
                postgres,
            };
            graphql::run(page, Duration::from_secs(duration), concurrency).await?;
            graphql::subscription_fanout(subscribers, writes).await
        }
        Which::Grpc {
            duration,
            concurrency,
            watchers,
            writes,
        } => grpc::run(Duration::from_secs(duration), concurrency, watchers, writes).await,
        Which::Mqtt(a) => mqtt::run(a).await,
        Which::Cluster(a) => cluster::run(a).await,
        Which::Amqp(a) => amqp::run(a).await,
        Which::Stomp(a) => stomp::run(a).await,
        Which::Soap(a) => soap::run(a).await,
        Which::Auth(a) => auth::run(a).await,
        Which::Filters(a) => filters::run(a).await,
        Which::FanoutClients(a) => fanout::clients(a).await,
        Which::HttpLoad(a) => http_load::child(a).await,
    }
}

/// A Polyport server on an ephemeral port over a throw-away data directory.
pub(crate) struct TestServer {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) grpc_addr: std::net::SocketAddr,
    pub(crate) hub: Hub,
    stop: CancellationToken,
    dir: std::path::PathBuf,
}

impl TestServer {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        Self::start_on(None).await
    }

    /// On the embedded store, or with `postgres` (URL, schema) on the cluster engine's.
    pub(crate) async fn start_on(postgres: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("polyport-bench-{}", ulid_like()));
        let bus = Bus::new();
        let store: Arc<dyn polyport_core::engine::Store> = match postgres {
            Some((url, schema)) => {
                let mut cfg = polyport_store::pg::PgConfig::new(url);
                cfg.schema = schema.to_string();
                Arc::new(polyport_store::pg::PgStore::open(
                    cfg,
                    Arc::new(bus.clone()),
                )?)
            }
            None => Arc::new(SqliteStore::open(
                StoreConfig::new(&dir),
                Arc::new(bus.clone()),
            )?),
        };
        let hub = Hub::new(store, bus, HubConfig::default());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let extra =
            polyport_graphql::routes(hub.clone(), polyport_graphql::GraphqlConfig::default())?
                .merge(polyport_soap::routes(
                    hub.clone(),
                    polyport_soap::SoapConfig::default(),
                )?);
        let app =
            polyport_http::router_with(hub.clone(), polyport_http::HttpConfig::default(), extra);
        let s = stop.clone();
        tokio::spawn(async move { polyport_http::serve_with(listener, app, s, unlimited()).await });
        polyport_webhooks::start(
            &hub,
            polyport_webhooks::WebhookConfig {
                allow_networks: vec!["127.0.0.0/8".into()],
                allow_public: false,
                ..polyport_webhooks::WebhookConfig::default()
            },
        )?;
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let grpc = polyport_grpc::router(hub.clone(), polyport_grpc::GrpcConfig::default()).await?;
        let s = stop.clone();
        tokio::spawn(async move {
            polyport_http::serve_with(grpc_listener, grpc, s, unlimited()).await
        });
        Ok(Self {
            addr,
            grpc_addr,
            hub,
            stop,
            dir,
        })
    }

    pub(crate) async fn stop(self) {
        self.hub.shutdown_token().cancel();
        self.stop.cancel();
        self.hub.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A benchmark opens every client from one address: no connection caps.
fn unlimited() -> polyport_http::ServeOptions {
    polyport_http::ServeOptions {
        connections: polyport_core::admission::ConnectionLimits {
            max_connections: usize::MAX,
            max_per_address: usize::MAX,
        },
        ..polyport_http::ServeOptions::default()
    }
}

fn ulid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// Starts a bare axum app on an ephemeral port.
pub(crate) async fn start_baseline(
    app: Router,
) -> anyhow::Result<(std::net::SocketAddr, CancellationToken)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await
    });
    Ok((addr, stop))
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct Summary {
    pub(crate) count: usize,
    pub(crate) p50: u64,
    pub(crate) p99: u64,
    pub(crate) max: u64,
}

pub(crate) fn summarize(mut lat: Vec<u64>) -> Summary {
    lat.sort_unstable();
    let pick = |q: f64| -> u64 {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() as f64 - 1.0) * q).round() as usize]
        }
    };
    Summary {
        count: lat.len(),
        p50: pick(0.50),
        p99: pick(0.99),
        max: lat.last().copied().unwrap_or(0),
    }
}

/// Runs `concurrency` closed-loop clients for `duration`; returns requests/s and latencies.
pub(crate) async fn load<F, Fut>(
    duration: Duration,
    concurrency: usize,
    make: F,
) -> anyhow::Result<(f64, Summary)>
where
    F: Fn(reqwest::Client) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    // Warm the pool and the code paths.
    for _ in 0..concurrency {
        make(client.clone()).await?;
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let make = make.clone();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                make(client.clone()).await?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((all.len() as f64 / secs, summarize(all)))
}

#[derive(clap::Args, Debug)]
pub(crate) struct HttpArgs {
    /// Seconds per scenario.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Concurrent client connections; a list (`8,32,128`) is the scaling mode.
    #[arg(
        long,
        alias = "concurrency",
        value_delimiter = ',',
        default_value = "32"
    )]
    connections: Vec<usize>,
    /// Draw requests/s against connections into this SVG file.
    #[arg(long)]
    chart: Option<std::path::PathBuf>,
    /// Run the load generator in a process of its own rather than on the servers'
    /// runtime.
    #[arg(long)]
    client_process: bool,
}

async fn http(args: HttpArgs) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.duration);
    // Before the server: its store's group commit reports to it.
    let recorder = commits::recorder();
    let server = TestServer::start().await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let created: serde_json::Value = client
        .post(format!("{base}/api/collections/bench/records"))
        .json(&serde_json::json!({"id": "r1", "title": "hello", "views": 1}))
        .send()
        .await?
        .json()
        .await?;
    let body = created.to_string();
    let canned = body.clone();
    let baseline = Router::new().route(
        "/rec",
        get(move || {
            let b = canned.clone();
            async move { ([("content-type", "application/json"), ("etag", "\"1\"")], b) }
        })
        .post(|b: axum::body::Bytes| async move {
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
            (axum::http::StatusCode::CREATED, axum::Json(v))
        }),
    );
    let (baddr, bstop) = start_baseline(baseline).await?;
    let bget = format!("http://{baddr}/rec");
    let pget = format!("{base}/api/collections/bench/records/r1");
    let ppost = format!("{base}/api/collections/bench/records");
    println!(
        "polyport bench http: {}s per scenario, connections {:?}, load generator {}",
        duration.as_secs(),
        args.connections,
        match args.client_process {
            true => "in a process of its own",
            false => "on the servers' runtime",
        }
    );
    println!(
        "{:<20} {:>14} {:>14} {:>7}   {:>18}   {:>18}",
        "scenario   conns",
        "baseline req/s",
        "polyport req/s",
        "ratio",
        "p50 µs base/pp",
        "p99 µs base/pp"
    );
    let payload = serde_json::json!({"title": "bench", "views": 3}).to_string();
    let separate = args.client_process;
    let run = async |url: &str, post: bool, conns: usize| {
        let post = post.then_some(payload.as_str());
        http_load::run(separate, url, post, conns, duration).await
    };
    let mut lines = chart::Series::named([
        "GET baseline",
        "GET Polyport",
        "POST baseline",
        "POST Polyport",
    ]);
    for &conns in &args.connections {
        let (b_rps, b_lat) = run(&bget, false, conns).await?;
        let (p_rps, p_lat) = run(&pget, false, conns).await?;
        row(&format!("GET by id {conns:>5}"), b_rps, p_rps, b_lat, p_lat);
        let (bp_rps, bp_lat) = run(&bget, true, conns).await?;
        let committed = recorder.map(commits::Commits::local);
        let (pp_rps, pp_lat) = run(&ppost, true, conns).await?;
        row(
            &format!("POST create {conns:>3}"),
            bp_rps,
            pp_rps,
            bp_lat,
            pp_lat,
        );
        if let Some((h, before)) = recorder.zip(committed) {
            let c = commits::Commits::local(h).since(before);
            println!("  Polyport's store: {}", c.describe());
        }
        for (line, y) in lines.iter_mut().zip([b_rps, p_rps, bp_rps, pp_rps]) {
            line.points.push((conns as f64, y));
        }
    }
    println!(
        "(POST on Polyport is durable: every 201 waited for an fsync'd group commit; the baseline writes nothing.)"
    );
    if let Some(path) = &args.chart {
        chart::Chart {
            title: "REST throughput by connections (Polyport vs bare axum)",
            x: "client connections",
            y: "requests/s",
            log_x: true,
            legend: plotters::prelude::SeriesLabelPosition::LowerRight,
            series: lines.into(),
        }
        .write_svg(path)?;
    }
    bstop.cancel();
    server.stop().await;
    Ok(())
}

pub(crate) fn row(name: &str, b_rps: f64, p_rps: f64, b: Summary, p: Summary) {
    println!(
        "{:<20} {:>14.0} {:>14.0} {:>6.2}x   {:>8}/{:<9}   {:>8}/{:<9}",
        name,
        b_rps,
        p_rps,
        p_rps / b_rps.max(1.0),
        b.p50,
        p.p50,
        b.p99,
        p.p99
    );
}

/// Microseconds since the Unix epoch (shared clock between bench processes).
/// `n` records created in `users` over REST by 8 clients; returns writes/s. The
/// streaming fanouts (gRPC Watch, GraphQL subscriptions) measure their deliveries with it.
pub(crate) async fn users_writes(base: &str, n: usize, tag: &str) -> anyhow::Result<f64> {
    let c = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (c, base, tag) = (c.clone(), base.to_string(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(8) {
                c.post(format!("{base}/api/collections/users/records"))
                    .json(&serde_json::json!({"username": format!("{tag}-{i}")}))
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
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The measured part of a streaming fanout (gRPC Watch, GraphQL subscriptions): `n`
/// REST writes while `readers` (one per stream, each returning the changes it got)
/// count; prints deliveries/s, and the writes' rate beside `alone`, the same writes with
/// nobody streaming. `title` names the streams ("200 WatchUsers streams"), `who` their
/// holders ("watchers"). Returns the deliveries/s.
pub(crate) async fn streamed_writes(
    base: &str,
    n: usize,
    readers: Vec<tokio::task::JoinHandle<usize>>,
    alone: f64,
    title: &str,
    who: &str,
) -> anyhow::Result<f64> {
    let streams = readers.len();
    let started = Instant::now();
    let with = users_writes(base, n, "watched").await?;
    let mut delivered = 0;
    for r in readers {
        delivered += r.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{title} × {n} writes: {delivered}/{} delivered, {:.0} deliveries/s",
        streams * n,
        delivered as f64 / secs
    );
    println!(
        "writes/s with {streams} {who} vs none: {with:.0} vs {alone:.0} ({:.2}x)",
        with / alone.max(1.0)
    );
    Ok(delivered as f64 / secs)
}

pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
