//! Subscriptions through the `Hub` over the embedded store: topic filters, replay into
//! live, record selectors, slow subscribers and ephemeral overflow.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    Env, assert_quiet, change, draft, next_delivery, next_item, obj, read_seqs, seq, spec,
    subscribe, subscribe_req, tf, try_next,
};
use polyport_core::{
    Durability, Filter, HubConfig, HubError, Item, Notice, Overflow, RecordSelector,
    SubscribeRequest,
};
use serde_json::json;

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
