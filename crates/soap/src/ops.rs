//! Runs an operation through the Hub and writes its response element.

use base64::Engine as _;
use bytes::Bytes;
use polyport_core::query::parse_sort;
use polyport_core::{AuthContext, Durability, EventDraft, Filter, Hub, ListQuery, Topic};
use serde_json::Value;

use crate::TNS;
use crate::fault::Fault;
use crate::service::{Kind, Op, Typed};
use crate::values::{bool_param, document, number_param, param, required, write_record};
use crate::xml::{Element, Out};

/// Executes `op` named `name` with the request element `req`; returns the response
/// element's markup.
pub(crate) async fn run(
    hub: &Hub,
    ctx: &AuthContext,
    max_page: usize,
    name: &str,
    op: &Op,
    types: &std::collections::BTreeMap<String, Typed>,
    req: &Element,
) -> Result<String, Fault> {
    let mut o = Out::default();
    let tag = format!("{name}Response");
    o.open(&tag, &[("xmlns", TNS)]);
    match op {
        Op::Publish => publish(hub, ctx, req, &mut o).await?,
        Op::Record(kind, c) => {
            let t = types.get(c).ok_or_else(|| {
                Fault::sender(
                    "collection_not_found",
                    format!("collection '{c}' does not exist"),
                )
            })?;
            record_op(hub, ctx, max_page, *kind, t, req, &mut o).await?;
        }
    }
    o.close(&tag);
    Ok(o.0)
}

async fn record_op(
    hub: &Hub,
    ctx: &AuthContext,
    max_page: usize,
    kind: Kind,
    t: &Typed,
    req: &Element,
    o: &mut Out,
) -> Result<(), Fault> {
    let c = t.coll.name();
    let r = match kind {
        Kind::Get => {
            std::sync::Arc::unwrap_or_clone(hub.get_record(ctx, c, required(req, "id")?).await?)
        }
        Kind::Create => {
            let id = param(req, "id")?.map(str::to_string);
            let doc = document(req, t, &["id"])?;
            hub.create_record(ctx, c, id, doc).await?
        }
        Kind::Update => {
            let id = required(req, "id")?;
            let expected = number_param(req, "expected_version")?;
            let doc = document(req, t, &["id", "expected_version"])?;
            hub.patch_record(ctx, c, id, Value::Object(doc), expected)
                .await?
        }
        Kind::Delete => {
            let expected = number_param(req, "expected_version")?;
            hub.delete_record(ctx, c, required(req, "id")?, expected)
                .await?
        }
        Kind::List => {
            let q = list_query(req, max_page)?;
            let page = hub.list_records(ctx, c, &q).await?;
            for r in &page.items {
                write_record(o, "records", t, r);
            }
            if let Some(n) = &page.next_cursor {
                o.leaf("next_cursor", n);
            }
            if let Some(n) = page.total {
                o.leaf("total", &n.to_string());
            }
            return Ok(());
        }
    };
    write_record(o, "record", t, &r);
    Ok(())
}

fn list_query(req: &Element, max_page: usize) -> Result<ListQuery, Fault> {
    let limit = match number_param(req, "limit")? {
        None => 50.min(max_page),
        Some(n) if n >= 1 && n as usize <= max_page => n as usize,
        Some(_) => {
            return Err(Fault::field(
                "invalid_value",
                "limit",
                format!("must be between 1 and {max_page}"),
            ));
        }
    };
    Ok(ListQuery {
        filter: param(req, "filter")?
            .filter(|f| !f.trim().is_empty())
            .map(Filter::parse)
            .transpose()
            .map_err(|e| Fault::from(polyport_core::HubError::from(e)))?,
        sort: match param(req, "sort")? {
            Some(s) if !s.trim().is_empty() => {
                parse_sort(s).map_err(|e| Fault::from(polyport_core::HubError::from(e)))?
            }
            _ => Vec::new(),
        },
        limit,
        cursor: param(req, "cursor")?
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        count: bool_param(req, "count")?.unwrap_or(false),
    })
}

async fn publish(hub: &Hub, ctx: &AuthContext, req: &Element, o: &mut Out) -> Result<(), Fault> {
    let topic = required(req, "topic")?;
    let topic =
        Topic::new(topic).map_err(|e| Fault::field("invalid_topic", "topic", e.to_string()))?;
    let payload = match (param(req, "data")?, param(req, "data_base64")?) {
        (Some(_), Some(_)) => {
            return Err(Fault::field(
                "invalid_request",
                "data_base64",
                "give data or data_base64, not both",
            ));
        }
        (Some(d), None) => Bytes::copy_from_slice(d.as_bytes()),
        (None, Some(b)) => {
            let clean: String = b.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(clean)
                    .map_err(|_| Fault::field("invalid_value", "data_base64", "is not base64"))?,
            )
        }
        (None, None) => Bytes::new(),
    };
    let mut d = EventDraft::new(topic, payload);
    d.content_type = param(req, "content_type")?.map(str::to_string);
    d.event_type = param(req, "type")?.map(str::to_string);
    d.durability = match bool_param(req, "durable")? {
        Some(true) => Durability::Durable,
        Some(false) => Durability::Ephemeral,
        None => Durability::Auto,
    };
    let r = hub.publish(ctx, d).await?;
    o.leaf("id", &r.event.id);
    if let Some(seq) = r.event.seq {
        o.leaf("sequence", &seq.to_string());
    }
    o.leaf("topic", r.event.topic.as_str());
    Ok(())
}
