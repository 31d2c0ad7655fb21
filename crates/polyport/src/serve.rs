//! `polyport serve`: wiring and lifecycle. Only this file installs signal handlers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use polyport_core::{Bus, Hub, HubConfig, TopicFilter};
use polyport_store::{Retention, SqliteStore, StoreConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ServeArgs;
use crate::config::{self, Config};

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// A listener the server wants, and whether the user chose its address.
struct Want {
    /// Key in listeners.json and the index (`http`, `grpc`, `mqtt`).
    key: &'static str,
    /// As printed (`HTTP`, `gRPC`, `MQTT`).
    label: &'static str,
    about: &'static str,
    addr: SocketAddr,
    /// Given by a flag, a `POLYPORT_*` variable or `polyport.toml`.
    explicit: bool,
    how_to_move: &'static str,
    switch_off: &'static str,
}

impl Want {
    fn new(
        key: &'static str,
        label: &'static str,
        about: &'static str,
        chosen: Option<SocketAddr>,
        default: SocketAddr,
    ) -> Self {
        let (how_to_move, switch_off) = match key {
            "http" => (
                "--http ADDR, POLYPORT_HTTP=ADDR or `[http] listen` in polyport.toml",
                "`[http] enabled = false`",
            ),
            "grpc" => (
                "--grpc ADDR, POLYPORT_GRPC=ADDR or `[grpc] listen` in polyport.toml",
                "`[grpc] enabled = false`",
            ),
            _ => (
                "--mqtt ADDR, POLYPORT_MQTT=ADDR or `[mqtt] listen` in polyport.toml",
                "`[mqtt] enabled = false`",
            ),
        };
        Self {
            key,
            label,
            about,
            addr: chosen.unwrap_or(default),
            explicit: chosen.is_some(),
            how_to_move,
            switch_off,
        }
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
                self.started.insert(w.key, addr.to_string());
                self.index.push(polyport_http::IndexListener {
                    name: w.key.into(),
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
                w.how_to_move
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
                    w.how_to_move,
                    w.switch_off
                );
                self.not_started.insert(
                    w.key,
                    serde_json::json!({
                        "address": w.addr.to_string(),
                        "reason": why,
                        "move_with": w.how_to_move,
                    }),
                );
                self.index.push(polyport_http::IndexListener {
                    name: w.key.into(),
                    about: w.about.into(),
                    address: w.addr.to_string(),
                    not_started: Some(format!("{why}; move it with {}", w.how_to_move)),
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

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(args.config.as_deref())?;
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    cfg.http.listen = args.http.or(cfg.http.listen);
    cfg.grpc.listen = args.grpc.or(cfg.grpc.listen);
    cfg.mqtt.listen = args.mqtt.or(cfg.mqtt.listen);
    if args.retention_max_events.is_some() {
        cfg.events.retention_max_events = args.retention_max_events;
    }
    if let Some(n) = args.webhooks_allow_networks {
        cfg.webhooks.allow_networks = n.into_iter().filter(|s| !s.is_empty()).collect();
    }
    if let Some(p) = args.webhooks_allow_public {
        cfg.webhooks.allow_public = p;
    }

    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;

    let bus = Bus::new();
    let mut store_cfg = StoreConfig::new(&cfg.data_dir);
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
        ephemeral_topics,
        ..HubConfig::default()
    };
    let hub = if cfg.auth.users.is_empty() && cfg.auth.anonymous {
        Hub::new(Arc::new(store), bus, hub_cfg)
    } else {
        let policy = polyport_core::auth::StaticUsers {
            users: cfg.auth.users.clone(),
            allow_anonymous: cfg.auth.anonymous,
        };
        Hub::with_policy(Arc::new(store), bus, hub_cfg, Box::new(policy))
    };

    let webhooks = if cfg.webhooks.enabled {
        Some(polyport_webhooks::start(
            &hub,
            polyport_webhooks::WebhookConfig {
                timeout: Duration::from_secs(cfg.webhooks.timeout_secs.max(1)),
                max_in_flight: cfg.webhooks.max_in_flight,
                disable_after: Duration::from_secs(cfg.webhooks.disable_after_hours * 3600),
                allow_networks: cfg.webhooks.allow_networks.clone(),
                allow_public: cfg.webhooks.allow_public,
            },
        )?)
    } else {
        None
    };

    if let Some(demo) = args.demo.as_deref() {
        crate::demo::seed(&hub, demo).await?;
    }

    let tracker = TaskTracker::new();
    let stop_accepting = CancellationToken::new();

    let mqtt = if cfg.mqtt.enabled {
        let mqtt_cfg = polyport_mqtt::MqttConfig {
            max_packet_size: cfg.mqtt.max_packet_size,
            receive_max: cfg.mqtt.receive_max.max(1),
            durable_qos0: cfg.mqtt.durable_qos0,
            sys_interval: Duration::from_secs(cfg.mqtt.sys_interval_secs),
            max_queued_messages: cfg.mqtt.max_queued_messages.max(1),
            max_keep_alive: cfg.mqtt.max_keep_alive,
            ..polyport_mqtt::MqttConfig::default()
        };
        Some(
            polyport_mqtt::MqttBroker::start(hub.clone(), mqtt_cfg)
                .await
                .context("restoring MQTT sessions and retained messages")?,
        )
    } else {
        None
    };

    // Every listener is bound before any face is built, so the index at `GET /` can
    // say where each one lives (or why it is not there).
    let mut listeners = Listeners::default();
    let http_listener = match cfg.http.enabled {
        true => {
            let w = Want::new(
                "http",
                "HTTP",
                "REST, SSE, NDJSON, long-poll, WebSocket, GraphQL, OpenAPI",
                cfg.http.listen,
                config::DEFAULT_HTTP,
            );
            listeners.bind(&w).await?
        }
        false => None,
    };
    let grpc_listener = match cfg.grpc.enabled {
        true => {
            let w = Want::new(
                "grpc",
                "gRPC",
                "gRPC and gRPC-Web: Records, Topics, typed collection services, reflection, health",
                cfg.grpc.listen,
                config::DEFAULT_GRPC,
            );
            listeners.bind(&w).await?
        }
        false => None,
    };
    let mqtt_listener = match mqtt.is_some() {
        true => {
            let w = Want::new(
                "mqtt",
                "MQTT",
                "MQTT 3.1, 3.1.1 and 5.0",
                cfg.mqtt.listen,
                config::DEFAULT_MQTT,
            );
            listeners.bind(&w).await?
        }
        false => None,
    };
    if listeners.started.is_empty() {
        bail!("no listener could start; see the warnings above");
    }

    if let Some(listener) = http_listener {
        let addr = listener.local_addr()?;
        let render = prometheus.clone();
        let mut index = polyport_http::Index {
            listeners: listeners.index.clone(),
            endpoints: Vec::new(),
        };
        let extra = if cfg.graphql.enabled {
            index.endpoints.push(polyport_http::IndexEndpoint::new(
                "POST /graphql",
                "GraphQL (GET for queries and GraphiQL, WebSocket for subscriptions; SDL at /graphql/schema.graphql)",
            ));
            polyport_graphql::routes(
                hub.clone(),
                polyport_graphql::GraphqlConfig {
                    introspection: cfg.graphql.introspection,
                    max_depth: cfg.graphql.max_depth,
                    max_complexity: cfg.graphql.max_complexity,
                    max_page_size: cfg.http.max_page_size,
                },
            )?
        } else {
            axum::Router::new()
        };
        let mqtt_ws = mqtt.as_ref().filter(|_| cfg.mqtt.websocket);
        let extra = match mqtt_ws {
            Some(m) => {
                index.endpoints.push(polyport_http::IndexEndpoint::new(
                    "GET /mqtt",
                    "MQTT over WebSocket (subprotocol mqtt)",
                ));
                extra.merge(m.websocket_routes(stop_accepting.clone()))
            }
            None => extra,
        };
        let app = polyport_http::router_with(
            hub.clone(),
            polyport_http::HttpConfig {
                max_body: cfg.http.max_body,
                max_page_size: cfg.http.max_page_size,
                heartbeat: Duration::from_secs(cfg.http.heartbeat_secs.max(1)),
                metrics: Some(Arc::new(move || render.render())),
                cors_origins: cfg.http.cors_origins.clone(),
                hooks: cfg.hooks.clone(),
                index,
                ..polyport_http::HttpConfig::default()
            },
            extra,
        );
        tracing::info!(
            "HTTP listening on http://{addr} (REST, SSE, NDJSON, long-poll, WebSocket /ws and /ws/topics, OpenAPI /openapi.json{}{})",
            if cfg.graphql.enabled {
                ", GraphQL /graphql"
            } else {
                ""
            },
            if mqtt_ws.is_some() {
                ", MQTT over WebSocket /mqtt"
            } else {
                ""
            }
        );
        let stop = stop_accepting.clone();
        tracker.spawn(async move {
            if let Err(e) = polyport_http::serve(listener, app, stop).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
    }
    if let Some(listener) = grpc_listener {
        let addr = listener.local_addr()?;
        let app = polyport_grpc::router(
            hub.clone(),
            polyport_grpc::GrpcConfig {
                max_message: cfg.grpc.max_message,
                max_page_size: cfg.http.max_page_size,
            },
        )
        .await?;
        tracing::info!(
            "gRPC listening on {addr} (Records, Topics, typed collection services, reflection, health)"
        );
        let stop = stop_accepting.clone();
        tracker.spawn(async move {
            if let Err(e) = polyport_http::serve(listener, app, stop).await {
                tracing::error!(error = %e, "gRPC server failed");
            }
        });
    }
    if let (Some(broker), Some(listener)) = (mqtt, mqtt_listener) {
        let addr = listener.local_addr()?;
        tracing::info!("MQTT listening on {addr} (3.1, 3.1.1, 5.0)");
        let stop = stop_accepting.clone();
        tracker.spawn(async move { broker.serve(listener, stop).await });
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
