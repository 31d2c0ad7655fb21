//! Realtime over plain HTTP: SSE, NDJSON streaming and long-polling.
//!
//! All three parse the same query parameters into one [`SubscribeRequest`] and render the
//! same CloudEvents; they differ only in framing and in what a lost position means: SSE
//! (browsers cannot read an error body from EventSource) resumes with an in-band
//! `polyport.notice.resumed` event, the others answer 410 unless `strict=false`.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use polyport_core::query::Filter;
use polyport_core::{
    HubError, Item, Overflow, RecordSelector, SubscribeRequest, Subscription, TopicFilter,
};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::gate::Caller;
use crate::params::Params;

/// Builds a subscription request from `topic` (repeatable), `since`, `epoch`, `strict`,
/// `collection` + `id` + `filter`, and `group`.
pub(crate) fn subscribe_request(p: &Params, default_strict: bool) -> ApiResult<SubscribeRequest> {
    let mut filters = Vec::new();
    for t in p.all("topic") {
        filters.push(TopicFilter::new(t).map_err(HubError::from)?);
    }
    let records = match p.get("collection").filter(|c| !c.is_empty()) {
        Some(c) => Some(RecordSelector {
            collection: c.to_string(),
            id: p.get("id").filter(|s| !s.is_empty()).map(str::to_string),
            filter: match p.get("filter").filter(|f| !f.trim().is_empty()) {
                Some(f) => Some(Filter::parse(f).map_err(HubError::from)?),
                None => None,
            },
        }),
        None => {
            if p.get("filter").is_some_and(|f| !f.trim().is_empty()) {
                return Err(ApiError::bad_request(
                    "'filter' applies to record changes: add 'collection'",
                ));
            }
            None
        }
    };
    if filters.is_empty() && records.is_none() {
        return Err(ApiError::bad_request(
            "give at least one 'topic' filter (e.g. topic=sensors/%23) or a 'collection'",
        ));
    }
    Ok(SubscribeRequest {
        position_by_name: false,
        filters,
        records,
        since: p.u64("since", u64::MAX)?,
        epoch: p.get("epoch").filter(|e| !e.is_empty()).map(str::to_string),
        strict: p.bool("strict")?.unwrap_or(default_strict),
        group: p.get("group").filter(|g| !g.is_empty()).map(str::to_string),
        ack: None,
        queue: None,
        adapter_managed: false,
        durable_only: false,
        overflow: overflow(p.get("overflow"))?,
    })
}

/// `overflow=disconnect` (default) or `overflow=notify`.
pub(crate) fn overflow(v: Option<&str>) -> ApiResult<Overflow> {
    match v {
        None | Some("") | Some("disconnect") => Ok(Overflow::Disconnect),
        Some("notify") => Ok(Overflow::Notify),
        Some(other) => Err(ApiError::bad_request(format!(
            "overflow must be 'disconnect' or 'notify', not '{other}'"
        ))),
    }
}

/// The CloudEvent bytes for an item (notices carry no sequence).
pub(crate) fn item_json(item: &Item) -> Bytes {
    match item {
        Item::Event(d) => d.event.cloudevent_json().clone(),
        Item::Notice(n) => Bytes::from(n.to_cloudevent().to_string()),
    }
}

fn error_event(e: &HubError) -> Value {
    let p = ApiError::from(HubError::InvalidRequest(e.to_string()));
    json!({ "type": "polyport.error", "code": e.code(), "detail": p.detail })
}

// ----- SSE -----

