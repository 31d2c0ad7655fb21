//! Polyport's gRPC face (HTTP/2, default port 50051).
//!
//! Every method — the shipped generic API (`proto/polyport/v1`: `Records`, `Topics`) and
//! the typed per-collection services generated from the schemas
//! (`polyport.collections.UserService/CreateUser`, …) — is served by one dispatcher over
//! `prost_reflect::DynamicMessage`, because tonic's generated routers need names known at
//! compile time and collections appear at run time. Server reflection (v1 and v1alpha)
//! and `grpc.health.v1` are always on and follow the catalog as it is rebuilt; gRPC-Web
//! requests (HTTP/1.1 or 2) are translated in front of the same dispatcher.
//!
//! | concern | file |
//! |---|---|
//! | collections → `.proto` text | `proto_gen.rs` |
//! | compiling protos, routing table | `catalog.rs` |
//! | dynamic message codec | `codec.rs` |
//! | method dispatch, shared request and stream helpers | `handlers/mod.rs` |
//! | `Records` service, change streams | `handlers/records.rs` |
//! | typed per-collection services | `handlers/typed.rs` |
//! | `Topics` service (Publish, Subscribe, Chat) | `handlers/topics.rs` |
//! | `Webhooks` service | `handlers/webhooks.rs` |
//! | JSON mapping, HubError → Status | `convert.rs` |

mod catalog;
mod codec;
mod convert;
mod handlers;
mod proto_gen;

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use polyport_core::{AuthContext, Hub, Origin};
use prost_reflect::DynamicMessage;
use tonic::Status;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

pub use catalog::{RECORDS_PROTO, TOPICS_PROTO, WEBHOOKS_PROTO};
pub use proto_gen::{COLLECTIONS_FILE, COLLECTIONS_PACKAGE, collections_proto};

use crate::catalog::Catalog;
use crate::codec::DynCodec;
use crate::handlers::Handlers;

/// This face in the server's adapter list.
pub const ADAPTER: polyport_core::adapter::Spec = polyport_core::adapter::Spec {
    name: "grpc",
    label: "gRPC",
    about: "gRPC and gRPC-Web: Records, Topics, typed collection services, reflection, health",
    default_addr: Some(polyport_core::adapter::loopback(50051)),
    tls: Some(polyport_core::adapter::TlsSpec {
        name: "grpcs",
        default_addr: polyport_core::adapter::loopback(50052),
        alpn: &["h2"],
    }),
};

/// gRPC settings.
#[derive(Clone, Debug)]
pub struct GrpcConfig {
    /// Largest request message, in bytes.
    pub max_message: usize,
    /// Largest `page_size`.
    pub max_page_size: usize,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            max_message: 4 << 20,
            max_page_size: 1000,
        }
    }
}

/// Why the gRPC face could not start.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The shipped or generated protos did not compile.
    #[error("cannot compile the gRPC protos: {0}")]
    Proto(String),
    /// Reflection could not index the descriptors.
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(String),
}

type GrpcService = BoxCloneSyncService<Request, http::Response<tonic::body::Body>, Infallible>;

/// The services that come from tonic's own crates, rebuilt with the catalog.
struct Builtins {
    reflection_v1: GrpcService,
    reflection_v1alpha: GrpcService,
}

#[derive(Clone)]
struct GrpcState {
    handlers: Handlers,
    catalog: Arc<ArcSwap<Catalog>>,
    builtins: Arc<ArcSwap<Builtins>>,
    health: GrpcService,
    reporter: tonic_health::server::HealthReporter,
    max_message: usize,
}

/// Reflection over everything this port serves: the catalog, health, and both
/// reflection versions — each tonic builder would otherwise list only itself, so
/// `grpcurl list` would miss health and the other reflection version.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

fn builtins(catalog: &Catalog) -> Result<Builtins, GrpcError> {
    let fds = catalog.file_descriptor_set();
    let v1 = reflection()
        .register_file_descriptor_set(fds.clone())
        .build_v1()
        .map_err(|e| GrpcError::Reflection(e.to_string()))?;
    let v1alpha = reflection()
        .register_file_descriptor_set(fds)
        .build_v1alpha()
        .map_err(|e| GrpcError::Reflection(e.to_string()))?;
    Ok(Builtins {
        reflection_v1: BoxCloneSyncService::new(v1),
        reflection_v1alpha: BoxCloneSyncService::new(v1alpha),
    })
}

