//! What listing records means whatever the engine: the sort (creation order by default,
//! `id` as the last tie-breaker), keyset cursors that name their sort, and the page
//! built from rows read one past the limit. Each engine supplies the SQL.

use polyport_core::query::{ListQuery, Page, SortKey, parse_sort};
use polyport_core::{HubError, HubResult, Record};
use serde_json::Value;

use crate::sql::Cursor;

/// The sort keys of a query and the spec a cursor is tied to.
pub(crate) fn sort_keys(query: &ListQuery) -> (Vec<SortKey>, String) {
    let keys = if query.sort.is_empty() {
        parse_sort("created_at").unwrap_or_default()
    } else {
        query.sort.clone()
    };
    let spec = keys
        .iter()
        .map(|k| format!("{}{}", if k.desc { "-" } else { "" }, k.path.join(".")))
        .collect::<Vec<_>>()
        .join(",");
    (keys, spec)
}

/// The query's cursor, checked against the sort it must continue (`values` sort values
/// per row).
pub(crate) fn cursor(query: &ListQuery, spec: &str, values: usize) -> HubResult<Option<Cursor>> {
    let Some(c) = &query.cursor else {
        return Ok(None);
    };
    let cur = Cursor::decode(c)
        .ok_or_else(|| HubError::InvalidCursor("not a cursor issued by this server".into()))?;
    if cur.s != spec || cur.k.len() != values {
        return Err(HubError::InvalidCursor(
            "the cursor was issued for a different sort".into(),
        ));
    }
    Ok(Some(cur))
}

/// The page from rows read with `LIMIT limit + 1`, each with its sort values.
pub(crate) fn page(
    mut rows: Vec<(Record, Vec<Value>)>,
    limit: usize,
    spec: &str,
    total: Option<u64>,
) -> Page {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let cursors: Vec<String> = rows
        .iter()
        .map(|(rec, keys)| {
            Cursor {
                s: spec.to_string(),
                k: keys.clone(),
                id: rec.id.clone(),
            }
            .encode()
        })
        .collect();
    let next_cursor = if more { cursors.last().cloned() } else { None };
    Page {
        items: rows.into_iter().map(|(r, _)| r).collect(),
        cursors,
        next_cursor,
        total,
    }
}
