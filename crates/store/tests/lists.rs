//! Record lists through the `Hub` over the embedded store: filters, sorts and keyset
//! pagination.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Env, ids, model_order, obj, query, walk};
use polyport_core::{Filter, HubError, ListQuery, Record};
use serde_json::{Value, json};

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
