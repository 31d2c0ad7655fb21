"""The cluster engine's store, black-box: three `polyport serve --store postgres://…`
processes on one Postgres schema (the database on this machine, or
POLYPORT_TEST_POSTGRES_URL) behave as one server. A REST write on node A is read on B and
C, reaches a long-poll on every node and an MQTT subscriber (paho) on C with the same
sequence; a collection made through one node is used through another.

Each test's nodes share a schema of their own, dropped at the end (psql)."""

from __future__ import annotations

import os
import queue
import subprocess
import uuid

import httpx
import paho.mqtt.client as mqtt
import pytest

PG = os.environ.get("POLYPORT_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1/test")
WAIT = 10


@pytest.fixture
def nodes(servers):
    """Starts nodes on one fresh schema: `nodes(3)`."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    env = {"POLYPORT_STORE": PG, "POLYPORT_STORE_SCHEMA": schema}
    started = []

    def start(n: int):
        started.extend(servers.start(None, env=env) for _ in range(n))
        return started[-n:]

    yield start
    for s in started:
        s.stop()
    r = subprocess.run(["psql", PG, "-qc", f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def poll(s, since: int = 0) -> list[dict]:
    r = httpx.get(f"{s.url}/api/poll", params={"topic": "collections/#", "since": since, "wait": 5}, timeout=15)
    assert r.status_code == 200, r.text
    return r.json()["events"]


def test_a_write_through_one_node_is_read_and_pushed_on_every_node(nodes):
    a, b, c = nodes(3)
    got: queue.Queue = queue.Queue()
    sub = mqtt.Client(client_id="on-c", protocol=mqtt.MQTTv311)
    sub.on_message = lambda cl, u, m: got.put(m)
    subscribed: queue.Queue = queue.Queue()
    sub.on_subscribe = lambda *a: subscribed.put(True)
    sub.connect("127.0.0.1", c.port("mqtt"))
    sub.loop_start()
    try:
        sub.subscribe("collections/posts/#", qos=1)
        subscribed.get(timeout=WAIT)

        r = httpx.post(f"{a.url}/api/collections/posts/records", json={"title": "from A"})
        assert r.status_code == 201, r.text
        rec = r.json()

        # Read on the other nodes at once (no cache to go stale).
        for s in (b, c):
            r = httpx.get(f"{s.url}/api/collections/posts/records/{rec['id']}")
            assert r.status_code == 200 and r.json()["title"] == "from A", (s.url, r.text)

        # Every node's log has it, with one sequence and one event id.
        events = [poll(s) for s in (a, b, c)]
        assert [len(e) for e in events] == [1, 1, 1], events
        assert len({(e[0]["sequence"], e[0]["id"]) for e in events}) == 1, events
        assert events[0][0]["type"] == "posts.created"

        m = got.get(timeout=WAIT)
        assert m.topic == f"collections/posts/{rec['id']}"
        assert b"from A" in m.payload

        # A change through B is the next event everywhere, and its answer's version holds on A.
        r = httpx.patch(f"{b.url}/api/collections/posts/records/{rec['id']}", json={"title": "from B"},
                        headers={"If-Match": '"1"'})
        assert r.status_code == 200, r.text
        r = httpx.get(f"{a.url}/api/collections/posts/records/{rec['id']}")
        assert (r.json()["title"], r.json()["version"]) == ("from B", 2)
        later = [poll(s, since=events[0][0]["sequence"]) for s in (a, b, c)]
        assert {(e[0]["sequence"], e[0]["type"]) for e in later} == {(events[0][0]["sequence"] + 1, "posts.updated")}
        m = got.get(timeout=WAIT)
        assert b"from B" in m.payload
        # A stale version is refused on any node.
        r = httpx.patch(f"{c.url}/api/collections/posts/records/{rec['id']}", json={"title": "late"},
                        headers={"If-Match": '"1"'})
        assert r.status_code == 412, r.text
    finally:
        sub.loop_stop()
        sub.disconnect()


def test_a_collection_made_on_one_node_is_used_on_another(nodes):
    a, b = nodes(2)
    spec = {"name": "people", "fields": [{"name": "email", "type": "text", "unique": True}]}
    r = httpx.post(f"{a.url}/api/collections", json=spec)
    assert r.status_code == 201, r.text
    r = httpx.post(f"{b.url}/api/collections/people/records", json={"email": "ann@example.org"})
    assert r.status_code == 201, r.text
    r = httpx.post(f"{a.url}/api/collections/people/records", json={"email": "ann@example.org"})
    assert r.status_code == 409, r.text
    names = {c["name"] for c in httpx.get(f"{b.url}/api/collections").json()["items"]}
    assert "people" in names
