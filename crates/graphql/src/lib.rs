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
//! | routes, WebSocket, GraphiQL, SDL | this file |

mod errors;
mod loaders;
mod names;
mod over_http;
mod schema;

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_graphql::dataloader::DataLoader;
use async_graphql::dynamic::Schema;
use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, GraphiQLSource};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use polyport_core::Hub;

use crate::loaders::{RecordLoader, ReverseLoader};

/// This face in the server's adapter list (mounted on the HTTP listener).
pub const ADAPTER: polyport_core::adapter::Spec = polyport_core::adapter::Spec {
    name: "graphql",
    label: "GraphQL",
    about: "GraphQL queries, mutations and subscriptions at /graphql",
    default_addr: None,
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
}

impl GqlState {
    fn schema(&self) -> Schema {
        (**self.schema.load()).clone()
    }

    /// Per-request (or per-connection) loaders, so batching never leaks across callers.
    fn loaders(&self) -> (DataLoader<RecordLoader>, DataLoader<ReverseLoader>) {
        (
            DataLoader::new(RecordLoader(self.hub.clone()), tokio::spawn).max_batch_size(500),
            DataLoader::new(ReverseLoader(self.hub.clone()), tokio::spawn).max_batch_size(500),
        )
    }

    fn data(&self) -> async_graphql::Data {
        let (a, b) = self.loaders();
        let mut d = async_graphql::Data::default();
        d.insert(a);
        d.insert(b);
        d
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
    };
    tokio::spawn(rebuild_on_change(hub, cfg, swap));
    Ok(Router::new()
        .route("/graphql", get(get_graphql).post(post_graphql))
        .route("/graphql/schema.graphql", get(sdl))
        .with_state(state))
}

fn ctx() -> polyport_core::AuthContext {
    polyport_core::AuthContext::anonymous(polyport_core::Origin("graphql"))
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
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let media = over_http::negotiate(&headers);
    let body = match body {
        Ok(b) => b,
        Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return over_http::Refusal::too_large().into_response(media);
        }
        Err(rej) => return over_http::Refusal::bad_request(rej.body_text()).into_response(media),
    };
    match over_http::parse_post(&headers, &body) {
        Ok(req) => execute(&s, req, media).await,
        Err(r) => r.into_response(media),
    }
}

async fn execute(s: &GqlState, req: async_graphql::Request, media: over_http::Media) -> Response {
    let schema = s.schema();
    let (a, b) = s.loaders();
    over_http::respond(schema.execute(req.data(a).data(b)).await, media)
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
        let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &s).await {
            Ok(p) => p,
            Err(r) => return r.into_response(),
        };
        let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &s).await {
            Ok(u) => u,
            Err(r) => return r.into_response(),
        };
        let schema = s.schema();
        let data = s.data();
        return upgrade
            .protocols(ALL_WEBSOCKET_PROTOCOLS)
            .on_upgrade(move |socket| async move {
                GraphQLWebSocket::new(socket, schema, protocol)
                    .with_data(data)
                    .serve()
                    .await
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
    match over_http::parse_get(parts.uri.query()) {
        Ok(req) => execute(&s, req, media).await,
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
