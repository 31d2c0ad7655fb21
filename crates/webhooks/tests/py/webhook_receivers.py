"""Webhook receivers for the black-box tests, all on 127.0.0.1 ephemeral ports, and a thin
REST client for the webhook API.

- `Receiver`: a real HTTP/1.1 server (threads of the test process) that checks every
  delivery with the third-party `standardwebhooks` library — `Webhook(secret).verify(body,
  headers)` — and records what arrived (time of receipt, headers, body, which secrets
  verified). A receiver that cannot verify answers 400, like a real one would. What it
  answers is programmable (`reply`): status, headers, body and a delay, so it can play a
  flaky, slow, rate-limiting or gone endpoint.
- `BlackHole`: a port that accepts connections (the kernel's backlog) and never answers.
- `closed_port()`: a port nobody listens on (connection refused).
- `Api`: the REST calls the tests make, each asserting its status code.

Nothing here ever talks to an address outside 127.0.0.0/8.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import quote

import httpx
from standardwebhooks import Webhook

# Figures measured by the tests, printed in the terminal summary (see conftest.py).
FIGURES: list[str] = []


def new_secret() -> str:
    """A fresh Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def wait_until(pred: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Polls `pred` until it returns something truthy (which is returned); fails after
    `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def ts(s: str) -> float:
    """RFC 3339 (with up to nanoseconds) to epoch seconds."""
    m = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", s)
    assert m, s
    base = datetime.fromisoformat(m[1] + ("+00:00" if m[3] == "Z" else m[3]))
    return base.timestamp() + float("0." + (m[2] or "0"))


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"ok": true}'
    delay: float = 0.0  # seconds to sleep before answering


@dataclass
class Received:
    """One request as the receiver saw it."""

    at: float  # time.monotonic() when the request line arrived
    wall: float  # time.time() at the same moment
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    verified: dict[str, bool]  # secret name -> did standardwebhooks verify it
    errors: dict[str, str]  # secret name -> the library's complaint
    status: int = 0  # what the receiver answered

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def signatures(self) -> list[str]:
        return self.headers.get("webhook-signature", "").split()

    def event(self) -> dict:
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass  # a client (the webhook engine) hanging up on a slow answer is expected


class Receiver:
    """A webhook receiver on `http://127.0.0.1:PORT/hook`.

    `secrets` maps a name to a `whsec_…` secret; every delivery is verified with each one
    separately through `standardwebhooks`, and unless all verify the receiver answers 400.
    `reply(received, n)` decides the answer to the n-th request (1-based); the default is
    200 at once. Set `secrets` / `reply` at any time."""

    def __init__(self, secrets: dict[str, str] | None = None, reply: Callable[[Received, int], Reply] | None = None):
        self.secrets: dict[str, str] = dict(secrets or {})
        self.reply: Callable[[Received, int], Reply] = reply or (lambda r, n: Reply())
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        rx = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Without Nagle: headers and body are two writes, and Nagle would hold the body
            # for the client's delayed ACK (~40 ms per request on a kept-alive connection).
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_POST(self):
                at, wall = time.monotonic(), time.time()
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified, errors = {}, {}
                for name, secret in list(rx.secrets.items()):
                    try:
                        Webhook(secret).verify(body, headers)
                        verified[name] = True
                    except Exception as e:  # noqa: BLE001  (the library's own error types)
                        verified[name], errors[name] = False, f"{type(e).__name__}: {e}"
                got = Received(at, wall, self.path, headers, body, verified, errors)
                with rx._lock:
                    rx.requests.append(got)
                    number = len(rx.requests)
                if not all(verified.values()):
                    r = Reply(400, body=json.dumps({"error": errors}).encode())
                else:
                    r = rx.reply(got, number)
                got.status = r.status
                if r.delay:
                    time.sleep(r.delay)
                try:
                    self.send_response(r.status)
                    for k, v in r.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(r.body)))
                    self.end_headers()
                    self.wfile.write(r.body)
                except OSError:
                    pass  # the engine gave up waiting (timeout) and closed the connection
                with rx._cond:
                    rx._cond.notify_all()

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def ids(self) -> list[str]:
        return [r.webhook_id for r in self.snapshot()]

    def ok_ids(self) -> list[str]:
        """webhook-ids of the requests answered with a 2xx."""
        return [r.webhook_id for r in self.snapshot() if 200 <= r.status < 300]

    def wait_for(self, pred: Callable[[list[Received]], object], timeout: float, what: str):
        """Waits (bounded) until `pred(requests)` is truthy and returns its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                v = pred(list(self.requests))
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; the receiver got {len(self.requests)} request(s): "
                        f"{[(r.webhook_id, r.status) for r in self.requests[-10:]]}"
                    )
                self._cond.wait(min(left, 0.1))

    def wait_count(self, n: int, timeout: float, ok_only: bool = True) -> list[Received]:
        def enough(reqs):
            got = [r for r in reqs if not ok_only or 200 <= r.status < 300]
            return got if len(got) >= n else None

        return self.wait_for(enough, timeout, f"{n} {'successful ' if ok_only else ''}deliveries")

    def close(self):
        self._server.shutdown()
        self._server.server_close()