async fn report_serving(reporter: &tonic_health::server::HealthReporter, catalog: &Catalog) {
    for name in catalog.service_names() {
        reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
}

/// The gRPC application (serve it with `axum::serve`; HTTP/2 prior knowledge works).
/// Spawns the task that rebuilds the catalog when collections change.
pub async fn router(hub: Hub, cfg: GrpcConfig) -> Result<Router, GrpcError> {
    let colls = hub
        .collections(&AuthContext::system(Origin("grpc")))
        .map_err(|e| GrpcError::Proto(e.to_string()))?;
    let catalog = Catalog::build(&colls)?;
    let (reporter, health) = tonic_health::server::health_reporter();
    report_serving(&reporter, &catalog).await;
    let state = GrpcState {
        handlers: Handlers {
            hub: hub.clone(),
            max_page: cfg.max_page_size,
            ctx: AuthContext::anonymous(Origin("grpc")),
        },
        builtins: Arc::new(ArcSwap::from_pointee(builtins(&catalog)?)),
        catalog: Arc::new(ArcSwap::from_pointee(catalog)),
        health: BoxCloneSyncService::new(health),
        reporter,
        max_message: cfg.max_message,
    };
    tokio::spawn(rebuild_on_change(hub, state.clone()));
    let grpc = Router::new().fallback(dispatch).with_state(state);
    // gRPC-Web (for browsers) is translated in front of the same dispatcher; browsers
    // calling from another origin need CORS and must be able to read the gRPC trailers.
    let web = tower::Layer::layer(&tonic_web::GrpcWebLayer::new(), grpc);
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([http::Method::POST, http::Method::OPTIONS])
        .allow_headers(tower_http::cors::Any)
        .expose_headers([
            http::HeaderName::from_static("grpc-status"),
            http::HeaderName::from_static("grpc-message"),
            http::HeaderName::from_static("grpc-status-details-bin"),
        ]);
    Ok(Router::new().fallback_service(web).layer(cors))
}

async fn rebuild_on_change(hub: Hub, state: GrpcState) {
    let mut watch = hub.watch_collections();
    let shutdown = hub.shutdown_token();
    loop {
        tokio::select! {
            r = watch.changed() => if r.is_err() { return },
            _ = shutdown.cancelled() => {
                state.reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                return;
            }
        }
        let Ok(colls) = hub.collections(&AuthContext::system(Origin("grpc"))) else {
            continue;
        };
        let rebuilt = Catalog::build(&colls).and_then(|c| Ok((builtins(&c)?, c)));
        match rebuilt {
            Ok((b, c)) => {
                // Routes first: a client that sees a new service in reflection or health
                // must be able to call it at once.
                let c = Arc::new(c);
                state.catalog.store(c.clone());
                state.builtins.store(Arc::new(b));
                report_serving(&state.reporter, &c).await;
                tracing::debug!(collections = colls.len(), "gRPC catalog rebuilt");
            }
            Err(e) => {
                tracing::error!(error = %e, "gRPC catalog rebuild failed; keeping the previous one")
            }
        }
    }
}

fn into_axum(r: http::Response<tonic::body::Body>) -> Response {
    r.map(axum::body::Body::new)
}

/// Who a call is: `authorization` metadata (`Basic` or `Bearer`, or `x-api-key`) through the Hub's
/// authenticate seam, the identities every face checks; without it the caller is
/// named by the client certificate a TLS listener verified, else anonymous, if anonymous
/// callers are let in. Each call counts against the caller's request rate.
fn authenticate(
    hub: &Hub,
    headers: &http::HeaderMap,
    peer: Option<&polyport_core::adapter::Peer>,
) -> Result<AuthContext, Status> {
    const GRPC: Origin = Origin("grpc");
    let who = match headers.get(http::header::AUTHORIZATION) {
        Some(v) => hub.authenticate_header(GRPC, v.to_str().unwrap_or("")),
        None => match headers.get("x-api-key") {
            Some(k) => hub.authenticate_bearer(GRPC, k.to_str().unwrap_or("").trim()),
            None => match peer {
                Some(p) => hub.authenticate_peer(GRPC, p, None, None),
                None => hub.authenticate(GRPC, None, None),
            },
        },
    };
    let who = who.map_err(|e| Status::unauthenticated(e.to_string()))?;
    hub.admit_request(&who, peer.and_then(|p| p.addr).map(|a| a.ip()))
        .map_err(convert::status)?;
    Ok(who)
}

/// Routes one call by its path, `/package.Service/Method`.
async fn dispatch(State(st): State<GrpcState>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let builtin = match service {
        "grpc.reflection.v1.ServerReflection" => Some(st.builtins.load().reflection_v1.clone()),
        "grpc.reflection.v1alpha.ServerReflection" => {
            Some(st.builtins.load().reflection_v1alpha.clone())
        }
        "grpc.health.v1.Health" => Some(st.health.clone()),
        _ => None,
    };
    // Health answers probes without credentials; everything else needs the caller known.
    let caller = match service {
        "grpc.health.v1.Health" => AuthContext::anonymous(Origin("grpc")),
        _ => match authenticate(&st.handlers.hub, req.headers(), req.extensions().get()) {
            Ok(c) => c,
            Err(status) => return into_axum(status.into_http()),
        },
    };
    if let Some(svc) = builtin {
        return match svc.oneshot(req).await {
            Ok(r) => into_axum(r),
            Err(never) => match never {},
        };
    }
    let catalog = st.catalog.load_full();
    let Some(route) = catalog.routes.get(&path).cloned() else {
        return into_axum(Status::unimplemented(format!("unknown method {path}")).into_http());
    };
    metrics::counter!("polyport_grpc_calls_total", "method" => path.clone()).increment(1);
    let mut grpc = tonic::server::Grpc::new(DynCodec::new(route.input.clone()))
        .max_decoding_message_size(st.max_message);
    let h = Handlers {
        ctx: caller,
        ..st.handlers.clone()
    };
    let resp = match (route.client_streaming, route.server_streaming) {
        (false, false) => {
            let svc = tower::service_fn(move |r: tonic::Request<DynamicMessage>| {
                let (h, route) = (h.clone(), route.clone());
                async move {
                    h.unary(&route, r.into_inner())
                        .await
                        .map(tonic::Response::new)
                }
            });
            grpc.unary(svc, req).await
        }
        (false, true) => {
            let svc = tower::service_fn(move |r: tonic::Request<DynamicMessage>| {
                let (h, route) = (h.clone(), route.clone());
                async move {
                    h.server_stream(&route, r.into_inner())
                        .await
                        .map(tonic::Response::new)
                }
            });
            grpc.server_streaming(svc, req).await
        }
        (true, true) => {
            let svc =
                tower::service_fn(move |r: tonic::Request<tonic::Streaming<DynamicMessage>>| {
                    let (h, route) = (h.clone(), route.clone());
                    async move { Ok(tonic::Response::new(h.chat(&route, r.into_inner()))) }
                });
            grpc.streaming(svc, req).await
        }
        (true, false) => Status::unimplemented("client streaming is not offered").into_http(),
    };
    into_axum(resp)
}
