//! End-to-end tests of the `Hub` facade over the embedded SQLite store: what an adapter
//! (and so a user) sees through records, lists, the event log, subscriptions and groups.
#![allow(clippy::unwrap_used)]

mod common;

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use common::{Env, assert_quiet, change, draft, next_delivery, next_item, obj, seq, tf, try_next};
use polyport_core::query::parse_sort;
use polyport_core::schema::Rule;
use polyport_core::{
    AckPolicy, CollectionSpec, Durability, Filter, HubConfig, HubError, Item, ListQuery, Notice,
    Overflow, Record, RecordSelector, SubscribeRequest, Subscription,
};
use polyport_store::Retention;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// helpers

fn spec(v: Value) -> CollectionSpec {
    serde_json::from_value(v).unwrap()
}

fn rules(e: &HubError) -> Vec<(String, Rule)> {
    e.field_errors()
        .iter()
        .map(|f| (f.field.clone(), f.rule))
        .collect()
}

fn query(filter: Option<&str>, sort: &str, limit: usize) -> ListQuery {
    ListQuery {
        filter: filter.map(|f| Filter::parse(f).unwrap()),
        sort: if sort.is_empty() {
            Vec::new()
        } else {
            parse_sort(sort).unwrap()
        },
        limit,
        cursor: None,
        count: false,
    }
}

fn ids(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.id.clone()).collect()
}

/// Walks every page of a list with the given page size.
async fn walk(env: &Env, collection: &str, mut q: ListQuery) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut pages = 0;
    loop {
        let page = env
            .hub
            .list_records(&env.ctx, collection, &q)
            .await
            .unwrap();
        pages += 1;
        assert!(page.items.len() <= q.limit, "page larger than the limit");
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
        assert!(pages < 10_000, "pagination does not terminate");
    }
    (out, pages)
}

fn subscribe_req(filter: &str) -> SubscribeRequest {
    SubscribeRequest {
        filters: vec![tf(filter)],
        ..Default::default()
    }
}

async fn subscribe(env: &Env, req: SubscribeRequest) -> Subscription {
    match env.hub.subscribe(&env.ctx, req).await {
        Ok(s) => s,
        Err(e) => panic!("subscribe failed: {e}"),
    }
}

/// Reads durable events until `n` have arrived; fails on notices.
async fn read_seqs(sub: &mut Subscription, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(seq(&next_delivery(sub).await.event));
    }
    out
}

// ---------------------------------------------------------------------------------------
// 1. record CRUD

#[tokio::test]
async fn record_crud_versions_and_optimistic_locking() {
    let env = Env::new();
    let (hub, ctx) = (&env.hub, &env.ctx);

    // Unknown collection: created schemaless on first write.
    assert!(matches!(
        hub.collection(ctx, "notes"),
        Err(HubError::CollectionNotFound(_))
    ));
    let gen_rec = hub
        .create_record(ctx, "notes", None, obj(json!({"title": "hello", "n": 1})))
        .await
        .unwrap();
    assert_eq!(gen_rec.id.len(), 26, "server ids are ULIDs");
    assert!(polyport_core::record::validate_id(&gen_rec.id).is_ok());
    assert_eq!(gen_rec.version, 1);
    assert_eq!(gen_rec.created_at, gen_rec.updated_at);
    assert_eq!(gen_rec.collection, "notes");
    let coll = hub.collection(ctx, "notes").unwrap();
    assert!(
        coll.spec.fields.is_none(),
        "auto-created collection is schemaless"
    );
    // Schemaless takes anything (but system fields).
    hub.create_record(
        ctx,
        "notes",
        None,
        obj(json!({"any": {"deep": [1, "x", null]}})),
    )
    .await
    .unwrap();

    // Client id.
    let p1 = hub
        .create_record(
            ctx,
            "notes",
            Some("p1".into()),
            obj(json!({"title": "a", "keep": 1})),
        )
        .await
        .unwrap();
    assert_eq!(p1.id, "p1");
    assert_eq!(hub.get_record(ctx, "notes", "p1").await.unwrap(), p1);
    let dup = hub
        .create_record(
            ctx,
            "notes",
            Some("p1".into()),
            obj(json!({"title": "again"})),
        )
        .await
        .unwrap_err();
    assert!(matches!(dup, HubError::AlreadyExists(_)), "{dup:?}");
    assert_eq!(
        hub.get_record(ctx, "notes", "p1").await.unwrap().data["title"],
        "a"
    );
    let bad = hub
        .create_record(ctx, "notes", Some("a/b".into()), obj(json!({})))
        .await
        .unwrap_err();
    assert!(matches!(bad, HubError::InvalidId(_)), "{bad:?}");

    // Replace = PUT: the whole document is replaced, version grows, created_at stays.
    let (r2, created) = hub
        .replace_record(ctx, "notes", "p1", obj(json!({"title": "b"})), None)
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(r2.version, 2);
    assert_eq!(
        r2.data,
        obj(json!({"title": "b"})),
        "replace drops omitted fields"
    );
    assert_eq!(r2.created_at, p1.created_at);
    assert!(r2.updated_at >= p1.updated_at);
    // PUT on a missing id creates it …
    let (p2, created) = hub
        .replace_record(ctx, "notes", "p2", obj(json!({"x": 1})), None)
        .await
        .unwrap();
    assert!(created);
    assert_eq!(p2.version, 1);
    // … but not when the caller expects a version.
    let e = hub
        .replace_record(ctx, "notes", "p3", obj(json!({"x": 1})), Some(1))
        .await
        .unwrap_err();
    assert!(matches!(e, HubError::RecordNotFound { .. }), "{e:?}");

    // Merge patch (RFC 7396): null removes, objects merge, arrays replace.
    let r3 = hub
        .patch_record(
            ctx,
            "notes",
            "p1",
            json!({"title": null, "tags": ["x"], "meta": {"a": 1, "b": {"c": 2}}}),
            Some(2),
        )
        .await
        .unwrap();
    assert_eq!(r3.version, 3);
    assert_eq!(
        r3.data,
        obj(json!({"tags": ["x"], "meta": {"a": 1, "b": {"c": 2}}}))
    );
    let r4 = hub
        .patch_record(
            ctx,
            "notes",
            "p1",
            json!({"tags": ["y", "z"], "meta": {"a": null, "b": {"d": 3}}}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r4.version, 4);
    assert_eq!(
        r4.data,
        obj(json!({"tags": ["y", "z"], "meta": {"b": {"c": 2, "d": 3}}}))
    );
    assert_eq!(hub.get_record(ctx, "notes", "p1").await.unwrap(), r4);
    let e = hub
        .patch_record(ctx, "notes", "p1", json!([1, 2]), None)
        .await
        .unwrap_err();
    assert!(matches!(e, HubError::InvalidRequest(_)), "{e:?}");
    let e = hub
        .patch_record(ctx, "notes", "nope", json!({}), None)
        .await
        .unwrap_err();
    assert!(matches!(e, HubError::RecordNotFound { .. }), "{e:?}");

    // Optimistic locking on every write verb; a refused write changes nothing.
    let e = hub
        .patch_record(ctx, "notes", "p1", json!({"x": 1}), Some(3))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            HubError::VersionMismatch {
                expected: 3,
                current: 4
            }
        ),
        "{e:?}"
    );
    let e = hub
        .replace_record(ctx, "notes", "p1", obj(json!({})), Some(1))
        .await
        .unwrap_err();
    assert!(matches!(
        e,
        HubError::VersionMismatch {
            expected: 1,
            current: 4
        }
    ));
    let e = hub
        .delete_record(ctx, "notes", "p1", Some(5))
        .await
        .unwrap_err();
    assert!(matches!(
        e,
        HubError::VersionMismatch {
            expected: 5,
            current: 4
        }
    ));
    assert_eq!(hub.get_record(ctx, "notes", "p1").await.unwrap(), r4);
    let (r5, _) = hub
        .replace_record(ctx, "notes", "p1", obj(json!({"v": 5})), Some(4))
        .await
        .unwrap();
    assert_eq!(r5.version, 5);

    // Delete returns the record as it was; afterwards it is gone.
    let gone = hub
        .delete_record(ctx, "notes", "p1", Some(5))
        .await
        .unwrap();
    assert_eq!(gone, r5);
    let e = hub.get_record(ctx, "notes", "p1").await.unwrap_err();
    assert!(matches!(e, HubError::RecordNotFound { .. }), "{e:?}");
    let e = hub
        .delete_record(ctx, "notes", "p1", None)
        .await
        .unwrap_err();
    assert!(matches!(e, HubError::RecordNotFound { .. }), "{e:?}");
    // The id can be used again, starting over at version 1.
    let again = hub
        .create_record(ctx, "notes", Some("p1".into()), obj(json!({})))
        .await
        .unwrap();
    assert_eq!(again.version, 1);

    // Every successful write above emitted exactly one change event, in order.
    let mut sub = subscribe(
        &env,
        SubscribeRequest {
            filters: vec![tf("collections/notes/+")],
            since: Some(0),
            ..Default::default()
        },
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(change(&next_delivery(&mut sub).await.event));
    }
    let kinds: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "notes.created",
            "notes.created",
            "notes.created",
            "notes.updated",
            "notes.created",
            "notes.updated",
            "notes.updated",
            "notes.updated",
            "notes.deleted",
            "notes.created",
        ]
    );
    assert_quiet(&mut sub, 100).await;
}

