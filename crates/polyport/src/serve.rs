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
use crate::config::Config;

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Binds a listener, naming the way to move it when the port is taken.
async fn bind(name: &str, addr: SocketAddr, how_to_move: &str) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "cannot start the {name} listener: {addr} is already in use by another program. \
             Move it with {how_to_move} (port 0 picks a free port)."
        ),
        Err(e) => Err(e).with_context(|| format!("cannot start the {name} listener on {addr}")),
    }
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(args.config.as_deref())?;
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    if let Some(h) = args.http {
        cfg.http.listen = h;
    }
    if let Some(g) = args.grpc {
        cfg.grpc.listen = g;
    }
    if let Some(m) = args.mqtt {
        cfg.mqtt.listen = m;
    }
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
    let mut bound = BTreeMap::new();

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

    if cfg.http.enabled {
        let listener = bind(
            "HTTP",
            cfg.http.listen,
            "--http ADDR, POLYPORT_HTTP=ADDR or `[http] listen` in polyport.toml",
        )
        .await?;
        let addr = listener.local_addr()?;
        let render = prometheus.clone();
        let extra = if cfg.graphql.enabled {
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
            Some(m) => extra.merge(m.websocket_routes(stop_accepting.clone())),
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
                ..polyport_http::HttpConfig::default()
            },
            extra,
        );
        tracing::info!(
            "HTTP listening on http://{addr} (REST, SSE, NDJSON, long-poll, WebSocket /ws, OpenAPI /openapi.json{}{})",
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
        bound.insert("http", addr.to_string());
        let stop = stop_accepting.clone();
        tracker.spawn(async move {
            if let Err(e) = polyport_http::serve(listener, app, stop).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
    }
    if cfg.grpc.enabled {
        let listener = bind(
            "gRPC",
            cfg.grpc.listen,
            "--grpc ADDR, POLYPORT_GRPC=ADDR or `[grpc] listen` in polyport.toml",
        )
        .await?;
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
        bound.insert("grpc", addr.to_string());
        let stop = stop_accepting.clone();
        tracker.spawn(async move {
            if let Err(e) = polyport_http::serve(listener, app, stop).await {
                tracing::error!(error = %e, "gRPC server failed");
            }
        });
    }
    if let Some(broker) = mqtt {
        let listener = bind(
            "MQTT",
            cfg.mqtt.listen,
            "--mqtt ADDR, POLYPORT_MQTT=ADDR or `[mqtt] listen` in polyport.toml",
        )
        .await?;
        let addr = listener.local_addr()?;
        tracing::info!("MQTT listening on {addr} (3.1, 3.1.1, 5.0)");
        bound.insert("mqtt", addr.to_string());
        let stop = stop_accepting.clone();
        tracker.spawn(async move { broker.serve(listener, stop).await });
    }
    tracker.close();

    let listeners = cfg.data_dir.join("listeners.json");
    std::fs::write(&listeners, serde_json::to_vec_pretty(&bound)?)
        .with_context(|| format!("writing {}", listeners.display()))?;

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
    let _ = std::fs::remove_file(&listeners);
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
