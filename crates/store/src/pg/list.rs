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

/// Compiles a list of `collection`. With `indexed` (the filter is a lookup by a field
/// with an index: [`crate::sql::lookup_field`]), the collection is also spelled out, so
/// the planner sees the query implies the partial index's condition whatever plan the
/// statement gets (`collection` is then a known collection's validated name).
pub(crate) fn compile(collection: &str, query: &ListQuery, indexed: bool) -> HubResult<ListSql> {
    let mut params = vec![PgParam::Text(collection.to_string())];
    let mut where_sql = String::from("collection = $1::text");
    if indexed {
        where_sql.push_str(&format!(" AND collection = '{collection}'"));
    }
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

#[cfg(test)]
mod tests {
    use polyport_core::query::{Filter, ListQuery};
    use polyport_core::schema::CollectionSpec;
    use postgres::{Client, NoTls};

    use super::super::{bind, refs, schema};

    /// A relation lookup, as compiled, reads the field's index: with a plan made for its
    /// values and with the generic plan a cached statement may switch to (in which a
    /// parameter cast, say, would be redone for every row instead). The index is made
    /// at start for a collection that predates it.
    #[test]
    fn a_relation_lookup_reads_the_fields_index_in_either_plan() {
        let url = super::super::test_url();
        let name = format!("t_{}", ulid::Ulid::new().to_string().to_ascii_lowercase());
        let mut c = Client::connect(&url, NoTls).expect("postgres");
        schema::migrate(&mut c, &name).expect("migrate");
        c.batch_execute(&format!("SET search_path TO \"{name}\""))
            .unwrap();
        let spec: CollectionSpec = serde_json::from_value(serde_json::json!({
            "name": "posts",
            "fields": [{"name": "author", "type": "relation", "collection": "users"}]
        }))
        .unwrap();
        c.execute(
            "INSERT INTO collections (name, spec, created_at, updated_at) VALUES ('posts', $1, '', '')",
            &[&serde_json::to_string(&spec).unwrap()],
        )
        .unwrap();
        schema::migrate(&mut c, &name).expect("migrate again");
        let ddl = schema::field_index_ddl(&spec);
        let made: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND indexname = $2",
                &[&name, &ddl[0].0],
            )
            .unwrap()
            .get(0);
        assert_eq!((ddl.len(), made), (1, 1));
        c.batch_execute(
            "INSERT INTO records (collection, id, data, doc, created_at, updated_at, version)
             SELECT 'posts', lpad(i::text, 6, '0'), jsonb_build_object('author', 'u' || (i % 500)),
                    '{}', lpad(i::text, 6, '0'), '', 1
             FROM generate_series(1, 5000) i;
             ANALYZE records;",
        )
        .unwrap();
        let index = &ddl[0].0;
        for filter in [r#"author = "u7""#, r#"author = "u7" || author = "u9""#] {
            let q = ListQuery {
                filter: Some(Filter::parse(filter).unwrap()),
                sort: Vec::new(),
                limit: 20,
                cursor: None,
                count: false,
            };
            let l = super::compile("posts", &q, true).unwrap();
            let params = bind(&l.params);
            for mode in ["force_custom_plan", "force_generic_plan"] {
                c.batch_execute(&format!("SET plan_cache_mode = {mode}"))
                    .unwrap();
                let s = c.prepare(&format!("EXPLAIN {}", l.sql)).unwrap();
                let plan: Vec<String> = c
                    .query(&s, &refs(&params))
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let plan = plan.join("\n");
                assert!(plan.contains(index.as_str()), "{filter}, {mode}:\n{plan}");
            }
            let rows = c.query(&l.sql, &refs(&params)).unwrap();
            let want = if filter.contains("u9") { 20 } else { 10 };
            assert_eq!(rows.len(), want, "{filter}");
        }
        drop(c);
        super::super::drop_schema(&url, &name).unwrap();
    }
}
