//! `polyport serve`: wiring and lifecycle. Only this file installs signal handlers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use polyport_core::adapter::Spec;
use polyport_core::{Bus, Hub, HubConfig, TopicFilter};
use polyport_store::{Retention, SqliteStore, StoreConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ServeArgs;
use crate::config::Config;
use crate::registry::{self, Ctx, Host};

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// A listener the server wants, and whether the user chose its address.
struct Want {
    spec: &'static Spec,
    addr: SocketAddr,
    /// Given by a flag, a `POLYPORT_*` variable or `polyport.toml`.
    explicit: bool,
}

impl Want {
    fn how_to_move(&self) -> String {
        let n = self.spec.name;
        format!(
            "--{n} ADDR, {}=ADDR or `[{n}] listen` in polyport.toml",
            self.spec.env_var()
        )
    }
}

/// What became of the listeners: for listeners.json, the index and the summary.
#[derive(Default)]
struct Listeners {
    started: BTreeMap<&'static str, String>,
    not_started: BTreeMap<&'static str, serde_json::Value>,
    index: Vec<polyport_http::IndexListener>,
}

impl Listeners {
    /// Binds `w`. A port the user asked for that is taken stops start-up with a message
    /// naming the listener and how to move it; a *default* port that is taken (Mosquitto
    /// on 1883, say) only skips that listener, loudly.
    async fn bind(&mut self, w: &Want) -> anyhow::Result<Option<TcpListener>> {
        match TcpListener::bind(w.addr).await {
            Ok(l) => {
                let addr = l.local_addr()?;
                self.started.insert(w.spec.name, addr.to_string());
                self.index.push(polyport_http::IndexListener {
                    name: w.spec.name.into(),
                    about: w.spec.about.into(),
                    address: addr.to_string(),
                    not_started: None,
                });
                Ok(Some(l))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && w.explicit => bail!(
                "cannot start the {} listener: {} is already in use by another program. \
                 Move it with {} (port 0 picks a free port).",
                w.spec.label,
                w.addr,
                w.how_to_move()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let why = format!(
                    "the default address {} is in use by another program",
                    w.addr
                );
                tracing::warn!(
                    "{} NOT STARTED: {why}. Polyport runs without it; to serve {} move it with {} \
                     (port 0 picks a free port), or switch it off with {}.",
                    w.spec.label,
                    w.spec.label,
                    w.how_to_move(),
                    format_args!("`[{}] enabled = false`", w.spec.name)
                );
                self.not_started.insert(
                    w.spec.name,
                    serde_json::json!({
                        "address": w.addr.to_string(),
                        "reason": why,
                        "move_with": w.how_to_move(),
                    }),
                );
                self.index.push(polyport_http::IndexListener {
                    name: w.spec.name.into(),
                    about: w.spec.about.into(),
                    address: w.addr.to_string(),
                    not_started: Some(format!("{why}; move it with {}", w.how_to_move())),
                });
                Ok(None)
            }
            Err(e) => Err(e).with_context(|| {
                format!("cannot start the {} listener on {}", w.spec.label, w.addr)
            }),
        }
    }

    /// `{data_dir}/listeners.json`: started listeners by name, and `not_started`.
    fn json(&self) -> serde_json::Value {
        let mut v = serde_json::json!(self.started);
        if !self.not_started.is_empty() {
            v["not_started"] = serde_json::json!(self.not_started);
        }
        v
    }

    /// The start-up summary: one line, WARN when something did not start.
    fn summary(&self) {
        let mut parts: Vec<String> = self
            .started
            .iter()
            .map(|(k, a)| format!("{k} {a}"))
            .collect();
        parts.extend(
            self.not_started
                .keys()
                .map(|k| format!("{k} NOT STARTED (port in use)")),
        );
        if self.not_started.is_empty() {
            tracing::info!("ready: {}", parts.join(", "));
        } else {
            tracing::warn!("ready without every listener: {}", parts.join(", "));
        }
    }
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = config(&args)?;
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;

    let hub = open_hub(&cfg)?;
    hub.load_identities()
        .await
        .context("reading the stored users and API keys")?;
    if let Ok(password) = std::env::var("POLYPORT_ADMIN_PASSWORD") {
        let name = std::env::var("POLYPORT_ADMIN_USER").unwrap_or_else(|_| "admin".into());
        hub.bootstrap_admin(&name, &password)
            .await
            .with_context(|| format!("POLYPORT_ADMIN_PASSWORD: setting up the admin '{name}'"))?;
        tracing::info!(user = %name, "admin from POLYPORT_ADMIN_PASSWORD is ready");
    }
    crate::jwks::start(&hub).await;

    let webhook_cfg = polyport_webhooks::WebhookConfig {
        timeout: Duration::from_secs(cfg.webhooks.timeout_secs.max(1)),
        max_in_flight: cfg.webhooks.max_in_flight,
        disable_after: Duration::from_secs(cfg.webhooks.disable_after_hours * 3600),
        allow_networks: cfg.webhooks.allow_networks.clone(),
        allow_public: cfg.webhooks.allow_public,
    };
    // Endpoints can be registered (and are checked) even with delivery switched off.
    let webhooks = match cfg.webhooks.enabled {
        true => Some(polyport_webhooks::start(&hub, webhook_cfg)?),
        false => {
            polyport_webhooks::install(&hub, &webhook_cfg)?;
            None
        }
    };

    if let Some(demo) = args.demo.as_deref() {
        crate::demo::seed(&hub, demo).await?;
    }

    let tracker = TaskTracker::new();
    let stop_accepting = CancellationToken::new();
    let broker = tokio::sync::OnceCell::new();
    let ctx = Ctx {
        hub: &hub,
        cfg: &cfg,
        prometheus: &prometheus,
        stop: &stop_accepting,
        broker: &broker,
    };
    let mut faces = Vec::new();
    let mut mounts = Vec::new();
    for e in registry::ENTRIES {
        let section = (e.section)(&cfg);
        if !section.enabled {
            continue;
        }
        let prepared = (e.prepare)(&ctx).await?;
        mounts.extend(prepared.mounts);
        if let (Some(serve), Some(default)) = (prepared.serve, e.spec.default_addr) {
            let chosen = args.listen.0.get(e.spec.name).copied().or(section.listen);
            let want = Want {
                spec: e.spec,
                addr: chosen.unwrap_or(default),
                explicit: chosen.is_some(),
            };
            faces.push((want, serve));
        }
    }

    refuse_open_doors(
        hub.identities().is_open(),
        args.allow_anonymous,
        faces.iter().map(|(w, _)| w),
    )?;

    // Every listener is bound before any face starts, so the index at `GET /` can say
    // where each one lives (or why it is not there).
    let mut listeners = Listeners::default();
    let mut bound = Vec::new();
    for (want, serve) in faces {
        if let Some(l) = listeners.bind(&want).await? {
            bound.push((l, serve));
        }
    }
    if listeners.started.is_empty() {
        bail!("no listener could start; see the warnings above");
    }
    let mut host = Host {
        index: listeners.index.clone(),
        mounts,
        stop: stop_accepting.clone(),
    };
    for (listener, serve) in bound {
        tracker.spawn(serve(listener, &mut host)?);
    }
    tracker.close();

    let listeners_json = cfg.data_dir.join("listeners.json");
    std::fs::write(
        &listeners_json,
        serde_json::to_vec_pretty(&listeners.json())?,
    )
    .with_context(|| format!("writing {}", listeners_json.display()))?;
    listeners.summary();

    wait_for_signal().await;
    tracing::info!("shutting down: closing streams and draining requests");
    // Ending subscriptions first lets long-lived responses (SSE, NDJSON, WebSocket)
    // finish, so the graceful drain below can complete.
    hub.shutdown_token().cancel();
    stop_accepting.cancel();
    if tokio::time::timeout(DRAIN_DEADLINE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; closing remaining connections");
    }
    if let Some(w) = webhooks {
        // In-flight deliveries finish or time out; unfinished ones stay pending.
        let _ = tokio::time::timeout(DRAIN_DEADLINE, w).await;
    }
    hub.shutdown().await;
    let _ = std::fs::remove_file(&listeners_json);
    tracing::info!("stopped");
    Ok(())
}

/// The file, then the flags that override it (listen addresses are read per face).
/// Safe by default, like Mosquitto 2: with no identity source, anonymous clients are
/// served on loopback only. A listener on any other address needs an identity source
/// (users, keys, JWT) or an explicit `--allow-anonymous`.
fn refuse_open_doors<'a>(
    open: bool,
    allow_anonymous: bool,
    wants: impl Iterator<Item = &'a Want>,
) -> anyhow::Result<()> {
    if allow_anonymous || !open {
        return Ok(());
    }
    let open: Vec<String> = wants
        .filter(|w| !w.addr.ip().is_loopback())
        .map(|w| format!("{} on {}", w.spec.name, w.addr))
        .collect();
    if open.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve anonymous clients beyond loopback ({}) with no identity configured: \
         add users (`[auth] users = {{ alice = \"…\" }}` in polyport.toml, or an admin with \
         POLYPORT_ADMIN_PASSWORD), API keys or `[auth.jwt]`, or pass --allow-anonymous \
         (POLYPORT_ALLOW_ANONYMOUS=true) to let anyone on the network in",
        open.join(", ")
    )
}

