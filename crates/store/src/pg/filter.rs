//! The shared query language compiled to PostgreSQL, for the cluster engine's record
//! store (issue 16, docs/cluster.md), where a record is a row `(id, collection,
//! created_at, updated_at, version, data jsonb)` with times as text in
//! [`polyport_core::record::format_time`]'s form.
//!
//! The SQL must accept exactly the records [`Filter::matches`] accepts, as the SQLite
//! compiler in `sql.rs` does; the property test `prop_postgres_filter_agrees_with_in_memory_filter`
//! in `tests/list_properties.rs` checks it against the real Postgres. What differs from
//! SQLite: every cast sits under a `CASE` on `jsonb_typeof` (Postgres does not promise
//! to evaluate `AND`'s left side first, and casting a JSON string to a number is an
//! error, not NULL), strings compare under `COLLATE "C"` (byte order, as Rust compares
//! them, whatever the database's collation) and `lower` under "C" folds ASCII only, as
//! the in-memory `~` does.

use polyport_core::query::{Filter, Literal, Op};

use serde_json::Value;

use crate::sql::sql_op;

/// A parameter of a compiled filter, bound by the caller's Postgres client.
#[derive(Clone, Debug, PartialEq)]
pub enum PgParam {
    /// `text`.
    Text(String),
    /// `float8`.
    Float(f64),
    /// `boolean`.
    Bool(bool),
    /// `text[]`: a JSON path for `#>`, or the strings of an `= ANY` list.
    Path(Vec<String>),
    /// `jsonb`.
    Json(Value),
    /// `jsonb[]`. Bound as such, not cast from text in the query: a cast of a parameter
    /// stays in a generic plan and is redone for every row.
    JsonArray(Vec<Value>),
}

impl PgParam {
    /// The value to bind, as its SQL type.
    pub fn to_sql(&self) -> Box<dyn postgres::types::ToSql + Sync + Send> {
        match self {
            PgParam::Text(s) => Box::new(s.clone()),
            PgParam::Float(f) => Box::new(*f),
            PgParam::Bool(b) => Box::new(*b),
            PgParam::Path(p) => Box::new(p.clone()),
            PgParam::Json(v) => Box::new(v.clone()),
            PgParam::JsonArray(v) => Box::new(v.clone()),
        }
    }
}

