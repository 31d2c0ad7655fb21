//! The record cache in front of SQLite: a read after an acknowledged write sees that
//! write, under concurrent readers racing the writer, and deletes, collection drops and
//! a small capacity keep it honest.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{Env, obj};
use polyport_core::HubError;
use serde_json::json;

fn small_cache(c: &mut polyport_store::StoreConfig) {
    c.record_cache = 8;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_racing_writes_never_see_an_acknowledged_write_undone() {
    let env = Arc::new(Env::with(Default::default(), small_cache));
    let ids: Vec<String> = (0..16).map(|i| format!("r{i}")).collect();
    for id in &ids {
        env.hub
            .create_record(&env.ctx, "hot", Some(id.clone()), obj(json!({"n": 1})))
            .await
            .unwrap();
    }
    // The highest version acknowledged per record.
    let acked: Arc<Vec<AtomicU64>> = Arc::new(ids.iter().map(|_| AtomicU64::new(1)).collect());
    let mut tasks = Vec::new();
    for w in 0..2 {
        let (env, acked, ids) = (env.clone(), acked.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..150 {
                let i = (round * 7 + w * 3) % ids.len();
                let r = env
                    .hub
                    .patch_record(&env.ctx, "hot", &ids[i], json!({"n": round}), None)
                    .await
                    .unwrap();
                acked[i].fetch_max(r.version, Ordering::SeqCst);
            }
        }));
    }
    for _ in 0..4 {
        let (env, acked, ids) = (env.clone(), acked.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..600 {
                let i = round % ids.len();
                let floor = acked[i].load(Ordering::SeqCst);
                let got = env.hub.get_record(&env.ctx, "hot", &ids[i]).await.unwrap();
                assert!(
                    got.version >= floor,
                    "{} read version {} after version {floor} was acknowledged",
                    ids[i],
                    got.version
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // At rest, every read is the last acknowledged version.
    for (i, id) in ids.iter().enumerate() {
        let got = env.hub.get_record(&env.ctx, "hot", id).await.unwrap();
        assert_eq!(got.version, acked[i].load(Ordering::SeqCst), "{id}");
    }
}

#[tokio::test]
async fn deletes_and_dropped_collections_are_not_served_from_memory() {
    let env = Env::new();
    let (hub, ctx) = (&env.hub, &env.ctx);
    hub.create_record(ctx, "gone", Some("a".into()), obj(json!({"x": 1})))
        .await
        .unwrap();
    hub.get_record(ctx, "gone", "a").await.unwrap();
    hub.delete_record(ctx, "gone", "a", None).await.unwrap();
    assert!(matches!(
        hub.get_record(ctx, "gone", "a").await,
        Err(HubError::RecordNotFound { .. })
    ));
    hub.create_record(ctx, "gone", Some("b".into()), obj(json!({"x": 2})))
        .await
        .unwrap();
    hub.get_record(ctx, "gone", "b").await.unwrap();
    hub.delete_collection(ctx, "gone").await.unwrap();
    assert!(hub.get_record(ctx, "gone", "b").await.is_err());
    // Created again under the same name: the old record does not come back.
    hub.create_record(ctx, "gone", Some("c".into()), obj(json!({"x": 3})))
        .await
        .unwrap();
    assert!(matches!(
        hub.get_record(ctx, "gone", "b").await,
        Err(HubError::RecordNotFound { .. })
    ));
}
