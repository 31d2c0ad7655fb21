//! Polyport's HTTP face on one port: REST for collections and records, topic publishing,
//! the realtime transports (SSE, NDJSON, long-poll, WebSocket), the generated OpenAPI
//! document and operational endpoints.
//!
//! | concern | file |
//! |---|---|
//! | REST handlers | `rest.rs` |
//! | SSE, NDJSON, long-poll | `realtime.rs` |
//! | WebSocket JSON protocol: session and dispatch; one file per op family | `ws/` |
//! | raw topic WebSockets (`/ws/topics/…`) | `ws_topics.rs` |
//! | OpenAPI 3.1 generation, one file per noun | `openapi/` |
//! | HubError → problem+json | `error.rs` |
//! | `GET /`: every face and where it lives | `index.rs` |
//! | query/body parsing | `params.rs` |
//!
//! The adapter holds a [`Hub`] and nothing else; every handler is generic over
//! collections (the collection is a path parameter, its schema is data).

mod cors;
mod error;
mod gate;
mod hooks;
mod identities;
mod index;
mod openapi;
mod params;
mod realtime;
mod rest;
mod serve;
mod webhooks;
mod ws;
mod ws_topics;

/// Events written to SSE, NDJSON, long-poll and WebSocket clients.
pub(crate) static EVENTS_DELIVERED: polyport_core::hot_metrics::HotCounter =
    polyport_core::hot_metrics::HotCounter::new("polyport_events_delivered_total");
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use polyport_core::Hub;

/// This face in the server's adapter list.
pub const ADAPTER: polyport_core::adapter::Spec = polyport_core::adapter::Spec {
    name: "http",
    label: "HTTP",
    about: "REST, SSE, NDJSON, long-poll, WebSocket, GraphQL, OpenAPI",
    default_addr: Some(polyport_core::adapter::loopback(8080)),
    tls: Some(polyport_core::adapter::TlsSpec {
        name: "https",
        default_addr: polyport_core::adapter::loopback(8443),
        alpn: &["h2", "http/1.1"],
    }),
};

pub use error::ApiError;
pub use hooks::{HookScheme, HookSource, HooksConfig};
pub use index::{Index, IndexEndpoint, IndexListener};
pub use serve::{ServeOptions, serve, serve_with};

/// Renders the Prometheus text exposition (installed by the binary).
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// HTTP settings.
#[derive(Clone)]
pub struct HttpConfig {
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Largest WebSocket message, in bytes.
    pub max_ws_message: usize,
    /// Subscriptions one WebSocket may hold.
    pub max_ws_subscriptions: usize,
    /// Page size when `limit` is absent.
    pub default_page_size: usize,
    /// Largest `limit`.
    pub max_page_size: usize,
    /// SSE heartbeat comment interval.
    pub heartbeat: Duration,
    /// `/metrics` renderer, when a recorder is installed.
    pub metrics: Option<MetricsRender>,
    /// Origins browsers may call from (`*` = any); empty disables CORS.
    pub cors_origins: Vec<String>,
    /// Inbound webhook sources.
    pub hooks: HooksConfig,
    /// What `GET /` lists besides this face's own endpoints.
    pub index: Index,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body: 4 << 20,
            max_ws_message: 1 << 20,
            max_ws_subscriptions: 256,
            default_page_size: 50,
            max_page_size: 1000,
            heartbeat: Duration::from_secs(15),
            metrics: None,
            cors_origins: vec!["*".into()],
            hooks: HooksConfig::default(),
            index: Index::default(),
        }
    }
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("max_body", &self.max_body)
            .field("max_page_size", &self.max_page_size)
            .finish_non_exhaustive()
    }
}

/// Shared handler state.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) hub: Hub,
    pub(crate) cfg: Arc<HttpConfig>,
}

/// The whole HTTP application.
pub fn router(hub: Hub, cfg: HttpConfig) -> Router {
    router_with(hub, cfg, Router::new())
}

/// The HTTP application plus routes of other faces that share the port (GraphQL, …),
/// which then get the same CORS, body limit, metrics and error fallbacks.
pub fn router_with(hub: Hub, cfg: HttpConfig, extra: Router) -> Router {
    let state = AppState {
        hub,
        cfg: Arc::new(cfg),
    };
    let max_body = state.cfg.max_body;
    let cors = cors::Cors::new(&state.cfg.cors_origins);
    let app = Router::new()
        .route(
            "/api/collections",
            get(rest::list_collections).post(rest::create_collection),
        )
        .route(
            "/api/collections/{name}",
            get(rest::get_collection)
                .patch(rest::patch_collection)
                .delete(rest::delete_collection),
        )
        .route(
            "/api/collections/{name}/records",
            get(rest::list_records).post(rest::create_record),
        )
        .route(
            "/api/collections/{name}/records/{id}",
            get(rest::get_record)
                .put(rest::replace_record)
                .patch(rest::patch_record)
                .delete(rest::delete_record),
        )
        .route("/api/topics/{*topic}", post(rest::publish))
        .route(
            "/api/webhooks/endpoints",
            get(webhooks::list).post(webhooks::create),
        )
        .route(
            "/api/webhooks/endpoints/{id}",
            get(webhooks::get)
                .patch(webhooks::patch)
                .delete(webhooks::delete),
        )
        .route(
            "/api/webhooks/endpoints/{id}/rotate-secret",
            post(webhooks::rotate),
        )
        .route(
            "/api/webhooks/endpoints/{id}/recover",
            post(webhooks::recover),
        )
        .route(
            "/api/webhooks/endpoints/{id}/deliveries",
            get(webhooks::deliveries),
        )
        .route(
            "/api/webhooks/endpoints/{id}/deliveries/{seq}",
            get(webhooks::delivery),
        )
        .route(
            "/api/webhooks/endpoints/{id}/deliveries/{seq}/retry",
            post(webhooks::retry),
        )
        .route("/hooks/{source}", post(hooks::receive))
        .route("/api/auth/token", post(gate::issue_token))
        .route("/api/auth/me", get(identities::me))
        .route(
            "/api/auth/users",
            get(identities::list_users).post(identities::create_user),
        )
        .route(
            "/api/auth/users/{name}",
            get(identities::get_user)
                .patch(identities::patch_user)
                .delete(identities::delete_user),
        )
        .route(
            "/api/auth/keys",
            get(identities::list_keys).post(identities::create_key),
        )
        .route("/api/auth/keys/{id}", delete(identities::revoke_key))
        .route("/api/events", get(realtime::sse))
        .route("/api/stream", get(realtime::ndjson))
        .route("/api/poll", get(realtime::poll))
        .route("/ws", get(ws::upgrade))
        .route("/ws/topics/{*topic}", get(ws_topics::upgrade))
        .route("/", get(index::index))
        .route("/openapi.json", get(openapi::document))
        .route("/api/cluster", get(cluster))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state.clone())
        .merge(extra)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body));
    app.layer(middleware::from_fn_with_state(
        Arc::new(Front {
            app: state,
            metrics: RequestMetrics::default(),
            cors,
        }),
        front,
    ))
}

