"""What the survivors take over from a node that died (`kill -9`): the persistent MQTT
sessions it held while their clients were away expire on the survivors, at their expiry
interval counted from the death (and never sooner than the engine's 10-second grace),
while sessions with a longer interval are resumed through a survivor with what was
published meanwhile."""

from __future__ import annotations

import queue
import time

import paho.mqtt.client as mqtt
from cluster_nodes import WAIT
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# The engine's grace (crates/mqtt/src/orphans.rs) + the test nodes' heartbeat ttl
# (1.5 s) + a look every second, with room to spare.
SHORT_SESSION_GONE_AFTER = 10 + 1.5 + 1 + 3.5


def connect(port: int, client_id: str, expiry: int):
    """An MQTT 5 client with a persistent session: (client, session present, messages)."""
    flags: queue.Queue = queue.Queue()
    got: queue.Queue = queue.Queue()
    c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5)
    c.on_connect = lambda cl, u, f, rc, p=None: flags.put((f.get("session present"), rc))
    c.on_message = lambda cl, u, m: got.put(m.payload.decode())
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    present, rc = flags.get(timeout=WAIT)
    assert rc == 0, f"{client_id}: connack {rc}"
    return c, present, got


def test_a_dead_nodes_parked_sessions_expire_on_the_survivors(servers, nodes_with_bus):
    a, b = nodes_with_bus(2)
    for client_id, expiry in (("brief", 2), ("lasting", 3600)):
        c, present, _ = connect(a.port("mqtt"), client_id, expiry)
        assert not present
        subscribed: queue.Queue = queue.Queue()
        c.on_subscribe = lambda *x: subscribed.put(True)
        c.subscribe("alerts/#", qos=1)
        subscribed.get(timeout=WAIT)
        c.disconnect()
        c.loop_stop()

    servers.kill9(a)
    pub = mqtt.Client(client_id="alerts-pub", protocol=mqtt.MQTTv311)
    pub.connect("127.0.0.1", b.port("mqtt"))
    pub.loop_start()
    pub.publish("alerts/fire", b"drill", qos=1).wait_for_publish(timeout=WAIT)
    pub.disconnect()
    pub.loop_stop()

    time.sleep(SHORT_SESSION_GONE_AFTER)
    brief, present, _ = connect(b.port("mqtt"), "brief", 2)
    try:
        assert not present, "a 2-second session of a dead node has expired on the survivor"
    finally:
        brief.disconnect()
        brief.loop_stop()

    lasting, present, got = connect(b.port("mqtt"), "lasting", 3600)
    try:
        assert present, "a 1-hour session of a dead node is still there"
        try:
            drill = got.get(timeout=WAIT)
        except queue.Empty:
            drill = None
        assert drill == "drill", f"with what was published after the death; B's log:\n{b.log()[-6000:]}"
    finally:
        lasting.disconnect()
        lasting.loop_stop()
