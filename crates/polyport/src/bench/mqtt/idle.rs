//! Idle connections: resident memory per connection, and the processes measured.

use std::time::Duration;

use super::*;

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
        connect(t.addr, client_id(run_id), Duration::from_secs(600))
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

/// VmRSS of a process in KiB, from /proc.
pub(super) fn vm_rss_kib(pid: u32) -> Option<u64> {
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

/// Pids whose /proc/<pid>/comm is `name`.
pub(super) fn pids_named(name: &str) -> Vec<u32> {
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
pub(super) fn raise_nofile(want: u64) -> u64 {
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
pub(super) fn raise_nofile(want: u64) -> u64 {
    want
}