/// What every request meets before its handler, in one layer (each layer costs every
/// request a boxed service and future): CORS, the caller's identity, request metrics.
struct Front {
    app: AppState,
    metrics: RequestMetrics,
    /// `None`: CORS off.
    cors: Option<cors::Cors>,
}

/// CORS preflights are answered first (not counted); then the caller is admitted or
/// refused (counted either way), and the response gets its CORS headers.
async fn front(State(f): State<Arc<Front>>, mut req: Request, next: Next) -> Response {
    if let Some(answer) = f.cors.as_ref().and_then(|c| c.preflight(&req)) {
        return answer;
    }
    let origin = f
        .cors
        .as_ref()
        .and_then(|_| req.headers().get(header::ORIGIN).cloned());
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = method_label(req.method());
    let mut res = match gate::admit(&f.app, &mut req) {
        None => next.run(req).await,
        Some(refused) => refused,
    };
    f.metrics.record(
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        method,
        res.status(),
        started.elapsed().as_secs_f64(),
    );
    if let Some(c) = &f.cors {
        c.decorate(origin.as_ref(), res.headers_mut());
    }
    res
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not support that method",
    )
}

async fn healthz() -> Response {
    json_ok(r#"{"status":"ok"}"#)
}

async fn readyz(State(app): State<AppState>) -> Response {
    let not_ready = if app.hub.shutdown_token().is_cancelled() {
        serde_json::json!({"status": "shutting down"})
    } else if app.hub.identities().awaiting_jwks() {
        // A load balancer should not send JWT callers here before their keys are known.
        serde_json::json!({"status": "not ready", "reason": "the [auth.jwt] jwks_url keys have not been fetched yet"})
    } else if let Err(reason) = app.hub.ready() {
        serde_json::json!({"status": "not ready", "reason": reason})
    } else {
        return json_ok(r#"{"status":"ready"}"#);
    };
    rest::json_response(StatusCode::SERVICE_UNAVAILABLE, not_ready)
}

/// The engine and the nodes alive (one on the embedded engine). Admins only: it says
/// where every node listens.
async fn cluster(
    State(app): State<AppState>,
    gate::Caller(caller): gate::Caller,
) -> error::ApiResult<Response> {
    app.hub
        .authorize(&caller, polyport_core::auth::Action::Admin)?;
    let m = app.hub.membership();
    let nodes = m.nodes().await?;
    Ok(rest::json_response(
        StatusCode::OK,
        serde_json::json!({ "engine": app.hub.engine(), "node": m.me(), "nodes": nodes }),
    ))
}

fn json_ok(body: &'static str) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn metrics_text(State(app): State<AppState>) -> Response {
    let body = app.cfg.metrics.as_ref().map(|r| r()).unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        body,
    )
        .into_response()
}

/// The request counter and latency histogram of each (route, method, status) seen, so
/// a request neither builds a label set nor looks it up in the recorder. Routes and
/// methods are bounded sets (an unknown method is `other`), statuses too.
#[derive(Default)]
struct RequestMetrics {
    /// route label → (method, status) → handles.
    handles: std::sync::RwLock<FastMap<Box<str>, ByMethodStatus>>,
}

type Handles = (metrics::Counter, metrics::Histogram);
type ByMethodStatus = FastMap<(&'static str, u16), Handles>;
/// Looked up on every request: foldhash, not SipHash (the keys are our own routes).
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

impl RequestMetrics {
    fn record(&self, route: &str, method: &'static str, status: StatusCode, secs: f64) {
        let key = (method, status.as_u16());
        let found = self
            .handles
            .read()
            .ok()
            .and_then(|m| m.get(route).and_then(|by| by.get(&key)).cloned());
        let (requests, latency) = match found {
            Some(h) => h,
            None => {
                let h: Handles = (
                    metrics::counter!("polyport_http_requests_total", "method" => method, "route" => route.to_string(), "status" => status.as_u16().to_string()),
                    metrics::histogram!("polyport_http_request_seconds", "method" => method, "route" => route.to_string()),
                );
                if let Ok(mut m) = self.handles.write() {
                    m.entry(route.into()).or_default().insert(key, h.clone());
                }
                h
            }
        };
        requests.increment(1);
        latency.record(secs);
    }
}

/// A label per known method only: arbitrary method strings must not grow the series.
fn method_label(m: &axum::http::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}
