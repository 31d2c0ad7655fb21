//! REST for the webhook registry: endpoints, their deliveries and attempt logs, secret
//! rotation and replay.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use polyport_core::webhook::Redeliver;
use polyport_core::webhook::{DeliveryStatus, EndpointSpec};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::gate::Caller;
use crate::params::{Params, json_body, optional_json_body};
use crate::rest::{body, json_response, object};

pub(crate) async fn list(
    State(app): State<AppState>,
    Caller(caller): Caller,
) -> ApiResult<Response> {
    let eps = app.hub.endpoints(&caller)?;
    let items: Vec<Value> = eps.iter().map(|e| json!(e.redacted())).collect();
    Ok(json_response(StatusCode::OK, json!({ "items": items })))
}

pub(crate) async fn create(
    State(app): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let spec: EndpointSpec = json_body(&headers, &body(b)?)?;
    let ep = app.hub.create_endpoint(&caller, spec).await?;
    Ok(json_response(StatusCode::CREATED, json!(ep)))
}

pub(crate) async fn get(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ep = app.hub.endpoint(&caller, &id)?;
    Ok(json_response(StatusCode::OK, json!(ep.redacted())))
}

pub(crate) async fn patch(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let patch = Value::Object(object(json_body(&headers, &body(b)?)?)?);
    let ep = app.hub.update_endpoint(&caller, &id, patch).await?;
    Ok(json_response(StatusCode::OK, json!(ep.redacted())))
}

pub(crate) async fn delete(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.hub.delete_endpoint(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rotate {
    #[serde(default)]
    secret: Option<String>,
    /// Seconds the old secret keeps signing (default 24 h).
    #[serde(default)]
    overlap_secs: Option<u64>,
}

pub(crate) async fn rotate(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let r: Rotate = optional_json_body(&headers, &body(b)?)?;
    let overlap = Duration::from_secs(r.overlap_secs.unwrap_or(24 * 3600).min(30 * 24 * 3600));
    let ep = app
        .hub
        .rotate_endpoint_secret(&caller, &id, r.secret, overlap)
        .await?;
    Ok(json_response(StatusCode::OK, json!(ep)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Recover {
    /// Re-send every matching event after this sequence.
    #[serde(default)]
    since: Option<u64>,
}

/// `POST …/recover`: without `since`, the dead-letter list goes back in the queue; with
/// it, every matching event after that sequence is (re)sent.
pub(crate) async fn recover(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let r: Recover = optional_json_body(&headers, &body(b)?)?;
    let which = match r.since {
        Some(s) => Redeliver::Since(s),
        None => Redeliver::Dead,
    };
    let n = app.hub.redeliver(&caller, &id, which).await?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        json!({ "requeued": n }),
    ))
}

pub(crate) async fn deliveries(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    let status =
        match p.get("status").filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request("status must be pending, delivered or dead")
            })?),
        };
    let limit = p.u64("limit", 1000)?.unwrap_or(100).max(1) as usize;
    let before = p.u64("before", u64::MAX)?;
    let items = app
        .hub
        .deliveries(&caller, &id, status, before, limit)
        .await?;
    let next = if items.len() == limit {
        items.last().map(|d| d.seq)
    } else {
        None
    };
    Ok(json_response(
        StatusCode::OK,
        json!({ "items": items, "next_before": next }),
    ))
}

fn seq_of(s: &str) -> ApiResult<u64> {
    s.parse::<u64>().map_err(|_| {
        ApiError::bad_request("a delivery is named by its event's sequence (a whole number)")
    })
}

pub(crate) async fn delivery(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path((id, seq)): Path<(String, String)>,
) -> ApiResult<Response> {
    let seq = seq_of(&seq)?;
    let (d, attempts) = app.hub.delivery(&caller, &id, seq).await?;
    let mut v = json!(d);
    v["attempt_log"] = json!(attempts);
    Ok(json_response(StatusCode::OK, v))
}

/// `POST …/deliveries/{seq}/retry`: send this event to this endpoint again now.
pub(crate) async fn retry(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path((id, seq)): Path<(String, String)>,
) -> ApiResult<Response> {
    let seq = seq_of(&seq)?;
    if seq == 0 {
        return Err(ApiError::bad_request("sequences start at 1"));
    }
    let n = app.hub.redeliver(&caller, &id, Redeliver::One(seq)).await?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        json!({ "requeued": n }),
    ))
}
