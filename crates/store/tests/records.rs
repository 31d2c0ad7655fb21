//! Record CRUD through the `Hub` over the embedded store: ids, versions, optimistic
//! locking, merge patches, auto-created collections and their change events.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Env, assert_quiet, change, next_delivery, obj, query, rules, spec, subscribe, tf};
use polyport_core::schema::Rule;
use polyport_core::{HubConfig, HubError, SubscribeRequest};
use serde_json::json;

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
    assert_eq!(*hub.get_record(ctx, "notes", "p1").await.unwrap(), p1);
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
    assert_eq!(*hub.get_record(ctx, "notes", "p1").await.unwrap(), r4);
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
    assert_eq!(*hub.get_record(ctx, "notes", "p1").await.unwrap(), r4);
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
