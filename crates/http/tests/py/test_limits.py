"""The HTTP listener guards itself (`[limits]`): a connection past the per-address cap
gets a 503 problem and is closed while the open ones carry on, and a client that trickles
its headers (slowloris) is cut off after `http_header_timeout_secs`."""

from __future__ import annotations

import json
import socket
import time

import httpx
from polyport_server import servers  # noqa: F401  (fixture)

LIMITS = "[limits]\nmax_connections_per_address = 3\nhttp_header_timeout_secs = 1\n"


def request(sock: socket.socket, path: str = "/healthz") -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_connections_past_the_cap_get_503_and_the_open_ones_carry_on(servers):
    s = servers.start(LIMITS)
    host, port = s.http.split(":")
    held = [socket.create_connection((host, int(port)), timeout=5) for _ in range(3)]
    try:
        for sock in held:
            assert request(sock).startswith(b"HTTP/1.1 200")
        over = socket.create_connection((host, int(port)), timeout=5)
        reply = request(over)
        assert reply.startswith(b"HTTP/1.1 503"), reply
        problem = json.loads(reply.partition(b"\r\n\r\n")[2])
        assert problem["code"] == "too_many_connections" and "maximum of 3" in problem["detail"]
        assert over.recv(1) == b"", "the refused connection is closed"
        assert request(held[0]).startswith(b"HTTP/1.1 200"), "keep-alive connections carry on"
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the place is free once the server sees the close
            r = httpx.get(f"{s.url}/healthz")
            if r.status_code == 200:
                break
            assert r.status_code == 503 and time.monotonic() < deadline, r.text
            time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()


def test_a_client_trickling_its_headers_is_cut_off(servers):
    s = servers.start(LIMITS)
    host, port = s.http.split(":")
    slow = socket.create_connection((host, int(port)), timeout=10)
    started = time.monotonic()
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    try:
        for _ in range(20):  # one header byte every 0.2 s: never a whole request
            slow.sendall(b"X")
            time.sleep(0.2)
    except (BrokenPipeError, ConnectionResetError):
        pass
    slow.settimeout(5)
    try:
        rest = slow.recv(65536)
    except ConnectionResetError:
        rest = b""
    elapsed = time.monotonic() - started
    assert not rest.startswith(b"HTTP/1.1 200"), rest
    assert elapsed < 6, f"still open after {elapsed:.1f}s"
    assert httpx.get(f"{s.url}/healthz").status_code == 200, "other clients are served"


def test_a_connection_that_never_speaks_is_closed_after_the_header_deadline(servers):
    """hyper's header timer starts at the first byte; a socket that sends none would hold
    its place under the per-address cap for ever."""
    s = servers.start(LIMITS)
    host, port = s.http.split(":")
    silent = socket.create_connection((host, int(port)), timeout=10)
    started = time.monotonic()
    try:
        rest = silent.recv(65536)
    except ConnectionResetError:
        rest = b""
    elapsed = time.monotonic() - started
    assert rest == b"" and 0.8 < elapsed < 5, (rest, elapsed)
    metrics = httpx.get(f"{s.url}/metrics").text
    assert 'polyport_connections_timed_out_total{listener="HTTP",reason="silent"} 1' in metrics, metrics


def test_metric_labels_stay_bounded_whatever_the_method(servers):
    s = servers.start()
    for method in ("BREW", "PROPFIND", "X-CUSTOM-1"):
        httpx.request(method, f"{s.url}/api/collections")
    metrics = httpx.get(f"{s.url}/metrics").text
    assert 'method="other"' in metrics
    assert "BREW" not in metrics and "PROPFIND" not in metrics and "X-CUSTOM-1" not in metrics


def test_writes_stop_creating_collections_past_the_cap(servers):
    s = servers.start("[limits]\nmax_auto_collections = 3\n")
    with httpx.Client(base_url=s.url, timeout=10) as c:
        for name in ("a1", "a2", "a3"):
            assert c.post(f"/api/collections/{name}/records", json={"n": 1}).status_code == 201
        r = c.post("/api/collections/a4/records", json={"n": 1})
        assert r.status_code == 403 and r.json()["code"] == "limit_reached", r.text
        assert "POST /api/collections" in r.json()["detail"]
        assert c.get("/api/collections/a4").status_code == 404, "nothing was created"
        assert c.post("/api/collections/a1/records", json={"n": 2}).status_code == 201, "existing ones still take writes"
        assert c.post("/api/collections", json={"name": "a4"}).status_code == 201, "an explicit create is not capped"


def test_ws_subscriptions_past_the_cap_get_an_error_frame_and_the_socket_carries_on(servers):
    """`[http] max_ws_subscriptions`: the subscribe past it is answered with an `error`
    (`limit_reached`, naming the setting); the socket's own subscriptions keep delivering."""
    import asyncio

    from realtime_clients import WsClient

    s = servers.start("[http]\nmax_ws_subscriptions = 2\n")

    async def run():
        ws = await WsClient.connect(f"ws://{s.http}/ws")
        await ws.ok("subscribe", topic="cap/a")
        await ws.ok("subscribe", topic="cap/b")
        refused = await ws.request("subscribe", topic="cap/c")
        assert refused["type"] == "error" and refused["code"] == "limit_reached", refused
        assert "max_ws_subscriptions" in refused["message"], refused
        await ws.ok("publish", topic="cap/a", data={"n": 1})
        event = await ws.next_event()
        assert event["event"]["subject"] == "cap/a", event
        await ws.close()

    asyncio.run(run())
    metrics = httpx.get(f"{s.url}/metrics", timeout=10).text
    assert 'polyport_limits_hit_total{limit="http.max_ws_subscriptions"} 1' in metrics, metrics