#[tokio::test]
async fn auto_create_can_be_switched_off() {
    let env = Env::with_hub(HubConfig {
        auto_create_collections: false,
        ..HubConfig::default()
    });
    let (hub, ctx) = (&env.hub, &env.ctx);
    let e = hub
        .create_record(ctx, "posts", None, obj(json!({"a": 1})))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, HubError::AutoCreateDisabled(c) if c == "posts"),
        "{e:?}"
    );
    let e = hub
        .replace_record(ctx, "posts", "x", obj(json!({"a": 1})), None)
        .await
        .unwrap_err();
    assert!(matches!(e, HubError::AutoCreateDisabled(_)), "{e:?}");
    assert!(hub.collections(ctx).unwrap().is_empty());
    hub.create_collection(ctx, spec(json!({"name": "posts"})))
        .await
        .unwrap();
    hub.create_record(ctx, "posts", None, obj(json!({"a": 1})))
        .await
        .unwrap();
    let e = hub
        .list_records(ctx, "nope", &query(None, "", 10))
        .await
        .unwrap_err();
    assert!(matches!(e, HubError::CollectionNotFound(_)), "{e:?}");
    assert_eq!(
        hub.log_state().last_seq,
        1,
        "only the successful write has an event"
    );
}

/// A write that auto-creates a collection and then fails must not leave the collection
/// behind (neither in memory nor after a restart).
#[tokio::test]
async fn failed_write_does_not_leave_a_phantom_collection() {
    let mut env = Env::new();
    let e = env
        .hub
        .create_record(&env.ctx, "ghost", None, obj(json!({"id": "x"})))
        .await
        .unwrap_err();
    assert_eq!(rules(&e), [("id".to_string(), Rule::Reserved)]);
    // Another collection-creating write publishes the writer's collection map.
    env.hub
        .create_record(&env.ctx, "real", None, obj(json!({"a": 1})))
        .await
        .unwrap();
    let names: Vec<String> = env
        .hub
        .collections(&env.ctx)
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(names, ["real"]);
    env.reopen().await;
    let names: Vec<String> = env
        .hub
        .collections(&env.ctx)
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(names, ["real"]);
}

// ---------------------------------------------------------------------------------------
// 2. schemas

async fn schema_env() -> Env {
    let env = Env::new();
    let (hub, ctx) = (&env.hub, &env.ctx);
    // A relation to a collection that does not exist is refused.
    let e = hub
        .create_collection(
            ctx,
            spec(json!({"name": "posts", "fields": [
                {"name": "author", "type": "relation", "collection": "users"}
            ]})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        rules(&e),
        [("fields[0].collection".to_string(), Rule::Relation)]
    );
    hub.create_collection(
        ctx,
        spec(json!({"name": "users", "fields": [
            {"name": "name", "type": "text", "required": true},
            {"name": "email", "type": "text", "unique": true},
            {"name": "age", "type": "integer"},
            {"name": "score", "type": "number"},
            {"name": "active", "type": "bool", "default": true},
            {"name": "born", "type": "datetime"},
            {"name": "prefs", "type": "json"},
        ]})),
    )
    .await
    .unwrap();
    hub.create_collection(
        ctx,
        spec(json!({"name": "posts", "fields": [
            {"name": "title", "type": "text", "required": true},
            {"name": "views", "type": "integer", "default": 0},
            {"name": "author", "type": "relation", "collection": "users"},
            {"name": "editors", "type": "array", "items": {"type": "relation", "collection": "users"}},
            {"name": "tags", "type": "array", "items": {"type": "text"}},
        ]})),
    )
    .await
    .unwrap();
    env
}

#[tokio::test]
async fn schema_types_required_defaults_unknown_and_relations() {
    let env = schema_env().await;
    let (hub, ctx) = (&env.hub, &env.ctx);

    let u1 = hub
        .create_record(
            ctx,
            "users",
            Some("u1".into()),
            obj(json!({
                "name": "Ann", "email": "ann@x", "age": 30, "score": 4.5,
                "born": "1990-01-02T03:04:05Z", "prefs": {"theme": ["dark"]}
            })),
        )
        .await
        .unwrap();
    assert_eq!(u1.data["active"], true, "default applied on create");
    let u2 = hub
        .create_record(
            ctx,
            "users",
            Some("u2".into()),
            obj(json!({"name": "Bob", "active": false, "age": -1, "score": 3})),
        )
        .await
        .unwrap();
    assert_eq!(u2.data["active"], false, "explicit value beats the default");

    // Each type refuses the wrong JSON type.
    let e = hub
        .create_record(
            ctx,
            "users",
            None,
            obj(json!({
                "age": 1.5, "score": "9", "active": "yes", "born": "yesterday",
                "nick": "x", "email": 7
            })),
        )
        .await
        .unwrap_err();
    let mut got = rules(&e);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("active".to_string(), Rule::Type),
            ("age".to_string(), Rule::Type),
            ("born".to_string(), Rule::Type),
            ("email".to_string(), Rule::Type),
            ("name".to_string(), Rule::Required),
            ("nick".to_string(), Rule::Unknown),
            ("score".to_string(), Rule::Type),
        ]
    );
    assert!(matches!(e, HubError::Validation(_)));
    let e = hub
        .create_record(ctx, "users", None, obj(json!({"name": null})))
        .await
        .unwrap_err();
    assert_eq!(rules(&e), [("name".to_string(), Rule::Required)]);

    // Relations must point at existing records, including inside arrays.
    let post = hub
        .create_record(
            ctx,
            "posts",
            Some("p1".into()),
            obj(json!({"title": "t", "author": "u1", "editors": ["u1", "u2"], "tags": ["a"]})),
        )
        .await
        .unwrap();
    assert_eq!(post.data["views"], 0);
    let e = hub
        .create_record(
            ctx,
            "posts",
            None,
            obj(json!({"title": "t", "author": "ghost"})),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, HubError::Validation(_)), "{e:?}");
    assert_eq!(rules(&e), [("author".to_string(), Rule::Relation)]);
    let e = hub
        .create_record(
            ctx,
            "posts",
            None,
            obj(json!({"title": "t", "editors": ["u1", "ghost"]})),
        )
        .await
        .unwrap_err();
    assert_eq!(rules(&e), [("editors".to_string(), Rule::Relation)]);
    // Relations are checked once the document is well-typed.
    let e = hub
        .create_record(
            ctx,
            "posts",
            None,
            obj(json!({"title": "t", "editors": ["u1", "ghost"], "tags": [1]})),
        )
        .await
        .unwrap_err();
    assert_eq!(rules(&e), [("tags".to_string(), Rule::Type)]);
    // Updates are validated too (patch result and replace document).
    let e = hub
        .patch_record(ctx, "posts", "p1", json!({"author": "ghost"}), None)
        .await
        .unwrap_err();
    assert_eq!(rules(&e), [("author".to_string(), Rule::Relation)]);
    let e = hub
        .patch_record(ctx, "posts", "p1", json!({"title": null}), None)
        .await
        .unwrap_err();
    assert_eq!(rules(&e), [("title".to_string(), Rule::Required)]);
    let e = hub
        .replace_record(
            ctx,
            "posts",
            "p1",
            obj(json!({"title": "t", "extra": 1})),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(rules(&e), [("extra".to_string(), Rule::Unknown)]);
    assert_eq!(hub.get_record(ctx, "posts", "p1").await.unwrap(), post);

    // Expanding a relation returns the related records.
    let exp = hub
        .expand(ctx, "posts", &[post], &["author".into(), "editors".into()])
        .await
        .unwrap();
    assert_eq!(exp[0]["author"]["name"], "Ann");
    assert_eq!(exp[0]["editors"][1]["id"], "u2");
}

