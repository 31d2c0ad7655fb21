//! Collection schemas through the `Hub` over the embedded store: field types, required
//! fields, defaults, relations and unique fields (also under concurrency).
#![allow(clippy::unwrap_used)]

mod common;

use common::{Env, ids, obj, query, rules, spec, walk};
use polyport_core::schema::Rule;
use polyport_core::{HubError, ListQuery};
use serde_json::json;

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
    assert_eq!(*hub.get_record(ctx, "posts", "p1").await.unwrap(), post);

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
    assert_eq!(*hub.get_record(ctx, "users", "b").await.unwrap(), b);
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

/// Lookups by a relation field (what GraphQL's reverse relations send) and by a unique
/// field read the field's index (on either engine); they must find exactly what the
/// filter says, page by page, with counts, sorted, and after the field stops being a
/// relation.
#[tokio::test]
async fn lookups_by_a_relation_or_unique_field_find_exactly_the_matching_records() {
    let env = schema_env().await;
    let (hub, ctx) = (&env.hub, &env.ctx);
    for u in 0..8 {
        hub.create_record(
            ctx,
            "users",
            Some(format!("u{u}")),
            obj(json!({"name": format!("n{u}"), "email": format!("e{u}@x")})),
        )
        .await
        .unwrap();
    }
    let mut want_13 = Vec::new();
    let mut want_5 = Vec::new();
    for i in 0..120 {
        let mut doc = json!({"title": format!("t{:03}", 119 - i), "views": i});
        // Every seventh post has no author: missing is not a match.
        if i % 7 != 0 {
            doc["author"] = json!(format!("u{}", i % 8));
        }
        let id = format!("p{i:03}");
        hub.create_record(ctx, "posts", Some(id.clone()), obj(doc.clone()))
            .await
            .unwrap();
        match doc.get("author").and_then(|a| a.as_str()) {
            Some("u1" | "u3") => want_13.push(id.clone()),
            Some("u5") => want_5.push(id.clone()),
            _ => {}
        }
    }
    let check = |label: &'static str, filter: &'static str, want: Vec<String>| {
        let env = &env;
        async move {
            let (got, pages) = walk(env, "posts", query(Some(filter), "", 4)).await;
            assert_eq!(ids(&got), want, "{label}: by id");
            assert!(pages > 1 || want.len() <= 4, "{label}: paged");
            let (got, _) = walk(env, "posts", query(Some(filter), "-title", 5)).await;
            let mut by_title = want.clone();
            by_title.sort();
            assert_eq!(ids(&got), by_title, "{label}: by title, descending");
            let mut q = query(Some(filter), "", 1000);
            q.count = true;
            let page = env.hub.list_records(&env.ctx, "posts", &q).await.unwrap();
            assert_eq!(page.total, Some(want.len() as u64), "{label}: count");
        }
    };
    check(
        "any of two",
        r#"author = "u1" || author = "u3""#,
        want_13.clone(),
    )
    .await;
    check("one", r#"author = "u5""#, want_5.clone()).await;
    check("none", r#"author = "u9" || author = "nobody""#, Vec::new()).await;
    let with_more: Vec<String> = want_13
        .iter()
        .filter(|id| id.as_str() >= "p060")
        .cloned()
        .collect();
    check(
        "and another condition",
        r#"views >= 60 && (author = "u1" || author = "u3")"#,
        with_more,
    )
    .await;
    let (got, _) = walk(&env, "users", query(Some(r#"email = "e4@x""#), "", 10)).await;
    assert_eq!(ids(&got), ["u4"], "a unique field");
    // No longer a relation: the same lookups read the collection instead.
    hub.replace_collection(
        ctx,
        spec(json!({"name": "posts", "fields": [
            {"name": "title", "type": "text", "required": true},
            {"name": "views", "type": "integer", "default": 0},
            {"name": "author", "type": "text"},
            {"name": "editors", "type": "array", "items": {"type": "relation", "collection": "users"}},
            {"name": "tags", "type": "array", "items": {"type": "text"}},
        ]})),
    )
    .await
    .unwrap();
    check(
        "any of two, no index",
        r#"author = "u1" || author = "u3""#,
        want_13,
    )
    .await;
    check("one, no index", r#"author = "u5""#, want_5).await;
}