/// `GET /api/events`: Server-Sent Events. `id:` is the sequence, so a browser's
/// EventSource resumes by itself with `Last-Event-ID` after a reconnect.
pub(crate) async fn sse(
    State(app): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    let mut req = subscribe_request(&p, false)?;
    if let Some(last) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        req.since = Some(last);
    }
    let sub = app.hub.subscribe(&caller, req).await?;
    metrics::counter!("polyport_http_streams_total", "kind" => "sse").increment(1);
    let hello = SseEvent::default().comment(format!(
        "polyport epoch={} position={}",
        sub.epoch(),
        sub.start_position()
    ));
    let events = frames(
        sub,
        |item| {
            let data = item_json(&item);
            let mut ev = SseEvent::default().data(String::from_utf8_lossy(&data));
            if let Item::Event(d) = &item
                && let Some(seq) = d.event.seq
            {
                ev = ev.id(seq.to_string());
            }
            ev
        },
        |e| {
            SseEvent::default()
                .event("error")
                .data(error_event(&e).to_string())
        },
    );
    let stream = futures::stream::once(async move { Ok::<_, Infallible>(hello) }).chain(events);
    let sse = Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(app.cfg.heartbeat)
            .text("heartbeat"),
    );
    let mut res = sse.into_response();
    res.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

/// A subscription as a stream of rendered frames; an error becomes a last frame.
pub(crate) fn frames<T, F, E>(
    sub: Subscription,
    render: F,
    render_err: E,
) -> impl Stream<Item = Result<T, Infallible>> + Send + 'static
where
    T: Send + 'static,
    F: Fn(Item) -> T + Send + 'static,
    E: Fn(HubError) -> T + Send + 'static,
{
    futures::stream::unfold(Some(sub), |state| async move {
        let mut sub = state?;
        match sub.next().await {
            Some(Ok(item)) => Some((Ok(item), Some(sub))),
            Some(Err(e)) => Some((Err(e), None)),
            None => None,
        }
    })
    .map(move |r| {
        Ok(match r {
            Ok(item) => {
                crate::EVENTS_DELIVERED.increment(1);
                render(item)
            }
            Err(e) => render_err(e),
        })
    })
}

// ----- NDJSON -----

/// `GET /api/stream`: one CloudEvent per line, chunked, for non-browser clients.
pub(crate) async fn ndjson(
    State(app): State<AppState>,
    Caller(caller): Caller,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    let req = subscribe_request(&p, true)?;
    let sub = app.hub.subscribe(&caller, req).await?;
    metrics::counter!("polyport_http_streams_total", "kind" => "ndjson").increment(1);
    let stream = frames(
        sub,
        |item| {
            let mut line = item_json(&item).to_vec();
            line.push(b'\n');
            Bytes::from(line)
        },
        |e| {
            let mut line = error_event(&e).to_string().into_bytes();
            line.push(b'\n');
            Bytes::from(line)
        },
    );
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

// ----- long-poll -----

/// `GET /api/poll?since=N&wait=30`: answers as soon as at least one event is available,
/// or empty after `wait` seconds, with the cursor to pass as `since` next time.
pub(crate) async fn poll(
    State(app): State<AppState>,
    Caller(caller): Caller,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    let req = subscribe_request(&p, true)?;
    if req.group.is_some() {
        return Err(ApiError::bad_request(
            "groups need a connection to hold deliveries; use WebSocket, SSE or NDJSON",
        ));
    }
    let wait = Duration::from_secs(p.u64("wait", 120)?.unwrap_or(30));
    let limit = p.u64("limit", 1000)?.unwrap_or(100).max(1) as usize;
    let mut sub = app.hub.subscribe(&caller, req).await?;
    let mut events: Vec<Value> = Vec::new();
    let push = |events: &mut Vec<Value>, item: &Item| {
        events.push(serde_json::from_slice(&item_json(item)).unwrap_or(Value::Null));
    };
    // Whatever exists already (history included) is returned without waiting; only an
    // empty answer waits, up to `wait`, for the first new event.
    while events.len() < limit {
        match sub.try_next().await {
            Some(Ok(item)) => push(&mut events, &item),
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    if events.is_empty()
        && let Ok(Some(first)) = tokio::time::timeout(wait, sub.next()).await
    {
        push(&mut events, &first.map_err(ApiError::from)?);
        while events.len() < limit {
            match sub.try_next().await {
                Some(Ok(item)) => push(&mut events, &item),
                Some(Err(e)) => return Err(e.into()),
                None => break,
            }
        }
    }
    let cursor = sub.position().unwrap_or(sub.start_position());
    let res = json!({
        "events": events,
        "cursor": cursor,
        "epoch": sub.epoch(),
    });
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        res.to_string(),
    )
        .into_response())
}
