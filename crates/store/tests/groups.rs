//! Consumer groups and adapter state through the `Hub` over the embedded store: splitting,
//! acks and redelivery, durable group positions, and the policy on adapter state.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Env, assert_quiet, next_delivery, read_seqs, seq, subscribe, subscribe_req};
use polyport_core::{AckPolicy, SubscribeRequest, Subscription};

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

/// A group whose position belongs to its name keeps that position when its filters
/// change (an AMQP queue gaining a binding); by default other filters are another group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_positioned_by_name_keeps_its_place_across_new_filters() {
    let env = Env::new();
    let a1 = seq(&env.publish("a/1", "x").await);
    let a2 = seq(&env.publish("a/2", "y").await);
    let req = |filters: &[&str], by_name: bool| SubscribeRequest {
        since: Some(0),
        position_by_name: by_name,
        filters: filters
            .iter()
            .map(|f| polyport_core::TopicFilter::new(f).unwrap())
            .collect(),
        ..acked(Some("q"), "unused", 10, 30_000)
    };
    let mut s = subscribe(&env, req(&["a/#"], true)).await;
    expect_acked_run(&mut s, &[a1, a2], "first run").await;
    // Rejoined at once: the dispatcher with the old filters retires first.
    drop(s);
    let b1 = seq(&env.publish("b/1", "z").await);
    let a3 = seq(&env.publish("a/3", "w").await);
    // A binding more: acked events are not replayed, new ones on either filter arrive.
    let mut s = subscribe(&env, req(&["a/#", "b/#"], true)).await;
    expect_acked_run(&mut s, &[b1, a3], "after the new filter").await;
    drop(s);
    // Keyed by filters (the default), the same name with other filters starts afresh.
    let mut other = subscribe(&env, req(&["a/#", "b/#"], false)).await;
    expect_acked_run(&mut other, &[a1, a2, b1, a3], "a different group").await;
}

/// A change of filters takes effect where it is made in the log: an event published
/// before it is routed by the filters of its time even when the group had not read it
/// yet (its member had no room). Swapping the source at the group's read position
/// instead dropped such an event (an AMQP unbind right after a publish) and picked up
/// one published before a bind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refilter_routes_what_was_published_before_it_by_the_old_filters() {
    let env = Env::new();
    let req = SubscribeRequest {
        position_by_name: true,
        filters: vec![polyport_core::TopicFilter::new("a/#").unwrap()],
        ..acked(Some("q"), "unused", 1, 30_000)
    };
    let mut s = subscribe(&env, req).await;
    let a1 = seq(&env.publish("a/1", "x").await);
    let held = next_delivery(&mut s).await;
    assert_eq!(seq(&held.event), a1);
    // Prefetch 1 and a1 unacknowledged: the group reads nothing more for now.
    let a2 = seq(&env.publish("a/2", "x").await);
    env.publish("b/1", "x").await;
    let change = s.refilter().expect("refilterable in place");
    change
        .send(vec![polyport_core::TopicFilter::new("b/#").unwrap()])
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    env.publish("a/3", "x").await;
    let b2 = seq(&env.publish("b/2", "x").await);
    s.ack(a1);
    expect_acked_run(&mut s, &[a2, b2], "routed by the filters of their time").await;
}
