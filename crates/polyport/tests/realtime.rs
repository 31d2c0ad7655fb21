//! One write through REST seen on SSE (a real EventSource client), NDJSON, long-poll and
//! WebSocket, each with the same sequence; plus the WebSocket protocol's edges.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Server;
use eventsource_client::{self as es, Client as _};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A third-party EventSource client (LaunchDarkly's) over hyper.
fn sse_client(url: &str, last_event_id: Option<&str>) -> impl es::Client + use<> {
    let mut b = es::ClientBuilder::for_url(url).unwrap();
    if let Some(id) = last_event_id {
        b = b.last_event_id(id.to_string());
    }
    b.build_with_transport(launchdarkly_sdk_transport::HyperTransport::new().unwrap())
}

async fn ws_connect(s: &Server) -> Ws {
    tokio_tungstenite::connect_async(s.ws_url())
        .await
        .unwrap()
        .0
}

async fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Next JSON text frame, with a timeout.
async fn ws_recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("websocket frame in time")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Next frame that is not an event (the reply to a request).
async fn ws_reply(ws: &mut Ws) -> Value {
    loop {
        let v = ws_recv(ws).await;
        if v["type"] != "event" && v["type"] != "notice" {
            return v;
        }
    }
}

async fn ndjson_lines(url: String, n: usize) -> tokio::task::JoinHandle<Vec<Value>> {
    let res = reqwest::get(url).await.unwrap();
    assert_eq!(res.status(), 200);
    tokio::spawn(async move {
        let mut stream = res.bytes_stream();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while out.len() < n {
            let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("ndjson line in time")
                .unwrap()
                .unwrap();
            buf.extend_from_slice(&chunk);
            while let Some(p) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=p).collect();
                out.push(serde_json::from_slice(&line).unwrap());
            }
        }
        out
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rest_write_arrives_on_every_transport_with_the_same_sequence() {
    let s = Server::start(&["--demo", "blog"]);
    let c = reqwest::Client::new();

    // SSE through a third-party EventSource client.
    let sse = sse_client(&format!("{}/api/events?collection=posts", s.base), None);
    let mut sse_stream = sse.stream();
    // Wait until connected (the first comment line arrives after subscribing).
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sse_stream.next())
            .await
            .unwrap()
        {
            Some(Ok(es::SSE::Comment(_))) => break,
            Some(Ok(_)) => continue,
            other => panic!("sse did not connect: {other:?}"),
        }
    }
    let nd = ndjson_lines(format!("{}/api/stream?collection=posts", s.base), 1).await;
    let mut ws = ws_connect(&s).await;
    ws_send(
        &mut ws,
        json!({"id": 1, "op": "subscribe", "collection": "posts"}),
    )
    .await;
    let ok = ws_reply(&mut ws).await;
    assert_eq!(ok["type"], "ok");
    let position = ok["position"].as_u64().unwrap();
    let poll = {
        let c = c.clone();
        let url = format!(
            "{}/api/poll?collection=posts&since={position}&wait=10",
            s.base
        );
        tokio::spawn(async move {
            c.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let created: Value = c
        .post(format!("{}/api/collections/posts/records", s.base))
        .json(&json!({"title": "Everywhere", "author": "123"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();

    let sse_ev = loop {
        match tokio::time::timeout(Duration::from_secs(10), sse_stream.next())
            .await
            .unwrap()
        {
            Some(Ok(es::SSE::Event(e))) => break e,
            Some(Ok(_)) => continue,
            other => panic!("sse ended: {other:?}"),
        }
    };
    let sse_json: Value = serde_json::from_str(&sse_ev.data).unwrap();
    let seq = sse_json["sequence"].as_u64().unwrap();
    assert_eq!(sse_ev.id.as_deref(), Some(seq.to_string().as_str()));
    assert_eq!(sse_json["type"], "posts.created");
    assert_eq!(sse_json["data"]["record"]["id"], id.as_str());

    let nd_ev = nd.await.unwrap().remove(0);
    assert_eq!(nd_ev["sequence"].as_u64(), Some(seq));
    let ws_ev = ws_recv(&mut ws).await;
    assert_eq!(ws_ev["type"], "event");
    assert_eq!(ws_ev["event"]["sequence"].as_u64(), Some(seq));
    let polled = poll.await.unwrap();
    assert_eq!(polled["events"][0]["sequence"].as_u64(), Some(seq));
    assert_eq!(polled["cursor"].as_u64(), Some(seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_after_last_event_id_and_says_so_when_history_is_gone() {
    let s = Server::start(&["--retention-max-events", "5"]);
    let c = reqwest::Client::new();
    for i in 0..3 {
        c.post(format!("{}/api/topics/r/a", s.base))
            .body(format!("m{i}"))
            .send()
            .await
            .unwrap();
    }
    // Resume after sequence 1: exactly 2 and 3 arrive, in order.
    let client = sse_client(&format!("{}/api/events?topic=r/%23", s.base), Some("1"));
    let mut stream = client.stream();
    let mut ids = Vec::new();
    while ids.len() < 2 {
        if let Some(Ok(es::SSE::Event(e))) =
            tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .unwrap()
        {
            ids.push(e.id.unwrap());
        }
    }
    assert_eq!(ids, vec!["2", "3"]);
    drop(stream);

    // Push the log past retention (5 events), wait for the trim, then resume from 1.
    for i in 0..10 {
        c.post(format!("{}/api/topics/r/b", s.base))
            .body(format!("n{i}"))
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let v: Value = c
        .get(format!("{}/api/poll?topic=r/%23&since=1&wait=0", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["code"], "position_unavailable",
        "strict long-poll must refuse: {v}"
    );
    let client = sse_client(&format!("{}/api/events?topic=r/%23&since=1", s.base), None);
    let mut stream = client.stream();
    let first = loop {
        if let Some(Ok(es::SSE::Event(e))) =
            tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .unwrap()
        {
            break e;
        }
    };
    let notice: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(notice["type"], "polyport.notice.resumed");
    assert_eq!(notice["data"]["requested"], 1);
    assert!(first.id.is_none(), "a notice must not move Last-Event-ID");
    let from = notice["data"]["from"].as_u64().unwrap();
    assert!(from > 2);
    let next = loop {
        if let Some(Ok(es::SSE::Event(e))) =
            tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .unwrap()
        {
            break e;
        }
    };
    assert_eq!(next.id, Some(from.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_protocol_records_errors_and_groups() {
    let s = Server::start(&[]);
    let mut ws = ws_connect(&s).await;

    // Bad JSON and unknown ops are answered in-protocol; the connection stays usable.
    ws.send(Message::Text("{nope".into())).await.unwrap();
    let e = ws_reply(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    ws_send(&mut ws, json!({"id": "x", "op": "frobnicate"})).await;
    let e = ws_reply(&mut ws).await;
    assert_eq!(e["id"], "x");
    assert_eq!(e["code"], "bad_request");

    // Record operations.
    ws_send(&mut ws, json!({"id": 1, "op": "create", "collection": "notes", "record": {"id": "n1", "text": "a"}})).await;
    let r = ws_reply(&mut ws).await;
    assert_eq!(
        (r["id"].as_i64(), r["record"]["version"].as_i64()),
        (Some(1), Some(1))
    );
    ws_send(&mut ws, json!({"id": 2, "op": "update", "collection": "notes", "record_id": "n1", "record": {"text": "b"}, "version": 7})).await;
    let r = ws_reply(&mut ws).await;
    assert_eq!(r["code"], "version_mismatch");
    ws_send(&mut ws, json!({"id": 3, "op": "update", "collection": "notes", "record_id": "n1", "record": {"extra": 1}, "version": 1})).await;
    let r = ws_reply(&mut ws).await;
    assert_eq!(r["record"]["text"], "a", "merge keeps other fields");
    assert_eq!(r["record"]["extra"], 1);
    ws_send(
        &mut ws,
        json!({"id": 4, "op": "list", "collection": "notes", "filter": "extra = 1", "count": true}),
    )
    .await;
    let r = ws_reply(&mut ws).await;
    assert_eq!(r["total"], 1);
    ws_send(
        &mut ws,
        json!({"id": 5, "op": "get", "collection": "notes", "record_id": "missing"}),
    )
    .await;
    assert_eq!(ws_reply(&mut ws).await["code"], "record_not_found");
    ws_send(
        &mut ws,
        json!({"id": 6, "op": "subscribe", "topic": "a/#/b"}),
    )
    .await;
    assert_eq!(ws_reply(&mut ws).await["code"], "invalid_topic");

    // Competing consumers: two members of group "jobs" with acks split the work.
    let mut a = ws_connect(&s).await;
    let mut b = ws_connect(&s).await;
    for m in [&mut a, &mut b] {
        ws_send(m, json!({"id": 1, "op": "subscribe", "topic": "jobs", "group": "workers", "ack": true, "prefetch": 1, "ack_timeout_ms": 500})).await;
        assert_eq!(ws_reply(m).await["type"], "ok");
    }
    for i in 0..4 {
        ws_send(
            &mut ws,
            json!({"id": 10 + i, "op": "publish", "topic": "jobs", "data": {"n": i}}),
        )
        .await;
        assert!(ws_reply(&mut ws).await["sequence"].as_u64().is_some());
    }
    let mut seen = Vec::new();
    // Member a takes one job and never acks; b acks everything it gets.
    let a_first = ws_recv(&mut a).await;
    let a_seq = a_first["event"]["sequence"].as_u64().unwrap();
    seen.push(a_first["event"]["data"]["n"].as_i64().unwrap());
    drop(a); // disconnecting returns its unacked job to the group
    let mut redelivered = false;
    while seen.len() < 5 {
        let ev = ws_recv(&mut b).await;
        if ev["type"] != "event" {
            continue;
        }
        let seq = ev["event"]["sequence"].as_u64().unwrap();
        if seq == a_seq {
            redelivered = true;
            assert!(ev["redeliveries"].as_u64().unwrap_or(0) >= 1);
        }
        seen.push(ev["event"]["data"]["n"].as_i64().unwrap());
        ws_send(
            &mut b,
            json!({"id": 99, "op": "ack", "subscription": ev["subscription"], "sequence": seq}),
        )
        .await;
        if redelivered && seen.len() >= 5 {
            break;
        }
    }
    assert!(
        redelivered,
        "the job held by the departed member must be redelivered"
    );
    seen.sort();
    seen.dedup();
    assert_eq!(seen, vec![0, 1, 2, 3]);
}
