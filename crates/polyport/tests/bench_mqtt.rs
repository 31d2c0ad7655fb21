//! `polyport bench mqtt --quick` end to end: it must finish and print every scenario,
//! with numeric ratios whenever a Mosquitto answers on 127.0.0.1:1883.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn bench_mqtt_quick_prints_every_scenario_with_a_ratio() {
    let out = Command::new(env!("CARGO_BIN_EXE_polyport"))
        .args(["bench", "mqtt", "--quick"])
        .env("POLYPORT_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for scenario in ["idle connections", "fan-in", "fan-out"] {
        assert!(stdout.contains(scenario), "no {scenario}:\n{stdout}");
    }
    assert!(stdout.contains("ratio"), "{stdout}");
    if !stdout.contains("Mosquitto not reachable") {
        // A "1.23x" ratio for the memory row and for each QoS of both throughput tables.
        let ratios = stdout
            .split_whitespace()
            .filter(|w| {
                w.strip_suffix('x')
                    .is_some_and(|n| n.parse::<f64>().is_ok())
            })
            .count();
        assert!(ratios >= 5, "expected numeric ratios:\n{stdout}");
    }
}
