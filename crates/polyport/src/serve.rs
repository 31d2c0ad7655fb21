//! `polyport serve`: wiring and lifecycle. Only this file installs signal handlers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use polyport_core::adapter::Listener;
use polyport_core::{Bus, Hub, HubConfig, TopicFilter};
use polyport_store::pg::{PgConfig, PgStore};
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
    /// Flag, variable suffix and `listeners.json` key (`mqtt`, `mqtts`).
    name: &'static str,
    /// For logs: `MQTT`, `MQTT over TLS`.
    label: String,
    about: &'static str,
    /// Where its settings live: `[mqtt]`, `[mqtt.tls]`.
    section: String,
    addr: SocketAddr,
    /// Given by a flag, a `POLYPORT_*` variable or `polyport.toml`.
    explicit: bool,
    tls: Option<Arc<polyport_tls::Tls>>,
}

impl Want {
    fn how_to_move(&self) -> String {
        let n = self.name;
        format!(
            "--{n} ADDR, POLYPORT_{}=ADDR or `{} listen` in polyport.toml",
            n.to_ascii_uppercase(),
            self.section
        )
    }

    /// Whether only clients with a certificate from the client CA get through.
    fn requires_certificate(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.requires_client_certificate())
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
                self.started.insert(w.name, addr.to_string());
                self.index.push(polyport_http::IndexListener {
                    name: w.name.into(),
                    about: w.about.into(),
                    address: addr.to_string(),
                    not_started: None,
                });
                Ok(Some(l))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && w.explicit => bail!(
                "cannot start the {} listener: {} is already in use by another program. \
                 Move it with {} (port 0 picks a free port).",
                w.label,
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
                    w.label,
                    w.label,
                    w.how_to_move(),
                    format_args!("`{} enabled = false`", w.section)
                );
                self.not_started.insert(
                    w.name,
                    serde_json::json!({
                        "address": w.addr.to_string(),
                        "reason": why,
                        "move_with": w.how_to_move(),
                    }),
                );
                self.index.push(polyport_http::IndexListener {
                    name: w.name.into(),
                    about: w.about.into(),
                    address: w.addr.to_string(),
                    not_started: Some(format!("{why}; move it with {}", w.how_to_move())),
                });
                Ok(None)
            }
            Err(e) => Err(e)
                .with_context(|| format!("cannot start the {} listener on {}", w.label, w.addr)),
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

