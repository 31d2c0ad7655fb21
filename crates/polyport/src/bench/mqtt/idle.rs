//! Idle connections: resident memory per connection, and the processes measured.

use std::time::Duration;

use super::*;
use crate::bench::child::vm_rss_kib;

#[derive(Default)]
pub(super) struct Idle {
    pub(super) connected: usize,
    pub(super) before: Option<u64>,
    pub(super) after: Option<u64>,
    pub(super) kib_per_conn: Option<f64>,
}

/// Opens `n` idle connections and reads the broker's VmRSS before and after.
pub(super) async fn idle_rss(t: &Target, n: usize, run_id: &str) -> anyhow::Result<Idle> {
    let rss = || t.pid.and_then(vm_rss_kib);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss();
    // A long keep-alive: nothing polls these connections while they sit idle.
    let (conns, err) = connect_all(n, |_| {
        connect(t.addr, client_id(run_id), Duration::from_secs(600), None)
    })
    .await;
    if let Some(e) = &err {
        println!(
            "  {}: {} of {n} idle connections failed, first: {e:#}",
            t.name,
            n - conns.len()
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss();
    let connected = conns.len();
    drop(conns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kib_per_conn = match (before, after) {
        (Some(b), Some(a)) if connected > 0 => Some(a.saturating_sub(b) as f64 / connected as f64),
        _ => None,
    };
    Ok(Idle {
        connected,
        before,
        after,
        kib_per_conn,
    })
}
