"""NATS stopped and started under two nodes: a private `nats-server` with JetStream of the
test's own (the machine's shared NATS is never touched). Writes go on while it is away
(the log is in Postgres), `/readyz` turns not ready and back, and a shared
subscription's members on both nodes receive again once NATS is back."""

from __future__ import annotations

import queue
import socket
import subprocess
import time
import uuid
from pathlib import Path

import httpx
from cluster_nodes import WAIT, mqtt_client, node_factory, publish
from polyport_server import wait_for


class PrivateNats:
    """A NATS server with JetStream of the test's own, which it can stop and start again
    on the same port and store (the machine's shared NATS is never touched)."""

    def __init__(self, tmp: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.store = tmp / "nats"
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for("the private NATS server to listen", up, timeout=10)

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


def test_nats_going_away_and_coming_back(servers, tmp_path):
    """With the bus stopped, writes still succeed (Postgres has the log), `/readyz` says
    not ready naming the cluster's heartbeat, and a shared subscription's member on the
    node running the group gets everything published meanwhile (what was on its way to
    the other node's member comes back to the group). Once NATS is back, the node is
    ready again and the member on the other node receives again."""
    nats = PrivateNats(tmp_path)
    bucket = f"polyport-test-{uuid.uuid4().hex[:12]}"
    cfg = f'[cluster]\nbus = "{nats.url}"\nbucket = "{bucket}"\nheartbeat_ms = 300\nttl_ms = 1500\n'
    factory = node_factory(servers, cfg)
    start = next(factory)
    members = []
    try:
        a, b = start(2)
        for s, name in ((a, "a"), (b, "b")):
            cl, got = mqtt_client(s.port("mqtt"), f"nats-share-{name}")
            cl.subscribe("$share/w/work/#", qos=1)
            cl.subscribed.get(timeout=WAIT)
            members.append((name, cl, got))

        def take(n: int, timeout: float = WAIT) -> dict[str, list[str]]:
            seen: dict[str, list[str]] = {"a": [], "b": []}
            deadline = time.time() + timeout
            while sum(map(len, seen.values())) < n and time.time() < deadline:
                for name, _, got in members:
                    try:
                        seen[name].append(got.get(timeout=0.05).topic)
                    except queue.Empty:
                        pass
            return seen

        for i in range(20):
            publish(a, f"work/{i}")
        before = take(20)
        assert sorted(before["a"] + before["b"]) == sorted(f"work/{i}" for i in range(20))
        assert before["b"], "the member on B (fed over NATS) took some"

        nats.stop()
        wait_for("/readyz to say not ready", lambda: httpx.get(f"{b.url}/readyz").status_code == 503, timeout=10)
        for i in range(20, 30):
            publish(b, f"work/{i}")  # the log is in Postgres: writes go on
        want = {f"work/{i}" for i in range(20, 30)}
        got: set[str] = set()
        deadline = time.time() + 20
        while not want <= got and time.time() < deadline:
            got.update(t for v in take(1, timeout=0.5).values() for t in v)
        # What was on its way to B when the bus went comes again, through A: at least once.
        assert want <= got and got <= want | set(before["b"]), sorted(got)

        nats.start()
        try:
            wait_for("/readyz to say ready", lambda: httpx.get(f"{b.url}/readyz").status_code == 200, timeout=20)
        except BaseException:
            print(httpx.get(f"{b.url}/readyz").text, b.log()[-3000:])
            raise

        def b_receives_again() -> bool:
            publish(a, "work/probe")
            return any(t == "work/probe" for t in take(1, timeout=1)["b"])
        wait_for("the member on B to receive again", b_receives_again, timeout=30)
    finally:
        for _, cl, _ in members:
            cl.loop_stop()
            cl.disconnect()
        try:
            next(factory)
        except StopIteration:
            pass
        nats.stop()


