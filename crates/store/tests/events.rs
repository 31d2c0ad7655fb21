//! The event log through the `Hub` over the embedded store: gap-free sequences, restarts
//! and retention.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    Env, assert_quiet, change, draft, next_delivery, next_item, obj, read_seqs, seq, spec,
    subscribe, subscribe_req,
};
use polyport_core::{Durability, HubConfig, HubError, Item, Notice, SubscribeRequest};
use polyport_store::Retention;
use serde_json::json;

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

/// Waits (5 s at most) until retention has trimmed the log to start at `first`.
async fn retention_reaches(env: &Env, first: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.hub.log_state().first_seq != first {
        assert!(
            Instant::now() < deadline,
            "retention did not trim the log to {first}: {:?}",
            env.hub.log_state()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    retention_reaches(&env, 21).await;
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

fn keep_a_moment(c: &mut polyport_store::StoreConfig) {
    c.retention = Retention {
        max_events: None,
        max_age: Some(Duration::from_millis(1)),
    };
}

/// The log's position is not written with every commit: on open it is the newest
/// event's. Retention that empties the log must not let it go back.
#[tokio::test]
async fn a_log_emptied_by_age_keeps_its_position_across_a_restart() {
    let mut env = Env::with(HubConfig::default(), keep_a_moment);
    for i in 0..5 {
        env.publish("old/x", &i.to_string()).await;
    }
    retention_reaches(&env, 6).await;
    let epoch = env.hub.log_state().epoch;
    env.reopen().await;
    assert_eq!(env.hub.log_state().last_seq, 5);
    assert_eq!(env.hub.log_state().epoch, epoch);
    assert_eq!(seq(&env.publish("new/x", "after").await), 6);
}

/// Transient publishes are committed on the publisher's task when the writer is idle,
/// durable ones by the writer thread: mixed, from several publishers at once, each
/// publisher's messages still get ascending sequences in the order it sent them, and a
/// subscriber sees the log gap-free and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_and_durable_publishes_keep_each_publishers_order() {
    let env = Env::new();
    let mut sub = subscribe(&env, subscribe_req("mixed/#")).await;
    let publishers = 4;
    let each = 200;
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let (hub, ctx) = (env.hub.clone(), env.ctx.clone());
        tasks.push(tokio::spawn(async move {
            let mut pending = Vec::new();
            for i in 0..each {
                // Mostly transient, with a durable one now and then that must not be
                // overtaken by the transient ones sent after it.
                let durability = match i % 7 {
                    0 => Durability::Durable,
                    _ => Durability::Logged,
                };
                let d = draft(&format!("mixed/{p}"), &i.to_string(), durability);
                pending.push(hub.submit_publish(&ctx, d).await.unwrap());
            }
            let mut seqs = Vec::new();
            for r in pending {
                seqs.push(r.await.unwrap().event.seq.unwrap());
            }
            seqs
        }));
    }
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one publisher's sequences go up in send order: {seqs:?}"
        );
    }
    let mut last = 0;
    let mut next_of = vec![0u32; publishers];
    for _ in 0..publishers * each {
        let e = next_delivery(&mut sub).await.event;
        assert_eq!(seq(&e), last + 1, "gap-free, in order");
        last = seq(&e);
        let p: usize = e.topic.as_str()["mixed/".len()..].parse().unwrap();
        let i: u32 = std::str::from_utf8(&e.payload).unwrap().parse().unwrap();
        assert_eq!(
            i, next_of[p],
            "publisher {p}'s messages arrive in its order"
        );
        next_of[p] += 1;
    }
}
