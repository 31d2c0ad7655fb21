//! The `polyport` binary: configuration → Hub → adapters → wait for a signal.
//!
//! Subcommands: `serve` (the server), `pub` / `sub` (talk to a running server over
//! HTTP), `bench` (benchmarks that print ratios against a baseline measured in the same
//! run).

mod bench;
mod cli;
mod config;
mod demo;
mod identity_cli;
mod jwks;
mod registry;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// jemalloc instead of glibc's malloc: a broker allocates and frees small buffers per
/// message from every worker thread, where glibc's arenas spent a fifth of the CPU of an
/// MQTT fan-in (`polyport bench mqtt --only window`, perf). jemalloc over mimalloc: as
/// fast here, and it kept an idle MQTT connection at 2.9 KiB of RSS where mimalloc held
/// 5.3 (`--only idle`).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "polyport",
    version,
    about = "One server for every API style over one event model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Publish one message to a running server.
    Pub(cli::PubArgs),
    /// Print events from a running server, one CloudEvent JSON per line.
    Sub(cli::SubArgs),
    /// Run a benchmark and print ratios against a baseline measured in the same run.
    Bench(bench::BenchArgs),
    /// Print the .proto of the typed per-collection gRPC services of a running server.
    Proto(cli::ProtoArgs),
    /// List every face: its listener's default address, flag, variable and section.
    Adapters {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage webhook endpoints of a running server.
    #[command(subcommand)]
    Webhooks(cli::WebhooksCmd),
    /// Manage the users of a running server (as an admin).
    #[command(subcommand)]
    Users(identity_cli::UsersCmd),
    /// Manage the API keys of a running server (as an admin).
    #[command(subcommand)]
    Keys(identity_cli::KeysCmd),
    /// Bootstrap an admin in a data directory no server is running on.
    #[command(subcommand)]
    Admin(identity_cli::AdminCmd),
}

/// Flags override `POLYPORT_*` variables, which override `polyport.toml`.
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// Configuration file (default: ./polyport.toml when present).
    #[arg(long, env = "POLYPORT_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory.
    #[arg(long, env = "POLYPORT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    listen: registry::ListenFlags,
    /// Seed example data (`blog`: users and posts from the seed articles).
    #[arg(long, value_parser = ["blog"])]
    demo: Option<String>,
    /// Keep at most this many events in the log.
    #[arg(long, env = "POLYPORT_RETENTION_MAX_EVENTS")]
    retention_max_events: Option<u64>,
    /// Internal networks webhook deliveries may reach (comma-separated CIDRs).
    #[arg(long, env = "POLYPORT_WEBHOOKS_ALLOW_NETWORKS", value_delimiter = ',')]
    webhooks_allow_networks: Option<Vec<String>>,
    /// Whether webhook deliveries may reach public addresses.
    #[arg(long, env = "POLYPORT_WEBHOOKS_ALLOW_PUBLIC")]
    webhooks_allow_public: Option<bool>,
    /// Serve anonymous clients on non-loopback addresses even though no identity source
    /// is configured (refused by default, as Mosquitto 2 does). POLYPORT_ADMIN_PASSWORD
    /// (with POLYPORT_ADMIN_USER, default `admin`) makes sure that admin exists first.
    #[arg(long, env = "POLYPORT_ALLOW_ANONYMOUS")]
    allow_anonymous: bool,
    /// PEM certificate chain for every face's TLS listener (`[tls] cert`); with it,
    /// HTTPS, gRPC, MQTT, AMQP and STOMP also listen with TLS. SIGHUP reloads it.
    #[arg(long, env = "POLYPORT_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert` (`[tls] key`).
    #[arg(long, env = "POLYPORT_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA that signs client certificates (`[tls] client_ca`): clients must show one,
    /// and its common name is their identity when they send no credentials.
    #[arg(long, env = "POLYPORT_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Join the nodes on this NATS JetStream server (`[cluster] bus`): `nats://host:port`.
    /// Membership (`GET /api/cluster`), ephemeral events between nodes, and with
    /// `--store` groups and MQTT sessions across nodes; see docs/cluster.md.
    #[arg(long, env = "POLYPORT_BUS")]
    bus: Option<String>,
    /// The deployment's name on the bus (`[cluster] bucket`, default `polyport-nodes`):
    /// nodes with the same bus and bucket are one deployment.
    #[arg(long, env = "POLYPORT_BUCKET")]
    bucket: Option<String>,
    /// Keep records, the log and all state in this PostgreSQL database instead of the
    /// data directory (`[cluster] store`): `postgres://user@host:port/database`.
    #[arg(long, env = "POLYPORT_STORE")]
    store: Option<String>,
    /// The schema holding Polyport's tables in `--store` (`[cluster] schema`, default
    /// `polyport`), made when missing.
    #[arg(long, env = "POLYPORT_STORE_SCHEMA")]
    store_schema: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("POLYPORT_LOG")
                // lapin is only the AMQP benchmark's load generator: its reports of the
                // connections the benchmark drops between scenarios are not news.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=off")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Pub(args) => cli::publish(args).await,
            Command::Sub(args) => cli::subscribe(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Proto(args) => cli::proto(args).await,
            Command::Webhooks(cmd) => cli::webhooks(cmd).await,
            Command::Users(cmd) => identity_cli::users(cmd).await,
            Command::Keys(cmd) => identity_cli::keys(cmd).await,
            Command::Admin(cmd) => identity_cli::admin(cmd).await,
            Command::Adapters { json } => registry::print(json),
        }
    })
}
