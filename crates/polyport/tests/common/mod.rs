//! Starts the real `polyport` binary on ephemeral ports and finds it via listeners.json.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::zombie_processes,
    clippy::unwrap_used
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub base: String,
    pub grpc: String,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_polyport")
}

impl Server {
    /// A fresh server in a new temp dir.
    pub fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = Server::start_in(&dir, extra);
        s._tmp = Some(tmp);
        s
    }

    /// A server on an existing data dir (for restarts).
    pub fn start_in(dir: &Path, extra: &[&str]) -> Server {
        let listeners = dir.join("listeners.json");
        let _ = std::fs::remove_file(&listeners);
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .arg("--http")
            .arg("127.0.0.1:0")
            .arg("--grpc")
            .arg("127.0.0.1:0")
            .arg("--mqtt")
            .arg("127.0.0.1:0")
            .arg("--amqp")
            .arg("127.0.0.1:0")
            .arg("--stomp")
            .arg("127.0.0.1:0")
            .args(extra)
            .env("POLYPORT_LOG", "warn")
            // Tests never let webhook deliveries leave this machine.
            .env("POLYPORT_WEBHOOKS_ALLOW_PUBLIC", "false")
            .env("POLYPORT_WEBHOOKS_ALLOW_NETWORKS", "127.0.0.0/8")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(b) = std::fs::read(&listeners)
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b)
                && let Some(h) = v["http"].as_str()
                && let Some(g) = v["grpc"].as_str()
            {
                return Server {
                    child,
                    base: format!("http://{h}"),
                    grpc: g.to_string(),
                    dir: dir.to_path_buf(),
                    _tmp: None,
                };
            }
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn ws_url(&self) -> String {
        format!("{}/ws", self.base.replacen("http", "ws", 1))
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
