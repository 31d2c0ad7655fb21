"""What the STOMP suites share: the `servers` fixture, ports from listeners.json, a
stomp.py listener whose waits all have deadlines, and a raw socket for bad input."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time

import paho.mqtt.client as mqtt
import stomp
from polyport_server import Server, servers  # noqa: F401  (fixture, re-exported)

WAIT = 10


def port(s: Server, name: str = "stomp") -> int:
    listeners = json.loads((s.data_dir / "listeners.json").read_text())
    return int(listeners[name].rsplit(":", 1)[1])


class Listener(stomp.ConnectionListener):
    """Collects MESSAGE, RECEIPT and ERROR frames for the test to take, with timeouts."""

    def __init__(self):
        self.messages: queue.Queue = queue.Queue()
        self.receipts: queue.Queue = queue.Queue()
        self.errors: queue.Queue = queue.Queue()
        self.connected: dict = {}

    def on_connected(self, frame):
        self.connected = frame.headers

    def on_message(self, frame):
        self.messages.put((frame.headers, frame.body))

    def on_receipt(self, frame):
        self.receipts.put(frame.headers["receipt-id"])

    def on_error(self, frame):
        self.errors.put((frame.headers, frame.body))

    def take(self, n: int = 1, timeout: float = WAIT) -> list:
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"got {len(got)} of {n} messages: {got}"
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                pass
        return got

    def quiet(self, seconds: float = 0.5) -> None:
        try:
            m = self.messages.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message {m}")

    def receipt(self, timeout: float = WAIT) -> str:
        return self.receipts.get(timeout=timeout)


def connect(s: Server, version: str = "1.2", **kw) -> tuple[stomp.Connection, Listener]:
    cls = {"1.0": stomp.Connection10, "1.1": stomp.Connection11, "1.2": stomp.Connection12}[version]
    extra = {} if version == "1.0" else {"vhost": "/"}
    conn = cls([("127.0.0.1", port(s))], **extra, **kw)
    listener = Listener()
    conn.set_listener("", listener)
    conn.connect("guest", "guest", wait=True)
    return conn, listener


def raw(s: Server, data: bytes, timeout: float = WAIT) -> bytes:
    """Sends `data` on a fresh socket and returns everything the server wrote before it
    closed the connection."""
    sock = socket.create_connection(("127.0.0.1", port(s)), timeout=timeout)
    sock.sendall(data)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        out += chunk
    sock.close()
    return out


class Heard(list):
    """What an MQTT listener received, as (topic, payload) pairs."""

    def wait(self, n: int, timeout: float = WAIT) -> "Heard":
        deadline = time.monotonic() + timeout
        while len(self) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self


@contextlib.contextmanager
def mqtt_listener(s: Server, topic: str):
    """An MQTT client subscribed (SUBACK received) to `topic`, yielding what it hears."""
    heard, ready = Heard(), threading.Event()
    m = mqtt.Client(client_id=f"listener-{time.monotonic_ns()}")
    m.on_message = lambda _c, _u, msg: heard.append((msg.topic, msg.payload))
    m.on_subscribe = lambda *a: ready.set()
    m.connect("127.0.0.1", port(s, "mqtt"))
    m.subscribe(topic, qos=1)
    m.loop_start()
    try:
        assert ready.wait(WAIT), "no SUBACK"
        yield m, heard
    finally:
        m.loop_stop()
        m.disconnect()
