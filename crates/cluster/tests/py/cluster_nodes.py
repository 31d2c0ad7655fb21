"""Starting cluster nodes for the tests: several `polyport serve --store postgres://…`
processes on one fresh schema of this machine's Postgres (or POLYPORT_TEST_POSTGRES_URL),
optionally on one fresh NATS deployment (bucket)."""

from __future__ import annotations

import os
import queue
import subprocess
import uuid

import httpx
import paho.mqtt.client as mqtt

from nats_helpers import NATS, delete_bucket, delete_stream

PG = os.environ.get("POLYPORT_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1/test")
WAIT = 10


def node_factory(servers, config: str | None = None, pg: str = PG):
    """Yields `start(n)`, which starts n nodes on one fresh schema of `pg` (and
    `config`); stops them and drops the schema after."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    env = {"POLYPORT_STORE": pg, "POLYPORT_STORE_SCHEMA": schema}
    started = []

    def start(n: int):
        started.extend(servers.start(config, env=env) for _ in range(n))
        return started[-n:]

    yield start
    for s in started:
        s.stop()
    r = subprocess.run(["psql", pg, "-qc", f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def nodes_with_bus(servers, pg: str = PG, config: str = ""):
    """Yields `start(n)` for nodes on one fresh schema of `pg` and one fresh NATS
    deployment (`start.bucket`), with `config` added to their configuration; deletes the
    deployment's bucket and log stream after."""
    bucket = f"polyport-test-{uuid.uuid4().hex[:12]}"
    cfg = config + f'[cluster]\nbus = "{NATS}"\nbucket = "{bucket}"\nheartbeat_ms = 300\nttl_ms = 1500\n'
    factory = node_factory(servers, cfg, pg)
    start = next(factory)
    start.bucket = bucket
    yield start
    next(factory, None)
    delete_bucket(bucket)
    delete_stream(f"polyport-{bucket}-log")


def amqp(s) -> "pika.BlockingConnection":
    import pika

    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", s.port("amqp"), heartbeat=0))


def publish(s, topic: str):
    r = httpx.post(f"{s.url}/api/topics/{topic}", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code in (200, 201, 202), r.text


def mqtt_client(port: int, client_id: str) -> tuple[mqtt.Client, queue.Queue]:
    got: queue.Queue = queue.Queue()
    subscribed: queue.Queue = queue.Queue()
    c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311)
    c.on_message = lambda cl, u, m: got.put(m)
    c.on_subscribe = lambda *a: subscribed.put(True)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribed = subscribed  # type: ignore[attr-defined]
    return c, got
