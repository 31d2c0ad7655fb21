"""MQTT as a user meets it: seed 000's snippets, QoS flows, retained messages, wills,
cross-protocol delivery and bad input — all through paho-mqtt."""

from __future__ import annotations

import queue
import socket
import time

import httpx
import paho.mqtt.client as mqtt
import pytest

WAIT = 10


def subscriber(port: int, *topics: tuple[str, int], client_id: str = "", protocol=mqtt.MQTTv311):
    """A connected, subscribed paho client and the queue its messages land in."""
    got: queue.Queue = queue.Queue()
    subscribed = queue.Queue()
    c = mqtt.Client(client_id=client_id, protocol=protocol)
    c.on_message = lambda cl, ud, msg: got.put(msg)
    c.on_subscribe = lambda *a: subscribed.put(True)
    c.connect("localhost", port)
    c.loop_start()
    for t in topics:
        c.subscribe(t[0], qos=t[1])
        subscribed.get(timeout=WAIT)
    return c, got


def test_seed_000_publisher_and_subscriber_unchanged_but_for_the_port(mqtt_port):
    # The subscriber snippet, with its callbacks, as the article writes it.
    received = queue.Queue()

    def on_connect(client, userdata, flags, rc):
        client.subscribe('temperature')

    def on_message(client, userdata, msg):
        received.put((msg.topic, msg.payload.decode()))

    sub = mqtt.Client()
    sub.on_connect = on_connect
    sub.on_message = on_message
    sub.connect('localhost', mqtt_port)
    sub.loop_start()
    time.sleep(0.5)

    # The publisher snippet.
    client = mqtt.Client()
    client.connect('localhost', mqtt_port)
    topic = 'temperature'
    message = '25°C'
    client.publish(topic, message)
    client.disconnect()

    assert received.get(timeout=WAIT) == ('temperature', '25°C')
    sub.loop_stop()


def test_rest_record_change_reaches_an_mqtt_subscriber_with_qos1(mqtt_port, client):
    sub, got = subscriber(mqtt_port, ("collections/posts/+", 1))
    r = client.post("/api/collections/posts/records", json={"title": "to mqtt", "author": "123"})
    assert r.status_code == 201
    msg = got.get(timeout=WAIT)
    assert msg.topic == f"collections/posts/{r.json()['id']}"
    assert msg.qos == 1
    import json as _json
    body = _json.loads(msg.payload)
    assert body["type"] == "posts.created" and body["record"]["title"] == "to mqtt"
    sub.loop_stop()


def test_qos1_and_qos2_publishes_are_durable_and_seen_on_sse(mqtt_port, base_url):
    pub = mqtt.Client(client_id="pub-q")
    pub.connect("localhost", mqtt_port)
    pub.loop_start()
    for q in (1, 2):
        info = pub.publish("sensors/room1", f"q{q}".encode(), qos=q)
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published()
    pub.loop_stop()
    # Both were acknowledged after being logged: a replay from 0 has them, in order.
    r = httpx.get(f"{base_url}/api/poll", params={"topic": "sensors/#", "since": 0, "wait": 2})
    data = [e["data"] for e in r.json()["events"]]
    assert data[-2:] == ["q1", "q2"], data


def test_retained_message_is_sent_on_subscribe_and_cleared_by_an_empty_payload(mqtt_port):
    pub = mqtt.Client()
    pub.connect("localhost", mqtt_port)
    pub.loop_start()
    pub.publish("status/door", "open", qos=1, retain=True).wait_for_publish(timeout=WAIT)
    sub, got = subscriber(mqtt_port, ("status/#", 1))
    msg = got.get(timeout=WAIT)
    assert (msg.topic, msg.payload, msg.retain) == ("status/door", b"open", True)
    sub.loop_stop()
    pub.publish("status/door", b"", qos=1, retain=True).wait_for_publish(timeout=WAIT)
    pub.loop_stop()
    sub2, got2 = subscriber(mqtt_port, ("status/#", 1))
    with pytest.raises(queue.Empty):
        got2.get(timeout=1)
    sub2.loop_stop()


def test_last_will_is_published_when_a_client_vanishes(mqtt_port):
    sub, got = subscriber(mqtt_port, ("wills/#", 0))
    doomed = mqtt.Client(client_id="doomed")
    doomed.will_set("wills/doomed", "gone", qos=0)
    doomed.connect("localhost", mqtt_port)
    doomed.loop_start()
    time.sleep(0.3)
    doomed.loop_stop()
    doomed.socket().close()  # no DISCONNECT: abnormal end
    msg = got.get(timeout=WAIT)
    assert (msg.topic, msg.payload) == ("wills/doomed", b"gone")
    sub.loop_stop()


def test_mqtt5_shared_subscription_splits_messages(mqtt_port):
    a, got_a = subscriber(mqtt_port, ("$share/workers/jobs", 1), protocol=mqtt.MQTTv5)
    b, got_b = subscriber(mqtt_port, ("$share/workers/jobs", 1), protocol=mqtt.MQTTv5)
    pub = mqtt.Client(protocol=mqtt.MQTTv5)
    pub.connect("localhost", mqtt_port)
    pub.loop_start()
    for i in range(10):
        pub.publish("jobs", f"{i}", qos=1).wait_for_publish(timeout=WAIT)
    pub.loop_stop()
    seen = []
    deadline = time.time() + WAIT
    while len(seen) < 10 and time.time() < deadline:
        for q in (got_a, got_b):
            try:
                seen.append(q.get(timeout=0.1).payload.decode())
            except queue.Empty:
                pass
    assert sorted(seen, key=int) == [str(i) for i in range(10)], "each job exactly once across the group"
    a.loop_stop()
    b.loop_stop()


def test_bad_input_closes_only_the_offending_connection(mqtt_port):
    healthy, got = subscriber(mqtt_port, ("ok", 0))
    # Garbage instead of CONNECT: the socket is closed.
    s = socket.create_connection(("127.0.0.1", mqtt_port))
    s.sendall(b"\x10\x05garbage-not-mqtt")
    s.settimeout(WAIT)
    assert s.recv(64) == b""
    # A PUBLISH with a wildcard topic from an MQTT 5 client (paho refuses to send one, so
    # raw bytes): the server answers DISCONNECT with reason 0x90 "Topic Name invalid".
    raw = socket.create_connection(("127.0.0.1", mqtt_port))
    raw.settimeout(WAIT)
    raw.sendall(b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x01x")
    connack = raw.recv(2)
    assert connack[0] == 0x20
    raw.recv(connack[1])
    raw.sendall(b"\x30\x09\x00\x05a/+/b\x00x")
    head = raw.recv(2)
    assert head[0] == 0xE0, head
    assert raw.recv(head[1])[0] == 0x90
    # The healthy client still gets messages.
    p = mqtt.Client()
    p.connect("localhost", mqtt_port)
    p.publish("ok", "still here")
    p.disconnect()
    assert got.get(timeout=WAIT).payload == b"still here"
    healthy.loop_stop()
