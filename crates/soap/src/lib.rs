//! Polyport's SOAP face: SOAP 1.1 and 1.2 at `POST /soap` on the HTTP port, with a
//! WSDL 1.1 (`GET /soap?wsdl`, `/soap.wsdl`) generated from the live collections and
//! regenerated when they change.
//!
//! No maintained Rust crate serves SOAP, and quick-xml's serde mode mishandles
//! namespaces, so the XML layer (`xml.rs`) is our own over quick-xml's namespace-aware
//! reader: prefixes are arbitrary, DTDs and foreign entities are refused, and depth,
//! element and attribute counts are capped.
//!
//! | concern | file |
//! |---|---|
//! | safe namespace-aware parsing, escaping writer | `xml.rs` |
//! | versions, content types, header blocks, WS-Security | `envelope.rs` |
//! | faults per version, `HubError` mapping | `fault.rs` |
//! | operations and the WSDL, from the collections | `service.rs` |
//! | records ↔ XML by field type | `values.rs` |
//! | running an operation through the Hub | `ops.rs` |
//! | routes, dispatch, SOAPAction | this file |
//!
//! Where Polyport differs from a typical SOAP stack: one endpoint serves both versions
//! (the content type decides, and the answer comes in the version asked); a SOAP 1.1
//! request must carry a `SOAPAction` header (an empty one dispatches by the body
//! element), and a non-empty action must name the operation in the body; header blocks
//! other than WS-Security are not processed, so `mustUnderstand` on any of them
//! (WS-Addressing included) is a `MustUnderstand` fault. A caller with neither a
//! WS-Security token nor HTTP credentials is named by the client certificate an HTTPS
//! listener verified, as on every other face.

mod envelope;
mod fault;
mod ops;
mod service;
mod values;
pub mod xml;

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use polyport_core::adapter::Peer;
use polyport_core::{AuthContext, Hub, Origin};

use crate::envelope::Version;
use crate::fault::Fault;
use crate::service::Service;

/// The namespace of every element the service defines.
pub const TNS: &str = "urn:polyport:soap";

/// This face in the server's adapter list (mounted on the HTTP listener).
pub const ADAPTER: polyport_core::adapter::Spec = polyport_core::adapter::Spec {
    name: "soap",
    label: "SOAP",
    about: "SOAP 1.1 and 1.2 at /soap, WSDL at /soap?wsdl",
    default_addr: None,
    tls: None,
};

/// SOAP settings.
#[derive(Clone, Debug)]
pub struct SoapConfig {
    /// Caps on each request document.
    pub limits: xml::Limits,
    /// Largest `limit` on a `List` operation.
    pub max_page_size: usize,
}

impl Default for SoapConfig {
    fn default() -> Self {
        Self {
            limits: xml::Limits::default(),
            max_page_size: 1000,
        }
    }
}

#[derive(Clone)]
struct SoapState {
    hub: Hub,
    cfg: Arc<SoapConfig>,
    /// The service, and the collections generation it was built from.
    service: Arc<ArcSwap<(u64, Service)>>,
    generation: tokio::sync::watch::Receiver<u64>,
}

impl SoapState {
    /// The service for the collections as they are now: rebuilt on the first request
    /// after a change, so a collection created a moment ago is already in the WSDL and
    /// callable (no window in which a background rebuild has not run yet).
    fn service(&self) -> Arc<(u64, Service)> {
        let now = *self.generation.borrow();
        let current = self.service.load_full();
        if current.0 == now {
            return current;
        }
        match self.hub.collections(&AuthContext::system(Origin("soap"))) {
            Ok(colls) => {
                let fresh = Arc::new((now, Service::build(&colls)));
                self.service.store(fresh.clone());
                tracing::debug!(collections = colls.len(), "SOAP service regenerated");
                fresh
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the collections; keeping the previous SOAP service");
                current
            }
        }
    }
}

/// Why the SOAP face could not start.
#[derive(Debug, thiserror::Error)]
pub enum SoapError {
    /// The collections could not be read.
    #[error("cannot read the collections for the WSDL: {0}")]
    Collections(String),
}

