"""Request rate per identity (`[limits] requests_per_second`): one bucket per identity
over every door. Request/response doors refuse past it in their own words (HTTP 429
problem with Retry-After, gRPC RESOURCE_EXHAUSTED, SOAP Fault); connection doors pace
(an MQTT publisher is slowed to the rate and loses nothing). Other identities are not
touched."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import time

import httpx
import paho.mqtt.client as mqtt
import pytest

import doors

RATE = 5  # the burst; then one request every two seconds (slow enough for grpcurl)
CONFIG = f"""
[auth]
users = {{ alice = "alice-pass", bob = "bob-pass", root = {{ password = "root-pass", role = "admin" }} }}
[limits]
requests_per_second = 0.5
request_burst = {RATE}
"""
ALICE, BOB, ROOT = ("alice", "alice-pass"), ("bob", "bob-pass"), ("root", "root-pass")


def get(s, creds) -> httpx.Response:
    return httpx.get(f"{s.url}/api/collections", headers=doors.authorization(creds), timeout=10)


def grpc_call(s, creds) -> subprocess.CompletedProcess:
    return subprocess.run([doors.GRPCURL, "-plaintext", "-H", f"authorization: {doors.authorization(creds)['Authorization']}",
                           "-d", json.dumps({"topic": "rates/x", "payload": "eA=="}),
                           f"127.0.0.1:{s.port('grpc')}", "polyport.v1.Topics/Publish"],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(os.environ.get("POLYPORT_TEST_STORE") == "cluster2", reason="two nodes: rate buckets are per node (README, Cluster mode)")
def test_requests_past_the_rate_are_refused_per_identity_on_every_request_door(servers):
    s = servers.start(CONFIG)
    codes = [get(s, ALICE).status_code for _ in range(RATE)]
    assert codes == [200] * RATE, codes
    r = get(s, ALICE)
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "rate_limited" and r.json()["retry_after_ms"] > 0, r.json()
    assert int(r.headers["retry-after"]) >= 1
    # The same bucket on every door: gRPC refuses alice now too, in gRPC's words.
    out = grpc_call(s, ALICE)
    assert out.returncode != 0 and "ResourceExhausted" in out.stderr, out.stderr
    assert "rate_limited" in out.stderr
    # Another identity is untouched, on both doors.
    assert get(s, BOB).status_code == 200
    assert grpc_call(s, BOB).returncode == 0
    # Obeying Retry-After gets alice back in.
    time.sleep(int(r.headers["retry-after"]))
    assert get(s, ALICE).status_code == 200
    # The refusals are counted.
    metrics = httpx.get(f"{s.url}/metrics", headers=doors.authorization(ROOT), timeout=10).text
    assert any(line.startswith("polyport_rate_limited_total{") and 'action="refused"' in line
               for line in metrics.splitlines()), metrics


def test_soap_answers_a_fault_with_retry_after(servers):
    s = servers.start(CONFIG)
    for _ in range(RATE):
        assert get(s, ALICE).status_code == 200
    body = """<?xml version="1.0"?>
<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope" xmlns:pp="urn:polyport:soap">
  <soap:Body><pp:Publish><pp:topic>rates/soap</pp:topic></pp:Publish></soap:Body>
