//! Polyport's GraphQL face, served on the HTTP port at `/graphql`.
//!
//! The schema is generated from the live collections (async-graphql's dynamic schema) and
//! rebuilt and swapped atomically whenever a collection changes, so a new collection or
//! field appears without a restart. Queries, mutations and subscriptions all go through
//! the [`Hub`]; relations are batched per request with DataLoaders (no N+1).
//!
//! | concern | file |
//! |---|---|
//! | collection → type/field names | `names.rs` |
//! | schema assembly, shared argument and error helpers | `schema/mod.rs` |
//! | record object types, forward and reverse relations | `schema/records.rs` |
//! | single-record and list queries, Relay connections | `schema/queries.rs` |
//! | create/update/delete mutations, input objects | `schema/mutations.rs` |
//! | `Event`/`RecordChange` types, subscriptions | `schema/events.rs` |
//! | webhook endpoint type, query and mutations | `schema/webhooks.rs` |
//! | batched relation loading | `loaders.rs` |
//! | GraphQL over HTTP: requests, media types, status codes | `over_http.rs` |
//! | the WebSocket protocols (graphql-transport-ws, legacy graphql-ws) | `ws.rs` |
//! | one execution per distinct live subscription, its bytes shared | `shared.rs` |
//! | routes, WebSocket upgrade, GraphiQL, SDL | this file |

mod errors;
mod loaders;
mod names;
mod over_http;
mod schema;
mod shared;
mod ws;

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_graphql::dataloader::DataLoader;
use async_graphql::dynamic::Schema;
use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, GraphiQLSource};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use polyport_core::{AuthContext, Hub, HubError, Origin};

use crate::loaders::{RecordLoader, ReverseLoader};

/// This face in the server's adapter list (mounted on the HTTP listener).
pub const ADAPTER: polyport_core::adapter::Spec = polyport_core::adapter::Spec {
    name: "graphql",
    label: "GraphQL",
    about: "GraphQL queries, mutations and subscriptions at /graphql",
    default_addr: None,
    tls: None,
};

/// GraphQL settings.
#[derive(Clone, Debug)]
pub struct GraphqlConfig {
    /// Allow schema introspection (GraphiQL needs it).
    pub introspection: bool,
    /// Deepest query accepted.
    pub max_depth: usize,
    /// Most complex query accepted (async-graphql's complexity measure).
    pub max_complexity: usize,
    /// Largest `first` on list connections.
    pub max_page_size: usize,
}

impl Default for GraphqlConfig {
    fn default() -> Self {
        Self {
            introspection: true,
            max_depth: 16,
            max_complexity: 2000,
            max_page_size: 1000,
        }
    }
}

#[derive(Clone)]
struct GqlState {
    hub: Hub,
    schema: Arc<ArcSwap<Schema>>,
    shares: Arc<shared::Shares>,
}

impl GqlState {
    fn schema(&self) -> Schema {
        (**self.schema.load()).clone()
    }

    /// What a WebSocket connection executes with: the schema of the moment (kept for
    /// the connection's life) and the shared subscriptions.
    fn executor(&self) -> shared::SharingExecutor {
        shared::SharingExecutor {
            schema: self.schema.load_full(),
            shares: self.shares.clone(),
        }
    }

    /// Per-request (or per-connection) data: the caller and loaders that read as the
    /// caller, so batching never leaks across callers.
    fn data(&self, caller: AuthContext) -> async_graphql::Data {
        let mut d = async_graphql::Data::default();
        d.insert(
            DataLoader::new(RecordLoader(self.hub.clone(), caller.clone()), tokio::spawn)
                .max_batch_size(500),
        );
        d.insert(
            DataLoader::new(
                ReverseLoader(self.hub.clone(), caller.clone()),
                tokio::spawn,
            )
            .max_batch_size(500),
        );
        d.insert(caller);
        d
    }

    /// The caller the HTTP gate identified, as a GraphQL caller; with no gate in front,
    /// an anonymous one (refused where anonymous callers are).
    fn caller(&self, parts: &axum::http::Extensions) -> Result<AuthContext, HubError> {
        match parts.get::<AuthContext>() {
            Some(c) => Ok(AuthContext {
                origin: Origin("graphql"),
                ..c.clone()
            }),
            None => self.hub.authenticate(Origin("graphql"), None, None),
        }
    }
}

impl GqlState {
    /// Who a WebSocket connection is: `connection_init`'s `Authorization` (Basic or
    /// Bearer, any case), `token`/`access_token`/`accessToken`, or `username` and
    /// `password`; else whoever the upgrade request was.
    fn connection_caller(
        &self,
        payload: &serde_json::Value,
        from_gate: Option<AuthContext>,
    ) -> async_graphql::Result<AuthContext> {
        const GQL: Origin = Origin("graphql");
        let field = |names: &[&str]| {
            names.iter().find_map(|n| {
                payload
                    .as_object()?
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .and_then(|(_, v)| v.as_str())
            })
        };
        let who = if let Some(h) = field(&["authorization"]) {
            self.hub.authenticate_header(GQL, h)
        } else if let Some(t) = field(&["token", "access_token", "accessToken"]) {
            self.hub.authenticate_bearer(GQL, t)
        } else if let (Some(u), Some(p)) = (field(&["username"]), field(&["password"])) {
            self.hub.authenticate(GQL, Some(u), Some(p.as_bytes()))
        } else if let Some(c) = from_gate {
            Ok(AuthContext { origin: GQL, ..c })
        } else {
            self.hub.authenticate(GQL, None, None)
        };
        who.map_err(schema::gql_err)
    }
}

