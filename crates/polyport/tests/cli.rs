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

/// Every face `polyport adapters` lists has a README row, a section that switches it
/// off, and — when it has a listener — a flag, a variable and a `listen` key that each
/// put it on port 0.
#[test]
fn every_adapter_is_configurable_documented_and_can_be_switched_off() {
    let out = Command::new(bin())
        .args(["adapters", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let faces: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<String> = faces
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    for must in ["http", "graphql", "grpc", "mqtt"] {
        assert!(names.iter().any(|n| n == must), "{names:?}");
    }
    let listeners: Vec<String> = faces
        .iter()
        .filter(|f| f["listener"].is_object())
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let help = Command::new(bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    for name in &names {
        assert!(
            readme.contains(&format!("| `{name}` | `[{name}]` |")),
            "README row for {name}"
        );
    }
    for name in &listeners {
        assert!(help.contains(&format!("--{name} <ADDR>")), "{help}");
        assert!(help.contains(&env_var(name)), "{help}");
    }

    // Each way of moving a listener, for all of them at once.
    let port0 = "127.0.0.1:0";
    for how in ["flag", "env", "toml"] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = serve_in(dir.path());
        for n in &listeners {
            match how {
                "flag" => {
                    cmd.arg(format!("--{n}")).arg(port0);
                }
                "env" => {
                    cmd.env(env_var(n), port0);
                }
                _ => {}
            }
        }
        if how == "toml" {
            let toml: String = listeners
                .iter()
                .map(|n| format!("[{n}]\nlisten = \"{port0}\"\n"))
                .collect();
            cmd.arg("--config").arg(write_config(dir.path(), &toml));
        }
        let (_server, started) = start(cmd, dir.path());
        for name in &listeners {
            let addr = started[name]
                .as_str()
                .unwrap_or_else(|| panic!("{how}: {name} missing: {started}"));
            let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
            assert!(
                port != 0 && addr != default_addr(&faces, name),
                "{how}: {name} at {addr}"
            );
        }
    }

    // Switching one face off leaves every other one running.
    for name in &names {
        let dir = tempfile::tempdir().unwrap();
        let mut toml: String = listeners
            .iter()
            .filter(|n| *n != name)
            .map(|n| format!("[{n}]\nlisten = \"{port0}\"\n"))
            .collect();
        toml.push_str(&format!("[{name}]\nenabled = false\n"));
        let mut cmd = serve_in(dir.path());
        cmd.arg("--config").arg(write_config(dir.path(), &toml));
        let (_server, started) = start(cmd, dir.path());
        assert!(
            started.get(name).is_none(),
            "{name} off but listed: {started}"
        );
        for other in listeners.iter().filter(|o| *o != name) {
            assert!(
                started[other].is_string(),
                "{other} should run when {name} is off: {started}"
            );
        }
        let Some(http) = started["http"].as_str() else {
            continue;
        };
        let (_, index) = get(&format!("http://{http}/"));
        let index: serde_json::Value = serde_json::from_str(&index).unwrap();
        let listed: Vec<&str> = index["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["name"].as_str())
            .collect();
        assert!(
            !listed.contains(&name.as_str()),
            "{name} off but in the index: {index}"
        );
        if name == "graphql" {
            let (status, _) = get(&format!("http://{http}/graphql/schema.graphql"));
            assert_eq!(status, 404, "GraphQL switched off still answers");
            assert!(!index["endpoints"].to_string().contains("/graphql"));
        }
    }
}

fn get(url: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::get(url).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

fn env_var(name: &str) -> String {
    format!("POLYPORT_{}", name.to_uppercase())
}

fn default_addr<'a>(faces: &'a [serde_json::Value], name: &str) -> &'a str {
    let f = faces.iter().find(|f| f["name"] == name).unwrap();
    f["listener"]["default"].as_str().unwrap()
}

fn serve_in(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .env("POLYPORT_LOG", "warn");
    cmd
}

fn write_config(dir: &std::path::Path, toml: &str) -> std::path::PathBuf {
    let path = dir.join("polyport.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Kills the server when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and waits for its listeners.json.
fn start(mut cmd: Command, dir: &std::path::Path) -> (Running, serde_json::Value) {
    let child = Running(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let file = dir.join("listeners.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(b) = std::fs::read(&file)
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b)
        {
            return (child, v);
        }
        assert!(std::time::Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}