</soap:Envelope>"""
    r = httpx.post(f"{s.url}/soap", content=body, timeout=10,
                   headers={"content-type": "application/soap+xml; charset=utf-8", **doors.authorization(ALICE)})
    assert r.status_code == 429, r.text
    assert "rate_limited" in r.text and "Fault" in r.text
    assert int(r.headers["retry-after"]) >= 1


def test_an_mqtt_publisher_past_the_rate_is_paced_and_loses_nothing(servers):
    s = servers.start(CONFIG.replace("requests_per_second = 0.5", "requests_per_second = 20"))
    got: queue.Queue = queue.Queue()
    watcher = mqtt.Client(client_id="root-watch", protocol=mqtt.MQTTv311)
    watcher.username_pw_set(*ROOT)
    subscribed = queue.Queue()
    watcher.on_subscribe = lambda *a: subscribed.put(True)
    watcher.on_message = lambda c, u, m: got.put(m.payload)
    watcher.connect("127.0.0.1", s.port("mqtt"))
    watcher.loop_start()
    watcher.subscribe("rates/#", qos=0)
    subscribed.get(timeout=10)

    alice = mqtt.Client(client_id="alice-fast", protocol=mqtt.MQTTv311)
    alice.username_pw_set(*ALICE)
    alice.connect("127.0.0.1", s.port("mqtt"))
    alice.loop_start()
    n = 45
    start = time.monotonic()
    for i in range(n):
        alice.publish("rates/alice", str(i).encode(), qos=0)
    received = [got.get(timeout=15) for _ in range(n)]
    took = time.monotonic() - start
    assert received == [str(i).encode() for i in range(n)], "every QoS 0 message, in order"
    # 5 from the burst, 40 at 20/s: at least about two seconds.
    assert took >= 1.8, f"{n} publishes took {took:.2f}s: not paced"
    # bob is served at once.
    t0 = time.monotonic()
    assert get(s, BOB).status_code == 200 and time.monotonic() - t0 < 1
    alice.disconnect()
    alice.loop_stop()
    watcher.disconnect()
    watcher.loop_stop()


GROUPS = """
[auth]
users = { alice = "alice-pass", bob = "bob-pass" }
[limits]
max_groups_per_identity = 2
"""


def sse_group(s, creds, group: str) -> httpx.Response:
    """Opens an SSE stream in `group` and returns its answer (headers only)."""
    with httpx.stream("GET", f"{s.url}/api/events", params={"topic": "groups/#", "group": group},
                      headers=doors.authorization(creds), timeout=10) as r:
        if r.status_code != 200:
            r.read()
        return r


def test_named_groups_are_capped_per_identity_and_the_cap_survives_a_restart(servers):
    s = servers.start(GROUPS)
    assert sse_group(s, ALICE, "one").status_code == 200
    assert sse_group(s, ALICE, "two").status_code == 200
    r = sse_group(s, ALICE, "three")
    assert r.status_code == 403 and r.json()["code"] == "limit_reached", r.text
    assert "max_groups_per_identity" in r.json()["detail"]
    assert sse_group(s, ALICE, "one").status_code == 200, "her own groups are hers to reuse"
    assert sse_group(s, BOB, "three").status_code == 200, "bob's count is his own"

    # MQTT 5 $share groups count too: SUBACK 0x97 Quota exceeded.
    c = mqtt.Client(client_id="alice-share", protocol=mqtt.MQTTv5)
    c.username_pw_set(*ALICE)
    codes: queue.Queue = queue.Queue()
    c.on_subscribe = lambda cl, u, mid, rc, p=None: codes.put([int(x.value) for x in rc])
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    persistent = Properties(PacketTypes.CONNECT)
    persistent.SessionExpiryInterval = 300
    c.connect("127.0.0.1", s.port("mqtt"), clean_start=False, properties=persistent)
    c.loop_start()
    c.subscribe("$share/four/groups/x", qos=1)
    assert codes.get(timeout=10) == [0x97]
    # A persistent session's own subscriptions are not named groups.
    for i in range(3):
        c.subscribe(f"groups/y{i}", qos=1)
        assert codes.get(timeout=10) == [1]
    c.disconnect()
    c.loop_stop()

    s.stop()
    s = servers.restart(s)
    r = sse_group(s, ALICE, "five")
    assert r.status_code == 403 and r.json()["code"] == "limit_reached", "the count is stored"
    assert sse_group(s, ALICE, "two").status_code == 200
    assert sse_group(s, ALICE, "three").status_code == 200, "joining bob's group creates nothing"


def test_a_subscription_with_too_many_filters_is_refused(servers):
    s = servers.start("[limits]\nmax_filters_per_subscription = 2\n")
    ok = httpx.get(f"{s.url}/api/poll", params=[("topic", "a/#"), ("topic", "b/#"), ("wait", "0")], timeout=10)
    assert ok.status_code == 200, ok.text
    r = httpx.get(f"{s.url}/api/poll", params=[("topic", "a/#"), ("topic", "b/#"), ("topic", "c/#"),
                                                      ("wait", "0")], timeout=10)
    assert r.status_code == 403 and r.json()["code"] == "limit_reached", r.text
    assert "max_filters_per_subscription" in r.json()["detail"]