class BlackHole:
    """A listening port that never accepts: connections complete in the kernel's backlog
    and requests are sent, but no answer ever comes."""

    def __init__(self):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def close(self):
        self._sock.close()


def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def free_port() -> int:
    return closed_port()


class Api:
    """The webhook REST API of one server, each call asserting its status code."""

    def __init__(self, base_url: str):
        self.base = base_url
        self.c = httpx.Client(base_url=base_url, timeout=15.0)

    def close(self):
        self.c.close()

    @staticmethod
    def _ok(r: httpx.Response, want: int) -> dict:
        assert r.status_code == want, f"{r.request.method} {r.request.url} -> {r.status_code} (want {want}): {r.text}"
        return r.json() if r.content else {}

    # endpoints
    def create_endpoint(self, url: str, **fields) -> dict:
        return self._ok(self.c.post("/api/webhooks/endpoints", json={"url": url, **fields}), 201)

    def endpoint(self, ep: str) -> dict:
        return self._ok(self.c.get(f"/api/webhooks/endpoints/{ep}"), 200)

    def endpoints(self) -> list[dict]:
        return self._ok(self.c.get("/api/webhooks/endpoints"), 200)["items"]

    def patch_endpoint(self, ep: str, **fields) -> dict:
        return self._ok(self.c.patch(f"/api/webhooks/endpoints/{ep}", json=fields), 200)

    def rotate(self, ep: str, **body) -> dict:
        return self._ok(self.c.post(f"/api/webhooks/endpoints/{ep}/rotate-secret", json=body), 200)

    def recover(self, ep: str, **body) -> dict:
        return self._ok(self.c.post(f"/api/webhooks/endpoints/{ep}/recover", json=body), 202)

    def deliveries(self, ep: str, **params) -> list[dict]:
        return self._ok(self.c.get(f"/api/webhooks/endpoints/{ep}/deliveries", params=params), 200)["items"]

    def delivery(self, ep: str, seq: int) -> dict:
        return self._ok(self.c.get(f"/api/webhooks/endpoints/{ep}/deliveries/{seq}"), 200)

    def wait_delivery(self, ep: str, seq: int, status: str, timeout: float) -> dict:
        def check():
            r = self.c.get(f"/api/webhooks/endpoints/{ep}/deliveries/{seq}")
            if r.status_code == 200 and r.json()["status"] == status:
                return r.json()
            return None

        try:
            return wait_until(check, timeout, f"delivery {seq} of {ep} to be {status}", interval=0.1)
        except AssertionError as e:
            r = self.c.get(f"/api/webhooks/endpoints/{ep}/deliveries/{seq}")
            raise AssertionError(f"{e}; it is: {r.text}") from None

    # events
    def publish(self, topic: str, data, **headers) -> int:
        r = self.c.post(f"/api/topics/{topic}", json=data, headers=headers)
        return self._ok(r, 202)["sequence"]

    def create_record(self, collection: str, record: dict) -> dict:
        return self._ok(self.c.post(f"/api/collections/{collection}/records", json=record), 201)

    def poll(self, topic: str, since: int = 0, wait: float = 0) -> dict:
        return self._ok(self.c.get(f"/api/poll?topic={quote(topic, safe='')}&since={since}&wait={wait}"), 200)
