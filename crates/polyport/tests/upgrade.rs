//! Upgrading: a data directory written by the release before typed message attributes
//! (`tests/fixtures/data-v0`, see `make_data_v0.py` there) opens with today's binary and
//! every event, session, retained message, group position and webhook endpoint keeps
//! its meaning.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::Server;
use futures::{SinkExt, StreamExt};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

fn upgraded() -> (tempfile::TempDir, Server) {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data-v0/polyport.db");
    std::fs::copy(fixture, tmp.path().join("polyport.db")).unwrap();
    let s = Server::start_in(tmp.path(), &[]);
    (tmp, s)
}

fn mqtt_addr(dir: &Path) -> (String, u16) {
    let v: Value =
        serde_json::from_slice(&std::fs::read(dir.join("listeners.json")).unwrap()).unwrap();
    let (host, port) = v["mqtt"].as_str().unwrap().rsplit_once(':').unwrap();
    (host.to_string(), port.parse().unwrap())
}

async fn get_json(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

async fn poll(base: &str, topic: &str) -> Vec<Value> {
    let v = get_json(format!("{base}/api/poll?topic={topic}&since=0&wait=0")).await;
    v["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn release_1_events_replay_with_their_attributes() {
    let (_tmp, s) = upgraded();
    let events = poll(&s.base, "fx/%23").await;
    assert_eq!(events.len(), 2, "{events:?}");
    let mqtt = &events[0];
    assert_eq!(mqtt["subject"], "fx/mqtt");
    assert_eq!(mqtt["replyto"], "fx/replies");
    assert_eq!(mqtt["correlationid"], "\u{0}corr");
    assert_eq!(mqtt["guarantee"], "at-least-once");
    assert_eq!(mqtt["retain"], true);
    assert!(mqtt["expirytime"].as_str().unwrap().starts_with("2163-"));
    assert_eq!(mqtt["k"], "v1", "user properties stay user headers");
    for gone in ["mqttqos", "mqttclient", "mqttretain", "mqttresponsetopic"] {
        assert!(mqtt.get(gone).is_none(), "{gone} left over: {mqtt}");
    }
    // The HTTP client's forged header was never MQTT's: it stays a user header.
    let http = &events[1];
    assert_eq!(
        (&http["subject"], &http["type"]),
        (&json!("fx/http"), &json!("fx.note"))
    );
    assert_eq!(http["mqttclient"], "fx-sub");
    assert_eq!(http["trace"], "t-1");
    assert!(http.get("replyto").is_none());
    // Records and webhook endpoints are there.
    let post = get_json(format!("{}/api/collections/posts/records/1", s.base)).await;
    assert_eq!(post["title"], "Hello again");
    let eps = get_json(format!("{}/api/webhooks/endpoints", s.base)).await;
    assert_eq!(eps["items"][0]["topics"], json!(["fx/#"]));
}

#[tokio::test]
async fn release_1_mqtt_session_resumes_with_its_queue_and_the_retained_message() {
    let (tmp, _s) = upgraded();
    let (host, port) = mqtt_addr(tmp.path());
    let mut o = rumqttc::v5::MqttOptions::new("fx-sub", host.clone(), port);
    o.set_clean_start(false);
    let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 16);
    let mut got = Vec::new();
    let mut present = None;
    tokio::time::timeout(WAIT, async {
        while got.len() < 2 {
            match el.poll().await.unwrap() {
                rumqttc::v5::Event::Incoming(Packet::ConnAck(c)) => {
                    present = Some(c.session_present)
                }
                rumqttc::v5::Event::Incoming(Packet::Publish(p)) => got.push(p),
                _ => {}
            }
        }
    })
    .await
    .expect("both queued messages");
    assert_eq!(present, Some(true));
    let topics: Vec<&[u8]> = got.iter().map(|p| &p.topic[..]).collect();
    assert_eq!(topics, [&b"fx/mqtt"[..], b"fx/http"]);
    let props = got[0].properties.clone().unwrap();
    assert_eq!(props.response_topic.as_deref(), Some("fx/replies"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"\x00corr"[..]));
    assert_eq!(
        props.user_properties,
        [
            ("k".to_string(), "v1".to_string()),
            ("k".into(), "v2".into())
        ]
    );
    assert_eq!(props.payload_format_indicator, Some(1));
    drop(client);

    // The retained message survived too.
    let (c2, mut el2) =
        rumqttc::v5::AsyncClient::new(rumqttc::v5::MqttOptions::new("fx-new", host, port), 16);
    c2.subscribe("fx/mqtt", QoS::AtLeastOnce).await.unwrap();
    let retained = tokio::time::timeout(WAIT, async {
        loop {
            if let rumqttc::v5::Event::Incoming(Packet::Publish(p)) = el2.poll().await.unwrap() {
                return p;
            }
        }
    })
    .await
    .expect("the retained message");
    assert!(retained.retain);
    assert_eq!(&retained.payload[..], br#"{"reading": 21.5}"#);
}

async fn ws(
    s: &Server,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    tokio_tungstenite::connect_async(s.ws_url())
        .await
        .unwrap()
        .0
}

async fn next_json(
    w: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, w.next())
            .await
            .expect("a frame")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test]
async fn release_1_group_positions_resume_including_record_filter_groups() {
    let (_tmp, s) = upgraded();
    // A change the record-filter group has not seen, made before it comes back.
    let c = reqwest::Client::new();
    let r = c
        .patch(format!("{}/api/collections/posts/records/2", s.base))
        .json(&json!({"title": "Realtime, again"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let mut w = ws(&s).await;
    let sub = json!({"id": 1, "op": "subscribe", "collection": "posts", "filter": "author = \"123\"", "group": "fx-posts", "ack": true});
    w.send(Message::Text(sub.to_string().into())).await.unwrap();
    assert_eq!(next_json(&mut w).await["type"], "ok");
    let ev = next_json(&mut w).await;
    assert_eq!(ev["event"]["type"], "posts.updated", "{ev}");
    assert_eq!(
        ev["event"]["data"]["record"]["title"], "Realtime, again",
        "resumed after the position release 1 saved"
    );

    let sub =
        json!({"id": 2, "op": "subscribe", "topic": "fx/#", "group": "fx-group", "ack": true});
    w.send(Message::Text(sub.to_string().into())).await.unwrap();
    loop {
        let v = next_json(&mut w).await;
        if v["type"] == "event"
            && v["event"]["subject"]
                .as_str()
                .is_some_and(|t| t.starts_with("fx/"))
        {
            assert_eq!(
                v["event"]["subject"], "fx/http",
                "fx-group had acknowledged fx/mqtt"
            );
            break;
        }
    }
}
