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
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use polyport_core::event::RenderKey;
use polyport_core::hot_metrics::Tally;
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

/// An event's SSE frame, shared by every SSE subscriber of it.
static SSE_FRAME: RenderKey = RenderKey::new();
/// An event's NDJSON line, shared by every NDJSON subscriber of it.
static NDJSON_LINE: RenderKey = RenderKey::new();

/// `data: {json}`, then `id: {seq}` when it has one, then the blank line. The JSON is one
/// line (serde_json writes no newlines), so one `data:` field carries it.
fn sse_frame(json: &[u8], seq: Option<u64>, event: Option<&str>) -> Bytes {
    let mut b = Vec::with_capacity(json.len() + 40);
    if let Some(name) = event {
        b.extend_from_slice(b"event: ");
        b.extend_from_slice(name.as_bytes());
        b.push(b'\n');
    }
    b.extend_from_slice(b"data: ");
    b.extend_from_slice(json);
    b.push(b'\n');
    if let Some(seq) = seq {
        b.extend_from_slice(b"id: ");
        b.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        b.push(b'\n');
    }
    b.push(b'\n');
    Bytes::from(b)
}

fn sse_item(item: &Item) -> Bytes {
    match item {
        Item::Event(d) => d
            .event
            .rendered_as(&SSE_FRAME, |e| sse_frame(e.cloudevent_json(), e.seq, None)),
        Item::Notice(_) => sse_frame(&item_json(item), None, None),
    }
}

fn ndjson_item(item: &Item) -> Bytes {
    let line = |json: &[u8]| {
        let mut b = Vec::with_capacity(json.len() + 1);
        b.extend_from_slice(json);
        b.push(b'\n');
        Bytes::from(b)
    };
    match item {
        Item::Event(d) => d
            .event
            .rendered_as(&NDJSON_LINE, |e| line(e.cloudevent_json())),
        Item::Notice(_) => line(&item_json(item)),
    }
}

/// `GET /api/events`: Server-Sent Events. `id:` is the sequence, so a browser's
/// EventSource resumes by itself with `Last-Event-ID` after a reconnect.
///
/// Framed here rather than with axum's `Sse`: each event's frame is rendered once and
/// its bytes shared by every subscriber, and the heart-beat is a plain interval (axum's
/// keep-alive resets a timer for every event of every subscriber).
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
    let hello = Bytes::from(format!(
        ": polyport epoch={} position={}\n\n",
        sub.epoch(),
        sub.start_position()
    ));
    let beats = app.cfg.heartbeat;
    let events = frames(sub, Some(beats), sse_item, |e| {
        sse_frame(error_event(&e).to_string().as_bytes(), None, Some("error"))
    });
    let stream = futures::stream::once(async move { Ok::<_, Infallible>(hello) }).chain(events);
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// What a heart-beat says on SSE: a comment, ignored by EventSource.
const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// A subscription as a stream of rendered frames; an error becomes a last frame. With
/// `heartbeat`, an SSE comment goes out at that interval whatever the traffic.
pub(crate) fn frames<F, E>(
    sub: Subscription,
    heartbeat: Option<Duration>,
    render: F,
    render_err: E,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static
where
    F: Fn(&Item) -> Bytes + Send + 'static,
    E: Fn(HubError) -> Bytes + Send + 'static,
{
    let beat =
        heartbeat.map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
    futures::stream::unfold(Some((sub, beat)), |state| async move {
        let (mut sub, mut beat) = state?;
        let next = tokio::select! {
            biased;
            next = sub.next() => next,
            _ = tick(&mut beat) => return Some((Frame::Beat, Some((sub, beat)))),
        };
        match next {
            Some(Ok(item)) => Some((Frame::Item(item), Some((sub, beat)))),
            Some(Err(e)) => Some((Frame::Failed(e), None)),
            None => None,
        }
    })
    .map({
        let mut delivered = Tally::new(&crate::EVENTS_DELIVERED);
        move |f| {
            Ok(match f {
                Frame::Item(item) => {
                    delivered.add();
                    render(&item)
                }
                Frame::Beat => Bytes::from_static(HEARTBEAT),
                Frame::Failed(e) => render_err(e),
            })
        }
    })
}

/// One step of [`frames`].
enum Frame {
    Item(Item),
    Beat,
    Failed(HubError),
}

/// The next heart-beat; never without one.
async fn tick(beat: &mut Option<tokio::time::Interval>) {
    match beat {
        Some(b) => {
            b.tick().await;
        }
        None => std::future::pending().await,
    }
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
    let stream = frames(sub, None, ndjson_item, |e| {
        let mut line = error_event(&e).to_string().into_bytes();
        line.push(b'\n');
        Bytes::from(line)
    });
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
