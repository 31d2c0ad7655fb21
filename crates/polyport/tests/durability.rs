//! The durability contract: after `kill -9` during concurrent writes and a restart,
//! every acknowledged write is there and sequences stay gap-free and never reused.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Server;
use serde_json::{Value, json};

/// Every durable event in the log, by sequence, read with the long-poll endpoint.
async fn all_events(c: &reqwest::Client, base: &str) -> BTreeMap<u64, Value> {
    let mut out = BTreeMap::new();
    let mut since = 0u64;
    loop {
        let v: Value = c
            .get(format!(
                "{base}/api/poll?topic=%23&since={since}&wait=0&limit=1000"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = v["events"].as_array().unwrap();
        if events.is_empty() {
            return out;
        }
        for e in events {
            out.insert(e["sequence"].as_u64().unwrap(), e.clone());
        }
        since = v["cursor"].as_u64().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_concurrent_writes_loses_nothing_acknowledged() {
    let mut server = Server::start(&[]);
    let dir = server.dir.clone();
    let _keep = tempfile::TempDir::new().unwrap(); // (the tempdir lives in `server`)
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let acked_records: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let acked_events: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let (c, base) = (client.clone(), base.clone());
        let (recs, evs) = (acked_records.clone(), acked_events.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("w{w}-{i}");
                let r = c
                    .post(format!("{base}/api/collections/items/records"))
                    .json(&json!({"id": id, "writer": w, "n": i}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        recs.lock().unwrap().insert(id.clone());
                    }
                    _ => return,
                }
                let topic = format!("t/{w}");
                let r = c
                    .post(format!("{base}/api/topics/{topic}"))
                    .body(format!("m{i}"))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 202 => {
                        let v: Value = match r.json().await {
                            Ok(v) => v,
                            Err(_) => return,
                        };
                        evs.lock()
                            .unwrap()
                            .insert(v["sequence"].as_u64().unwrap(), topic);
                    }
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked_records = acked_records.lock().unwrap().clone();
    let acked_events = acked_events.lock().unwrap().clone();
    assert!(
        acked_records.len() > 50,
        "too few writes to be meaningful: {}",
        acked_records.len()
    );

    // Restart on the same data directory (the TempDir is still owned by `server`).
    let restarted = Server::start_in(&dir, &[]);
    let base = restarted.base.clone();
    let mut present = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/collections/items/records?limit=1000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let v: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        for r in v["items"].as_array().unwrap() {
            present.insert(r["id"].as_str().unwrap().to_string());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let missing: Vec<_> = acked_records.difference(&present).collect();
    assert!(
        missing.is_empty(),
        "acknowledged records missing after kill -9: {missing:?}"
    );

    let events = all_events(&client, &base).await;
    let seqs: Vec<u64> = events.keys().copied().collect();
    let last = *seqs.last().unwrap();
    let gaps: Vec<u64> = (1..=last)
        .filter(|s| !events.contains_key(s))
        .take(20)
        .collect();
    assert!(
        gaps.is_empty(),
        "sequences must be gap-free; missing {gaps:?}"
    );
    assert_eq!(seqs.len() as u64, last);
    for (seq, topic) in &acked_events {
        let e = events
            .get(seq)
            .unwrap_or_else(|| panic!("acknowledged event {seq} missing"));
        assert_eq!(e["subject"].as_str().unwrap(), topic);
    }
    // Every present record has exactly its created event in the log, in the same commit.
    let created = events
        .values()
        .filter(|e| e["type"] == "items.created")
        .count();
    assert_eq!(created, present.len());

    // A new event after the restart continues the numbering, never reusing a sequence.
    let v: Value = client
        .post(format!("{base}/api/topics/after/restart"))
        .body("x")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["sequence"].as_u64().unwrap(), last + 1);
    drop(restarted);
    drop(server);
}
