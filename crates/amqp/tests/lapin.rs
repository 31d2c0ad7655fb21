//! The broker through lapin, the Rust AMQP client: confirmed publishes (one at a time
//! and pipelined, whose confirms arrive as `multiple` acks), manual acks, typed
//! properties, and a Hub publish (any other protocol's) reaching an AMQP consumer.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use polyport_amqp::{AmqpBroker, AmqpConfig};
use polyport_core::{AuthContext, Bus, EventDraft, Hub, Origin, Topic};

async fn broker() -> (Hub, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::new();
    let store = polyport_store::SqliteStore::open(
        polyport_store::StoreConfig::new(dir.path()),
        Arc::new(bus.clone()),
    )
    .unwrap();
    let hub = Hub::new(Arc::new(store), bus, Default::default());
    let broker = AmqpBroker::start(hub.clone(), AmqpConfig::default())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { broker.serve(listener, Default::default()).await });
    (hub, format!("amqp://guest:guest@{addr}/%2f"), dir)
}

/// A channel in confirm mode, with the durable queue `queue` declared.
async fn confirming(uri: &str, queue: &str) -> (Connection, lapin::Channel) {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, ch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_publishes_manual_acks_and_typed_properties() {
    let (_hub, uri, _dir) = broker().await;
    let (_conn, ch) = confirming(&uri, "work").await;
    let mut headers = FieldTable::default();
    headers.insert("attempt".into(), AMQPValue::LongInt(3));
    for i in 0..100u32 {
        let props = BasicProperties::default()
            .with_message_id(format!("m{i}").into())
            .with_delivery_mode(2)
            .with_headers(headers.clone());
        let confirm = ch
            .basic_publish(
                "".into(),
                "work".into(),
                BasicPublishOptions::default(),
                format!("job {i}").as_bytes(),
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "publish {i} confirmed");
    }
    let mut consumer = ch
        .basic_consume(
            "work".into(),
            "w".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..100u32 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.data, format!("job {i}").as_bytes());
        assert_eq!(
            d.properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_string()),
            Some(format!("m{i}"))
        );
        assert_eq!(
            d.properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("attempt").cloned()),
            Some(AMQPValue::LongInt(3)),
            "a typed header comes back typed"
        );
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
}

/// Publishes not awaited one by one: several settle per commit and are confirmed
/// together; every one must resolve as an ack, and every message be in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_confirmed_publishes_are_each_acknowledged() {
    let (_hub, uri, _dir) = broker().await;
    let (_conn, ch) = confirming(&uri, "burst").await;
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut pending = Vec::new();
    for i in 0..500u32 {
        let confirm = ch
            .basic_publish(
                "".into(),
                "burst".into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                props.clone(),
            )
            .await
            .unwrap();
        pending.push(confirm);
    }
    for (i, confirm) in pending.into_iter().enumerate() {
        let c = tokio::time::timeout(Duration::from_secs(10), confirm)
            .await
            .unwrap()
            .unwrap();
        assert!(c.is_ack(), "publish {i} confirmed");
    }
    // Counted right after the last confirm: every confirmed message is in the queue.
    let q = ch
        .queue_declare(
            "burst".into(),
            QueueDeclareOptions {
                durable: true,
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 500);
    // And a purge takes them all: none arrives after it.
    let purged = ch
        .queue_purge("burst".into(), Default::default())
        .await
        .unwrap();
    assert_eq!(purged, 500);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let left = ch
        .basic_get("burst".into(), Default::default())
        .await
        .unwrap();
    assert!(left.is_none(), "a message arrived after the purge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_publish_on_the_tree_reaches_a_queue_bound_to_amq_topic() {
    let (hub, uri, _dir) = broker().await;
    let conn = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        q.name().clone(),
        "amq.topic".into(),
        "sensors.*".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            q.name().clone(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ctx = AuthContext::anonymous(Origin("test"));
    hub.publish(
        &ctx,
        EventDraft::new(Topic::new("sensors/hall").unwrap(), "20.5"),
    )
    .await
    .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.data, b"20.5");
    assert_eq!(d.exchange.as_str(), "amq.topic");
    assert_eq!(d.routing_key.as_str(), "sensors.hall");
}
