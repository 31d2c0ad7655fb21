"""What the MQTT suites share: the `servers` fixture (polyport_server.Servers: start,
SIGKILL, restart on the same data dir), a paho-mqtt wrapper whose callbacks land in queues (so every wait has a
timeout), and raw MQTT bytes for what client libraries hide (reason codes, flags,
unacknowledged deliveries)."""

from __future__ import annotations

import json
import queue
import socket
import struct
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from polyport_server import Server, servers  # noqa: F401  (fixture, re-exported)

WAIT = 10  # the longest any single expected thing may take
QUIET = 1.0  # how long "nothing (more) arrives" is watched for

MOSQUITTO_PUB = "/usr/bin/mosquitto_pub"
MOSQUITTO_SUB = "/usr/bin/mosquitto_sub"


# ---------------------------------------------------------------------------------------
# servers


def mqtt_port(s: Server) -> int:
    listeners = json.loads((s.data_dir / "listeners.json").read_text())
    return int(listeners["mqtt"].rsplit(":", 1)[1])


def http_port(s: Server) -> int:
    return int(s.http.rsplit(":", 1)[1])


# ---------------------------------------------------------------------------------------
# paho


def _int(rc) -> int:
    """paho passes an int (3.1.1) or a ReasonCodes (5) as a CONNACK / DISCONNECT code."""
    return int(rc.value) if hasattr(rc, "value") else int(rc)


