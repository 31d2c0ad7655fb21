//! Interop with rumqttc (Rust's most used MQTT client), v3.1.1 and v5, against the broker
//! over a real Hub and SQLite store: persistent sessions across a restart, QoS 2,
//! MQTT 5 properties and request/response, no-local and retain handling.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use polyport_core::{Bus, Hub, HubConfig};
use polyport_mqtt::{MqttBroker, MqttConfig};
use polyport_store::{SqliteStore, StoreConfig};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as ConnectReturnCode5, Filter, Packet as Packet5, PublishProperties,
    RetainForwardRule,
};
use rumqttc::{Event, Packet, QoS};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// A broker on a Hub over the SQLite store in a directory, on an ephemeral port.
struct Running {
    hub: Hub,
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(dir: &Path) -> Running {
    start_with(dir, MqttConfig::default()).await
}

async fn start_with(dir: &Path, cfg: MqttConfig) -> Running {
    let bus = Bus::new();
    let store = SqliteStore::open(StoreConfig::new(dir), Arc::new(bus.clone())).unwrap();
    let hub = Hub::new(Arc::new(store), bus, HubConfig::default());
    let broker = MqttBroker::start(hub.clone(), cfg).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move { broker.serve(listener, s).await });
    Running {
        hub,
        addr,
        stop,
        task,
    }
}

impl Running {
    /// Stops the broker and the hub, as a process restart would.
    async fn shutdown(self) {
        self.stop.cancel();
        self.hub.shutdown().await;
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }
}

/// A v3.1.1 client whose event loop runs in a task; its events arrive on the channel.
fn v4(
    addr: SocketAddr,
    id: &str,
    clean: bool,
) -> (rumqttc::AsyncClient, mpsc::UnboundedReceiver<Packet>) {
    let (c, rx, _) = v4_with(addr, id, clean, false);
    (c, rx)
}

/// Like [`v4`]; with `manual_acks` nothing is acknowledged unless the test does it, and
/// aborting the returned task drops the connection without a DISCONNECT.
fn v4_with(
    addr: SocketAddr,
    id: &str,
    clean: bool,
    manual_acks: bool,
) -> (
    rumqttc::AsyncClient,
    mpsc::UnboundedReceiver<Packet>,
    tokio::task::JoinHandle<()>,
) {
    let mut o = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_clean_session(clean);
    o.set_manual_acks(manual_acks);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(ev) = el.poll().await {
            if let Event::Incoming(p) = ev
                && tx.send(p).is_err()
            {
                return;
            }
        }
    });
    (client, rx, task)
}

fn v5(addr: SocketAddr, id: &str) -> (rumqttc::v5::AsyncClient, mpsc::UnboundedReceiver<Packet5>) {
    let o = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = el.poll().await {
            if let rumqttc::v5::Event::Incoming(p) = ev
                && tx.send(p).is_err()
            {
                return;
            }
        }
    });
    (client, rx)
}

async fn next_matching<P, T>(
    rx: &mut mpsc::UnboundedReceiver<P>,
    mut pick: impl FnMut(P) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let p = rx.recv().await.expect("event loop ended");
            if let Some(t) = pick(p) {
                return t;
            }
        }
    })
    .await
    .expect("timed out waiting for a packet")
}

async fn connack4(rx: &mut mpsc::UnboundedReceiver<Packet>) -> rumqttc::ConnAck {
    next_matching(rx, |p| match p {
        Packet::ConnAck(a) => Some(a),
        _ => None,
    })
    .await
}

async fn publish4(rx: &mut mpsc::UnboundedReceiver<Packet>) -> rumqttc::Publish {
    next_matching(rx, |p| match p {
        Packet::Publish(m) => Some(m),
        _ => None,
    })
    .await
}

async fn publish5(
    rx: &mut mpsc::UnboundedReceiver<Packet5>,
) -> rumqttc::v5::mqttbytes::v5::Publish {
    next_matching(rx, |p| match p {
        Packet5::Publish(m) => Some(m),
        _ => None,
    })
    .await
}

