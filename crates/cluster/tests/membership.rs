//! Membership against the NATS JetStream server on this machine (127.0.0.1:4222, or
//! `POLYPORT_TEST_NATS`): two nodes in one process see each other, and one that leaves is
//! gone from the other's list at once. Each run uses a bucket of its own and deletes it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use polyport_cluster::{ClusterConfig, NatsMembership};
use polyport_core::cluster::{Membership, Node};
use tokio_util::sync::CancellationToken;

fn nats() -> String {
    std::env::var("POLYPORT_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn config(bucket: &str) -> ClusterConfig {
    let mut c = ClusterConfig::new(nats());
    c.bucket = bucket.to_string();
    c.heartbeat = Duration::from_millis(200);
    c.ttl = Duration::from_secs(2);
    c
}

async fn ids(m: &NatsMembership) -> Vec<String> {
    m.nodes().await.unwrap().into_iter().map(|n| n.id).collect()
}

/// Waits (up to 5 s) until `m` lists exactly `want`: each node's view follows the
/// bucket through a watch, a moment behind.
async fn until_listed(m: &NatsMembership, want: &[String]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ids(m).await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listed {:?}, want {want:?}",
            ids(m).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_nodes_see_each_other_and_a_leaving_one_is_gone_at_once() {
    let bucket = format!("polyport-rs-test-{}", polyport_core::record::new_id());
    let stop = CancellationToken::new();
    let a_node = Node::this_process([("http".to_string(), "127.0.0.1:1".to_string())].into());
    let b_node = Node::this_process(Default::default());
    let a = NatsMembership::join(config(&bucket), a_node.clone(), stop.clone())
        .await
        .expect("join a");
    let b = NatsMembership::join(config(&bucket), b_node.clone(), stop.clone())
        .await
        .expect("join b");
    assert_eq!(a.engine(), "cluster");
    assert!(a.ready().is_ok());

    // Oldest first, and each as it announced itself.
    until_listed(&a, &[a_node.id.clone(), b_node.id.clone()]).await;
    let seen = a.nodes().await.unwrap();
    assert_eq!(
        seen.iter().map(|n| n.id.clone()).collect::<Vec<_>>(),
        vec![a_node.id.clone(), b_node.id.clone()]
    );
    assert_eq!(
        seen[0].listeners.get("http").map(String::as_str),
        Some("127.0.0.1:1")
    );
    assert_eq!(ids(&b).await, ids(&a).await);

    // Heartbeats keep a node listed past the ttl.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(ids(&a).await.len(), 2, "both still beating");

    b.leave().await;
    // Gone at once: well before the 2 s ttl.
    let left = std::time::Instant::now();
    until_listed(&a, std::slice::from_ref(&a_node.id)).await;
    assert!(
        left.elapsed() < Duration::from_secs(1),
        "{:?}",
        left.elapsed()
    );

    stop.cancel();
    a.leave().await;
    let client = async_nats::connect(nats()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_key_value(bucket.as_str()).await;
}

#[tokio::test]
async fn an_unreachable_nats_fails_the_join_with_its_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = ClusterConfig::new(format!("nats://127.0.0.1:{port}"));
    c.connect_timeout = Duration::from_millis(500);
    let e = NatsMembership::join(
        c,
        Node::this_process(Default::default()),
        CancellationToken::new(),
    )
    .await
    .expect_err("nothing listens there");
    assert!(
        e.to_string()
            .contains(&format!("cannot reach NATS at nats://127.0.0.1:{port}")),
        "{e}"
    );
}
