//! The one list of faces `serve` walks. Adding a protocol is a crate that exports a
//! [`Spec`], a `[name]` section in `config.rs`, and one [`Entry`] below; its `--name`
//! flag, `POLYPORT_NAME` variable, `listeners.json` key, index entry, "port taken" rule
//! and drain come from walking this list.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use futures::future::join_all;
use polyport_core::Hub;
use polyport_core::adapter::Listener;
use polyport_core::adapter::Spec;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, FaceTls};

/// One face in the list.
pub(crate) struct Entry {
    pub(crate) spec: &'static Spec,
    /// Its `[name]` section's `enabled` and `listen`.
    pub(crate) section: fn(&Config) -> Section,
    /// Builds the face before any listener is bound (restoring state, compiling schemas).
    pub(crate) prepare: for<'a> fn(&'a Ctx<'a>) -> BoxFuture<'a, anyhow::Result<Prepared>>,
}

/// Every face, in start order. The HTTP face hosts the others' [`Mount`]s.
pub(crate) const ENTRIES: &[Entry] = &[
    Entry {
        spec: &polyport_http::ADAPTER,
        section: |c| Section::new(c.http.enabled, c.http.listen, Some(&c.http.tls)),
        prepare: http,
    },
    Entry {
        spec: &polyport_graphql::ADAPTER,
        section: |c| Section::new(c.graphql.enabled, None, None),
        prepare: graphql,
    },
    Entry {
        spec: &polyport_soap::ADAPTER,
        section: |c| Section::new(c.soap.enabled, None, None),
        prepare: soap,
    },
    Entry {
        spec: &polyport_grpc::ADAPTER,
        section: |c| Section::new(c.grpc.enabled, c.grpc.listen, Some(&c.grpc.tls)),
        prepare: grpc,
    },
    Entry {
        spec: &polyport_mqtt::ADAPTER,
        section: |c| Section::new(c.mqtt.enabled, c.mqtt.listen, Some(&c.mqtt.tls)),
        prepare: mqtt,
    },
    Entry {
        spec: &polyport_amqp::ADAPTER,
        section: |c| Section::new(c.amqp.enabled, c.amqp.listen, Some(&c.amqp.tls)),
        prepare: amqp,
    },
    Entry {
        spec: &polyport_stomp::ADAPTER,
        section: |c| Section::new(c.stomp.enabled, c.stomp.listen, Some(&c.stomp.tls)),
        prepare: stomp,
    },
];

/// The faces that have a listener of their own.
pub(crate) fn listeners() -> impl Iterator<Item = &'static Entry> {
    ENTRIES.iter().filter(|e| e.spec.default_addr.is_some())
}

/// A face's switch, address and TLS listener as configured.
pub(crate) struct Section {
    pub(crate) enabled: bool,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) tls: FaceTls,
}

impl Section {
    fn new(enabled: bool, listen: Option<SocketAddr>, tls: Option<&FaceTls>) -> Self {
        let tls = tls.cloned().unwrap_or_default();
        Self {
            enabled,
            listen,
            tls,
        }
    }
}

