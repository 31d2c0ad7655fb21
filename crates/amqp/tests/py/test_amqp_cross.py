"""AMQP on the one model: amq.topic is the shared topic tree, so MQTT, REST publishes and
record changes reach AMQP queues, and AMQP publishes reach MQTT and SSE."""

from __future__ import annotations

import json
import queue as queues
import time

import httpx
import paho.mqtt.client as mqtt
import pika
from amqp_clients import WAIT, connect, drain, port, servers  # noqa: F401


def mqtt_client(s, topic: str | None = None) -> tuple[mqtt.Client, queues.Queue]:
    got: queues.Queue = queues.Queue()
    c = mqtt.Client(client_id=f"t-{time.monotonic_ns()}")
    c.on_message = lambda _c, _u, m: got.put((m.topic, m.payload))
    c.connect("127.0.0.1", port(s, "mqtt"))
    c.loop_start()
    if topic:
        done: queues.Queue = queues.Queue()
        c.on_subscribe = lambda *a: done.put(True)
        c.subscribe(topic, qos=1)
        done.get(timeout=WAIT)
    return c, got


def test_pika_to_mqtt_and_sse_through_amq_topic(servers):
    s = servers.start()
    m, got = mqtt_client(s, "sensors/temperature")
    with httpx.Client(base_url=s.url, timeout=WAIT) as http, http.stream(
        "GET", "/api/events", params={"topic": "sensors/#"}
    ) as sse:
        lines = sse.iter_lines()
        ch = connect(s).channel()
        ch.basic_publish("amq.topic", "sensors.temperature", b"21.5",
                         pika.BasicProperties(content_type="text/plain", correlation_id="c-7"))
        assert got.get(timeout=WAIT) == ("sensors/temperature", b"21.5")
        data = next(line for line in lines if line.startswith("data:"))
        event = json.loads(data[5:])
        assert event["subject"] == "sensors/temperature" and event["data"] == "21.5"
        assert event["correlationid"], event
    m.loop_stop()


def test_mqtt_rest_and_record_changes_land_in_bound_queues(servers):
    s = servers.start()
    ch = connect(s).channel()
    ch.queue_declare("readings")
    ch.queue_bind("readings", "amq.topic", "sensors.#")
    ch.queue_declare("posts")
    ch.queue_bind("posts", "amq.topic", "collections.posts.*")
    m, _ = mqtt_client(s)
    m.publish("sensors/kitchen/temp", b"19", qos=1).wait_for_publish(timeout=WAIT)
    with httpx.Client(base_url=s.url, timeout=WAIT) as http:
        r = http.post("/api/topics/sensors/hall", content=b"20", headers={"content-type": "text/plain"})
        assert r.status_code == 202, r.text
        r = http.post("/api/collections/posts/records", json={"id": "p1", "title": "hello"})
        assert r.status_code == 201, r.text
    got = drain(ch, "readings", 2)
    assert sorted((mm.routing_key, b) for mm, _, b in got) == [
        ("sensors.hall", b"20"), ("sensors.kitchen.temp", b"19"),
    ]
    (mm, props, body), = drain(ch, "posts", 1)
    assert mm.routing_key == "collections.posts.p1"
    assert json.loads(body)["record"]["title"] == "hello"
    m.loop_stop()


def test_an_amqp_rpc_is_answered_by_an_mqtt5_responder(servers):
    """RabbitMQ's mapping: `reply_to` `replies.c1` is response topic `replies/c1`,
    `correlation_id` is correlation data; the reply queue is bound under that key."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    s = servers.start()
    responder = mqtt.Client(client_id="responder", protocol=mqtt.MQTTv5)
    ready: queues.Queue = queues.Queue()
    responder.on_subscribe = lambda *a: ready.put(True)

    def answer(c, _u, m):
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = m.properties.CorrelationData
        c.publish(m.properties.ResponseTopic, b"sum=" + m.payload, qos=1, properties=props)

    responder.on_message = answer
    responder.connect("127.0.0.1", port(s, "mqtt"))
    responder.loop_start()
    responder.subscribe("rpc/add", qos=1)
    ready.get(timeout=WAIT)

    ch = connect(s).channel()
    reply_q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(reply_q, "amq.topic", "replies.c1")
    ch.basic_publish("amq.topic", "rpc.add", b"2+3",
                     pika.BasicProperties(reply_to="replies.c1", correlation_id="req-42"))
    (m, props, body), = drain(ch, reply_q, 1)
    assert body == b"sum=2+3"
    assert props.correlation_id == "req-42"
    assert m.routing_key == "replies.c1"
    responder.loop_stop()