async fn suback5(rx: &mut mpsc::UnboundedReceiver<Packet5>) {
    next_matching(rx, |p| matches!(p, Packet5::SubAck(_)).then_some(())).await
}

/// Nothing but pings for a while.
async fn quiet<P: std::fmt::Debug>(rx: &mut mpsc::UnboundedReceiver<P>, what: &str) {
    let r = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match rx.recv().await {
                Some(p) if format!("{p:?}").starts_with("Publish") => return p,
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    })
    .await;
    assert!(r.is_err(), "{what}: unexpected {:?}", r.ok());
}

#[tokio::test]
async fn v311_persistent_session_queues_while_away_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;

    let (c, mut rx) = v4(broker.addr, "rq-dev", false);
    assert!(!connack4(&mut rx).await.session_present);
    c.subscribe("plant/+/temp", QoS::AtLeastOnce).await.unwrap();
    next_matching(&mut rx, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    c.disconnect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (p, mut prx) = v4(broker.addr, "rq-pub", true);
    connack4(&mut prx).await;
    for i in 0..5 {
        p.publish("plant/a/temp", QoS::AtLeastOnce, false, format!("t{i}"))
            .await
            .unwrap();
        next_matching(&mut prx, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    }
    p.disconnect().await.unwrap();

    // Back before a restart: the session is there and the five wait, in order.
    let (c, mut rx, conn) = v4_with(broker.addr, "rq-dev", false, true);
    assert!(connack4(&mut rx).await.session_present);
    for i in 0..5 {
        let m = publish4(&mut rx).await;
        assert_eq!(
            (m.topic.as_str(), &m.payload[..]),
            ("plant/a/temp", format!("t{i}").as_bytes())
        );
        assert_eq!(m.qos, QoS::AtLeastOnce);
        // Only the first three are acknowledged.
        if i < 3 {
            c.ack(&m).await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The client vanishes without acknowledging two, and the broker restarts.
    conn.abort();
    drop(rx);
    tokio::time::sleep(Duration::from_millis(200)).await;
    broker.shutdown().await;
    let broker = start(dir.path()).await;

    let (_c, mut rx) = v4(broker.addr, "rq-dev", false);
    assert!(
        connack4(&mut rx).await.session_present,
        "session survives a restart"
    );
    let mut rest = Vec::new();
    for _ in 0..2 {
        let m = publish4(&mut rx).await;
        rest.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    // What was acknowledged is not repeated; the unacknowledged two come again.
    assert_eq!(rest, ["t3", "t4"]);
    quiet(&mut rx, "nothing else was queued").await;

    // A clean session throws the stored one away.
    let (_c2, mut rx2) = v4(broker.addr, "rq-dev", true);
    assert!(!connack4(&mut rx2).await.session_present);
    let (_c3, mut rx3) = v4(broker.addr, "rq-dev", false);
    assert!(!connack4(&mut rx3).await.session_present);
    broker.shutdown().await;
}

#[tokio::test]
async fn qos2_is_delivered_exactly_once_at_qos2() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let (s, mut srx) = v4(broker.addr, "q2-sub", true);
    connack4(&mut srx).await;
    s.subscribe("q2/#", QoS::ExactlyOnce).await.unwrap();
    next_matching(&mut srx, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    let (p, mut prx) = v4(broker.addr, "q2-pub", true);
    connack4(&mut prx).await;
    for i in 0..10 {
        p.publish("q2/x", QoS::ExactlyOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    for _ in 0..10 {
        next_matching(&mut prx, |p| matches!(p, Packet::PubComp(_)).then_some(())).await;
    }
    for i in 0..10 {
        let m = publish4(&mut srx).await;
        assert_eq!(m.qos, QoS::ExactlyOnce);
        assert_eq!(&m.payload[..], format!("{i}").as_bytes());
    }
    quiet(&mut srx, "each message once").await;
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_request_response_carries_every_property() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let (server, mut srx) = v5(broker.addr, "rr-server");
    server
        .subscribe("svc/echo", QoS5::AtLeastOnce)
        .await
        .unwrap();
    suback5(&mut srx).await;
    let (caller, mut crx) = v5(broker.addr, "rr-caller");
    caller
        .subscribe("reply/rr-caller", QoS5::AtLeastOnce)
        .await
        .unwrap();
    suback5(&mut crx).await;

    let props = PublishProperties {
        response_topic: Some("reply/rr-caller".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00req-1\xff")),
        content_type: Some("application/json".into()),
        user_properties: vec![
            ("trace".into(), "abc".into()),
            ("trace".into(), "def".into()),
        ],
        ..PublishProperties::default()
    };
    caller
        .publish_with_properties("svc/echo", QoS5::AtLeastOnce, false, r#"{"n":1}"#, props)
        .await
        .unwrap();

    let req = publish5(&mut srx).await;
    let p = req.properties.clone().expect("properties arrive");
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"\x00req-1\xff"[..]));
    assert_eq!(
        p.user_properties,
        vec![
            ("trace".into(), "abc".into()),
            ("trace".into(), "def".into())
        ]
    );
    let reply_to = p.response_topic.clone().expect("response topic");
    server
        .publish_with_properties(
            reply_to,
            QoS5::AtLeastOnce,
            false,
            "pong",
            PublishProperties {
                correlation_data: p.correlation_data.clone(),
                ..PublishProperties::default()
            },
        )
        .await
        .unwrap();
    let reply = publish5(&mut crx).await;
    assert_eq!(&reply.payload[..], b"pong");
    assert_eq!(
        reply.properties.and_then(|p| p.correlation_data).as_deref(),
        Some(&b"\x00req-1\xff"[..])
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_no_local_and_retain_handling() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let (c, mut rx) = v5(broker.addr, "nl-client");
    let ack = next_matching(&mut rx, |p| match p {
        Packet5::ConnAck(a) => Some(a),
        _ => None,
    })
    .await;
    assert_eq!(ack.code, ConnectReturnCode5::Success);
    c.publish("room/1", QoS5::AtLeastOnce, true, "retained-1")
        .await
        .unwrap();
    next_matching(&mut rx, |p| matches!(p, Packet5::PubAck(_)).then_some(())).await;

    // Retain handling 2: no retained message at subscribe; no-local: not our own.
    let mut f = Filter::new("room/#", QoS5::AtLeastOnce);
    f.nolocal = true;
    f.retain_forward_rule = RetainForwardRule::Never;
    c.subscribe_many([f]).await.unwrap();
    suback5(&mut rx).await;
    c.publish("room/1", QoS5::AtLeastOnce, false, "mine")
        .await
        .unwrap();
    quiet(&mut rx, "no retained message and not our own publish").await;

    // Someone else's message does arrive.
    let (o, mut orx) = v5(broker.addr, "nl-other");
    connack5(&mut orx).await;
    o.publish("room/2", QoS5::AtLeastOnce, false, "theirs")
        .await
        .unwrap();
    let m = publish5(&mut rx).await;
    assert_eq!(&m.payload[..], b"theirs");

    // Retain handling 0 (default): the retained message comes at subscribe.
    let (r, mut rrx) = v5(broker.addr, "nl-late");
    r.subscribe("room/#", QoS5::AtLeastOnce).await.unwrap();
    let m = publish5(&mut rrx).await;
    assert!(m.retain);
    assert_eq!(&m.payload[..], b"retained-1");
    broker.shutdown().await;
}

async fn connack5(rx: &mut mpsc::UnboundedReceiver<Packet5>) {
    next_matching(rx, |p| matches!(p, Packet5::ConnAck(_)).then_some(())).await
}

#[tokio::test]
async fn v5_payload_format_indicator_is_checked_and_passed_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let (s, mut srx) = v5(broker.addr, "pf-sub");
    s.subscribe("pf/#", QoS5::AtLeastOnce).await.unwrap();
    suback5(&mut srx).await;
    let (p, mut prx) = v5(broker.addr, "pf-pub");
    connack5(&mut prx).await;
    let utf8 = || PublishProperties {
        payload_format_indicator: Some(1),
        ..PublishProperties::default()
    };
    p.publish_with_properties(
        "pf/bad",
        QoS5::AtLeastOnce,
        false,
        vec![0xffu8, 0xfe],
        utf8(),
    )
    .await
    .unwrap();
    let ack = next_matching(&mut prx, |p| match p {
        Packet5::PubAck(a) => Some(a),
        _ => None,
    })
    .await;
    assert_eq!(
        ack.reason,
        rumqttc::v5::mqttbytes::v5::PubAckReason::PayloadFormatInvalid
    );
    p.publish_with_properties("pf/good", QoS5::AtLeastOnce, false, "héllo", utf8())
        .await
        .unwrap();
    let m = publish5(&mut srx).await;
    assert_eq!(
        &m.topic[..],
        b"pf/good",
        "the invalid one was not published"
    );
    assert_eq!(
        m.properties.and_then(|p| p.payload_format_indicator),
        Some(1)
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn server_keep_alive_is_announced_to_v5_and_enforced_on_v311() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = MqttConfig {
        max_keep_alive: 5,
        ..MqttConfig::default()
    };
    let broker = start_with(dir.path(), cfg).await;
    // rumqttc asks for 60 s: an MQTT 5 client is told to use 5.
    let (_c, mut rx) = v5(broker.addr, "ka-5");
    let ack = next_matching(&mut rx, |p| match p {
        Packet5::ConnAck(a) => Some(a),
        _ => None,
    })
    .await;
    assert_eq!(ack.code, ConnectReturnCode5::Success);
    assert_eq!(ack.properties.and_then(|p| p.server_keep_alive), Some(5));
    // A 3.1.1 client cannot be told, so it is refused.
    let o = rumqttc::MqttOptions::new("ka-3", broker.addr.ip().to_string(), broker.addr.port());
    let (_c3, mut el) = rumqttc::AsyncClient::new(o, 8);
    let err = tokio::time::timeout(WAIT, el.poll()).await.unwrap();
    assert!(
        matches!(
            err,
            Err(rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::BadClientId
            ))
        ),
        "{err:?}"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn resubscribing_after_unsubscribe_starts_live_in_a_persistent_session() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let (c, mut rx) = v4(broker.addr, "re-sub", false);
    connack4(&mut rx).await;
    c.subscribe("re/#", QoS::AtLeastOnce).await.unwrap();
    next_matching(&mut rx, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    c.unsubscribe("re/#").await.unwrap();
    next_matching(&mut rx, |p| matches!(p, Packet::UnsubAck(_)).then_some(())).await;
    let (p, mut prx) = v4(broker.addr, "re-pub", true);
    connack4(&mut prx).await;
    p.publish("re/x", QoS::AtLeastOnce, false, "while unsubscribed")
        .await
        .unwrap();
    next_matching(&mut prx, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    c.subscribe("re/#", QoS::AtLeastOnce).await.unwrap();
    next_matching(&mut rx, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    p.publish("re/x", QoS::AtLeastOnce, false, "after")
        .await
        .unwrap();
    let m = publish4(&mut rx).await;
    assert_eq!(
        &m.payload[..],
        b"after",
        "nothing from while it was unsubscribed"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_message_larger_than_the_packet_limit_skips_the_client_without_dropping_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = MqttConfig {
        max_packet_size: 1024,
        ..MqttConfig::default()
    };
    let broker = start_with(dir.path(), cfg).await;
    let (c, mut rx) = v4(broker.addr, "big-sub", true);
    connack4(&mut rx).await;
    c.subscribe("big/#", QoS::AtLeastOnce).await.unwrap();
    next_matching(&mut rx, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    // Another door (HTTP takes bodies up to 4 MiB) publishes more than MQTT may carry.
    let ctx = polyport_core::AuthContext::anonymous(polyport_core::Origin("http"));
    for body in [vec![b'x'; 4096], b"small".to_vec()] {
        let d = polyport_core::EventDraft::new(polyport_core::Topic::new("big/x").unwrap(), body);
        broker.hub.publish(&ctx, d).await.unwrap();
    }
    let m = publish4(&mut rx).await;
    assert_eq!(
        &m.payload[..],
        b"small",
        "the oversized one is skipped, the connection kept"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_delayed_will_is_cancelled_when_the_client_takes_its_session_back() {
    use rumqttc::v5::mqttbytes::v5::{ConnectProperties, LastWill, LastWillProperties};
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let (w, mut wrx) = v5(broker.addr, "will-watch");
    w.subscribe("wills/#", QoS5::AtLeastOnce).await.unwrap();
    suback5(&mut wrx).await;
    let device = |addr: SocketAddr| {
        let mut o = rumqttc::v5::MqttOptions::new("will-dev", addr.ip().to_string(), addr.port());
        o.set_clean_start(false);
        let mut props = ConnectProperties::new();
        props.session_expiry_interval = Some(60);
        o.set_connect_properties(props);
        let mut will = LastWill::new("wills/dev", "gone", QoS5::AtLeastOnce, false, None);
        will.properties = Some(LastWillProperties {
            delay_interval: Some(2),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        });
        o.set_last_will(will);
        o
    };
    // The first connection is still open when the second one takes the session over.
    let (_a, mut ael) = rumqttc::v5::AsyncClient::new(device(broker.addr), 8);
    let first = tokio::spawn(async move { while ael.poll().await.is_ok() {} });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_b, mut bel) = rumqttc::v5::AsyncClient::new(device(broker.addr), 8);
    let second = tokio::spawn(async move { while bel.poll().await.is_ok() {} });
    // Past the will delay: the device is back, so no will.
    quiet_for(&mut wrx, Duration::from_secs(3)).await;
    first.abort();
    second.abort();
    broker.shutdown().await;
}

async fn quiet_for(rx: &mut mpsc::UnboundedReceiver<Packet5>, d: Duration) {
    let r = tokio::time::timeout(d, async {
        loop {
            match rx.recv().await {
                Some(Packet5::Publish(p)) => return p,
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    })
    .await;
    assert!(r.is_err(), "unexpected {:?}", r.ok());
}

#[tokio::test]
async fn stopping_one_listener_says_goodbye_to_its_clients_only() {
    use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::new();
    let store = SqliteStore::open(StoreConfig::new(dir.path()), Arc::new(bus.clone())).unwrap();
    let hub = Hub::new(Arc::new(store), bus, HubConfig::default());
    let broker = Arc::new(
        MqttBroker::start(hub.clone(), MqttConfig::default())
            .await
            .unwrap(),
    );
    let mut doors = Vec::new();
    for _ in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let (b, s) = (broker.clone(), stop.clone());
        let task = tokio::spawn(async move { b.serve(listener, s).await });
        doors.push((addr, stop, task));
    }
    // rumqttc ends its event loop with the server's DISCONNECT as the error.
    let o = rumqttc::v5::MqttOptions::new("on-the-closing-door", "127.0.0.1", doors[0].0.port());
    let (_closing, mut el) = rumqttc::v5::AsyncClient::new(o, 8);
    let (stays, mut staying) = v5(doors[1].0, "on-the-other-door");
    let ev = tokio::time::timeout(WAIT, el.poll())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        ev,
        rumqttc::v5::Event::Incoming(Packet5::ConnAck(_))
    ));
    connack5(&mut staying).await;

    let (_, stop, task) = doors.remove(0);
    stop.cancel();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(e) = el.poll().await {
                return e;
            }
        }
    })
    .await
    .expect("the client was not disconnected");
    assert!(
        matches!(
            ended,
            rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
                reason_code: DisconnectReasonCode::ServerShuttingDown,
                ..
            })
        ),
        "{ended:?}"
    );

    // The other listener's client is still served.
    stays.subscribe("still/#", QoS5::AtMostOnce).await.unwrap();
    suback5(&mut staying).await;
    // (`serve` returns once every connection of the broker is gone.)
    let (_, other_stop, other) = doors.remove(0);
    other_stop.cancel();
    for t in [task, other] {
        tokio::time::timeout(WAIT, t)
            .await
            .expect("serve did not return once its clients were gone")
            .unwrap();
    }
    hub.shutdown().await;
}
