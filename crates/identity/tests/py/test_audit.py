"""The audit trail: failed sign-ins, refusals and admin changes are events on
`$SYS/audit/…`, which an admin can tail over SSE (or hand to a webhook) and nobody else
can read or forge."""

from __future__ import annotations

import json
import threading

import httpx

import doors

CONFIG = """
[auth]
users = { alice = "alice-pass", root = { password = "root-pass", role = "admin" } }
"""
ALICE, ROOT = ("alice", "alice-pass"), ("root", "root-pass")


def test_failures_refusals_and_admin_changes_are_audited(servers):
    s = servers.start(CONFIG)
    events: list[dict] = []
    ready = threading.Event()
    done = threading.Event()

    def tail():
        with httpx.Client(timeout=30, headers=doors.authorization(ROOT)) as c, \
                c.stream("GET", f"{s.url}/api/events", params={"topic": "$SYS/audit/#"}) as sse:
            assert sse.status_code == 200
            ready.set()
            for line in sse.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if len(events) >= 4:
                        done.set()
                        return

    t = threading.Thread(target=tail, daemon=True)
    t.start()
    assert ready.wait(10)
    assert not doors.mqtt_(s, ("alice", "wrong-pass"))
    alice = httpx.Client(base_url=s.url, timeout=10, headers=doors.authorization(ALICE))
    assert alice.post("/api/collections", json={"name": "x"}).status_code == 403
    root = httpx.Client(base_url=s.url, timeout=10, headers=doors.authorization(ROOT))
    assert root.post("/api/auth/users", json={"name": "carol", "password": "carol-pass-1"}).status_code == 201
    assert root.post("/api/collections", json={"name": "audited"}).status_code == 201
    assert done.wait(15), events
    by_type = {e["type"]: e for e in events}
    failed = by_type["polyport.audit.auth_failed"]
    assert failed["subject"] == "$SYS/audit/auth" and failed["data"]["origin"] == "mqtt"
    assert failed["data"]["username"] == "alice" and "password" in failed["data"]["reason"]
    refused = by_type["polyport.audit.refused"]
    assert refused["data"]["who"] == "alice" and refused["data"]["origin"] == "http"
    admin = [e["data"] for e in events if e["type"] == "polyport.audit.admin"]
    assert {"who": "root", "origin": "http", "op": "put_user", "target": "carol"} in admin, admin
    assert any(a["op"] == "create_collection" and a["target"] == "audited" for a in admin), admin

    # Nobody else reads or forges the trail.
    r = alice.get("/api/events", params={"topic": "$SYS/audit/#"})
    assert r.status_code == 403
    assert alice.post("/api/topics/$SYS/audit/admin", json={"forged": True}).status_code == 403