/// How often metric histograms are folded into their summaries.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = config(&args)?;
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    // Histograms keep every sample until they are folded: without this, a server nobody
    // scrapes grew by ~20 bytes per request for ever (12 MB per 10 s of REST load).
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(METRICS_UPKEEP);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });

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
    // Before anything subscribes (webhooks, queues, sessions): a named group must not
    // start a dispatcher of its own on this node while another node runs it.
    if let Some(join) = cfg.cluster.join_config()
        && hub.engine() == "cluster"
    {
        polyport_cluster::link_groups(&join, &hub)
            .await
            .context("linking named groups across the cluster ([cluster] bus / --bus)")?;
    }

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
        let (Some(serve), Some(default)) = (prepared.serve, e.spec.default_addr) else {
            continue;
        };
        let mut wants = Vec::new();
        let tls = match &e.spec.tls {
            Some(t) => cfg
                .tls
                .for_face(e.spec.name, &section.tls, t.alpn)?
                .map(|settings| (t, settings)),
            None => None,
        };
        if !(cfg.tls.only && tls.is_some()) {
            let chosen = args.listen.0.get(e.spec.name).copied().or(section.listen);
            wants.push(Want {
                name: e.spec.name,
                label: e.spec.label.to_string(),
                about: e.spec.about,
                section: format!("[{}]", e.spec.name),
                addr: chosen.unwrap_or(default),
                explicit: chosen.is_some(),
                tls: None,
            });
        }
        if let Some((t, settings)) = tls {
            let loaded = polyport_tls::Tls::load(settings)
                .with_context(|| format!("[{}.tls] (or [tls])", e.spec.name))?;
            let chosen = args.listen.0.get(t.name).copied().or(section.tls.listen);
            tracing::info!("{} certificate: {}", t.name, loaded.certificate());
            wants.push(Want {
                name: t.name,
                label: format!("{} over TLS", e.spec.label),
                about: e.spec.about,
                section: format!("[{}.tls]", e.spec.name),
                addr: chosen.unwrap_or(t.default_addr),
                explicit: chosen.is_some(),
                tls: Some(loaded),
            });
        }
        faces.push((wants, serve));
    }

    refuse_open_doors(
        hub.identities().is_open(),
        args.allow_anonymous,
        faces.iter().flat_map(|(w, _)| w),
    )?;

    // Every listener is bound before any face starts, so the index at `GET /` can say
    // where each one lives (or why it is not there).
    let handshake_timeout = Duration::from_secs(cfg.limits.tls_handshake_timeout_secs.max(1));
    let mut listeners = Listeners::default();
    let mut bound = Vec::new();
    let mut certificates = Vec::new();
    for (wants, serve) in faces {
        let mut face = Vec::new();
        for want in wants {
            if let Some(tcp) = listeners.bind(&want).await? {
                if let Some(t) = &want.tls {
                    certificates.push((want.name, t.clone()));
                }
                face.push(Listener {
                    tcp,
                    tls: want
                        .tls
                        .map(|t| t as Arc<dyn polyport_core::adapter::Handshake>),
                    handshake_timeout,
                });
            }
        }
        if !face.is_empty() {
            bound.push((face, serve));
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
    for (face, serve) in bound {
        tracker.spawn(serve(face, &mut host)?);
    }
    tracker.close();
    if !certificates.is_empty() {
        tokio::spawn(reload_on_hangup(certificates, stop_accepting.clone()));
    }

    // Announced once the listeners are bound, so the node says where it can be reached.
    // Under the id the hub has had from its start, which adapters already use (an MQTT
    // session names the node holding it).
    let me = polyport_core::cluster::Node {
        id: hub.node_id(),
        ..polyport_core::cluster::Node::this_process(
            listeners
                .started
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    };
    let cluster = match cfg.cluster.join_config() {
        Some(join) => {
            let m = polyport_cluster::NatsMembership::join(join, me, hub.shutdown_token())
                .await
                .context("joining the cluster ([cluster] bus / --bus)")?;
            hub.set_membership(m.clone());
            m.relay(&hub)
                .await
                .context("relaying ephemeral events over the cluster's NATS")?;
            if hub.log_is_shared() {
                m.relay_log(&hub);
            }
            Some(m)
        }
        None => {
            hub.set_membership(Arc::new(polyport_core::cluster::Alone(me)));
            None
        }
    };

    let listeners_json = cfg.data_dir.join("listeners.json");
    // On the Postgres store the data directory holds only this file.
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
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
    if let Some(m) = cluster {
        // Off the list at once, rather than after the ttl.
        let _ = tokio::time::timeout(Duration::from_secs(2), m.leave()).await;
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
    // A listener that lets in only holders of a certificate from its client CA is not
    // open to the network, whatever the directory says.
    let open: Vec<String> = wants
        .filter(|w| !w.addr.ip().is_loopback() && !w.requires_certificate())
        .map(|w| format!("{} on {}", w.name, w.addr))
        .collect();
    if open.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve anonymous clients beyond loopback ({}) with no identity configured: \
         add users (`[auth] users = {{ alice = \"…\" }}` in polyport.toml, or an admin with \
         POLYPORT_ADMIN_PASSWORD), API keys or `[auth.jwt]`, or pass --allow-anonymous \
         (POLYPORT_ALLOW_ANONYMOUS=true) to let anyone on the network in (or require client \
         certificates: [tls] client_ca)",
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
    if let (Some(c), Some(k)) = (&args.tls_cert, &args.tls_key) {
        cfg.tls.cert = Some(c.clone());
        cfg.tls.key = Some(k.clone());
    }
    if let Some(ca) = &args.tls_client_ca {
        cfg.tls.client_ca = Some(ca.clone());
    }
    if let Some(b) = &args.bus {
        cfg.cluster.bus = Some(b.clone());
    }
    if let Some(b) = &args.bucket {
        cfg.cluster.bucket = b.clone();
    }
    if let Some(s) = &args.store {
        cfg.cluster.store = Some(s.clone());
    }
    if let Some(s) = &args.store_schema {
        cfg.cluster.schema = s.clone();
    }

    Ok(cfg)
}

/// The store (the data directory, or PostgreSQL with `[cluster] store`) and the Hub
/// over it.
pub(crate) fn open_hub(cfg: &Config) -> anyhow::Result<Hub> {
    let bus = Bus::new();
    let retention = Retention {
        max_events: cfg.events.retention_max_events,
        max_age: cfg.events.retention_max_age_secs.map(Duration::from_secs),
    };
    let store: Arc<dyn polyport_core::engine::Store> = match cfg.cluster.store_url() {
        Some(url) => {
            let mut pg = PgConfig::new(url);
            pg.schema = cfg.cluster.schema.clone();
            pg.queue = cfg.events.write_queue;
            pg.retention = retention;
            let store = PgStore::open(pg, Arc::new(bus.clone())).with_context(|| {
                format!(
                    "opening the PostgreSQL store at {} ([cluster] store / --store)",
                    redact_password(url)
                )
            })?;
            Arc::new(store)
        }
        None => {
            let mut store_cfg = StoreConfig::new(&cfg.data_dir);
            store_cfg.queue = cfg.events.write_queue;
            store_cfg.record_cache = cfg.record_cache;
            store_cfg.retention = retention;
            let store = SqliteStore::open(store_cfg, Arc::new(bus.clone())).with_context(|| {
                format!("opening the data directory {}", cfg.data_dir.display())
            })?;
            Arc::new(store)
        }
    };
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
        request_rate: cfg.limits.request_rate(),
        max_groups_per_identity: cfg.limits.max_groups_per_identity.max(1),
        max_filters_per_subscription: cfg.limits.max_filters_per_subscription.max(1),
        ephemeral_topics,
        ..HubConfig::default()
    };
    Ok(Hub::with_auth(
        store,
        bus,
        hub_cfg,
        cfg.auth.directory()?,
        Box::new(cfg.auth.policy()?),
    ))
}

/// A database URL fit for a log line: `postgres://user:secret@host` loses its password.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// `SIGHUP` reads every TLS listener's certificate, key and client CA again: new
/// handshakes use them, open connections keep what they have. A listener whose files do
/// not load keeps its old ones, and the log says why.
async fn reload_on_hangup(
    certificates: Vec<(&'static str, Arc<polyport_tls::Tls>)>,
    stop: CancellationToken,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: TLS certificates will not reload");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {}
                _ = stop.cancelled() => return,
            }
            for (name, tls) in &certificates {
                match tls.reload() {
                    Ok(info) => {
                        metrics::counter!("polyport_tls_reloads_total", "listener" => *name, "result" => "ok").increment(1);
                        tracing::info!("{name}: TLS certificate reloaded: {info}");
                    }
                    Err(e) => {
                        metrics::counter!("polyport_tls_reloads_total", "listener" => *name, "result" => "error").increment(1);
                        tracing::error!(
                            "{name}: TLS reload failed, still serving the previous certificate: {e}"
                        );
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (certificates, stop);
    }
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