/// A system column, or a JSON path into `data`.
enum Col {
    Text(&'static str),
    Int(&'static str),
    Json(Vec<String>),
}

fn column(path: &[String]) -> Col {
    match crate::sql::system_column(path) {
        Some((c, true)) => Col::Int(c),
        Some((c, false)) => Col::Text(c),
        None => Col::Json(path.to_vec()),
    }
}

fn push(params: &mut Vec<PgParam>, p: PgParam) -> usize {
    params.push(p);
    params.len()
}

/// Compiles a filter into a Postgres boolean expression over the row, pushing its
/// parameters (`$1`, `$2`, … in push order).
pub fn compile_filter(f: &Filter, params: &mut Vec<PgParam>) -> String {
    crate::sql::compile_tree(
        f,
        params,
        &crate::sql::Dialect {
            cmp: compile_cmp,
            any_of: compile_any_of,
        },
    )
}

/// A lookup of a top-level field by string equality, written as its field index
/// (`schema::field_index_ddl`) can serve it: the index's expression compared as `jsonb`
/// (a JSON string equals only the same string, byte for byte, as in memory) and its
/// condition repeated so that the planner sees the query implies it. `values` are JSON
/// strings (one, or an `= ANY` list); `None` for a path an index never covers.
fn field_lookup(path: &[String], values: &[&str], params: &mut Vec<PgParam>) -> Option<String> {
    let [field] = path else { return None };
    let v = format!("(data -> {})", crate::sql::path_literal(field));
    let json = |s: &str| Value::String(s.to_string());
    let test = match values {
        [one] => format!("= ${}::jsonb", push(params, PgParam::Json(json(one)))),
        many => {
            let list = PgParam::JsonArray(many.iter().map(|s| json(s)).collect());
            format!("= ANY(${}::jsonb[])", push(params, list))
        }
    };
    Some(format!("({v} {test} AND jsonb_typeof({v}) <> 'null')"))
}

fn compile_any_of(path: &[String], values: &[&str], params: &mut Vec<PgParam>) -> String {
    let list = || PgParam::Path(values.iter().map(|v| (*v).to_string()).collect());
    match column(path) {
        Col::Json(p) => {
            if let Some(sql) = field_lookup(&p, values, params) {
                return sql;
            }
            let i = push(params, PgParam::Path(p));
            let k = push(params, list());
            let v = format!("(data #> ${i}::text[])");
            format!(
                "CASE WHEN jsonb_typeof({v}) = 'string' THEN ({v} #>> '{{}}') COLLATE \"C\" = ANY(${k}::text[]) END"
            )
        }
        Col::Text(c) => {
            let k = push(params, list());
            format!("{c} COLLATE \"C\" = ANY(${k}::text[])")
        }
        Col::Int(_) => "false".into(),
    }
}

/// A comparison; a positive one may be NULL where it does not hold (a filter has no
/// negation above its comparisons, and `WHERE` takes NULL for false), which keeps it
/// in the form an index matches.
fn compile_cmp(path: &[String], op: Op, lit: &Literal, params: &mut Vec<PgParam>) -> String {
    match op {
        Op::Ne => {
            return format!(
                "(NOT coalesce({}, false))",
                compile_cmp(path, Op::Eq, lit, params)
            );
        }
        Op::NotLike => {
            return format!(
                "(NOT coalesce({}, false))",
                compile_cmp(path, Op::Like, lit, params)
            );
        }
        _ => {}
    }
    let like = op == Op::Like;
    match (column(path), lit) {
        (Col::Json(p), Literal::Null) if matches!(op, Op::Eq | Op::Ge | Op::Le) => {
            let i = push(params, PgParam::Path(p));
            let v = format!("(data #> ${i}::text[])");
            format!("({v} IS NULL OR jsonb_typeof({v}) = 'null')")
        }
        (Col::Json(p), Literal::Str(s)) => {
            if op == Op::Eq
                && let Some(sql) = field_lookup(&p, &[s], params)
            {
                return sql;
            }
            let i = push(params, PgParam::Path(p));
            let k = push(params, PgParam::Text(s.clone()));
            let v = format!("(data #> ${i}::text[])");
            format!(
                "CASE WHEN jsonb_typeof({v}) = 'string' THEN {} END",
                text_cmp(&format!("({v} #>> '{{}}')"), op, k)
            )
        }
        (Col::Json(p), Literal::Num(n)) if !like => {
            let i = push(params, PgParam::Path(p));
            let k = push(params, PgParam::Float(*n));
            let v = format!("(data #> ${i}::text[])");
            // Numbers compare as doubles, as in memory.
            format!(
                "CASE WHEN jsonb_typeof({v}) = 'number' THEN {v}::float8 {} ${k}::float8 END",
                sql_op(op)
            )
        }
        (Col::Json(p), Literal::Bool(b)) if !like => {
            let i = push(params, PgParam::Path(p));
            let k = push(params, PgParam::Bool(*b));
            let v = format!("(data #> ${i}::text[])");
            format!(
                "CASE WHEN jsonb_typeof({v}) = 'boolean' THEN {v}::boolean {} ${k}::boolean END",
                sql_op(op)
            )
        }
        (Col::Text(c), Literal::Str(s)) => {
            let k = push(params, PgParam::Text(s.clone()));
            text_cmp(c, op, k)
        }
        (Col::Int(c), Literal::Num(n)) if !like => {
            let k = push(params, PgParam::Float(*n));
            format!("{c}::float8 {} ${k}::float8", sql_op(op))
        }
        // A type the value can never have: the comparison never holds.
        _ => "false".into(),
    }
}

fn text_cmp(value: &str, op: Op, k: usize) -> String {
    match op {
        Op::Like => {
            format!("strpos(lower({value} COLLATE \"C\"), lower(${k}::text COLLATE \"C\")) > 0")
        }
        _ => format!("{value} COLLATE \"C\" {} ${k}::text", sql_op(op)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(src: &str) -> (String, Vec<PgParam>) {
        let mut params = Vec::new();
        let sql = compile_filter(&Filter::parse(src).expect("filter"), &mut params);
        (sql, params)
    }

    #[test]
    fn comparisons_of_impossible_types_are_false_without_parameters() {
        assert_eq!(compiled("version = \"x\""), ("false".into(), vec![]));
        assert_eq!(compiled("id > 3"), ("false".into(), vec![]));
        assert_eq!(compiled("a ~ 3"), ("false".into(), vec![]));
    }

    #[test]
    fn parameters_are_numbered_in_push_order() {
        let (sql, params) = compiled("m.x = \"a\" && version >= 2 && t = \"b\"");
        assert_eq!(
            params,
            vec![
                PgParam::Path(vec!["m".into(), "x".into()]),
                PgParam::Text("a".into()),
                PgParam::Float(2.0),
                PgParam::Json(Value::from("b")),
            ]
        );
        assert!(
            sql.contains("$1::text[]")
                && sql.contains("$2::text")
                && sql.contains("$3::float8")
                && sql.contains("(data -> 't') = $4::jsonb"),
            "{sql}"
        );
    }
}
