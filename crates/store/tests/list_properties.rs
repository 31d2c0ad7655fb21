//! Property tests of lists over the embedded store: SQL and in-memory evaluation agree,
//! and keyset pages equal one big page. The same filters compiled for Postgres
//! (`polyport_store::pg`) are checked against the real Postgres on this machine
//! (`POLYPORT_TEST_POSTGRES`, default `host=127.0.0.1 user=postgres dbname=test`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use common::{Env, ids, model_order, query, spec, walk};
use polyport_core::{Filter, HubError, ListQuery, Record};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        (-2i64..4).prop_map(Value::from),
        prop::sample::select(vec![-1.5f64, 0.0, 0.5, 2.0, 2.5]).prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "a",
            "A",
            "ab",
            "Rust",
            "rust lang",
            "b",
            "é",
            "É",
            "r1"
        ])
        .prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
    ]
}

/// Numbers a double cannot hold exactly, or near the edges of the JSON number range.
fn big_number() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!(9_007_199_254_740_993_i64),
        json!(-9_007_199_254_740_993_i64),
        json!(u64::MAX),
        json!(1e300),
    ])
}

/// A document field: missing, a scalar, an array or an object.
fn field(depth: u32) -> BoxedStrategy<Option<Value>> {
    let leaf = prop_oneof![
        3 => Just(None),
        6 => scalar().prop_map(Some),
        1 => big_number().prop_map(Some),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        8 => leaf,
        1 => prop::collection::vec(scalar(), 0..3).prop_map(|v| Some(Value::Array(v))),
        2 => (field(depth - 1), field(depth - 1)).prop_map(|(x, y)| {
            let mut m = serde_json::Map::new();
            if let Some(x) = x {
                m.insert("x".into(), x);
            }
            if let Some(y) = y {
                m.insert("y".into(), y);
            }
            Some(Value::Object(m))
        }),
    ]
    .boxed()
}

#[derive(Clone, Debug)]
struct DocSpec {
    fields: Vec<(&'static str, Option<Value>)>,
    touch: bool,
}

fn doc_spec() -> impl Strategy<Value = DocSpec> {
    (field(1), field(0), field(2), any::<bool>()).prop_map(|(a, b, m, touch)| DocSpec {
        fields: vec![("a", a), ("b", b), ("m", m)],
        touch,
    })
}

fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "", "a", "A", "b", "R", "rust", "é", "É", "r1", "r5", "2"
        ])
        .prop_map(|s| format!("\"{s}\"")),
        prop::sample::select(vec![
            "0",
            "1",
            "-1",
            "2",
            "2.5",
            "0.5",
            "-1.5",
            "3",
            "1.0",
            "9007199254740992",
            "-9007199254740992",
            "18446744073709551615",
            "1e300",
        ])
        .prop_map(str::to_string),
        prop::sample::select(vec!["true", "false", "null"]).prop_map(str::to_string),
    ]
}

fn comparison() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "a",
            "b",
            "m",
            "m.x",
            "m.y",
            "m.x.x",
            "a.0",
            "a.1",
            "id",
            "version",
            "collection",
            "zz",
        ]),
        prop::sample::select(vec!["=", "!=", ">", ">=", "<", "<=", "~", "!~"]),
        literal(),
    )
        .prop_map(|(p, o, l)| format!("{p} {o} {l}"))
}

/// `p = "x" || p = "y" || …` on one field: compiled to one membership test.
fn any_of() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["a", "b", "m.x", "a.0", "id", "version", "zz"]),
        prop::collection::vec(
            prop::sample::select(vec!["", "a", "A", "b", "rust", "é", "r1", "2"]),
            2..5,
        ),
    )
        .prop_map(|(p, vs)| {
            vs.iter()
                .map(|v| format!("{p} = \"{v}\""))
                .collect::<Vec<_>>()
                .join(" || ")
        })
}

fn filter_text() -> impl Strategy<Value = String> {
    prop_oneof![4 => comparison(), 1 => any_of()].prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} && {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} || {b}")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("({a} || {b})")),
        ]
    })
}

