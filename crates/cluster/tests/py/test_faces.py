"""One REST write through node A of three reaches every realtime face on the other
nodes, as the same event: an SSE stream (httpx-sse) and an AMQP consumer (pika) on B, a
WebSocket (websocket-client) and an MQTT subscriber (paho) on C, and a webhook endpoint
registered through C. SSE, WebSocket and the webhook show the event's id and sequence,
which are the ones node A's log gave it; MQTT and AMQP carry the record."""

from __future__ import annotations

import json
import queue
import sys
import threading
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import websocket
from cluster_nodes import WAIT, amqp
from httpx_sse import connect_sse

WEBHOOK_TESTS = Path(__file__).resolve().parents[3] / "webhooks" / "tests" / "py"


def test_a_rest_write_through_one_node_reaches_every_face_on_the_others(nodes_with_bus):
    sys.path.append(str(WEBHOOK_TESTS))
    from webhook_receivers import Api, Receiver

    a, b, c = nodes_with_bus(3)
    topic = "collections/notes/#"
    rx = Receiver()
    hooks = Api(c.url)
    sse_got: queue.Queue = queue.Queue()
    sse_open = threading.Event()
    stop = threading.Event()

    def sse_on_b():
        with httpx.Client(timeout=WAIT) as client:
            with connect_sse(client, "GET", f"{b.url}/api/events", params={"topic": topic}) as es:
                sse_open.set()
                for ev in es.iter_sse():
                    sse_got.put(ev)
                    if stop.is_set():
                        return

    reader = threading.Thread(target=sse_on_b, daemon=True)
    reader.start()
    ws = websocket.create_connection(f"ws://127.0.0.1:{c.port('http')}/ws", timeout=WAIT)
    mq_got: queue.Queue = queue.Queue()
    mq_ready: queue.Queue = queue.Queue()
    mq = mqtt.Client(client_id="faces-c", protocol=mqtt.MQTTv311)
    mq.on_message = lambda cl, u, m: mq_got.put(m)
    mq.on_subscribe = lambda *x: mq_ready.put(True)
    conn = amqp(b)
    try:
        assert sse_open.wait(WAIT), "the SSE stream opened"
        ws.send(json.dumps({"op": "subscribe", "id": 1, "topic": topic}))
        assert json.loads(ws.recv())["type"] == "ok"
        mq.connect("127.0.0.1", c.port("mqtt"))
        mq.loop_start()
        mq.subscribe(topic, qos=1)
        mq_ready.get(timeout=WAIT)
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, "amq.topic", "collections.notes.#")
        hooks.create_endpoint(rx.url, topics=[topic])

        r = httpx.post(f"{a.url}/api/collections/notes/records", json={"title": "everywhere"})
        assert r.status_code == 201, r.text
        rec = r.json()
        r = httpx.get(f"{a.url}/api/poll", params={"topic": topic, "since": 0}, timeout=WAIT)
        [logged] = r.json()["events"]
        want = (logged["id"], logged["sequence"])

        ev = sse_got.get(timeout=WAIT)
        body = json.loads(ev.data)
        assert (body["id"], body["sequence"], ev.id) == (*want, str(want[1])), "SSE on B"

        msg = json.loads(ws.recv())
        assert msg["type"] == "event", msg
        assert (msg["event"]["id"], msg["event"]["sequence"]) == want, "WebSocket on C"

        m = mq_got.get(timeout=WAIT)
        assert m.topic == f"collections/notes/{rec['id']}" and b"everywhere" in m.payload, "MQTT on C"

        body = None
        for _ in range(int(WAIT / 0.05)):
            method, _, body = ch.basic_get(q, auto_ack=True)
            if method is not None:
                break
            conn.sleep(0.05)
        assert body is not None and b"everywhere" in body, "AMQP on B"

        [hook] = rx.wait_count(1, timeout=WAIT)
        assert (hook.event()["id"], hook.event()["sequence"]) == want, "webhook via C's endpoint"
    finally:
        stop.set()
        ws.close()
        mq.loop_stop()
        mq.disconnect()
        conn.close()
        hooks.close()
        rx.close()
