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

/// A Mosquitto of its own for the memory scenario: the shared one on :1883 keeps the
/// memory earlier runs grew, so its growth under a new load reads near zero.
pub(super) struct FreshMosquitto {
    child: tokio::process::Child,
    dir: std::path::PathBuf,
    pub(super) target: Target,
}

impl FreshMosquitto {
    pub(super) async fn start(run_id: &str) -> anyhow::Result<Self> {
        use anyhow::Context;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("polyport-bench-mosquitto-{run_id}"));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n"),
        )?;
        let exe = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("mosquitto");
        let child = tokio::process::Command::new(exe)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {exe}"))?;
        let pid = child.id();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("{exe} did not listen on {addr}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            child,
            dir,
            target: Target {
                name: "mosquitto",
                addr,
                pid,
                credentials: None,
            },
        })
    }

    pub(super) async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
