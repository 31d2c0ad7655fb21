"""Topic ACLs (`[[auth.acl]]`, like Mosquitto's acl_file with %u and %c) hold on every
protocol's publish and subscribe: MQTT (PUBACK / SUBACK 0x87), REST and SSE (403),
AMQP (channel closed 403 on publish and bind), STOMP (ERROR) and gRPC
(PERMISSION_DENIED); a refused publish reaches nobody."""

from __future__ import annotations

import json
import queue
import subprocess

import httpx
import paho.mqtt.client as mqtt
import pika
import pika.exceptions
import pytest

import doors

CONFIG = """
[auth]
users = { alice = "alice-pass", bob = "bob-pass", root = { password = "root-pass", role = "admin" } }

[[auth.acl]]
who = "*"
publish = ["sensors/%u/#", "chat/%c"]
subscribe = ["sensors/#", "chat/#"]

[[auth.acl]]
who = "bob"
publish = ["alerts/#"]
"""
ALICE, BOB, ROOT = ("alice", "alice-pass"), ("bob", "bob-pass"), ("root", "root-pass")


@pytest.fixture
def acl(servers):
    return servers.start(CONFIG)


class V5:
    """A paho MQTT 5 client that reports PUBACK and SUBACK reason codes."""

    def __init__(self, s, creds, client_id: str):
        self.c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.username_pw_set(*creds)
        self.acks: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        connected: queue.Queue = queue.Queue()
        self.c.on_connect = lambda c, u, f, rc, p=None: connected.put(rc)
        self.c.on_subscribe = lambda c, u, mid, codes, p=None: self.subacks.put([int(x.value) for x in codes])
        self.c.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.c.connect("127.0.0.1", s.port("mqtt"))
        self.c.loop_start()
        assert int(connected.get(timeout=10).value) == 0

    def subscribe(self, f: str) -> list[int]:
        self.c.subscribe(f, qos=1)
        return self.subacks.get(timeout=10)

    def publish(self, topic: str) -> bool:
        info = self.c.publish(topic, b"x", qos=1)
        info.wait_for_publish(timeout=10)
        return info.is_published()

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_acls_hold_on_every_protocol(acl):
    watcher = V5(acl, ROOT, "root-watch")
    assert watcher.subscribe("#") == [1]
    alice = V5(acl, ALICE, "alice-phone")
    assert alice.subscribe("sensors/+/temp") == [1], "covered by sensors/#"
    assert alice.subscribe("alerts/#") == [0x87]
    assert alice.subscribe("#") == [0x87], "a filter wider than what is allowed"
    assert alice.publish("sensors/alice/temp")
    assert alice.publish("chat/alice-phone"), "%c is the MQTT client id"
    alice.publish("sensors/bob/temp")  # refused (PUBACK 0x87): reaches nobody
    alice.publish("chat/someone-else")

    def rest_publish(creds, topic):
        r = httpx.post(f"{acl.url}/api/topics/{topic}", json={"n": 1}, headers=doors.authorization(creds))
        return r.status_code

    assert rest_publish(ALICE, "sensors/alice/t") in (200, 201, 202)
    assert rest_publish(ALICE, "sensors/bob/t") == 403
    assert rest_publish(BOB, "alerts/fire") in (200, 201, 202), "bob's own entry adds to everyone's"
    assert rest_publish(ALICE, "alerts/fire") == 403
    r = httpx.get(f"{acl.url}/api/events", params={"topic": "alerts/#"}, headers=doors.authorization(ALICE))
    assert r.status_code == 403 and r.json()["code"] == "forbidden"

    conn = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", acl.port("amqp"), credentials=pika.PlainCredentials(*ALICE)))
    ch = conn.channel()
    ch.basic_publish("amq.topic", "sensors.alice.hum", b"ok")
    ch.basic_publish("amq.topic", "sensors.bob.hum", b"not hers")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        ch.queue_declare("", exclusive=True)  # the refusal arrives before the next reply
    assert closed.value.reply_code == 403, closed.value
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        ch.queue_bind(q, "amq.topic", "alerts.#")
    assert closed.value.reply_code == 403
    conn.close()

    st, errors = doors.stomp_session(acl, ALICE)
    st.send("/topic/sensors.bob.x", "no", headers={"receipt": "r1"})
    assert errors.get(timeout=10), "a STOMP SEND to a refused topic is an ERROR"

    auth = doors.authorization(ALICE)["Authorization"]
    out = subprocess.run([doors.GRPCURL, "-plaintext", "-H", f"authorization: {auth}", "-d",
                          json.dumps({"topic": "sensors/bob/x", "payload": "eA=="}),
                          f"127.0.0.1:{acl.port('grpc')}", "polyport.v1.Topics/Publish"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "PermissionDenied" in out.stderr, out.stderr

    # What reached the admin watching everything: only the allowed publishes.
    got = set()
    while True:
        try:
            got.add(watcher.messages.get(timeout=1.5)[0])
        except queue.Empty:
            break
    assert got == {"sensors/alice/temp", "chat/alice-phone", "sensors/alice/t", "alerts/fire",
                   "sensors/alice/hum"}, got
    alice.close()
    watcher.close()


def test_mqtt_publish_refusal_is_puback_not_authorized(acl):
    """MQTT 5's PUBACK carries the reason: 0x87 Not authorized (raw bytes, as paho 1.6
    does not report PUBACK reason codes)."""
    from mqtt_clients import Raw, mstr, pkt

    raw = Raw(acl.port("mqtt"))
    body = mstr("MQTT") + bytes([5, 0xC2, 0, 60, 0]) + mstr("alice-raw") + mstr("alice") + mstr("alice-pass")
    raw.send(pkt(0x10, body))
    assert raw.connack() == (0, 0)
    for pid, topic, want in ((1, "alerts/x", 0x87), (2, "sensors/alice/x", 0)):
        raw.send(pkt(0x32, mstr(topic) + pid.to_bytes(2, "big") + b"\x00" + b"payload"))
        _, ack = raw.expect(0x40)
        assert ack[:2] == pid.to_bytes(2, "big")
        reason = ack[2] if len(ack) > 2 else 0
        assert reason == want, (topic, ack)
    raw.close()
