"""`GET /api/cluster`, `/metrics` and `/readyz` on the embedded engine and on nodes that
share a NATS JetStream server: every node lists the others, a node that stops cleanly
leaves the list at once, and one killed with SIGKILL leaves it once its heartbeat is
older than the ttl.

Every test's nodes use one bucket of their own (`[cluster] bucket`, deleted at the end),
so nodes of other tests and runs never show up in the lists asserted on.
"""

from __future__ import annotations

import re
import socket
import time
import uuid

import httpx
import pytest

from nats_helpers import NATS, delete_bucket, nats_reachable
from polyport_server import Server, wait_for

TTL_MS = 1500
HEARTBEAT_MS = 300


def cluster_config(bucket: str) -> str:
    return f"""
[cluster]
bus = "{NATS}"
bucket = "{bucket}"
heartbeat_ms = {HEARTBEAT_MS}
ttl_ms = {TTL_MS}
"""


@pytest.fixture
def bucket():
    """A bucket of the test's own, deleted at the end."""
    name = f"polyport-test-{uuid.uuid4().hex[:12]}"
    yield name
    if nats_reachable():
        answer = delete_bucket(name)
        assert '"success":true' in answer, answer


def cluster(s: Server) -> dict:
    r = httpx.get(f"{s.url}/api/cluster", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def ids(s: Server) -> set[str]:
    return {n["id"] for n in cluster(s)["nodes"]}


def test_the_embedded_engine_is_one_node(servers):
    s = servers.start()
    c = cluster(s)
    assert c["engine"] == "embedded"
    assert [n["id"] for n in c["nodes"]] == [c["node"]["id"]]
    me = c["node"]
    assert me["listeners"]["http"] == s.http
    assert me["listeners"]["mqtt"].endswith(f":{s.port('mqtt')}")
    assert me["version"]
    assert httpx.get(f"{s.url}/readyz").status_code == 200


@pytest.mark.skipif(not nats_reachable(), reason=f"no NATS at {NATS}")
def test_nodes_on_one_nats_see_each_other_and_a_stopped_one_leaves_at_once(bucket, servers):
    nodes = [servers.start(cluster_config(bucket)) for _ in range(3)]
    mine = {cluster(n)["node"]["id"] for n in nodes}
    assert len(mine) == 3, "every process has its own node id"
    for n in nodes:
        c = wait_for("all three nodes listed", lambda n=n: (lambda c: c if {x["id"] for x in c["nodes"]} == mine else None)(cluster(n)))
        assert c["engine"] == "cluster"
        by_id = {x["id"]: x for x in c["nodes"]}
        # Each node announces where it listens, so a client can be pointed at another.
        for other in nodes:
            oid = cluster(other)["node"]["id"]
            assert by_id[oid]["listeners"]["http"] == other.http
        assert httpx.get(f"{n.url}/readyz").status_code == 200

    def gauge(s: Server) -> float | None:
        m = re.search(r"^polyport_cluster_nodes (\S+)$", httpx.get(f"{s.url}/metrics").text, re.M)
        return float(m.group(1)) if m else None

    wait_for("the node gauge at 3", lambda: gauge(nodes[0]) == 3)

    gone = cluster(nodes[1])["node"]["id"]
    assert nodes[1].stop() == 0
    # A clean stop deletes its heartbeat: gone well before the ttl.
    started = time.monotonic()
    wait_for("the stopped node to leave", lambda: gone not in ids(nodes[0]), timeout=TTL_MS / 1000)
    assert time.monotonic() - started < TTL_MS / 1000
    wait_for("the third node to see it leave", lambda: ids(nodes[2]) == mine - {gone}, timeout=TTL_MS / 1000)


@pytest.mark.skipif(not nats_reachable(), reason=f"no NATS at {NATS}")
def test_a_killed_node_drops_out_after_its_ttl(bucket, servers):
    a = servers.start(cluster_config(bucket))
    b = servers.start(cluster_config(bucket))
    b_id = cluster(b)["node"]["id"]
    wait_for("b listed on a", lambda: b_id in ids(a))
    servers.kill9(b)
    killed = time.monotonic()
    # Still listed for a while: nothing told the others it is gone.
    assert b_id in ids(a)
    wait_for("the killed node to expire", lambda: b_id not in ids(a), timeout=TTL_MS / 1000 + 5)
    took = time.monotonic() - killed
    assert took >= (TTL_MS - HEARTBEAT_MS) / 1000 * 0.9, f"expired after {took:.2f}s, before its ttl"
    assert ids(a) == {cluster(a)["node"]["id"]}


def test_a_node_whose_nats_cannot_be_reached_does_not_start(servers, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(f'[cluster]\nbus = "nats://127.0.0.1:{dead}"\nconnect_timeout_ms = 1000\n')
    from polyport_server import polyport_bin
    import subprocess

    p = subprocess.run(
        [str(polyport_bin()), "serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d"), "--http", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30,
    )
    assert p.returncode != 0
    assert f"cannot reach NATS at nats://127.0.0.1:{dead}" in p.stderr
