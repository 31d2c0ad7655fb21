//! Listing records in Postgres: filter, sort and keyset pages as in SQLite.
//!
//! SQLite orders a sort key's mixed values by type first (missing or null, then numbers
//! and booleans as 0/1, then text, objects and arrays as their JSON text), and the
//! embedded engine's lists are promised in that order. Postgres orders `jsonb` by a
//! different rule, so a JSON sort key here is three columns that are never NULL: the
//! type's rank, the number, the text (`COLLATE "C"`). Keyset conditions over non-NULL
//! columns are plain comparisons. The cursor holds those columns' values; a cursor is
//! tied to its engine as it is to its sort.
//!
//! Objects and arrays sort by Postgres's JSON text (`{"a": 1}`), SQLite's has no spaces
//! (`{"a":1}`): the one place the engines may order differently, and only between two
//! documents that both hold an object or array where a sortable value was expected.

use polyport_core::HubResult;
use polyport_core::query::{ListQuery, SortKey};
use serde_json::Value;

use super::filter::{PgParam, compile_filter};
use super::row::RECORD_COLS;

/// What one sort column compares as.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Num,
    Text,
}

/// A list query compiled to SQL.
pub(crate) struct ListSql {
    pub(crate) sql: String,
    pub(crate) params: Vec<PgParam>,
    /// `SELECT count(*)` over the same filter, when asked for.
    pub(crate) count: Option<(String, Vec<PgParam>)>,
    /// The sort columns after the record's, in order.
    pub(crate) kinds: Vec<Kind>,
    pub(crate) limit: usize,
    pub(crate) spec: String,
}

fn push(params: &mut Vec<PgParam>, p: PgParam) -> usize {
    params.push(p);
    params.len()
}

/// The columns a sort key orders by.
fn sort_columns(key: &SortKey, params: &mut Vec<PgParam>) -> Vec<(String, Kind)> {
    match crate::sql::system_column(&key.path) {
        Some((c, true)) => vec![(format!("{c}::float8"), Kind::Num)],
        Some((c, false)) => vec![(c.to_string(), Kind::Text)],
        None => {
            let i = push(params, PgParam::Path(key.path.clone()));
            let v = format!("(data #> ${i}::text[])");
            vec![
                (
                    format!(
                        "(CASE jsonb_typeof({v}) WHEN 'number' THEN 1 WHEN 'boolean' THEN 1 \
                         WHEN 'string' THEN 2 WHEN 'object' THEN 2 WHEN 'array' THEN 2 ELSE 0 END)::float8"
                    ),
                    Kind::Num,
                ),
                (
                    format!(
                        "(CASE jsonb_typeof({v}) WHEN 'number' THEN ({v})::float8 \
                         WHEN 'boolean' THEN (CASE WHEN ({v})::boolean THEN 1 ELSE 0 END)::float8 ELSE 0 END)"
                    ),
                    Kind::Num,
                ),
                (
                    format!(
                        "(CASE jsonb_typeof({v}) WHEN 'string' THEN ({v} #>> '{{}}') \
                         WHEN 'object' THEN ({v})::text WHEN 'array' THEN ({v})::text ELSE '' END) COLLATE \"C\""
                    ),
                    Kind::Text,
                ),
            ]
        }
    }
}

fn param(kind: Kind, v: &Value) -> Option<PgParam> {
    Some(match kind {
        Kind::Num => PgParam::Float(v.as_f64()?),
        Kind::Text => PgParam::Text(v.as_str()?.to_string()),
    })
}

fn cast(kind: Kind) -> &'static str {
    match kind {
        Kind::Num => "float8",
        Kind::Text => "text",
    }
}

/// Compiles a list of `collection`.
pub(crate) fn compile(collection: &str, query: &ListQuery) -> HubResult<ListSql> {
    let mut params = vec![PgParam::Text(collection.to_string())];
    let mut where_sql = String::from("collection = $1::text");
    if let Some(f) = &query.filter {
        where_sql.push_str(" AND ");
        where_sql.push_str(&compile_filter(f, &mut params));
    }
    let count = query.count.then(|| {
        (
            format!("SELECT count(*) FROM records WHERE {where_sql}"),
            params.clone(),
        )
    });
    let (keys, spec) = crate::list::sort_keys(query);
    let mut cols: Vec<(String, Kind, bool)> = Vec::new();
    for k in &keys {
        for (e, kind) in sort_columns(k, &mut params) {
            cols.push((e, kind, k.desc));
        }
    }
    if let Some(cur) = crate::list::cursor(query, &spec, cols.len())? {
        let malformed = || polyport_core::HubError::InvalidCursor("malformed cursor value".into());
        let mut ors = Vec::with_capacity(cols.len() + 1);
        let mut equal: Vec<String> = Vec::new();
        for ((e, kind, desc), v) in cols.iter().zip(&cur.k) {
            let i = push(&mut params, param(*kind, v).ok_or_else(malformed)?);
            let value = format!("${i}::{}", cast(*kind));
            let beyond = if *desc { "<" } else { ">" };
            ors.push(
                equal
                    .iter()
                    .cloned()
                    .chain([format!("{e} {beyond} {value}")])
                    .collect::<Vec<_>>()
                    .join(" AND "),
            );
            equal.push(format!("{e} = {value}"));
        }
        let i = push(&mut params, PgParam::Text(cur.id.clone()));
        equal.push(format!("id > ${i}::text"));
        ors.push(equal.join(" AND "));
        where_sql.push_str(&format!(" AND (({}))", ors.join(") OR (")));
    }
    let order: Vec<String> = cols
        .iter()
        .map(|(e, _, d)| format!("{e} {}", if *d { "DESC" } else { "ASC" }))
        .chain(std::iter::once("id ASC".to_string()))
        .collect();
    let select: String = cols.iter().map(|(e, _, _)| format!(", {e}")).collect();
    let limit = query.limit.max(1);
    Ok(ListSql {
        sql: format!(
            "SELECT {RECORD_COLS}{select} FROM records WHERE {where_sql} ORDER BY {} LIMIT {}",
            order.join(", "),
            limit + 1
        ),
        params,
        count,
        kinds: cols.iter().map(|(_, k, _)| *k).collect(),
        limit,
        spec,
    })
}