fn config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut cfg = Config::load(args.config.as_deref())?;
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    if args.retention_max_events.is_some() {
        cfg.events.retention_max_events = args.retention_max_events;
    }
    if let Some(n) = &args.webhooks_allow_networks {
        cfg.webhooks.allow_networks = n.iter().filter(|s| !s.is_empty()).cloned().collect();
    }
    if let Some(p) = args.webhooks_allow_public {
        cfg.webhooks.allow_public = p;
    }

    Ok(cfg)
}

/// The store on the data directory and the Hub over it.
pub(crate) fn open_hub(cfg: &Config) -> anyhow::Result<Hub> {
    let bus = Bus::new();
    let mut store_cfg = StoreConfig::new(&cfg.data_dir);
    store_cfg.queue = cfg.events.write_queue;
    store_cfg.retention = Retention {
        max_events: cfg.events.retention_max_events,
        max_age: cfg.events.retention_max_age_secs.map(Duration::from_secs),
    };
    let store = SqliteStore::open(store_cfg, Arc::new(bus.clone()))
        .with_context(|| format!("opening the data directory {}", cfg.data_dir.display()))?;
    let ephemeral_topics = cfg
        .events
        .ephemeral_topics
        .iter()
        .map(|t| TopicFilter::new(t).with_context(|| format!("events.ephemeral_topics: '{t}'")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let hub_cfg = HubConfig {
        auto_create_collections: cfg.auto_create_collections,
        subscriber_queue: cfg.events.subscriber_queue,
        max_auto_collections: cfg.limits.max_auto_collections,
        ephemeral_topics,
        ..HubConfig::default()
    };
    Ok(Hub::with_auth(
        Arc::new(store),
        bus,
        hub_cfg,
        cfg.auth.directory()?,
        Box::new(cfg.auth.policy()?),
    ))
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