/// Creates `docs` in a fresh collection; returns its name and the stored records.
async fn create_docs(env: &Env, prefix: &str, n: usize, docs: &[DocSpec]) -> (String, Vec<Record>) {
    let coll = format!("{prefix}{n}");
    let mut tasks = tokio::task::JoinSet::new();
    for (i, d) in docs.iter().enumerate() {
        let (hub, ctx, coll, d) = (env.hub.clone(), env.ctx.clone(), coll.clone(), d.clone());
        tasks.spawn(async move {
            let mut doc = serde_json::Map::new();
            for (k, v) in d.fields {
                if let Some(v) = v {
                    doc.insert(k.into(), v);
                }
            }
            let id = format!("r{i}");
            hub.create_record(&ctx, &coll, Some(id.clone()), doc)
                .await?;
            if d.touch {
                hub.patch_record(&ctx, &coll, &id, json!({}), None).await?;
            }
            Ok::<_, HubError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    // An empty set still needs the collection to exist for lists.
    if docs.is_empty() {
        env.hub
            .create_collection(&env.ctx, spec(json!({"name": coll})))
            .await
            .unwrap();
    }
    let all = env
        .hub
        .list_records(&env.ctx, &coll, &query(None, "id", 1000))
        .await
        .unwrap()
        .items;
    assert_eq!(all.len(), docs.len());
    (coll, all)
}

/// Proptest cases: `default`, or `PROPTEST_CASES` when set (for longer local hunts).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Fails the case unless `got` holds exactly the ids of the records `f` matches in
/// memory; returns those ids.
fn agrees_with_memory(
    all: &[Record],
    f: &Filter,
    got: &BTreeSet<String>,
    shown: &str,
) -> Result<BTreeSet<String>, TestCaseError> {
    let mem: BTreeSet<String> = all
        .iter()
        .filter(|r| f.matches(r))
        .map(|r| r.id.clone())
        .collect();
    let docs: Vec<Value> = all.iter().map(|r| Value::Object(r.data.clone())).collect();
    prop_assert_eq!(
        got,
        &mem,
        "filter `{}` on {}",
        shown,
        serde_json::to_string(&docs).unwrap()
    );
    Ok(mem)
}

/// Up to 12 documents and 1 to 7 filters per case, 64 cases unless `PROPTEST_CASES`.
fn filter_cases() -> (
    TestRunner,
    impl Strategy<Value = (Vec<DocSpec>, Vec<String>)>,
) {
    let runner = TestRunner::new(ProptestConfig {
        cases: cases(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        prop::collection::vec(doc_spec(), 0..12),
        prop::collection::vec(filter_text(), 1..8),
    );
    (runner, strategy)
}

/// The guarantee `crates/store/src/sql.rs` promises: for any filter, the SQL list returns
/// exactly the records `Filter::matches` accepts.
#[test]
fn prop_sql_filter_agrees_with_in_memory_filter() {
    let rt = runtime();
    let env = rt.block_on(async { Env::new() });
    let counter = AtomicUsize::new(0);
    let (mut runner, strategy) = filter_cases();
    let result = runner.run(&strategy, |(docs, filters)| {
        rt.block_on(async {
            let n = counter.fetch_add(1, AtomicOrdering::SeqCst);
            let (coll, all) = create_docs(&env, "pf", n, &docs).await;
            for src in &filters {
                let f = Filter::parse(src).unwrap();
                let page = env
                    .hub
                    .list_records(
                        &env.ctx,
                        &coll,
                        &ListQuery {
                            count: true,
                            ..query(Some(src), "id", 1000)
                        },
                    )
                    .await
                    .unwrap();
                let sql: BTreeSet<String> = ids(&page.items).into_iter().collect();
                let mem = agrees_with_memory(&all, &f, &sql, src)?;
                prop_assert_eq!(page.total, Some(mem.len() as u64));
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A record as the store would hold it, for the in-memory side of the Postgres test.
fn record(i: usize, d: &DocSpec) -> Record {
    let created = chrono::Utc::now();
    let mut data = serde_json::Map::new();
    for (k, v) in &d.fields {
        if let Some(v) = v {
            data.insert((*k).into(), v.clone());
        }
    }
    Record {
        collection: "pg".into(),
        id: format!("r{i}"),
        created_at: created,
        updated_at: created + chrono::Duration::milliseconds(i64::from(d.touch)),
        version: 1 + u64::from(d.touch),
        data,
    }
}

/// The guarantee `crates/store/src/pg/filter.rs` promises: for any filter, Postgres returns
/// exactly the rows `Filter::matches` accepts.
#[test]
fn prop_postgres_filter_agrees_with_in_memory_filter() {
    use polyport_store::pg::{PgParam, compile_filter};
    use tokio_postgres::types::ToSql;

    let rt = runtime();
    let dsn = polyport_store::pg::test_url();
    let db = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("Postgres at `{dsn}` (scripts/services starts it): {e}"));
        tokio::spawn(conn);
        client
            .batch_execute(
                "CREATE TEMP TABLE rec (id text PRIMARY KEY, collection text, created_at text, \
                 updated_at text, version bigint, data jsonb)",
            )
            .await
            .unwrap();
        client
    });
    let (mut runner, strategy) = filter_cases();
    let result = runner.run(&strategy, |(docs, filters)| {
        rt.block_on(async {
            db.batch_execute("TRUNCATE rec").await.unwrap();
            let all: Vec<Record> = docs.iter().enumerate().map(|(i, d)| record(i, d)).collect();
            for r in &all {
                let version = r.version as i64;
                db.execute(
                    "INSERT INTO rec VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &r.id,
                        &r.collection,
                        &polyport_core::record::format_time(&r.created_at),
                        &polyport_core::record::format_time(&r.updated_at),
                        &version,
                        &Value::Object(r.data.clone()),
                    ],
                )
                .await
                .unwrap();
            }
            for src in &filters {
                let f = Filter::parse(src).unwrap();
                let mut params = Vec::new();
                let sql = compile_filter(&f, &mut params);
                let bound: Vec<Box<dyn ToSql + Sync + Send>> =
                    params.iter().map(PgParam::to_sql).collect();
                let refs: Vec<&(dyn ToSql + Sync)> = bound
                    .iter()
                    .map(|b| b.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                let rows = db
                    .query(&format!("SELECT id FROM rec WHERE {sql}"), &refs)
                    .await
                    .unwrap_or_else(|e| panic!("filter `{src}` as `{sql}`: {e}"));
                let pg: BTreeSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
                agrees_with_memory(&all, &f, &pg, &format!("{src}` as `{sql}"))?;
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn sort_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            any::<bool>(),
            prop::sample::select(vec!["a", "b", "m.x", "zz", "id", "version", "created_at"]),
        ),
        1..4,
    )
    .prop_map(|keys| {
        keys.iter()
            .map(|(d, k)| format!("{}{k}", if *d { "-" } else { "" }))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// Keyset pagination over random data and random sorts returns the same rows as one big
/// page, in the order SQLite's ordering model predicts.
#[test]
fn prop_keyset_pages_equal_one_big_page() {
    let rt = runtime();
    let env = rt.block_on(async { Env::new() });
    let counter = AtomicUsize::new(0);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: cases(32),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let scalar_doc = (
        prop::option::of(scalar()),
        prop::option::of(scalar()),
        prop::option::of(prop::option::of(scalar())),
        any::<bool>(),
    )
        .prop_map(|(a, b, m, touch)| DocSpec {
            fields: vec![
                ("a", a),
                ("b", b),
                ("m", m.map(|x| json!({ "x": x.unwrap_or(Value::Null) }))),
            ],
            touch,
        });
    let strategy = (
        prop::collection::vec(scalar_doc, 0..14),
        prop::collection::vec((sort_text(), 1usize..5), 1..4),
    );
    let result = runner.run(&strategy, |(docs, sorts)| {
        rt.block_on(async {
            let n = counter.fetch_add(1, AtomicOrdering::SeqCst);
            let (coll, all) = create_docs(&env, "ps", n, &docs).await;
            for (sort, limit) in &sorts {
                let big = env
                    .hub
                    .list_records(&env.ctx, &coll, &query(None, sort, 1000))
                    .await
                    .unwrap();
                prop_assert_eq!(ids(&big.items), model_order(&all, sort), "sort {}", sort);
                let (walked, _) = walk(&env, &coll, query(None, sort, *limit)).await;
                prop_assert_eq!(
                    ids(&walked),
                    ids(&big.items),
                    "sort {} limit {}",
                    sort,
                    limit
                );
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
