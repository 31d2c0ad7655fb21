//! REST: collections, records (ETag / If-Match / If-None-Match / merge patch) and topic
//! publishing. One set of handlers serves every collection; the collection is data.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use polyport_core::query::{Filter, ListQuery, parse_sort};
use polyport_core::record::merge_patch;
use polyport_core::{CollectionSpec, EventDraft, Record, Topic};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::gate::Caller;
use crate::params::{ContentType, IfNoneMatch, Params, Picked, json_body, json_body_typed};

/// Maps axum's body rejections (413 above the limit, …) to problem+json.
pub(crate) fn body(b: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    b.map_err(|rej| {
        let status = rej.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "bad_request"
        };
        ApiError::new(status, code, rej.body_text())
    })
}

pub(crate) fn json_response(status: StatusCode, v: Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        v.to_string(),
    )
        .into_response()
}

// ----- collections -----

pub(crate) async fn list_collections(
    State(app): State<AppState>,
    Caller(caller): Caller,
) -> ApiResult<Response> {
    let all = app.hub.collections(&caller)?;
    let items: Vec<Value> = all.values().map(|c| collection_json(c)).collect();
    Ok(json_response(StatusCode::OK, json!({ "items": items })))
}

fn collection_json(c: &polyport_core::Collection) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

pub(crate) async fn create_collection(
    State(app): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let spec: CollectionSpec = json_body(&headers, &body(b)?)?;
    let c = app.hub.create_collection(&caller, spec).await?;
    let mut res = json_response(StatusCode::CREATED, collection_json(&c));
    if let Ok(loc) = HeaderValue::from_str(&format!("/api/collections/{}", c.name())) {
        res.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(res)
}

pub(crate) async fn get_collection(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let c = app.hub.collection(&caller, &name)?;
    Ok(json_response(StatusCode::OK, collection_json(&c)))
}

/// PATCH merges the body into the current definition (RFC 7396) and replaces it.
pub(crate) async fn patch_collection(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let patch = Value::Object(object(json_body(&headers, &body(b)?)?)?);
    let ctx = caller.clone();
    let current = app.hub.collection(&ctx, &name)?;
    let mut doc = serde_json::to_value(&current.spec).unwrap_or(Value::Null);
    merge_patch(&mut doc, &patch);
    let spec: CollectionSpec = serde_json::from_value(doc)
        .map_err(|e| ApiError::bad_request(format!("invalid collection definition: {e}")))?;
    if spec.name != name {
        return Err(ApiError::bad_request("a collection cannot be renamed"));
    }
    let c = app.hub.replace_collection(&ctx, spec).await?;
    Ok(json_response(StatusCode::OK, collection_json(&c)))
}

pub(crate) async fn delete_collection(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    app.hub.delete_collection(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- records -----

/// `"3"` for version 3: strong, and scoped to the record's URL.
fn etag(r: &Record) -> HeaderValue {
    let mut buf = itoa::Buffer::new();
    let v = buf.format(r.version);
    let mut quoted = [0u8; 22];
    quoted[0] = b'"';
    quoted[1..=v.len()].copy_from_slice(v.as_bytes());
    quoted[v.len() + 1] = b'"';
    HeaderValue::from_bytes(&quoted[..v.len() + 2]).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// Parses `If-Match`: `None` when absent or `*`, the version otherwise.
fn if_match(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("").trim();
    if s == "*" {
        return Ok(None);
    }
    let tag = s.trim_start_matches("W/").trim_matches('"');
    tag.parse::<u64>().map(Some).map_err(|_| {
        ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "version_mismatch",
            format!("If-Match '{s}' does not name a version of this record"),
        )
    })
}

fn record_response(status: StatusCode, r: &Record, expand: Option<Map<String, Value>>) -> Response {
    let expand = expand.as_ref().filter(|e| !e.is_empty());
    // Sized for a typical record up front: growing from empty reallocated several times.
    let mut body = Vec::with_capacity(256);
    if serde_json::to_writer(&mut body, &r.json(expand)).is_err() {
        body.clear();
    }
    let mut res = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    res.headers_mut().insert(header::ETAG, etag(r));
    if status == StatusCode::CREATED
        && let Ok(loc) = HeaderValue::from_str(&format!(
            "/api/collections/{}/records/{}",
            r.collection, r.id
        ))
    {
        res.headers_mut().insert(header::LOCATION, loc);
    }
    res
}

fn expand_fields(p: &Params) -> Vec<String> {
    p.all("expand")
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

pub(crate) async fn list_records(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(collection): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    let filter = match p.get("filter") {
        Some(f) if !f.trim().is_empty() => {
            Some(Filter::parse(f).map_err(polyport_core::HubError::from)?)
        }
        _ => None,
    };
    let sort = match p.get("sort") {
        Some(s) if !s.trim().is_empty() => parse_sort(s).map_err(polyport_core::HubError::from)?,
        _ => Vec::new(),
    };
    let max = app.cfg.max_page_size as u64;
    let limit = p
        .u64("limit", max)?
        .unwrap_or(app.cfg.default_page_size as u64) as usize;
    let query = ListQuery {
        filter,
        sort,
        limit: limit.max(1),
        cursor: p
            .get("cursor")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        count: p.bool("count")?.unwrap_or(false),
    };
    let ctx = caller.clone();
    let page = app.hub.list_records(&ctx, &collection, &query).await?;
    let expand = expand_fields(&p);
    let expanded = if expand.is_empty() {
        vec![Map::new(); page.items.len()]
    } else {
        app.hub
            .expand(&ctx, &collection, &page.items, &expand)
            .await?
    };
    let items: Vec<Value> = page
        .items
        .iter()
        .zip(expanded)
        .map(|(r, e)| {
            let mut v = r.to_json();
            if !e.is_empty() {
                v["expand"] = Value::Object(e);
            }
            v
        })
        .collect();
    let mut out = json!({ "items": items, "next_cursor": page.next_cursor });
    if let Some(t) = page.total {
        out["total"] = t.into();
    }
    Ok(json_response(StatusCode::OK, out))
}

pub(crate) fn object(v: Value) -> ApiResult<Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad_request("body must be a JSON object")),
    }
}

pub(crate) async fn create_record(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(collection): Path<String>,
    Picked(content_type): ContentType,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let mut data = object(json_body_typed(content_type.as_ref(), &body(b)?)?)?;
    let id = match data.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(ApiError::bad_request("'id' must be a string")),
    };
    let r = app
        .hub
        .create_record(&caller, &collection, id, data)
        .await?;
    Ok(record_response(StatusCode::CREATED, &r, None))
}

