//! Heap held per idle MQTT connection, counted by dhat's allocator (bytes live, not the
//! process's RSS, so the figure is exact and repeatable): the budget behind issue 15's
//! "idle connection memory" row. Everything a connection keeps counts: its task, its
//! buffers, the broker's registration and the session state.
//!
//! Run `POLYPORT_DHAT=1 cargo test -p polyport-mqtt --test idle_memory -- --nocapture`
//! to write `dhat-heap.json` with the allocation sites at the peak (all connections up),
//! for dhat's viewer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use polyport_core::{Bus, Hub, HubConfig};
use polyport_mqtt::{MqttBroker, MqttConfig};
use polyport_store::{SqliteStore, StoreConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Connections opened for the measurement.
const N: usize = 400;

/// Bytes of heap one idle MQTT 3.1.1 connection may keep.
const BUDGET: usize = 1700;

fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 4]);
    body.extend_from_slice(b"MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 60]);
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_keeps_little_heap() {
    let _profiler = if std::env::var_os("POLYPORT_DHAT").is_some() {
        dhat::Profiler::new_heap()
    } else {
        dhat::Profiler::builder().testing().build()
    };
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::new();
    let store = SqliteStore::open(StoreConfig::new(dir.path()), Arc::new(bus.clone())).unwrap();
    let hub = Hub::new(Arc::new(store), bus, HubConfig::default());
    let broker = MqttBroker::start(hub.clone(), MqttConfig::default())
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move { broker.serve(listener, s).await });

    // Warm up: the first connections grow shared tables (the tracker, the registry).
    let mut conns = Vec::new();
    for i in 0..50 {
        conns.push(open(addr, &format!("warm-{i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = dhat::HeapStats::get().curr_bytes;
    for i in 0..N {
        conns.push(open(addr, &format!("idle-{i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = dhat::HeapStats::get().curr_bytes;
    let per_conn = after.saturating_sub(before) / N;
    eprintln!("heap per idle MQTT connection: {per_conn} bytes (budget {BUDGET})");
    assert!(
        per_conn <= BUDGET,
        "an idle connection keeps {per_conn} bytes of heap (budget {BUDGET})"
    );
    drop(conns);
    stop.cancel();
    hub.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

/// An MQTT 3.1.1 connection past its CONNACK. The client side is a blocking std socket
/// (opened on the blocking pool): a Tokio one would add its own I/O registration to the
/// heap this process counts, which is not the server's.
async fn open(addr: std::net::SocketAddr, id: &str) -> std::net::TcpStream {
    let packet = connect_packet(id);
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&packet).unwrap();
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).unwrap();
        assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK accepted");
        s
    })
    .await
    .unwrap()
}