/// Routes for `/soap` and `/soap.wsdl`; the service follows the collections as they
/// change.
pub fn routes(hub: Hub, cfg: SoapConfig) -> Result<Router, SoapError> {
    let generation = hub.watch_collections();
    let built_from = *generation.borrow();
    let colls = hub
        .collections(&AuthContext::system(Origin("soap")))
        .map_err(|e| SoapError::Collections(e.to_string()))?;
    let state = SoapState {
        hub,
        cfg: Arc::new(cfg),
        service: Arc::new(ArcSwap::from_pointee((built_from, Service::build(&colls)))),
        generation,
    };
    Ok(Router::new()
        .route("/soap", get(get_wsdl).post(post_soap))
        .route("/soap.wsdl", get(get_wsdl))
        .with_state(state))
}

/// The WSDL, addressed to the host the client used.
async fn get_wsdl(State(s): State<SoapState>, headers: HeaderMap) -> Response {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text("x-forwarded-host")
        .or_else(|| text(header::HOST.as_str()))
        .unwrap_or("localhost");
    let scheme = text("x-forwarded-proto").unwrap_or("http");
    let address = format!("{scheme}://{host}/soap");
    (
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        s.service().1.wsdl(&address),
    )
        .into_response()
}

fn fault_response(f: &Fault, v: Version, status: Option<StatusCode>) -> Response {
    metrics::counter!("polyport_soap_faults_total", "code" => f.code).increment(1);
    let mut res = (
        status.unwrap_or_else(|| f.status(v)),
        [(header::CONTENT_TYPE, v.content_type())],
        f.render(v),
    )
        .into_response();
    if f.retry_after_secs > 0 {
        res.headers_mut().insert(
            header::RETRY_AFTER,
            axum::http::HeaderValue::from(f.retry_after_secs),
        );
    }
    res
}

