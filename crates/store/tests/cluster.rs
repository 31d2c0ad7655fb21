//! Several nodes of the cluster engine on one Postgres database (always on the real
//! Postgres, whatever `POLYPORT_TEST_STORE` says): what one node writes, the others
//! read and push to their subscribers, in one order, with the sequence the writer got.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use polyport_core::CollectionSpec;
use serde_json::json;

/// Waits until `check` holds (another node learns through its log follower).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_write_on_one_node_reaches_the_other_nodes_subscribers_with_its_sequence() {
    let (a, b) = Env::postgres_pair();
    let mut on_b = subscribe(&b, subscribe_req("#")).await;
    let mut on_a = subscribe(&a, subscribe_req("#")).await;

    let e1 = a.publish("sensors/t1", "21.5").await;
    b.hub
        .create_record(
            &b.ctx,
            "posts",
            Some("p1".into()),
            obj(json!({"title": "hi"})),
        )
        .await
        .unwrap();
    let e3 = b.publish("sensors/t2", "22").await;
    assert_eq!(
        (seq(&e1), seq(&e3)),
        (1, 3),
        "one log, gap-free: the record took 2"
    );

    for sub in [&mut on_a, &mut on_b] {
        let got: Vec<(u64, String)> = [
            next_delivery(sub).await,
            next_delivery(sub).await,
            next_delivery(sub).await,
        ]
        .iter()
        .map(|d| (seq(&d.event), d.event.topic.as_str().to_string()))
        .collect();
        assert_eq!(
            got,
            [
                (1, "sensors/t1".to_string()),
                (2, "collections/posts/p1".to_string()),
                (3, "sensors/t2".to_string())
            ]
        );
    }
    // Read-your-writes across nodes: the record written through B is read on A at once.
    let read = a.hub.get_record(&a.ctx, "posts", "p1").await.unwrap();
    assert_eq!(read.data["title"], "hi");
    eventually("both nodes' log positions", || {
        a.hub.log_state().last_seq == 3 && b.hub.log_state().last_seq == 3
    })
    .await;
    assert_eq!(
        a.hub.log_state().epoch,
        b.hub.log_state().epoch,
        "one log, one epoch"
    );
}

#[tokio::test]
async fn concurrent_writers_on_two_nodes_make_one_gap_free_order_every_node_sees() {
    let (a, b) = Env::postgres_pair();
    let mut on_a = subscribe(&a, subscribe_req("load/#")).await;
    let mut on_b = subscribe(&b, subscribe_req("load/#")).await;
    let n = 150;
    let (ra, rb) = tokio::join!(
        async {
            let mut s = Vec::new();
            for i in 0..n {
                s.push(seq(&a.publish("load/a", &i.to_string()).await));
            }
            s
        },
        async {
            let mut s = Vec::new();
            for i in 0..n {
                s.push(seq(&b.publish("load/b", &i.to_string()).await));
            }
            s
        },
    );
    let all: BTreeSet<u64> = ra.iter().chain(&rb).copied().collect();
    assert_eq!(
        all,
        (1..=2 * n as u64).collect(),
        "every sequence once, none lost"
    );
    let seen_a = read_seqs(&mut on_a, 2 * n).await;
    let seen_b = read_seqs(&mut on_b, 2 * n).await;
    assert_eq!(
        seen_a,
        (1..=2 * n as u64).collect::<Vec<_>>(),
        "node A: in order"
    );
    assert_eq!(seen_a, seen_b, "both nodes, one order");
}

#[tokio::test]
async fn a_collection_made_on_one_node_is_known_to_the_other() {
    let (a, b) = Env::postgres_pair();
    let spec: CollectionSpec = serde_json::from_value(json!({
        "name": "people",
        "fields": [{"name": "email", "type": "text", "unique": true}]
    }))
    .unwrap();
    a.hub.create_collection(&a.ctx, spec).await.unwrap();
    // B's writer reads the schema under the log lock: its next write knows the field...
    b.hub
        .create_record(&b.ctx, "people", None, obj(json!({"email": "x@y"})))
        .await
        .unwrap();
    // ...and the unique index holds whichever node writes.
    let dup = a
        .hub
        .create_record(&a.ctx, "people", None, obj(json!({"email": "x@y"})))
        .await;
    assert!(
        matches!(dup, Err(polyport_core::HubError::Conflict(_))),
        "{dup:?}"
    );
    // B's readers learn of it without a write of their own (its log follower).
    let (c, d) = Env::postgres_pair();
    let spec: CollectionSpec =
        serde_json::from_value(json!({"name": "tags", "fields": [{"name": "t", "type": "text"}]}))
            .unwrap();
    c.hub.create_collection(&c.ctx, spec).await.unwrap();
    eventually("the other node lists the new collection", || {
        d.hub
            .collections(&d.ctx)
            .is_ok_and(|m| m.contains_key("tags"))
    })
    .await;
}