class Paho:
    """One paho client on its own network thread; CONNACKs, SUBACKs, messages and
    disconnects land in queues so a test waits for each with a timeout. paho's automatic
    reconnect is off: a connection the server ends stays ended."""

    def __init__(
        self,
        port: int,
        client_id: str = "",
        *,
        clean: bool = True,
        v5: bool = False,
        props: dict | None = None,
        transport: str = "tcp",
        user: tuple[str, str] | None = None,
    ):
        self.port, self.v5, self.clean = port, v5, clean
        self.connect_props = props or {}
        self.messages: queue.Queue = queue.Queue()
        self.connacks: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self.connack_props = None
        kw: dict = {"client_id": client_id, "transport": transport, "reconnect_on_failure": False}
        if v5:
            kw["protocol"] = mqtt.MQTTv5
        else:
            kw["protocol"] = mqtt.MQTTv311
            kw["clean_session"] = clean
        self.c = mqtt.Client(**kw)
        if transport == "websockets":
            self.c.ws_set_options(path="/mqtt")
        if user:
            self.c.username_pw_set(*user)
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, granted, *rest: self.subacks.put(granted)
        self.c.on_disconnect = lambda c, u, rc, *rest: self.disconnects.put(_int(rc))

    def _on_connect(self, c, u, flags, rc, props=None):
        self.connack_props = props
        self.connacks.put((flags.get("session present"), _int(rc)))

    def connect(self) -> tuple[int, int]:
        """Connects and returns (session present, return code / reason code)."""
        if self.v5:
            p = None
            if self.connect_props:
                p = Properties(PacketTypes.CONNECT)
                for k, v in self.connect_props.items():
                    setattr(p, k, v)
            self.c.connect("127.0.0.1", self.port, keepalive=30, clean_start=self.clean, properties=p)
        else:
            self.c.connect("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        try:
            return self.connacks.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"no CONNACK within {WAIT}s") from None

    def subscribe(self, topic: str, qos: int = 1):
        self.c.subscribe(topic, qos=qos)
        try:
            granted = self.subacks.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"no SUBACK for {topic} within {WAIT}s") from None
        assert [_int(g) for g in granted] == [qos], f"SUBACK for {topic}: {granted}"

    def publish(self, topic: str, payload, qos: int = 1, retain: bool = False, props: dict | None = None):
        p = None
        if props:
            p = Properties(PacketTypes.PUBLISH)
            for k, v in props.items():
                setattr(p, k, v)
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=p)
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published(), f"publish to {topic} (QoS {qos}) not acknowledged within {WAIT}s"

    def take(self, n: int, timeout: float = WAIT) -> list:
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < n:
            try:
                got.append(self.messages.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(
                    f"got {len(got)} of {n} messages within {timeout}s: {[(m.topic, m.payload) for m in got]}"
                ) from None
        return got

    def nothing_more(self, within: float = QUIET) -> None:
        try:
            m = self.messages.get(timeout=within)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message {m.topic!r} {m.payload!r} (retain={m.retain}, dup={m.dup})")

    def wait_closed(self, timeout: float = WAIT) -> int:
        """Waits until the connection is gone (paho's on_disconnect) and returns its code."""
        try:
            return self.disconnects.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the connection was not closed within {timeout}s") from None
        finally:
            self.c.loop_stop()

    def close(self) -> None:
        """A clean DISCONNECT, and waits for the network thread to end."""
        self.c.disconnect()
        try:
            self.disconnects.get(timeout=WAIT)
        except queue.Empty:
            pass
        self.c.loop_stop()


def connected(port: int, client_id: str = "", *topics: str, qos: int = 1, **kw) -> Paho:
    """A connected client (session present and code not checked), subscribed to `topics`."""
    c = Paho(port, client_id, **kw)
    _, rc = c.connect()
    assert rc == 0, f"CONNACK {rc}"
    for t in topics:
        c.subscribe(t, qos)
    return c


def payloads(msgs) -> list[bytes]:
    return [m.payload for m in msgs]


# ---------------------------------------------------------------------------------------
# raw MQTT, for what client libraries hide


def vbi(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def pkt(first: int, body: bytes) -> bytes:
    return bytes([first]) + vbi(len(body)) + body


def connect_packet(client_id: str, *, clean: bool = True, level: int = 4, keepalive: int = 60) -> bytes:
    body = mstr("MQTT") + bytes([level, 0x02 if clean else 0x00]) + struct.pack("!H", keepalive)
    if level == 5:
        body += vbi(0)  # no properties
    return pkt(0x10, body + mstr(client_id))


def subscribe_packet(pid: int, topic: str, qos: int, v5: bool = False) -> bytes:
    return pkt(0x82, struct.pack("!H", pid) + (vbi(0) if v5 else b"") + mstr(topic) + bytes([qos]))


def publish_packet(topic: str | bytes, payload: bytes, qos: int = 0, pid: int = 1, v5: bool = False) -> bytes:
    body = mstr(topic) + (struct.pack("!H", pid) if qos else b"") + (vbi(0) if v5 else b"") + payload
    return pkt(0x30 | (qos << 1), body)


class Raw:
    """A bare TCP connection speaking MQTT bytes."""

    def __init__(self, port: int):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)

    def send(self, b: bytes) -> None:
        self.s.sendall(b)

    def _exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def read(self, timeout: float = WAIT) -> tuple[int, bytes] | None:
        """The next packet as (first byte, body); None once the server closed the
        connection; socket.timeout if nothing came within `timeout`."""
        self.s.settimeout(timeout)
        try:
            first = self._exact(1)
            if first is None:
                return None
            n, shift = 0, 0
            while True:
                b = self._exact(1)
                if b is None:
                    return None
                n |= (b[0] & 0x7F) << shift
                shift += 7
                if not b[0] & 0x80:
                    break
            body = self._exact(n) if n else b""
            return None if body is None else (first[0], body)
        except ConnectionResetError:
            return None

    def expect(self, kind: int, timeout: float = WAIT) -> tuple[int, bytes]:
        try:
            p = self.read(timeout)
        except socket.timeout:
            raise AssertionError(f"no packet of type {kind >> 4} within {timeout}s") from None
        assert p is not None, f"connection closed while waiting for a packet of type {kind >> 4}"
        assert p[0] & 0xF0 == kind, f"got packet {p[0]:#04x} {p[1]!r}, want type {kind >> 4}"
        return p

    def connack(self) -> tuple[int, int]:
        """(session present, return / reason code) of the CONNACK."""
        _, body = self.expect(0x20)
        return body[0] & 1, body[1]

    def closed_within(self, timeout: float = WAIT) -> list[tuple[int, bytes]]:
        """Reads until the server closes the connection; returns what came before."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise socket.timeout
                p = self.read(left)
            except socket.timeout:
                raise AssertionError(f"the server did not close the connection within {timeout}s; got {got}") from None
            if p is None:
                return got
            got.append(p)

    def close(self) -> None:
        self.s.close()


def parse_publish3(first: int, body: bytes) -> dict:
    """A 3.1.1 PUBLISH: flags, topic, packet id, payload."""
    (tlen,) = struct.unpack("!H", body[:2])
    topic = body[2 : 2 + tlen].decode()
    rest = body[2 + tlen :]
    qos = (first >> 1) & 3
    pid = None
    if qos:
        (pid,) = struct.unpack("!H", rest[:2])
        rest = rest[2:]
    return {"dup": bool(first & 0x08), "qos": qos, "retain": bool(first & 1), "topic": topic, "pid": pid, "payload": rest}


def read_lines(proc: subprocess.Popen) -> queue.Queue:
    """Lines of `proc`'s stdout, read by a thread; None marks the end."""
    q: queue.Queue = queue.Queue()

    def run():
        for line in proc.stdout:
            q.put(line.rstrip("\n"))
        q.put(None)

    threading.Thread(target=run, daemon=True).start()
    return q


# Fixtures: imported by each test module that uses them (not in conftest.py, whose
# fixtures would clash with the webhook suite's `servers` when all suites run at once).


@pytest.fixture
def server(servers) -> Server:
    return servers.start()