async fn post_soap(
    State(s): State<SoapState>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let t = match envelope::transport(&headers) {
        Ok(t) => t,
        Err(f) => {
            return fault_response(&f, Version::V11, Some(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
    };
    let v = t.version;
    let peer = peer.map(|Extension(p)| p);
    match handle(&s, &t, peer.as_ref(), body).await {
        Ok(markup) => {
            metrics::counter!("polyport_soap_requests_total").increment(1);
            let mut o = xml::Out::default();
            let env = v.prefix();
            o.raw(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
                .open(
                    &format!("{env}:Envelope"),
                    &[(&format!("xmlns:{env}"), v.ns())],
                )
                .open(&format!("{env}:Body"), &[])
                .raw(&markup)
                .close(&format!("{env}:Body"))
                .close(&format!("{env}:Envelope"));
            ([(header::CONTENT_TYPE, v.content_type())], o.0).into_response()
        }
        Err((f, status)) => fault_response(&f, v, status),
    }
}

type Refusal = (Fault, Option<StatusCode>);

async fn handle(
    s: &SoapState,
    t: &envelope::Transport,
    peer: Option<&Peer>,
    body: Result<Bytes, BytesRejection>,
) -> Result<String, Refusal> {
    let body = match body {
        Ok(b) => b,
        Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let f = Fault::sender(
                "too_large",
                "the request is larger than the server accepts ([http] max_body)",
            );
            return Err((f, Some(StatusCode::PAYLOAD_TOO_LARGE)));
        }
        Err(rej) => return Err((Fault::sender("bad_request", rej.body_text()), None)),
    };
    let src = std::str::from_utf8(&body).map_err(|_| {
        (
            Fault::sender("malformed_xml", "the request is not UTF-8"),
            None,
        )
    })?;
    let root = xml::parse(src, &s.cfg.limits).map_err(|e| {
        let code = match e {
            xml::XmlError::Dtd => "dtd_refused",
            xml::XmlError::Entity(_) => "entity_refused",
            xml::XmlError::Malformed(_) => "malformed_xml",
            xml::XmlError::TooDeep(_) => "too_deep",
            xml::XmlError::TooManyElements(_) => "too_many_elements",
            xml::XmlError::TooManyAttributes(_) => "too_many_attributes",
        };
        (Fault::sender(code, e.to_string()), None)
    })?;
    let env = envelope::parse(root, t.version).map_err(|f| (f, None))?;
    let ctx = match &env.credentials {
        None => match &t.http_credentials {
            Some(h) => s.hub.authenticate_header(Origin("soap"), h),
            None => match peer {
                Some(p) => s.hub.authenticate_peer(Origin("soap"), p, None, None),
                None => s.hub.authenticate(Origin("soap"), None, None),
            },
        },
        Some(c) => s.hub.authenticate(
            Origin("soap"),
            Some(&c.username),
            Some(c.password.as_bytes()),
        ),
    }
    .map_err(|e| {
        tracing::info!(error = %e, "SOAP caller refused");
        (
            Fault::security(
                "FailedAuthentication",
                "the security token could not be authenticated",
            ),
            None,
        )
    })?;
    s.hub
        .admit_request(&ctx, peer.and_then(|p| p.addr).map(|a| a.ip()))
        .map_err(|e| (Fault::from(e), Some(StatusCode::TOO_MANY_REQUESTS)))?;
    let name = &env.body.name;
    let svc = s.service();
    let svc = &svc.1;
    let op = match &name.ns {
        Some(ns) if ns != TNS => None,
        _ => svc.ops.get(&name.local),
    }
    .ok_or_else(|| {
        let f = Fault::sender(
            "unknown_operation",
            format!("no operation {name}: see the WSDL at /soap?wsdl"),
        );
        (f, None)
    })?;
    check_action(t, &name.local).map_err(|f| (f, None))?;
    ops::run(
        &s.hub,
        &ctx,
        s.cfg.max_page_size,
        &name.local,
        op,
        &svc.types,
        &env.body,
    )
    .await
    .map_err(|f| (f, None))
}

/// SOAP 1.1 requires the `SOAPAction` header; a non-empty action (1.1 header or 1.2
/// `action` parameter) must name the body's operation, as its URI or its bare name.
fn check_action(t: &envelope::Transport, op: &str) -> Result<(), Fault> {
    match (&t.action, t.version) {
        (None, Version::V11) => Err(Fault::sender(
            "missing_soap_action",
            "SOAP 1.1 requests need a SOAPAction header (SOAPAction: \"\" dispatches by the body element)",
        )),
        (None, Version::V12) => Ok(()),
        (Some(a), _) if a.is_empty() || *a == Service::action(op) || a == op => Ok(()),
        (Some(a), _) => Err(Fault::sender(
            "action_mismatch",
            format!(
                "SOAPAction '{a}' does not match the body's operation {op} (expected '{}')",
                Service::action(op)
            ),
        )),
    }
}

/// Parses `data` as a request body (XML, envelope, then the operation's parameters
/// against a typed and a schemaless collection), for the fuzz target; must never panic.
#[doc(hidden)]
pub fn fuzz_envelope(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(root) = xml::parse(src, &xml::Limits::default()) else {
        return;
    };
    let svc = service::fuzz_service();
    for v in [Version::V11, Version::V12] {
        if let Ok(env) = envelope::parse(root.clone(), v) {
            let _ = fault::Fault::sender("x", "y").render(v);
            for t in svc.types.values() {
                let _ = values::document(&env.body, t, &["id", "expected_version"]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        /// Envelopes around arbitrary markup: the parse, envelope and parameter layers
        /// never panic whatever the body holds.
        #[test]
        fn requests_never_panic(body in "[<>/a-zA-Z:=\"' &;#0-9!\\[\\]?-]{0,300}") {
            for ns in [crate::envelope::SOAP11_NS, crate::envelope::SOAP12_NS] {
                let doc = format!(
                    r#"<e:Envelope xmlns:e="{ns}" xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><e:Body><CreateItem xmlns="urn:polyport:soap">{body}</CreateItem></e:Body></e:Envelope>"#
                );
                super::fuzz_envelope(doc.as_bytes());
            }
        }
    }
}
