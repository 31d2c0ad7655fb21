//! `polyport serve` as a child process, for benchmarks that measure it beside a peer
//! server over the same client load.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::ulid_like;

/// `polyport serve` on ephemeral ports over a throw-away data directory.
pub(crate) struct PolyportChild {
    pub(crate) child: tokio::process::Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    /// Its `/metrics`, when listeners.json names its HTTP listener.
    pub(crate) metrics: Option<String>,
    pub(crate) dir: PathBuf,
}

impl PolyportChild {
    /// Starts the server and waits for `listener` (`mqtt`, `amqp`) in listeners.json.
    pub(crate) async fn start(listener: &str) -> anyhow::Result<Self> {
        Self::start_with(listener, "").await
    }

    /// Like [`PolyportChild::start`] with more `polyport.toml` (sections other than
    /// `[limits]`).
    pub(crate) async fn start_with(listener: &str, config: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("polyport-bench-{listener}-{}", ulid_like()));
        std::fs::create_dir_all(&dir)?;
        // A benchmark opens every client from one address: lift the per-address cap.
        std::fs::write(
            dir.join("polyport.toml"),
            format!(
                "{config}\n[limits]\nmax_connections = 1000000\nmax_connections_per_address = 1000000\n"
            ),
        )?;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("serve")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .args([
                "--mqtt",
                "127.0.0.1:0",
                "--amqp",
                "127.0.0.1:0",
                "--stomp",
                "127.0.0.1:0",
            ])
            // No stray ./polyport.toml or POLYPORT_CONFIG changes what is measured.
            .current_dir(&dir)
            .env_remove("POLYPORT_CONFIG")
            // The server's runtime threads alone, not the load generator's (a plain
            // TOKIO_WORKER_THREADS would set both).
            .envs(
                std::env::var("POLYPORT_BENCH_SERVER_WORKERS")
                    .ok()
                    .map(|n| ("TOKIO_WORKER_THREADS", n)),
            )
            // Warnings (e.g. slow-subscriber drops) would split the tables; the tables
            // report loss themselves. POLYPORT_LOG=warn brings them back.
            .env(
                "POLYPORT_LOG",
                std::env::var("POLYPORT_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting `polyport serve`")?;
        let pid = child.id().context("`polyport serve` has no pid")?;
        let listeners = dir.join("listeners.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(b) = std::fs::read(&listeners)
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b)
                && let Some(a) = v.get(listener).and_then(|m| m.as_str())
            {
                break a
                    .parse::<SocketAddr>()
                    .with_context(|| format!("{listener} address {a:?} in listeners.json"))?;
            }
            if let Some(st) = child.try_wait()? {
                bail!("`polyport serve` exited early ({st})");
            }
            if Instant::now() > deadline {
                bail!(
                    "`polyport serve` wrote no {listener} listener to listeners.json within 30 s"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let metrics = std::fs::read(&listeners)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| Some(format!("http://{}/metrics", v.get("http")?.as_str()?)));
        Ok(Self {
            child,
            pid,
            addr,
            metrics,
            dir,
        })
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// VmRSS of a process in KiB, from /proc.
pub(crate) fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat.
///
/// The kernel reports them in USER_HZ ticks, which Linux fixes at 100 per second for
/// every architecture this runs on (reading `sysconf` would take `unsafe`).
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')': state is field 3, utime field 14 and stime field 15 of the whole line.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Pids whose /proc/<pid>/comm is `name`.
pub(crate) fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// Raises the soft RLIMIT_NOFILE to `want` (at most the hard limit); returns the limit
/// now in force.
#[cfg(unix)]
#[allow(unsafe_code)]
pub(crate) fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed by exclusive reference.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return want;
    }
    if lim.rlim_cur >= want {
        return lim.rlim_cur;
    }
    let raised = libc::rlimit {
        rlim_cur: want.min(lim.rlim_max),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct passed by shared reference.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        raised.rlim_cur
    } else {
        lim.rlim_cur
    }
}

#[cfg(not(unix))]
pub(crate) fn raise_nofile(want: u64) -> u64 {
    want
}