/// Why the GraphQL face could not start.
#[derive(Debug, thiserror::Error)]
pub enum GraphqlError {
    /// The generated schema was rejected by async-graphql.
    #[error("cannot build the GraphQL schema: {0}")]
    Schema(String),
}

/// Routes for `/graphql` (POST/GET queries, WebSocket subscriptions on the same path,
/// GraphiQL for browsers) and `/graphql/schema.graphql` (SDL). Spawns the task that
/// rebuilds the schema when collections change; it ends with the hub.
pub fn routes(hub: Hub, cfg: GraphqlConfig) -> Result<Router, GraphqlError> {
    let colls = hub
        .collections(&ctx())
        .map_err(|e| GraphqlError::Schema(e.to_string()))?;
    let initial = schema::build(&hub, &colls, &cfg).map_err(|e| GraphqlError::Schema(e.0))?;
    let swap = Arc::new(ArcSwap::from_pointee(initial));
    let state = GqlState {
        hub: hub.clone(),
        schema: swap.clone(),
        shares: shared::Shares::new(hub.clone()),
    };
    tokio::spawn(rebuild_on_change(hub, cfg, swap));
    Ok(Router::new()
        .route("/graphql", get(get_graphql).post(post_graphql))
        .route("/graphql/schema.graphql", get(sdl))
        .with_state(state))
}

/// The catalogue is read as the server: the schema shows every collection, and each
/// call is checked as its caller.
fn ctx() -> AuthContext {
    AuthContext::system(Origin("graphql"))
}

async fn rebuild_on_change(hub: Hub, cfg: GraphqlConfig, swap: Arc<ArcSwap<Schema>>) {
    let mut changes = hub.collection_changes();
    while let Some(colls) = changes.next().await {
        match schema::build(&hub, &colls, &cfg) {
            Ok(s) => {
                swap.store(Arc::new(s));
                tracing::debug!(collections = colls.len(), "GraphQL schema rebuilt");
            }
            Err(e) => {
                tracing::error!(error = %e.0, "GraphQL schema rebuild failed; keeping the previous schema")
            }
        }
    }
}

async fn post_graphql(
    State(s): State<GqlState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let media = over_http::negotiate(&headers);
    let caller = match s.caller(&extensions) {
        Ok(c) => c,
        Err(e) => return over_http::Refusal::from_hub(e).into_response(media),
    };
    let body = match body {
        Ok(b) => b,
        Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return over_http::Refusal::too_large().into_response(media);
        }
        Err(rej) => return over_http::Refusal::bad_request(rej.body_text()).into_response(media),
    };
    match over_http::parse_post(&headers, &body) {
        Ok(req) => execute(&s, req, media, caller).await,
        Err(r) => r.into_response(media),
    }
}

async fn execute(
    s: &GqlState,
    mut req: async_graphql::Request,
    media: over_http::Media,
    caller: AuthContext,
) -> Response {
    let schema = s.schema();
    req.data = s.data(caller);
    over_http::respond(schema.execute(req).await, media)
}

/// GET: a WebSocket upgrade (subscriptions, both `graphql-transport-ws` and the legacy
/// `graphql-ws`), GraphiQL for a browser, or a query in the URL.
async fn get_graphql(State(s): State<GqlState>, headers: HeaderMap, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    if headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    {
        // The first subprotocol offered that is a GraphQL one (as async-graphql-axum picks).
        let Some(protocol) = headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').find_map(|p| p.trim().parse().ok()))
        else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &s).await {
            Ok(u) => u,
            Err(r) => return r.into_response(),
        };
        let executor = s.executor();
        // Credentials in `connection_init` (graphql-ws clients' `connectionParams`) win
        // over the upgrade request's; with neither, the connection is refused there when
        // anonymous callers are.
        let from_gate = parts.extensions.get::<AuthContext>().cloned();
        let st = s.clone();
        return upgrade
            .protocols(ALL_WEBSOCKET_PROTOCOLS)
            .read_buffer_size(polyport_core::adapter::WS_READ_BUFFER)
            .on_upgrade(move |socket| {
                ws::serve(socket, executor, protocol, move |payload| async move {
                    let caller = st.connection_caller(&payload, from_gate)?;
                    Ok(st.data(caller))
                })
            })
            .into_response();
    }
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html && parts.uri.query().is_none_or(|q| !q.contains("query=")) {
        return Html(
            GraphiQLSource::build()
                .endpoint("/graphql")
                .subscription_endpoint("/graphql")
                .finish(),
        )
        .into_response();
    }
    let media = over_http::negotiate(&headers);
    let caller = match s.caller(&parts.extensions) {
        Ok(c) => c,
        Err(e) => return over_http::Refusal::from_hub(e).into_response(media),
    };
    match over_http::parse_get(parts.uri.query()) {
        Ok(req) => execute(&s, req, media, caller).await,
        Err(r) => r.into_response(media),
    }
}

async fn sdl(State(s): State<GqlState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        s.schema().sdl(),
    )
        .into_response()
}