/// `127.0.0.1:1883, TLS 127.0.0.1:8883`: where a face's listeners are, for its log line.
fn addresses(listeners: &[Listener]) -> String {
    listeners
        .iter()
        .map(|l| {
            let a = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            match l.is_tls() {
                true => format!("TLS {a}"),
                false => a,
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a face gets to build itself.
pub(crate) struct Ctx<'a> {
    pub(crate) hub: &'a Hub,
    pub(crate) cfg: &'a Config,
    pub(crate) prometheus: &'a metrics_exporter_prometheus::PrometheusHandle,
    /// Fires when listeners stop accepting (shutdown has begun).
    pub(crate) stop: &'a CancellationToken,
    /// The exchanges and queues AMQP and STOMP share, loaded by the first that asks.
    pub(crate) broker: &'a tokio::sync::OnceCell<Arc<polyport_broker::Broker>>,
}

impl Ctx<'_> {
    /// The shared broker, restoring the durable exchanges, queues and bindings once.
    pub(crate) async fn broker(&self) -> anyhow::Result<Arc<polyport_broker::Broker>> {
        let cfg = polyport_broker::BrokerConfig {
            queue_window: self.cfg.amqp.queue_window.max(1),
        };
        let b = self
            .broker
            .get_or_try_init(|| polyport_broker::Broker::load(self.hub.clone(), cfg))
            .await
            .context("restoring AMQP exchanges and queues")?;
        Ok(b.clone())
    }
}

/// Runs a face on its bound listeners (plain, TLS or both); the future ends once the
/// face has drained.
pub(crate) type Serve =
    Box<dyn FnOnce(Vec<Listener>, &mut Host) -> anyhow::Result<BoxFuture<'static, ()>> + Send>;

/// A prepared face: its own listener's server, and routes it adds to the HTTP port.
#[derive(Default)]
pub(crate) struct Prepared {
    pub(crate) serve: Option<Serve>,
    pub(crate) mounts: Vec<Mount>,
}

/// Routes one face adds to the HTTP listener.
pub(crate) struct Mount {
    /// For the index at `GET /`, e.g. `POST /graphql`.
    pub(crate) endpoint: &'static str,
    pub(crate) about: &'static str,
    /// For the start-up line, e.g. `GraphQL /graphql`.
    pub(crate) label: &'static str,
    pub(crate) routes: axum::Router,
}

/// What exists once every listener is bound: the index and the mounts.
pub(crate) struct Host {
    pub(crate) index: Vec<polyport_http::IndexListener>,
    pub(crate) mounts: Vec<Mount>,
    pub(crate) stop: CancellationToken,
}

fn http<'a>(cx: &'a Ctx<'a>) -> BoxFuture<'a, anyhow::Result<Prepared>> {
    let hub = cx.hub.clone();
    let guards = cx.cfg.limits.http("HTTP");
    let c = cx.cfg.http.clone();
    let hooks = cx.cfg.hooks.clone();
    let render = cx.prometheus.clone();
    let serve: Serve = Box::new(move |listeners, host| {
        let addrs = addresses(&listeners);
        let mounts = std::mem::take(&mut host.mounts);
        let index = polyport_http::Index {
            listeners: host.index.clone(),
            endpoints: mounts
                .iter()
                .map(|m| polyport_http::IndexEndpoint::new(m.endpoint, m.about))
                .collect(),
        };
        let labels: String = mounts.iter().map(|m| format!(", {}", m.label)).collect();
        let extra = mounts
            .into_iter()
            .fold(axum::Router::new(), |r, m| r.merge(m.routes));
        let app = polyport_http::router_with(
            hub,
            polyport_http::HttpConfig {
                max_body: c.max_body,
                max_page_size: c.max_page_size,
                heartbeat: Duration::from_secs(c.heartbeat_secs.max(1)),
                metrics: Some(Arc::new(move || render.render())),
                cors_origins: c.cors_origins,
                max_ws_subscriptions: c.max_ws_subscriptions.max(1),
                hooks,
                index,
                ..polyport_http::HttpConfig::default()
            },
            extra,
        );
        tracing::info!(
            "HTTP listening on {addrs} (REST, SSE, NDJSON, long-poll, WebSocket /ws and /ws/topics, OpenAPI /openapi.json{labels})"
        );
        let stop = host.stop.clone();
        Ok(Box::pin(async move {
            join_all(listeners.into_iter().map(|l| async {
                if let Err(e) =
                    polyport_http::serve_with(l, app.clone(), stop.clone(), guards).await
                {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            }))
            .await;
        }) as BoxFuture<'static, ()>)
    });
    Box::pin(async move {
        Ok(Prepared {
            serve: Some(serve),
            mounts: Vec::new(),
        })
    })
}

fn graphql<'a>(cx: &'a Ctx<'a>) -> BoxFuture<'a, anyhow::Result<Prepared>> {
    Box::pin(async move {
        let c = &cx.cfg.graphql;
        let routes = polyport_graphql::routes(
            cx.hub.clone(),
            polyport_graphql::GraphqlConfig {
                introspection: c.introspection,
                max_depth: c.max_depth,
                max_complexity: c.max_complexity,
                max_page_size: cx.cfg.http.max_page_size,
            },
        )?;
        Ok(Prepared {
            serve: None,
            mounts: vec![Mount {
                endpoint: "POST /graphql",
                about: "GraphQL (GET for queries and GraphiQL, WebSocket for subscriptions; SDL at /graphql/schema.graphql)",
                label: "GraphQL /graphql",
                routes,
            }],
        })
    })
}

fn soap<'a>(cx: &'a Ctx<'a>) -> BoxFuture<'a, anyhow::Result<Prepared>> {
    Box::pin(async move {
        let c = &cx.cfg.soap;
        let routes = polyport_soap::routes(
            cx.hub.clone(),
            polyport_soap::SoapConfig {
                limits: polyport_soap::xml::Limits {
                    max_depth: c.max_depth.max(4),
                    max_elements: c.max_elements.max(16),
                    max_attributes: c.max_attributes.max(8),
                },
                max_page_size: cx.cfg.http.max_page_size,
            },
        )?;
        Ok(Prepared {
            serve: None,
            mounts: vec![Mount {
                endpoint: "POST /soap",
                about: "SOAP 1.1 and 1.2 (WSDL at /soap?wsdl)",
                label: "SOAP /soap",
                routes,
            }],
        })
    })
}

fn grpc<'a>(cx: &'a Ctx<'a>) -> BoxFuture<'a, anyhow::Result<Prepared>> {
    Box::pin(async move {
        let app = polyport_grpc::router(
            cx.hub.clone(),
            polyport_grpc::GrpcConfig {
                max_message: cx.cfg.grpc.max_message,
                max_page_size: cx.cfg.http.max_page_size,
            },
        )
        .await?;
        let guards = cx.cfg.limits.http("gRPC");
        let serve: Serve = Box::new(move |listeners, host| {
            tracing::info!(
                "gRPC listening on {} ({})",
                addresses(&listeners),
                polyport_grpc::ADAPTER.about
            );
            let stop = host.stop.clone();
            Ok(Box::pin(async move {
                join_all(listeners.into_iter().map(|l| async {
                    if let Err(e) =
                        polyport_http::serve_with(l, app.clone(), stop.clone(), guards).await
                    {
                        tracing::error!(error = %e, "gRPC server failed");
                    }
                }))
                .await;
            }))
        });
        Ok(Prepared {
            serve: Some(serve),
            mounts: Vec::new(),
        })
    })
}

fn mqtt<'a>(cx: &'a Ctx<'a>) -> BoxFuture<'a, anyhow::Result<Prepared>> {
    Box::pin(async move {
        let c = &cx.cfg.mqtt;
        let mqtt_cfg = polyport_mqtt::MqttConfig {
            max_packet_size: c.max_packet_size,
            receive_max: c.receive_max.max(1),
            durable_qos0: c.durable_qos0,
            sys_interval: Duration::from_secs(c.sys_interval_secs),
            max_queued_messages: c.max_queued_messages.max(1),
            max_keep_alive: c.max_keep_alive,
            max_subscriptions: c.max_subscriptions.max(1),
            connections: cx.cfg.limits.connections(),
            ..polyport_mqtt::MqttConfig::default()
        };
        let broker = polyport_mqtt::MqttBroker::start(cx.hub.clone(), mqtt_cfg)
            .await
            .context("restoring MQTT sessions and retained messages")?;
        let mounts = match c.websocket {
            true => vec![Mount {
                endpoint: "GET /mqtt",
                about: "MQTT over WebSocket (subprotocol mqtt)",
                label: "MQTT over WebSocket /mqtt",
                routes: broker.websocket_routes(cx.stop.clone()),
            }],
            false => Vec::new(),
        };
        let serve: Serve = Box::new(move |listeners, host| {
            tracing::info!(
                "MQTT listening on {} ({})",
                addresses(&listeners),
                polyport_mqtt::ADAPTER.about
            );
            let stop = host.stop.clone();
            Ok(Box::pin(async move {
                join_all(listeners.into_iter().map(|l| broker.serve(l, stop.clone()))).await;
            }))
        });
        Ok(Prepared {
            serve: Some(serve),
            mounts,
        })
    })
}

fn amqp<'a>(cx: &'a Ctx<'a>) -> BoxFuture<'a, anyhow::Result<Prepared>> {
    Box::pin(async move {
        let c = &cx.cfg.amqp;
        let amqp_cfg = polyport_amqp::AmqpConfig {
            frame_max: c.frame_max.max(4096),
            channel_max: c.channel_max.max(1),
            heartbeat: c.heartbeat,
            max_message: c.max_message,
            connections: cx.cfg.limits.connections(),
            max_consumers: c.max_consumers.max(1),
        };
        let broker = polyport_amqp::AmqpBroker::new(cx.broker().await?, amqp_cfg);
        let serve: Serve = Box::new(move |listeners, host| {
            tracing::info!(
                "AMQP listening on {} ({})",
                addresses(&listeners),
                polyport_amqp::ADAPTER.about
            );
            let stop = host.stop.clone();
            Ok(Box::pin(async move {
                join_all(listeners.into_iter().map(|l| broker.serve(l, stop.clone()))).await;
            }))
        });
        Ok(Prepared {
            serve: Some(serve),
            mounts: Vec::new(),
        })
    })
}

fn stomp<'a>(cx: &'a Ctx<'a>) -> BoxFuture<'a, anyhow::Result<Prepared>> {
    Box::pin(async move {
        let c = &cx.cfg.stomp;
        let cfg = polyport_stomp::StompConfig {
            limits: polyport_stomp::Limits {
                max_frame: c.max_frame.max(1024),
                max_headers: c.max_headers.max(8),
                max_header_line: c.max_header_line.max(256),
            },
            heartbeat_ms: c.heartbeat_ms,
            connections: cx.cfg.limits.connections(),
            max_subscriptions: c.max_subscriptions.max(1),
        };
        let server = polyport_stomp::StompServer::new(cx.broker().await?, cfg);
        let mounts = match c.websocket {
            true => vec![Mount {
                endpoint: "GET /stomp",
                about: "STOMP over WebSocket (subprotocols v12.stomp, v11.stomp, v10.stomp)",
                label: "STOMP over WebSocket /stomp",
                routes: server.websocket_routes(cx.stop.clone()),
            }],
            false => Vec::new(),
        };
        let serve: Serve = Box::new(move |listeners, host| {
            tracing::info!(
                "STOMP listening on {} ({})",
                addresses(&listeners),
                polyport_stomp::ADAPTER.about
            );
            let stop = host.stop.clone();
            Ok(Box::pin(async move {
                join_all(listeners.into_iter().map(|l| server.serve(l, stop.clone()))).await;
            }))
        });
        Ok(Prepared {
            serve: Some(serve),
            mounts,
        })
    })
}

/// `--NAME ADDR` / `POLYPORT_NAME` for every listener (a face's own, and its TLS one
/// as `--mqtts` …), generated from [`ENTRIES`] so no face can forget one.
#[derive(Debug, Default)]
pub(crate) struct ListenFlags(pub(crate) BTreeMap<&'static str, SocketAddr>);

/// Every listener name with its label, what it serves and default address.
fn listen_flags() -> impl Iterator<Item = (&'static str, String, SocketAddr)> {
    listeners().flat_map(|e| {
        let plain = e.spec.default_addr.map(|a| {
            (
                e.spec.name,
                format!("{} ({})", e.spec.label, e.spec.about),
                a,
            )
        });
        let tls = e.spec.tls.as_ref().map(|t| {
            (
                t.name,
                format!(
                    "{} over TLS, served when a certificate is set",
                    e.spec.label
                ),
                t.default_addr,
            )
        });
        plain.into_iter().chain(tls)
    })
}

impl clap::FromArgMatches for ListenFlags {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self(
            listen_flags()
                .filter_map(|(name, _, _)| m.get_one::<SocketAddr>(name).map(|a| (name, *a)))
                .collect(),
        ))
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for ListenFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        listen_flags().fold(cmd, |cmd, (name, about, default)| {
            cmd.arg(
                clap::Arg::new(name)
                    .long(name)
                    .value_name("ADDR")
                    .env(format!("POLYPORT_{}", name.to_ascii_uppercase()))
                    .value_parser(clap::value_parser!(SocketAddr))
                    .help(format!(
                        "{about} listen address; port 0 picks a free port [default: {default}]"
                    )),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// `polyport adapters`: every face, where it listens by default and how to move it.
pub(crate) fn print(json: bool) -> anyhow::Result<()> {
    let rows: Vec<serde_json::Value> = ENTRIES
        .iter()
        .map(|e| {
            let listen = e.spec.default_addr.map(|a| {
                serde_json::json!({
                    "default": a.to_string(),
                    "flag": format!("--{}", e.spec.name),
                    "env": e.spec.env_var(),
                })
            });
            let tls = e.spec.tls.as_ref().map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "default": t.default_addr.to_string(),
                    "flag": format!("--{}", t.name),
                    "env": t.env_var(),
                    "section": format!("[{}.tls]", e.spec.name),
                })
            });
            serde_json::json!({
                "name": e.spec.name,
                "label": e.spec.label,
                "about": e.spec.about,
                "section": format!("[{}]", e.spec.name),
                "listener": listen,
                "tls_listener": tls,
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for e in ENTRIES {
        let s = e.spec;
        match s.default_addr {
            Some(a) => println!(
                "{:<8} {:<21} --{} / {} / [{}] listen   {}",
                s.name,
                a,
                s.name,
                s.env_var(),
                s.name,
                s.about
            ),
            None => println!(
                "{:<8} {:<21} on the HTTP listener; [{}] enabled   {}",
                s.name, "-", s.name, s.about
            ),
        }
        if let Some(t) = &s.tls {
            println!(
                "{:<8} {:<21} --{} / {} / [{}.tls] listen   {} over TLS (with a certificate)",
                t.name,
                t.default_addr,
                t.name,
                t.env_var(),
                s.name,
                s.label
            );
        }
    }
    Ok(())
}
