"""What the AMQP suites share: the `servers` fixture, ports from listeners.json, and
pika helpers whose waits all have deadlines."""

from __future__ import annotations

import json
import time

import pika
from polyport_server import Server, servers  # noqa: F401  (fixture, re-exported)

WAIT = 10


def port(s: Server, name: str) -> int:
    listeners = json.loads((s.data_dir / "listeners.json").read_text())
    return int(listeners[name].rsplit(":", 1)[1])


def connect(s: Server, **kw) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port(s, "amqp"), **kw))


def drain(ch, queue: str, n: int, auto_ack: bool = True, timeout: float = WAIT) -> list:
    """Consumes `n` messages from `queue` (or fails after `timeout`): (method, props, body)."""
    got = []
    for method, props, body in ch.consume(queue, auto_ack=auto_ack, inactivity_timeout=timeout):
        if method is None:
            break
        got.append((method, props, body))
        if len(got) == n:
            break
    ch.cancel()
    assert len(got) == n, f"got {len(got)} of {n} messages from {queue}: {[g[2] for g in got]}"
    return got


def quiet(ch, queue: str, seconds: float = 1.0) -> None:
    """Nothing (more) arrives on `queue` for `seconds`."""
    for method, _props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=seconds):
        assert method is None, f"unexpected message {body!r}"
        break
    ch.cancel()


def wait_until(pred, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
