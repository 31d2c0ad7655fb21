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

/// Holds 127.0.0.1:1883 for the test unless another program (a Mosquitto) already does.
fn default_mqtt_port_taken() -> Option<std::net::TcpListener> {
    std::net::TcpListener::bind("127.0.0.1:1883").ok()
}

/// `polyport serve` in `dir` (data dir and cwd) with HTTP and gRPC on port 0 and MQTT
/// wherever `dir/polyport.toml` or, without one, the default puts it.
fn serve_with_mqtt_unset(dir: &std::path::Path) -> Command {
    let mut c = Command::new(bin());
    c.args([
        "serve",
        "--http",
        "127.0.0.1:0",
        "--grpc",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(dir)
    .current_dir(dir)
    .env_remove("POLYPORT_MQTT")
    .env_remove("POLYPORT_CONFIG");
    c
}

/// Reads `listeners.json` once the server has written it.
fn wait_listeners(dir: &std::path::Path) -> serde_json::Value {
    let path = dir.join("listeners.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(b) = std::fs::read(&path)
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b)
        {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "no listeners.json");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_taken_default_port_skips_that_listener_loudly_and_the_rest_serve() {
    let _hold = default_mqtt_port_taken();
    let dir = tempfile::tempdir().unwrap();
    // No --mqtt, no POLYPORT_MQTT, no polyport.toml: MQTT gets its default, 1883.
    let child = serve_with_mqtt_unset(dir.path())
        .env("POLYPORT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let listeners = wait_listeners(dir.path());
    assert!(listeners.get("mqtt").is_none(), "{listeners}");
    assert_eq!(
        listeners["not_started"]["mqtt"]["address"], "127.0.0.1:1883",
        "{listeners}"
    );
    let http = listeners["http"].as_str().unwrap().to_string();
    // The rest serve, and the index says what is missing.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let index: serde_json::Value = rt.block_on(async {
        reqwest::get(format!("http://{http}/"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let mqtt = index["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "mqtt")
        .unwrap();
    assert!(
        mqtt["not_started"].as_str().unwrap().contains("1883"),
        "{index}"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    let warn = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("MQTT NOT STARTED"))
        .unwrap_or_else(|| panic!("no WARN line for MQTT:\n{log}"));
    assert!(
        warn.contains("127.0.0.1:1883") && warn.contains("--mqtt"),
        "{warn}"
    );
    assert!(log.contains("ready without every listener"), "{log}");
}

#[test]
fn a_taken_port_chosen_in_polyport_toml_still_stops_start_up() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("polyport.toml"),
        format!("[mqtt]\nlisten = \"{addr}\"\n"),
    )
    .unwrap();
    let out = serve_with_mqtt_unset(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MQTT listener") && err.contains(&addr) && err.contains("[mqtt] listen"),
        "{err}"
    );
}
