//! `GET /`: where every face of this server lives — a short HTML page for a browser, the
//! same facts as JSON for anything else — so opening `http://localhost:8080/` is a map,
//! not a 404.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;

use crate::AppState;

/// What `GET /` lists beyond the HTTP face's own endpoints; filled in by the binary,
/// which knows every listener.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Index {
    /// Every listener, started or not.
    pub listeners: Vec<IndexListener>,
    /// Endpoints other faces add to this HTTP port (GraphQL, MQTT over WebSocket, …).
    pub endpoints: Vec<IndexEndpoint>,
}

/// One listener.
#[derive(Clone, Debug, Serialize)]
pub struct IndexListener {
    /// `http`, `grpc`, `mqtt`, …
    pub name: String,
    /// What it speaks.
    pub about: String,
    /// The bound address, or the one that could not be bound.
    pub address: String,
    /// Why it is not running (a default port another program holds, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_started: Option<String>,
}

/// One endpoint on the HTTP port.
#[derive(Clone, Debug, Serialize)]
pub struct IndexEndpoint {
    /// Method and path, e.g. `GET /api/events`.
    pub path: String,
    /// What it is for.
    pub about: String,
}

impl IndexEndpoint {
    /// An endpoint entry.
    pub fn new(path: impl Into<String>, about: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            about: about.into(),
        }
    }
}

/// The HTTP face's own endpoints.
fn own_endpoints() -> Vec<IndexEndpoint> {
    [
        (
            "GET /api/collections",
            "collections and their schemas (REST)",
        ),
        (
            "GET /api/collections/{c}/records",
            "records: filter, sort, paginate; POST creates",
        ),
        ("POST /api/topics/{topic…}", "publish a message on a topic"),
        (
            "GET /api/events?topic=…",
            "Server-Sent Events (resumes by Last-Event-ID)",
        ),
        ("GET /api/stream?topic=…", "NDJSON stream"),
        ("GET /api/poll?topic=…&since=N", "long-poll"),
        (
            "GET /ws",
            "WebSocket JSON protocol: subscribe, publish, records",
        ),
        (
            "GET /ws/topics/{topic…}",
            "raw WebSocket per topic: frames in, payloads out",
        ),
        ("GET /api/webhooks/endpoints", "outbound webhooks"),
        ("POST /hooks/{source}", "inbound webhooks"),
        ("GET /openapi.json", "OpenAPI 3.1 of the live collections"),
        ("GET /api/cluster", "the engine and the nodes alive (admin)"),
        ("GET /metrics", "Prometheus metrics"),
        ("GET /healthz", "liveness (and /readyz)"),
    ]
    .into_iter()
    .map(|(p, a)| IndexEndpoint::new(p, a))
    .collect()
}

/// `GET /`.
pub(crate) async fn index(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let idx = &app.cfg.index;
    let mut endpoints = own_endpoints();
    endpoints.extend(idx.endpoints.iter().cloned());
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html {
        return Html(html(&idx.listeners, &endpoints)).into_response();
    }
    let body = serde_json::json!({
        "name": "polyport",
        "version": env!("CARGO_PKG_VERSION"),
        "listeners": idx.listeners,
        "endpoints": endpoints,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(listeners: &[IndexListener], endpoints: &[IndexEndpoint]) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Polyport</title>\
         <style>body{font:15px/1.5 system-ui,sans-serif;max-width:56rem;margin:2rem auto;padding:0 1rem}\
         td{padding:.15rem 1rem .15rem 0;vertical-align:top}code{font-size:90%}.off{color:#a00}</style>\
         </head><body><h1>Polyport</h1><p>One server, every API style, one event model.</p>\
         <h2>Listeners</h2><table>",
    );
    for l in listeners {
        let state = match &l.not_started {
            Some(why) => format!("<span class=\"off\">not started: {}</span>", escape(why)),
            None => format!("<code>{}</code>", escape(&l.address)),
        };
        out.push_str(&format!(
            "<tr><td><b>{}</b></td><td>{state}</td><td>{}</td></tr>",
            escape(&l.name),
            escape(&l.about)
        ));
    }
    out.push_str("</table><h2>On this port</h2><table>");
    for e in endpoints {
        let path = escape(&e.path);
        // Plain GETs without parameters are links.
        let shown = match e.path.strip_prefix("GET ") {
            Some(p) if !p.contains(['{', '?']) => {
                format!("GET <a href=\"{0}\"><code>{0}</code></a>", escape(p))
            }
            _ => format!("<code>{path}</code>"),
        };
        out.push_str(&format!(
            "<tr><td>{shown}</td><td>{}</td></tr>",
            escape(&e.about)
        ));
    }
    out.push_str("</table></body></html>");
    out
}
