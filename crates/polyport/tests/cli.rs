//! The binary as a user meets it: listeners.json, a taken port, SIGTERM, pub/sub.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, bin};

#[test]
fn taken_port_names_the_listener_and_how_to_move_it() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args([
            "serve",
            "--http",
            &addr,
            "--grpc",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HTTP listener"), "{err}");
    assert!(err.contains(&addr), "{err}");
    assert!(
        err.contains("--http") && err.contains("POLYPORT_HTTP"),
        "{err}"
    );
}

#[test]
fn sigterm_stops_cleanly_and_removes_listeners_json() {
    let mut s = Server::start(&[]);
    assert!(s.dir.join("listeners.json").exists());
    assert_eq!(s.terminate(), Some(0));
    assert!(!s.dir.join("listeners.json").exists());
}

#[test]
fn pub_and_sub_talk_to_a_running_server() {
    let s = Server::start(&[]);
    let sub = Command::new(bin())
        .args([
            "sub", "cli/#", "--since", "0", "--count", "2", "--server", &s.base,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for (topic, data) in [("cli/a", "hello"), ("cli/b", "world")] {
        let out = Command::new(bin())
            .args(["pub", topic, data, "--server", &s.base])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let receipt: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(receipt["sequence"].as_u64().is_some());
    }
    let out = sub.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["subject"], "cli/a");
    assert_eq!(lines[0]["data"], "hello");
    assert_eq!(lines[1]["data"], "world");
}