pub(crate) async fn get_record(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path((collection, id)): Path<(String, String)>,
    Picked(if_none_match): IfNoneMatch,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let ctx = caller;
    let r = app.hub.get_record(&ctx, &collection, &id).await?;
    if let Some(inm) = if_none_match.as_ref().and_then(|v| v.to_str().ok()) {
        let current = format!("\"{}\"", r.version);
        if inm.trim() == "*"
            || inm
                .split(',')
                .any(|t| t.trim().trim_start_matches("W/") == current)
        {
            let mut res = StatusCode::NOT_MODIFIED.into_response();
            res.headers_mut().insert(header::ETAG, etag(&r));
            return Ok(res);
        }
    }
    let p = Params::parse(q.as_deref());
    let fields = expand_fields(&p);
    let expand = if fields.is_empty() {
        None
    } else {
        app.hub
            .expand(&ctx, &collection, std::slice::from_ref(&r), &fields)
            .await?
            .pop()
    };
    Ok(record_response(StatusCode::OK, &r, expand))
}

/// Strips system fields a client echoed back from a GET, so GET→edit→PUT round-trips.
fn strip_system(data: &mut Map<String, Value>, id: &str) -> ApiResult<()> {
    if let Some(v) = data.remove("id")
        && v.as_str() != Some(id)
    {
        return Err(ApiError::bad_request(
            "'id' in the body differs from the URL",
        ));
    }
    for k in [
        "collection",
        "created_at",
        "updated_at",
        "version",
        "expand",
    ] {
        data.remove(k);
    }
    Ok(())
}

pub(crate) async fn replace_record(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let expected = if_match(&headers)?;
    let mut data = object(json_body(&headers, &body(b)?)?)?;
    strip_system(&mut data, &id)?;
    let (r, created) = app
        .hub
        .replace_record(&caller, &collection, &id, data, expected)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(record_response(status, &r, None))
}

pub(crate) async fn patch_record(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let expected = if_match(&headers)?;
    let mut patch = object(json_body(&headers, &body(b)?)?)?;
    strip_system(&mut patch, &id)?;
    let r = app
        .hub
        .patch_record(&caller, &collection, &id, Value::Object(patch), expected)
        .await?;
    Ok(record_response(StatusCode::OK, &r, None))
}

pub(crate) async fn delete_record(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let expected = if_match(&headers)?;
    app.hub
        .delete_record(&caller, &collection, &id, expected)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- topics -----

/// Publishes the body as-is. CloudEvents binary-mode headers are honoured: `ce-type`
/// sets the event type and other `ce-*` headers travel as event headers.
pub(crate) async fn publish(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(topic): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let payload = body(b)?;
    let topic = Topic::new(&topic).map_err(polyport_core::HubError::from)?;
    let p = Params::parse(q.as_deref());
    let mut draft = EventDraft::new(topic, payload);
    draft.content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // CloudEvents binary mode: `ce-type`, the documented attribute extensions (`ce-replyto`,
    // `ce-correlationid`, …) and, for any other `ce-*`, a user header — which no protocol
    // reads as an attribute.
    for (name, value) in &headers {
        let n = name.as_str();
        if let Some(ext) = n.strip_prefix("ce-")
            && let Ok(v) = value.to_str()
        {
            if ext == "type" {
                draft.event_type = Some(v.to_string());
            } else if !matches!(ext, "id" | "specversion" | "source" | "time" | "subject")
                && !draft
                    .attrs
                    .set_extension(ext, v)
                    .map_err(|e| ApiError::bad_request(format!("header ce-{e}")))?
            {
                draft.headers.push((ext.to_string(), v.to_string()));
            }
        }
    }
    draft.durability = match p.bool("durable")? {
        Some(true) => polyport_core::Durability::Durable,
        Some(false) => polyport_core::Durability::Ephemeral,
        None => polyport_core::Durability::Auto,
    };
    let receipt = app.hub.publish(&caller, draft).await?;
    let e = &receipt.event;
    Ok(json_response(
        StatusCode::ACCEPTED,
        json!({
            "id": e.id,
            "topic": e.topic.as_str(),
            "sequence": e.seq,
            "durable": e.seq.is_some(),
        }),
    ))
}