#[tokio::test]
async fn unique_fields_conflict_even_under_concurrency() {
    let env = schema_env().await;
    let (hub, ctx) = (&env.hub, &env.ctx);
    hub.create_record(
        ctx,
        "users",
        Some("a".into()),
        obj(json!({"name": "A", "email": "a@x"})),
    )
    .await
    .unwrap();
    let b = hub
        .create_record(
            ctx,
            "users",
            Some("b".into()),
            obj(json!({"name": "B", "email": "b@x"})),
        )
        .await
        .unwrap();
    let e = hub
        .create_record(
            ctx,
            "users",
            None,
            obj(json!({"name": "C", "email": "a@x"})),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, HubError::Conflict(_)), "{e:?}");
    assert_eq!(rules(&e), [("email".to_string(), Rule::Unique)]);
    assert!(e.to_string().contains("email"), "{e}");
    // Updating into a taken value conflicts; rewriting one's own value does not.
    let e = hub
        .patch_record(ctx, "users", "b", json!({"email": "a@x"}), None)
        .await
        .unwrap_err();
    assert!(matches!(e, HubError::Conflict(_)), "{e:?}");
    assert_eq!(hub.get_record(ctx, "users", "b").await.unwrap(), b);
    hub.patch_record(ctx, "users", "b", json!({"email": "b@x", "age": 2}), None)
        .await
        .unwrap();
    // Missing values do not collide with each other.
    hub.create_record(ctx, "users", None, obj(json!({"name": "N1"})))
        .await
        .unwrap();
    hub.create_record(ctx, "users", None, obj(json!({"name": "N2"})))
        .await
        .unwrap();
    // Deleting frees the value.
    hub.delete_record(ctx, "users", "a", None).await.unwrap();
    hub.create_record(
        ctx,
        "users",
        None,
        obj(json!({"name": "A2", "email": "a@x"})),
    )
    .await
    .unwrap();

    // 50 concurrent creates of one value: exactly one wins, the rest get a Conflict.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (hub, ctx) = (hub.clone(), ctx.clone());
        tasks.spawn(async move {
            hub.create_record(
                &ctx,
                "users",
                Some(format!("c{i}")),
                obj(json!({"name": "dup", "email": "same@x"})),
            )
            .await
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(matches!(e, HubError::Conflict(_)), "{e:?}");
                assert_eq!(rules(&e), [("email".to_string(), Rule::Unique)]);
            }
        }
    }
    assert_eq!(ok, 1);
    let page = hub
        .list_records(
            ctx,
            "users",
            &ListQuery {
                count: true,
                ..query(Some(r#"email = "same@x""#), "", 100)
            },
        )
        .await
        .unwrap();
    assert_eq!(page.total, Some(1));
    assert_eq!(page.items.len(), 1);
}

/// Identifiers may contain `__`, which the store also uses inside its unique-index names:
/// conflicts must still name the right field, and one collection's definition changes must
/// not touch another collection's unique indexes.
#[tokio::test]
async fn unique_fields_with_double_underscores_in_names() {
    let env = Env::new();
    let (hub, ctx) = (&env.hub, &env.ctx);
    let acct = spec(json!({"name": "acct", "fields": [
        {"name": "work__email", "type": "text", "unique": true},
        {"name": "n", "type": "integer"},
    ]}));
    hub.create_collection(ctx, acct.clone()).await.unwrap();
    hub.create_collection(
        ctx,
        spec(json!({"name": "acct__old", "fields": [
            {"name": "code", "type": "integer", "unique": true}
        ]})),
    )
    .await
    .unwrap();
    hub.create_record(ctx, "acct", None, obj(json!({"work__email": "x"})))
        .await
        .unwrap();
    let e = hub
        .create_record(ctx, "acct", None, obj(json!({"work__email": "x"})))
        .await
        .unwrap_err();
    assert_eq!(rules(&e), [("work__email".to_string(), Rule::Unique)]);

    // Redefining (and then deleting) `acct` leaves `acct__old`'s index alone.
    hub.replace_collection(ctx, acct).await.unwrap();
    hub.delete_collection(ctx, "acct").await.unwrap();
    hub.create_record(ctx, "acct__old", None, obj(json!({"code": 1})))
        .await
        .unwrap();
    let e = hub
        .create_record(ctx, "acct__old", None, obj(json!({"code": 1})))
        .await
        .unwrap_err();
    assert!(matches!(e, HubError::Conflict(_)), "{e:?}");
    assert_eq!(rules(&e), [("code".to_string(), Rule::Unique)]);
}

// ---------------------------------------------------------------------------------------
// 3. lists

async fn seed_articles(env: &Env) -> Vec<Record> {
    let docs = [
        (
            "a01",
            json!({"title": "Rust in action", "views": 50, "author": "u2", "meta": {"lang": "en"}, "draft": false}),
        ),
        (
            "a02",
            json!({"title": "Learning RUST", "views": 5, "author": "u3", "meta": {"lang": "de"}, "draft": true}),
        ),
        (
            "a03",
            json!({"title": "Go tips", "views": 100, "author": "u1", "meta": {"lang": "en"}, "big": 9_007_199_254_740_993_i64}),
        ),
        (
            "a04",
            json!({"title": "trust issues", "views": 11, "author": "u4", "subtitle": null}),
        ),
        (
            "a05",
            json!({"title": "Cooking", "views": 10, "author": "u2", "meta": {"lang": "fr"}, "subtitle": "food"}),
        ),
        (
            "a06",
            json!({"title": "rusty nails", "views": "many", "author": "u1", "draft": false}),
        ),
        (
            "a07",
            json!({"title": "Zig", "author": "u5", "meta": {"lang": "en"}, "draft": true}),
        ),
        (
            "a08",
            json!({"title": "Rust 2024", "views": 10.5, "author": "u5", "meta": {"lang": "EN"}}),
        ),
        ("a09", json!({"views": 7, "author": "u6"})),
        (
            "a10",
            json!({"title": "Async rust", "views": 11, "author": "u6", "meta": {"lang": "en", "tags": ["a"]}}),
        ),
    ];
    let mut out = Vec::new();
    for (id, doc) in docs {
        out.push(
            env.hub
                .create_record(&env.ctx, "articles", Some(id.into()), obj(doc))
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test]
async fn list_filters_select_exactly_the_matching_records() {
    let env = Env::new();
    seed_articles(&env).await;
    env.hub
        .patch_record(
            &env.ctx,
            "articles",
            "a09",
            json!({"title": "Untitled"}),
            None,
        )
        .await
        .unwrap();
    let a05_created = env
        .hub
        .get_record(&env.ctx, "articles", "a05")
        .await
        .unwrap()
        .to_json()["created_at"]
        .as_str()
        .unwrap()
        .to_string();
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            r#"title ~ "rust" && views > 10 || author = "u1""#.into(),
            vec!["a01", "a03", "a04", "a06", "a08", "a10"],
        ),
        (
            r#"title ~ "rust" && (views > 10 || author = "u1")"#.into(),
            vec!["a01", "a04", "a06", "a08", "a10"],
        ),
        (
            r#"meta.lang = "en""#.into(),
            vec!["a01", "a03", "a07", "a10"],
        ),
        (
            r#"meta.lang ~ "EN""#.into(),
            vec!["a01", "a03", "a07", "a08", "a10"],
        ),
        (r#"meta.tags.0 = "a""#.into(), vec!["a10"]),
        (
            "views >= 10 && views <= 11".into(),
            vec!["a04", "a05", "a08", "a10"],
        ),
        (r#"views > "10""#.into(), vec!["a06"]),
        ("draft = true".into(), vec!["a02", "a07"]),
        ("draft = false".into(), vec!["a01", "a06"]),
        (
            "draft != true".into(),
            vec!["a01", "a03", "a04", "a05", "a06", "a08", "a09", "a10"],
        ),
        (
            "subtitle = null".into(),
            vec![
                "a01", "a02", "a03", "a04", "a06", "a07", "a08", "a09", "a10",
            ],
        ),
        ("subtitle != null".into(), vec!["a05"]),
        ("meta = null".into(), vec!["a04", "a06", "a09"]),
        (r#"id = "a03" || id = "a07""#.into(), vec!["a03", "a07"]),
        (r#"id > "a08""#.into(), vec!["a09", "a10"]),
        ("version = 2".into(), vec!["a09"]),
        ("version = 1 && views < 6".into(), vec!["a02"]),
        (
            r#"collection = "articles" && title !~ "t""#.into(),
            vec!["a05", "a07"],
        ),
        (
            format!(r#"created_at >= "{a05_created}" && id <= "a06""#),
            vec!["a05", "a06"],
        ),
        (r#"author = "nobody""#.into(), vec![]),
        // Comparisons that can never hold, last in the filter (nothing left unbound).
        (r#"id = "a01" || views > null"#.into(), vec!["a01"]),
        (r#"title ~ "go" || draft ~ true"#.into(), vec!["a03"]),
        (r#"title ~ "go" || views ~ 5"#.into(), vec!["a03"]),
        (r#"title ~ "go" || version = "1""#.into(), vec!["a03"]),
        // Numbers compare as doubles on both sides, even beyond 2^53.
        ("big = 9007199254740992".into(), vec!["a03"]),
        ("big > 9007199254740992".into(), vec![]),
        (
            "big >= 9007199254740993 && big <= 9007199254740993".into(),
            vec!["a03"],
        ),
    ];
    let all = env
        .hub
        .list_records(&env.ctx, "articles", &query(None, "id", 100))
        .await
        .unwrap()
        .items;
    for (src, want) in cases {
        let f = Filter::parse(&src).unwrap();
        let page = env
            .hub
            .list_records(
                &env.ctx,
                "articles",
                &ListQuery {
                    count: true,
                    ..query(Some(&src), "id", 100)
                },
            )
            .await
            .unwrap();
        assert_eq!(ids(&page.items), want, "SQL result of {src}");
        assert_eq!(page.total, Some(want.len() as u64), "count of {src}");
        let mem: Vec<String> = all
            .iter()
            .filter(|r| f.matches(r))
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(mem, want, "in-memory result of {src}");
    }
}

#[tokio::test]
async fn list_sorts_mixed_directions_with_missing_fields() {
    let env = Env::new();
    seed_articles(&env).await;
    let list = |sort: &'static str| {
        let env = &env;
        async move {
            ids(&env
                .hub
                .list_records(&env.ctx, "articles", &query(None, sort, 100))
                .await
                .unwrap()
                .items)
        }
    };
    // Ascending: missing (NULL) first, then numbers, then text; ties by id.
    assert_eq!(
        list("views").await,
        [
            "a07", "a02", "a09", "a05", "a08", "a04", "a10", "a01", "a03", "a06"
        ]
    );
    // Descending: the reverse, missing last.
    assert_eq!(
        list("-views").await,
        [
            "a06", "a03", "a01", "a04", "a10", "a08", "a05", "a09", "a02", "a07"
        ]
    );
    // Mixed: meta.lang ascending (missing first), views descending within a language.
    assert_eq!(
        list("meta.lang,-views").await,
        [
            "a06", "a04", "a09", "a08", "a02", "a03", "a01", "a10", "a07", "a05"
        ]
    );
    assert_eq!(
        list("-author,title").await,
        [
            "a09", "a10", "a08", "a07", "a04", "a02", "a05", "a01", "a03", "a06"
        ]
    );
    // Default order is creation order.
    assert_eq!(
        list("").await,
        [
            "a01", "a02", "a03", "a04", "a05", "a06", "a07", "a08", "a09", "a10"
        ]
    );
}

/// Sort-key ordering as SQLite's `ORDER BY` sees `json_extract` values: NULL, then
/// numbers (bools are 0/1), then text by bytes.
#[derive(Clone, Debug, PartialEq, PartialOrd)]
enum SortVal {
    Null,
    Num(f64),
    Text(String),
}

fn sort_val(r: &Record, path: &[String]) -> SortVal {
    match r.lookup(path) {
        None | Some(Value::Null) => SortVal::Null,
        Some(Value::Bool(b)) => SortVal::Num(if b { 1.0 } else { 0.0 }),
        Some(Value::Number(n)) => SortVal::Num(n.as_f64().unwrap()),
        Some(Value::String(s)) => SortVal::Text(s),
        Some(other) => SortVal::Text(other.to_string()),
    }
}

fn model_order(records: &[Record], sort: &str) -> Vec<String> {
    let keys = parse_sort(sort).unwrap();
    let mut v = records.to_vec();
    v.sort_by(|a, b| {
        for k in &keys {
            let (x, y) = (sort_val(a, &k.path), sort_val(b, &k.path));
            let o = x.partial_cmp(&y).unwrap_or(Ordering::Equal);
            let o = if k.desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        a.id.cmp(&b.id)
    });
    ids(&v)
}

#[tokio::test]
async fn keyset_pagination_walks_every_record_once_in_order() {
    let env = Env::new();
    // 25 records with heavy ties, missing values and mixed types in the sort keys.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..25u32 {
        let (hub, ctx) = (env.hub.clone(), env.ctx.clone());
        let mut doc = json!({"n": i % 4, "s": format!("s{}", i % 3), "b": i % 2 == 0});
        if i % 5 == 0 {
            doc["n"] = Value::Null;
        }
        if i % 7 == 0 {
            doc.as_object_mut().unwrap().remove("s");
        }
        if i % 6 == 0 {
            doc["n"] = json!(1.5);
        }
        if i == 13 {
            doc["n"] = json!("text");
        }
        doc["meta"] = json!({"k": (i * 7) % 5});
        tasks.spawn(async move {
            hub.create_record(&ctx, "items", Some(format!("i{i:02}")), obj(doc))
                .await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let all = env
        .hub
        .list_records(&env.ctx, "items", &query(None, "id", 1000))
        .await
        .unwrap()
        .items;
    assert_eq!(all.len(), 25);

    for sort in [
        "n",
        "-n",
        "s,-n",
        "-s,n",
        "-b,meta.k,-n",
        "missing",
        "-missing,n",
        "created_at",
        "-created_at",
        "-id",
        "-version,s",
    ] {
        let big = env
            .hub
            .list_records(&env.ctx, "items", &query(None, sort, 1000))
            .await
            .unwrap();
        assert!(big.next_cursor.is_none());
        assert_eq!(
            ids(&big.items),
            model_order(&all, sort),
            "order for sort {sort}"
        );
        let (walked, pages) = walk(&env, "items", query(None, sort, 3)).await;
        assert_eq!(ids(&walked), ids(&big.items), "paged walk for sort {sort}");
        assert_eq!(pages, 9, "25 records in pages of 3 for sort {sort}");
    }

    // With a filter and a count, every page reports the full total.
    let mut q = ListQuery {
        count: true,
        ..query(Some("n >= 1 || n = null"), "-n,s", 3)
    };
    let want: Vec<String> = {
        let f = Filter::parse("n >= 1 || n = null").unwrap();
        let matching: Vec<Record> = all.iter().filter(|r| f.matches(r)).cloned().collect();
        model_order(&matching, "-n,s")
    };
    let mut got = Vec::new();
    loop {
        let page = env.hub.list_records(&env.ctx, "items", &q).await.unwrap();
        assert_eq!(page.total, Some(want.len() as u64));
        got.extend(ids(&page.items));
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(got, want);

    // A cursor only fits the sort it was issued for.
    let first = env
        .hub
        .list_records(&env.ctx, "items", &query(None, "-n", 3))
        .await
        .unwrap();
    let cursor = first.next_cursor.unwrap();
    for other in ["n", "-n,s", "s"] {
        let e = env
            .hub
            .list_records(
                &env.ctx,
                "items",
                &ListQuery {
                    cursor: Some(cursor.clone()),
                    ..query(None, other, 3)
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(e, HubError::InvalidCursor(_)), "{other}: {e:?}");
    }
    let e = env
        .hub
        .list_records(
            &env.ctx,
            "items",
            &ListQuery {
                cursor: Some("not-a-cursor!".into()),
                ..query(None, "-n", 3)
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, HubError::InvalidCursor(_)), "{e:?}");
    // The right sort continues where the first page stopped.
    let second = env
        .hub
        .list_records(
            &env.ctx,
            "items",
            &ListQuery {
                cursor: Some(cursor),
                ..query(None, "-n", 3)
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&second.items), model_order(&all, "-n")[3..6]);
}

// ---- property: SQL and in-memory evaluation agree ----

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

fn filter_text() -> impl Strategy<Value = String> {
    comparison().prop_recursive(3, 12, 2, |inner| {
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

/// The guarantee `crates/store/src/sql.rs` promises: for any filter, the SQL list returns
/// exactly the records `Filter::matches` accepts.
#[test]
fn prop_sql_filter_agrees_with_in_memory_filter() {
    let rt = runtime();
    let env = rt.block_on(async { Env::new() });
    let counter = AtomicUsize::new(0);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: cases(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        prop::collection::vec(doc_spec(), 0..12),
        prop::collection::vec(filter_text(), 1..8),
    );
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
                let mem: BTreeSet<String> = all
                    .iter()
                    .filter(|r| f.matches(r))
                    .map(|r| r.id.clone())
                    .collect();
                let docs: Vec<Value> = all.iter().map(|r| Value::Object(r.data.clone())).collect();
                prop_assert_eq!(
                    &sql,
                    &mem,
                    "filter `{}` on {}",
                    src,
                    serde_json::to_string(&docs).unwrap()
                );
                prop_assert_eq!(page.total, Some(mem.len() as u64));
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

// ---------------------------------------------------------------------------------------
// 4. event log

#[tokio::test]
async fn publish_assigns_gap_free_sequences_shared_with_record_changes() {
    let env = Env::new();
    let st = env.hub.log_state();
    assert_eq!((st.first_seq, st.last_seq), (1, 0), "empty log");
    let mut d = draft("sensors/t1", "21.5", Durability::Durable);
    d.headers = vec![("x-trace".into(), "abc".into())];
    d.event_type = Some("reading".into());
    let first = env.hub.publish(&env.ctx, d).await.unwrap().event;
    assert_eq!(first.seq, Some(1));
    let e2 = env.publish("sensors/t2", "22").await;
    let rec = env
        .hub
        .create_record(&env.ctx, "posts", Some("p".into()), obj(json!({"a": 1})))
        .await
        .unwrap();
    let e4 = env.publish("sensors/t1", "23").await;
    assert_eq!((seq(&e2), seq(&e4)), (2, 4), "the record change took seq 3");
    let st = env.hub.log_state();
    assert_eq!((st.first_seq, st.last_seq), (1, 4));

    // Replay gives back the very same events.
    let mut sub = subscribe(
        &env,
        SubscribeRequest {
            since: Some(0),
            ..subscribe_req("#")
        },
    )
    .await;
    let got: Vec<_> = [
        next_delivery(&mut sub).await,
        next_delivery(&mut sub).await,
        next_delivery(&mut sub).await,
        next_delivery(&mut sub).await,
    ]
    .into_iter()
    .map(|d| d.event)
    .collect();
    assert_eq!(got[0].id, first.id);
    assert_eq!(got[0].payload, "21.5");
    assert_eq!(got[0].event_type, "reading");
    assert_eq!(got[0].headers, [("x-trace".to_string(), "abc".to_string())]);
    assert_eq!(got[0].content_type.as_deref(), Some("text/plain"));
    assert_eq!(got[0].origin.0, "http");
    assert_eq!(change(&got[2]), ("posts.created".into(), "p".into()));
    assert_eq!(got[2].topic.as_str(), "collections/posts/p");
    assert_eq!(got[2].json_payload().unwrap()["seq"], 3);
    assert_eq!(got[2].json_payload().unwrap()["record"], rec.to_json());
    assert_eq!(got[3].id, e4.id);
}

#[tokio::test]
async fn concurrent_publishers_get_exactly_one_to_n() {
    let env = Env::new();
    let mut live = subscribe(&env, subscribe_req("load/#")).await;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..20 {
        let (hub, ctx) = (env.hub.clone(), env.ctx.clone());
        tasks.spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let e = hub
                    .publish(
                        &ctx,
                        draft(
                            &format!("load/{t}"),
                            &format!("{t}-{i}"),
                            Durability::Durable,
                        ),
                    )
                    .await
                    .unwrap()
                    .event;
                seqs.push(seq(&e));
            }
            seqs
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let seqs = r.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one publisher's seqs increase"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=500).collect::<Vec<u64>>());
    assert_eq!(env.hub.log_state().last_seq, 500);
    // A live subscriber saw them all, in sequence order.
    assert_eq!(
        read_seqs(&mut live, 500).await,
        (1..=500).collect::<Vec<u64>>()
    );
}

#[tokio::test]
async fn failed_writes_among_concurrent_writes_leave_no_gap() {
    let env = Env::new();
    env.hub
        .create_collection(
            &env.ctx,
            spec(json!({"name": "strict", "fields": [
                {"name": "name", "type": "text", "required": true},
                {"name": "code", "type": "integer", "unique": true},
            ]})),
        )
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..20i64 {
        let (hub, ctx) = (env.hub.clone(), env.ctx.clone());
        tasks.spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            for i in 0..12i64 {
                let r = match i % 4 {
                    0 => hub
                        .create_record(
                            &ctx,
                            "strict",
                            None,
                            obj(json!({"code": 1000 + t * 100 + i})),
                        )
                        .await
                        .map(|_| ()),
                    1 => hub
                        .publish(&ctx, draft("mix/x", "p", Durability::Durable))
                        .await
                        .map(|_| ()),
                    // Everyone fights over code 7: one wins, the rest conflict.
                    2 => hub
                        .create_record(&ctx, "strict", None, obj(json!({"name": "n", "code": 7})))
                        .await
                        .map(|_| ()),
                    _ => hub
                        .create_record(
                            &ctx,
                            "strict",
                            None,
                            obj(json!({"name": "n", "code": 1000 + t * 100 + i})),
                        )
                        .await
                        .map(|_| ()),
                };
                match r {
                    Ok(()) => ok += 1,
                    Err(HubError::Validation(_) | HubError::Conflict(_)) => failed += 1,
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
            (ok, failed)
        });
    }
    let (mut ok, mut failed) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (o, f) = r.unwrap();
        ok += o;
        failed += f;
    }
    // 20 × (3 validation failures + 1..=3 conflicts); 20 × 6 successes + one winner of code 7.
    assert_eq!(ok, 20 * 6 + 1);
    assert_eq!(failed, 20 * 12 - ok);
    assert_eq!(env.hub.log_state().last_seq, ok);
    let mut sub = subscribe(
        &env,
        SubscribeRequest {
            since: Some(0),
            ..subscribe_req("#")
        },
    )
    .await;
    assert_eq!(
        read_seqs(&mut sub, ok as usize).await,
        (1..=ok).collect::<Vec<u64>>()
    );
    assert_quiet(&mut sub, 100).await;
    let next = env.publish("mix/x", "after").await;
    assert_eq!(seq(&next), ok + 1);
}

#[tokio::test]
async fn reopening_keeps_epoch_position_records_and_schemas() {
    let mut env = Env::new();
    env.hub
        .create_collection(
            &env.ctx,
            spec(json!({"name": "users", "fields": [
                {"name": "email", "type": "text", "unique": true}
            ]})),
        )
        .await
        .unwrap();
    env.hub
        .create_record(
            &env.ctx,
            "users",
            Some("u".into()),
            obj(json!({"email": "e"})),
        )
        .await
        .unwrap();
    for i in 0..6 {
        env.publish("a/b", &i.to_string()).await;
    }
    let before = env.hub.log_state();
    assert_eq!(before.last_seq, 7);

    env.reopen().await;
    assert_eq!(
        env.hub.log_state(),
        before,
        "epoch and positions survive a restart"
    );
    assert_eq!(seq(&env.publish("a/b", "after").await), 8);
    assert_eq!(
        env.hub
            .get_record(&env.ctx, "users", "u")
            .await
            .unwrap()
            .data["email"],
        "e"
    );
    let e = env
        .hub
        .create_record(&env.ctx, "users", None, obj(json!({"email": "e"})))
        .await
        .unwrap_err();
    assert!(
        matches!(e, HubError::Conflict(_)),
        "unique index survives: {e:?}"
    );
    let e = env
        .hub
        .create_record(&env.ctx, "users", None, obj(json!({"other": 1})))
        .await
        .unwrap_err();
    assert!(
        matches!(e, HubError::Validation(_)),
        "schema survives: {e:?}"
    );
    let mut sub = subscribe(
        &env,
        SubscribeRequest {
            since: Some(0),
            epoch: Some(before.epoch.clone()),
            strict: true,
            ..subscribe_req("#")
        },
    )
    .await;
    assert_eq!(read_seqs(&mut sub, 8).await, (1..=8).collect::<Vec<u64>>());
    assert_eq!(sub.epoch(), before.epoch);
}

fn keep_ten(c: &mut polyport_store::StoreConfig) {
    c.retention = Retention {
        max_events: Some(10),
        max_age: None,
    };
}

#[tokio::test]
async fn retention_trims_and_resume_below_the_log_is_reported() {
    let mut env = Env::with(HubConfig::default(), keep_ten);
    for i in 0..30 {
        env.publish("r/x", &i.to_string()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.hub.log_state().first_seq != 21 {
        assert!(
            Instant::now() < deadline,
            "retention did not run: {:?}",
            env.hub.log_state()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = env.hub.log_state();
    assert_eq!(st.last_seq, 30);

    // Strict: refused, naming what is available.
    let strict = SubscribeRequest {
        since: Some(5),
        strict: true,
        ..subscribe_req("r/#")
    };
    match env.hub.subscribe(&env.ctx, strict.clone()).await {
        Err(HubError::PositionUnavailable {
            requested: 5,
            first_available: 21,
            last: 30,
            epoch,
        }) => assert_eq!(epoch, st.epoch),
        Err(e) => panic!("wrong error {e:?}"),
        Ok(_) => panic!("strict resume below the log must fail"),
    }
    // A foreign epoch is refused when strict …
    match env
        .hub
        .subscribe(
            &env.ctx,
            SubscribeRequest {
                since: Some(25),
                epoch: Some("other".into()),
                ..strict.clone()
            },
        )
        .await
    {
        Err(HubError::EpochMismatch { given, current }) => {
            assert_eq!(
                (given.as_str(), current.as_str()),
                ("other", st.epoch.as_str())
            );
        }
        Err(e) => panic!("wrong error {e:?}"),
        Ok(_) => panic!("strict resume from another epoch must fail"),
    }
    // … but the oldest retained position is fine.
    let mut ok = subscribe(
        &env,
        SubscribeRequest {
            since: Some(20),
            ..strict.clone()
        },
    )
    .await;
    assert_eq!(
        read_seqs(&mut ok, 10).await,
        (21..=30).collect::<Vec<u64>>()
    );

    // Not strict: told in-band where replay really starts, then the retained events.
    let mut sub = subscribe(
        &env,
        SubscribeRequest {
            strict: false,
            ..strict
        },
    )
    .await;
    match next_item(&mut sub).await {
        Item::Notice(Notice::ResumedFrom {
            requested,
            from,
            epoch,
        }) => {
            assert_eq!((requested, from), (5, 21));
            assert_eq!(epoch, st.epoch);
        }
        other => panic!("expected ResumedFrom first, got {other:?}"),
    }
    assert_eq!(
        read_seqs(&mut sub, 10).await,
        (21..=30).collect::<Vec<u64>>()
    );
    env.publish("r/x", "live").await;
    assert_eq!(seq(&next_delivery(&mut sub).await.event), 31);

    // Numbering survives trimming and a restart.
    env.reopen().await;
    let st2 = env.hub.log_state();
    assert_eq!(st2.epoch, st.epoch);
    assert_eq!(st2.last_seq, 31);
    assert!(st2.first_seq >= 21);
    assert_eq!(seq(&env.publish("r/x", "again").await), 32);
}

// ---------------------------------------------------------------------------------------
// 5. subscriptions

#[tokio::test]
async fn live_subscription_gets_only_matching_topics() {
    let env = Env::new();
    env.publish("sensors/a/temp", "before").await;
    let mut sub = subscribe(&env, subscribe_req("sensors/+/temp")).await;
    assert_eq!(sub.start_position(), 1);
    env.publish("sensors/a/hum", "no").await;
    let want = env.publish("sensors/b/temp", "yes").await;
    env.publish("sensors/b/temp/x", "no").await;
    env.hub
        .create_record(&env.ctx, "sensors", None, obj(json!({"x": 1})))
        .await
        .unwrap();
    let d = next_delivery(&mut sub).await;
    assert_eq!(d.event.id, want.id);
    assert_eq!(d.event.payload, "yes");
    assert_eq!(d.redeliveries, 0);
    assert_quiet(&mut sub, 150).await;
    drop(sub);
    assert_eq!(env.hub.subscriber_count(), 0, "dropping unsubscribes");
}

async fn replay_then_live(queue: usize) {
    let env = Env::with_hub(HubConfig {
        subscriber_queue: queue,
        ..HubConfig::default()
    });
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..4 {
        let (hub, ctx) = (env.hub.clone(), env.ctx.clone());
        tasks.spawn(async move {
            for i in 0..50 {
                hub.publish(
                    &ctx,
                    draft(&format!("s/{t}"), &i.to_string(), Durability::Durable),
                )
                .await
                .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // Publishers keep going while the subscriber replays and crosses over to live.
    let publisher = {
        let (hub, ctx) = (env.hub.clone(), env.ctx.clone());
        tokio::spawn(async move {
            for i in 0..300 {
                hub.publish(&ctx, draft("s/live", &i.to_string(), Durability::Durable))
                    .await
                    .unwrap();
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut sub = subscribe(
        &env,
        SubscribeRequest {
            since: Some(0),
            ..subscribe_req("s/#")
        },
    )
    .await;
    let got = read_seqs(&mut sub, 500).await;
    publisher.await.unwrap();
    assert_eq!(got, (1..=500).collect::<Vec<u64>>());
    assert_quiet(&mut sub, 100).await;
}

#[tokio::test]
async fn replay_from_zero_continues_live_without_gap_or_duplicate() {
    replay_then_live(1024).await;
}

#[tokio::test]
async fn replay_seam_holds_with_a_tiny_queue() {
    replay_then_live(2).await;
}

#[tokio::test]
async fn record_selector_delivers_only_matching_changes() {
    let env = Env::new();
    let (hub, ctx) = (&env.hub, &env.ctx);
    hub.create_collection(ctx, spec(json!({"name": "posts"})))
        .await
        .unwrap();
    let mut by_author = subscribe(
        &env,
        SubscribeRequest {
            records: Some(RecordSelector {
                collection: "posts".into(),
                id: None,
                filter: Some(Filter::parse(r#"author = "u1""#).unwrap()),
            }),
            ..Default::default()
        },
    )
    .await;
    let mut one = subscribe(
        &env,
        SubscribeRequest {
            records: Some(RecordSelector {
                collection: "posts".into(),
                id: Some("p1".into()),
                filter: None,
            }),
            ..Default::default()
        },
    )
    .await;
    let mk = |id: &str, author: &str| {
        hub.create_record(
            ctx,
            "posts",
            Some(id.into()),
            obj(json!({"author": author})),
        )
    };
    mk("p1", "u1").await.unwrap();
    mk("p2", "u2").await.unwrap();
    hub.patch_record(ctx, "posts", "p2", json!({"author": "u1"}), None)
        .await
        .unwrap();
    hub.patch_record(ctx, "posts", "p1", json!({"author": "u2"}), None)
        .await
        .unwrap();
    hub.create_record(ctx, "comments", None, obj(json!({"author": "u1"})))
        .await
        .unwrap();
    env.publish("posts/p1", "not a record change").await;
    hub.delete_record(ctx, "posts", "p2", None).await.unwrap();
    mk("p3", "u1").await.unwrap();

    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(change(&next_delivery(&mut by_author).await.event));
    }
    let want: Vec<(String, String)> = [
        ("posts.created", "p1"),
        ("posts.updated", "p2"),
        ("posts.deleted", "p2"),
        ("posts.created", "p3"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
    assert_quiet(&mut by_author, 100).await;

    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(change(&next_delivery(&mut one).await.event));
    }
    assert_eq!(
        got,
        [
            ("posts.created".to_string(), "p1".to_string()),
            ("posts.updated".to_string(), "p1".to_string())
        ]
    );
    assert_quiet(&mut one, 100).await;

    // The same selector replays history with the same filter.
    let mut replay = subscribe(
        &env,
        SubscribeRequest {
            since: Some(0),
            records: Some(RecordSelector {
                collection: "posts".into(),
                id: None,
                filter: Some(Filter::parse(r#"author = "u1""#).unwrap()),
            }),
            ..Default::default()
        },
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(change(&next_delivery(&mut replay).await.event));
    }
    assert_eq!(got, want);
}

#[tokio::test]
async fn slow_subscriber_gets_every_durable_event_in_order() {
    let env = Env::with_hub(HubConfig {
        subscriber_queue: 4,
        ..HubConfig::default()
    });
    let mut slow = subscribe(&env, subscribe_req("load/#")).await;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..10 {
        let (hub, ctx) = (env.hub.clone(), env.ctx.clone());
        tasks.spawn(async move {
            for i in 0..100 {
                hub.publish(
                    &ctx,
                    draft(&format!("load/{t}"), &i.to_string(), Durability::Durable),
                )
                .await
                .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // Not read a single item while 1000 were published into a queue of 4.
    assert_eq!(
        read_seqs(&mut slow, 1000).await,
        (1..=1000).collect::<Vec<u64>>()
    );
    assert_quiet(&mut slow, 100).await;
    env.publish("load/x", "live again").await;
    assert_eq!(seq(&next_delivery(&mut slow).await.event), 1001);
}

#[tokio::test]
async fn ephemeral_overflow_is_reported_as_dropped() {
    let env = Env::with_hub(HubConfig {
        subscriber_queue: 4,
        ephemeral_topics: vec![tf("telemetry/#")],
        ..HubConfig::default()
    });
    let mut req = subscribe_req("telemetry/#");
    req.overflow = Overflow::Notify;
    let mut sub = subscribe(&env, req).await;
    for i in 0..10 {
        let d = if i % 2 == 0 {
            draft("telemetry/x", &i.to_string(), Durability::Ephemeral)
        } else {
            // Auto on a configured ephemeral topic.
            draft("telemetry/y", &i.to_string(), Durability::Auto)
        };
        let e = env.hub.publish(&env.ctx, d).await.unwrap().event;
        assert_eq!(e.seq, None, "ephemeral events get no sequence");
    }
    assert_eq!(env.hub.log_state().last_seq, 0, "nothing was logged");
    let mut payloads = Vec::new();
    let mut dropped = 0;
    while let Some(item) = try_next(&mut sub, 200).await {
        match item {
            Item::Event(d) => {
                assert_eq!(d.event.seq, None);
                payloads.push(String::from_utf8(d.event.payload.to_vec()).unwrap());
            }
            Item::Notice(Notice::Dropped { count }) => dropped += count,
            Item::Notice(n) => panic!("unexpected notice {n:?}"),
        }
    }
    assert_eq!(
        payloads,
        ["0", "1", "2", "3"],
        "the queue kept the first four"
    );
    assert_eq!(dropped, 6, "the other six are reported as dropped");
    // The subscription keeps working afterwards.
    env.hub
        .publish(
            &env.ctx,
            draft("telemetry/x", "later", Durability::Ephemeral),
        )
        .await
        .unwrap();
    match next_item(&mut sub).await {
        Item::Event(d) => assert_eq!(d.event.payload, "later"),
        other => panic!("{other:?}"),
    }
    // A durable publish on an ephemeral topic is logged when the publisher insists.
    let e = env
        .hub
        .publish(&env.ctx, draft("telemetry/x", "keep", Durability::Durable))
        .await
        .unwrap()
        .event;
    assert_eq!(e.seq, Some(1));
}

#[tokio::test]
async fn ephemeral_overflow_disconnects_by_default_with_a_clear_reason() {
    let env = Env::with_hub(HubConfig {
        subscriber_queue: 2,
        ..HubConfig::default()
    });
    let mut slow = subscribe(&env, subscribe_req("telemetry/#")).await;
    let mut other = subscribe(&env, subscribe_req("telemetry/#")).await;
    for i in 0..5 {
        let d = draft("telemetry/x", &i.to_string(), Durability::Ephemeral);
        env.hub.publish(&env.ctx, d).await.unwrap();
        // `other` keeps up; `slow` reads nothing.
        assert!(matches!(next_item(&mut other).await, Item::Event(_)));
    }
    let mut got = 0;
    let err = loop {
        match slow.next().await {
            Some(Ok(Item::Event(_))) => got += 1,
            Some(Ok(n)) => panic!("unexpected {n:?}"),
            Some(Err(e)) => break e,
            None => panic!("ended without a reason"),
        }
    };
    assert_eq!(got, 2, "the queue held two");
    assert!(
        matches!(err, HubError::SlowConsumer { dropped: 3 }),
        "{err:?}"
    );
    assert_eq!(err.code(), "slow_consumer");
    assert!(
        slow.next().await.is_none(),
        "the subscription is closed after the error"
    );
}

// ---------------------------------------------------------------------------------------
// 6. groups

/// Reads exactly `want.len()` events, acking each, and checks they are `want` in order;
/// then checks nothing more (no duplicate, no acked event) arrives.
async fn expect_acked_run(sub: &mut Subscription, want: &[u64], context: &str) {
    let mut got = Vec::new();
    for _ in want {
        let d = next_delivery(sub).await;
        let s = seq(&d.event);
        got.push(s);
        assert_eq!(got, want[..got.len()], "{context}");
        sub.ack(s);
    }
    assert_quiet(sub, 150).await;
}

#[tokio::test]
async fn group_members_split_the_stream() {
    let env = Env::new();
    let req = || SubscribeRequest {
        group: Some("g".into()),
        ..subscribe_req("work/#")
    };
    let mut a = subscribe(&env, req()).await;
    let mut b = subscribe(&env, req()).await;
    let mut everyone = subscribe(&env, subscribe_req("work/#")).await;
    for i in 0..100 {
        env.publish("work/q", &i.to_string()).await;
    }
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    while got_a.len() + got_b.len() < 100 {
        tokio::select! {
            d = next_delivery(&mut a) => got_a.push(seq(&d.event)),
            d = next_delivery(&mut b) => got_b.push(seq(&d.event)),
        }
    }
    assert_quiet(&mut a, 150).await;
    assert_quiet(&mut b, 150).await;
    assert!(
        got_a.windows(2).all(|w| w[0] < w[1]),
        "each member sees order"
    );
    assert!(got_b.windows(2).all(|w| w[0] < w[1]));
    let sa: HashSet<u64> = got_a.iter().copied().collect();
    let sb: HashSet<u64> = got_b.iter().copied().collect();
    assert!(sa.is_disjoint(&sb), "an event went to both members");
    let mut union: Vec<u64> = sa.union(&sb).copied().collect();
    union.sort_unstable();
    assert_eq!(union, (1..=100).collect::<Vec<u64>>());
    assert!(
        got_a.len() >= 30 && got_b.len() >= 30,
        "work is shared: {} / {}",
        got_a.len(),
        got_b.len()
    );
    // Without a group, a subscriber gets everything.
    assert_eq!(
        read_seqs(&mut everyone, 100).await,
        (1..=100).collect::<Vec<u64>>()
    );
}

fn acked(group: Option<&str>, filter: &str, prefetch: usize, timeout_ms: u64) -> SubscribeRequest {
    SubscribeRequest {
        group: group.map(str::to_string),
        ack: Some(AckPolicy {
            prefetch,
            ack_timeout: Duration::from_millis(timeout_ms),
        }),
        ..subscribe_req(filter)
    }
}

#[tokio::test]
async fn unacked_events_are_redelivered_and_acked_ones_are_not() {
    let env = Env::new();
    let mut sub = subscribe(&env, acked(None, "jobs/#", 1, 300)).await;
    for i in 1..=3 {
        env.publish("jobs/a", &i.to_string()).await;
    }
    let d1 = next_delivery(&mut sub).await;
    assert_eq!((seq(&d1.event), d1.redeliveries), (1, 0));
    sub.ack(1);
    let d2 = next_delivery(&mut sub).await;
    let handed = Instant::now();
    assert_eq!((seq(&d2.event), d2.redeliveries), (2, 0));
    // Not acked: with prefetch 1 nothing else comes until event 2 is redelivered.
    let again = next_delivery(&mut sub).await;
    let waited = handed.elapsed();
    assert_eq!((seq(&again.event), again.redeliveries), (2, 1));
    assert!(
        waited >= Duration::from_millis(250),
        "redelivered too early: {waited:?}"
    );
    assert_eq!(again.event.id, d2.event.id, "the same event comes back");
    sub.ack(2);
    let d3 = next_delivery(&mut sub).await;
    assert_eq!((seq(&d3.event), d3.redeliveries), (3, 0));
    sub.ack(3);
    // Acked events never come back.
    assert_quiet(&mut sub, 800).await;
}

#[tokio::test]
async fn a_leaving_member_hands_its_inflight_events_to_the_others() {
    let env = Env::new();
    let mut a = subscribe(&env, acked(Some("h"), "jobs/#", 1, 30_000)).await;
    env.publish("jobs/a", "1").await;
    let da = next_delivery(&mut a).await;
    assert_eq!(seq(&da.event), 1);
    let mut b = subscribe(&env, acked(Some("h"), "jobs/#", 1, 30_000)).await;
    env.publish("jobs/a", "2").await;
    // A holds 1 unacked (prefetch 1), so 2 goes to B.
    let db = next_delivery(&mut b).await;
    assert_eq!((seq(&db.event), db.redeliveries), (2, 0));
    drop(a);
    b.ack(2);
    let moved = next_delivery(&mut b).await;
    assert_eq!(seq(&moved.event), 1, "A's in-flight event moves to B");
    assert_eq!(moved.redeliveries, 1);
    b.ack(1);
    env.publish("jobs/a", "3").await;
    assert_eq!(seq(&next_delivery(&mut b).await.event), 3);
    b.ack(3);
    assert_quiet(&mut b, 200).await;
}

/// Members ack a prefix of the history and leave; a later member of the same named group
/// gets exactly the rest — never an acked event again, never a gap. Multi-threaded so the
/// dispatcher really races the leave and the rejoin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_group_resumes_from_its_acked_position() {
    let env = Env::new();
    for round in 0..16u64 {
        let topic = format!("jobs{round}/x");
        let mut seqs = Vec::new();
        for i in 0..10 {
            seqs.push(seq(&env.publish(&topic, &i.to_string()).await));
        }
        let group = format!("w{round}");
        let req = || SubscribeRequest {
            since: Some(0),
            ..acked(Some(group.as_str()), &format!("jobs{round}/#"), 1, 30_000)
        };
        let acked_count = 1 + (round as usize % 4);
        let mut a = subscribe(&env, req()).await;
        for want in &seqs[..acked_count] {
            let d = next_delivery(&mut a).await;
            assert_eq!(seq(&d.event), *want);
            a.ack(*want);
        }
        // Odd rounds: also hold the next event unacked when leaving; even rounds leave
        // right after the last ack.
        if round % 2 == 1 {
            let d = next_delivery(&mut a).await;
            assert_eq!(seq(&d.event), seqs[acked_count]);
        }
        drop(a);
        // Half the rounds let the group empty out completely before the next member
        // joins; the other half rejoin at once.
        match round % 4 {
            0 => tokio::time::sleep(Duration::from_millis(50)).await,
            1 => {}
            r => tokio::time::sleep(Duration::from_micros(300 * r)).await,
        }
        let mut b = subscribe(&env, req()).await;
        expect_acked_run(&mut b, &seqs[acked_count..], &format!("round {round}")).await;
    }
}

/// A named group's acknowledged position is durable: it survives a restart.
#[tokio::test]
async fn a_named_group_position_survives_a_restart() {
    let mut env = Env::new();
    for i in 0..6 {
        env.publish("jobs/x", &i.to_string()).await;
    }
    let req = || SubscribeRequest {
        since: Some(0),
        ..acked(Some("durable"), "jobs/#", 1, 30_000)
    };
    let mut a = subscribe(&env, req()).await;
    for want in 1..=3 {
        let d = next_delivery(&mut a).await;
        assert_eq!(seq(&d.event), want);
        a.ack(want);
    }
    // Event 4 is in flight, unacked, when the member leaves.
    assert_eq!(seq(&next_delivery(&mut a).await.event), 4);
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.reopen().await;
    let mut b = subscribe(&env, req()).await;
    expect_acked_run(&mut b, &[4, 5, 6], "after restart").await;
}

/// Adapter state is durable per namespace, replaced and removed by key, and forgetting a
/// group makes its next join start live instead of resuming.
#[tokio::test]
async fn adapter_state_survives_a_restart_and_groups_can_be_forgotten() {
    let mut env = Env::new();
    let hub = &env.hub;
    hub.put_state(&env.ctx, "ns.a", "k1", Some("one".into()))
        .await
        .unwrap();
    hub.put_state(&env.ctx, "ns.a", "k2", Some("two".into()))
        .await
        .unwrap();
    hub.put_state(&env.ctx, "ns.a", "k1", Some("uno".into()))
        .await
        .unwrap();
    hub.put_state(&env.ctx, "ns.b", "k1", Some(vec![0u8, 255].into()))
        .await
        .unwrap();
    hub.put_state(&env.ctx, "ns.a", "k2", None).await.unwrap();
    for i in 0..3 {
        env.publish("forget/x", &i.to_string()).await;
    }
    let req = |g: &str| SubscribeRequest {
        since: Some(0),
        ..acked(Some(g), "forget/#", 1, 30_000)
    };
    for g in ["g1", "g10"] {
        let mut a = subscribe(&env, req(g)).await;
        let d = next_delivery(&mut a).await;
        a.ack(seq(&d.event));
        drop(a);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.reopen().await;
    let hub = &env.hub;
    let a = hub.load_state(&env.ctx, "ns.a").await.unwrap();
    assert_eq!(a, vec![("k1".to_string(), bytes::Bytes::from("uno"))]);
    let b = hub.load_state(&env.ctx, "ns.b").await.unwrap();
    assert_eq!(
        b,
        vec![("k1".to_string(), bytes::Bytes::from(vec![0u8, 255]))]
    );
    assert!(hub.load_state(&env.ctx, "ns.c").await.unwrap().is_empty());

    // "g1" is forgotten; "g10" (which shares the prefix text) is not.
    hub.delete_group(&env.ctx, "g1").await.unwrap();
    let mut g10 = subscribe(&env, req("g10")).await;
    assert_eq!(seq(&next_delivery(&mut g10).await.event), 2);
    let mut g1 = subscribe(&env, req("g1")).await;
    // Without a saved position the group starts where the request says: from 0.
    assert_eq!(seq(&next_delivery(&mut g1).await.event), 1);
}

/// Adapter state goes through the policy like every other verb: a caller the policy
/// refuses can neither read nor write it, and nothing is changed.
#[tokio::test]
async fn adapter_state_is_authorized_by_the_policy() {
    use polyport_core::{AuthContext, Bus, Hub, HubConfig, Origin};
    use polyport_store::{SqliteStore, StoreConfig};
    use std::sync::Arc;

    struct OnlyMqtt;
    impl polyport_core::Policy for OnlyMqtt {
        fn authorize(
            &self,
            ctx: &AuthContext,
            action: polyport_core::auth::Action<'_>,
        ) -> polyport_core::HubResult<()> {
            match action {
                polyport_core::auth::Action::AdapterState(_) if ctx.origin.0 != "mqtt" => Err(
                    polyport_core::HubError::Forbidden("adapter state is the adapter's".into()),
                ),
                _ => Ok(()),
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::new();
    let store =
        Arc::new(SqliteStore::open(StoreConfig::new(dir.path()), Arc::new(bus.clone())).unwrap());
    let hub = Hub::with_policy(store, bus, HubConfig::default(), Box::new(OnlyMqtt));
    let mqtt = AuthContext::anonymous(Origin("mqtt"));
    let http = AuthContext::anonymous(Origin("http"));
    hub.put_state(&mqtt, "mqtt.session", "c1", Some("s".into()))
        .await
        .unwrap();
    let refused = hub.put_state(&http, "mqtt.session", "c1", None).await;
    assert!(
        matches!(refused, Err(polyport_core::HubError::Forbidden(_))),
        "{refused:?}"
    );
    assert!(hub.load_state(&http, "mqtt.session").await.is_err());
    assert!(hub.delete_group(&http, "g").await.is_err());
    assert_eq!(
        hub.load_state(&mqtt, "mqtt.session").await.unwrap().len(),
        1,
        "unchanged"
    );
}
