//! `polyport bench cluster`'s broker rows: MQTT and AMQP throughput on `polyport serve`
//! processes on the embedded engine, as one cluster node and as three, in one run. The
//! clients are `bench mqtt`'s and `bench amqp`'s (rumqttc, lapin), all connected to the
//! first node of a deployment; the other two nodes of three follow the same log and
//! take their turns on its lock, as they would under a load balancer with quiet
//! clients. Like the rest of `bench cluster`, on one machine this shows the engine's
//! cost, not scaling.

use std::net::SocketAddr;

use anyhow::Context;

use super::child::PolyportChild;

/// Messages per MQTT QoS 0 fan-in run (4 publishers → 1 subscriber).
const MQTT_MESSAGES: usize = 50_000;
/// Persistent AMQP messages per confirmed run (1 publisher → 1 manual-ack consumer).
const AMQP_MESSAGES: usize = 20_000;

/// What a node needs to join a deployment.
pub(super) struct Engine<'a> {
    pub(super) postgres: &'a str,
    pub(super) nats: &'a str,
}

/// Starts `n` cluster nodes on a fresh schema and bucket (`n` = 0: one embedded server).
async fn deployment(
    engine: &Engine<'_>,
    n: usize,
    schema: &str,
) -> anyhow::Result<Vec<PolyportChild>> {
    let config = match n {
        0 => String::new(),
        _ => format!(
            "[cluster]\nstore = \"{}\"\nschema = \"{schema}\"\nbus = \"{}\"\nbucket = \"{schema}\"\n",
            engine.postgres, engine.nats
        ),
    };
    let mut nodes = Vec::new();
    for _ in 0..n.max(1) {
        nodes.push(PolyportChild::start_with("mqtt", &config).await?);
    }
    Ok(nodes)
}

/// The address a child listens on for `face`.
fn listener(child: &PolyportChild, face: &str) -> anyhow::Result<SocketAddr> {
    let path = child.dir.join("listeners.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    v.get(face)
        .and_then(|a| a.as_str())
        .with_context(|| format!("no {face} listener in {}", path.display()))?
        .parse()
        .with_context(|| format!("the {face} address in {}", path.display()))
}

/// MQTT and AMQP rows: embedded vs one node vs three, printed as ratios to embedded.
/// Returns the schemas it made, for the caller to drop with its own.
pub(super) async fn run(engine: &Engine<'_>) -> anyhow::Result<Vec<String>> {
    let mut schemas = Vec::new();
    let mut mqtt = Vec::new();
    let mut amqp = Vec::new();
    for n in [0, 1, 3] {
        let schema = super::cluster::schema();
        if n > 0 {
            schemas.push(schema.clone());
        }
        let nodes = deployment(engine, n, &schema).await?;
        let first = &nodes[0];
        let (rate, _, _) = super::mqtt::fan_in_qos0(first.addr, None, 4, MQTT_MESSAGES).await?;
        mqtt.push(rate);
        let uri = format!("amqp://guest:guest@{}/%2f", listener(first, "amqp")?);
        amqp.push(super::amqp::persistent_confirmed(&uri, AMQP_MESSAGES).await?);
        for node in nodes {
            node.stop().await;
        }
        if n > 0 {
            super::cluster::forget_bucket(engine.nats, &schema).await;
        }
    }
    let row = |name: &str, r: &[f64]| {
        println!(
            "{name:<44} {:>10.0} {:>10.0} ({:>4.2}x) {:>10.0} ({:>4.2}x)",
            r[0],
            r[1],
            r[1] / r[0].max(1.0),
            r[2],
            r[2] / r[0].max(1.0)
        );
    };
    println!(
        "{:<44} {:>10} {:>18} {:>18}",
        "broker (msgs/s, clients on the first node)",
        "embedded",
        "1 node (ratio)",
        "3 nodes (ratio)"
    );
    row(
        &format!("MQTT QoS 0 fan-in, 4 → 1, {MQTT_MESSAGES} msgs"),
        &mqtt,
    );
    row(
        &format!("AMQP persistent + confirms, {AMQP_MESSAGES} msgs"),
        &amqp,
    );
    Ok(schemas)
}
