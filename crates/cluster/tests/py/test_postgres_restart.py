"""PostgreSQL restarted under two nodes: a private PostgreSQL server of the test's own
(Debian's initdb and pg_ctl; the machine's shared one is never touched) is stopped and
started again on the same port and data. While it is down, writes through either node
answer 503 at once and `/readyz` says not ready naming PostgreSQL; once it is back, both
nodes are ready again by themselves, writes through both succeed, a persistent MQTT
subscriber on B (reconnecting when B drops it) gets every write acknowledged before and after,
and the log has no gap. Ready means ready: the first reads and writes after it succeed.
Also the case where no write came during the outage: a writer connection left idle is
checked before its next batch."""

from __future__ import annotations

import glob
import os
import queue
import shutil
import socket
import subprocess
import tempfile
import time

import httpx
import paho.mqtt.client as mqtt
import pytest
from cluster_nodes import WAIT, nodes_with_bus
from polyport_server import wait_for


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


class PrivatePostgres:
    """initdb into a temporary directory, then pg_ctl start/stop on a free port (as the
    `postgres` user when the tests run as root: PostgreSQL refuses root)."""

    def __init__(self):
        self.initdb, self.pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            pytest.skip("PostgreSQL's initdb and pg_ctl are not installed")
        self.dir = tempfile.mkdtemp(prefix="polyport-pg-")
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        self._run(self.initdb, "-D", f"{self.dir}/data", "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync")
        self.start()

    def _run(self, *args: str):
        r = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr

    def start(self):
        self._run(self.pg_ctl, "-D", f"{self.dir}/data", "-l", f"{self.dir}/log", "-w", "start", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1")

    def stop(self):
        self._run(self.pg_ctl, "-D", f"{self.dir}/data", "-m", "fast", "-w", "stop")

    def close(self):
        subprocess.run([*self.as_user, self.pg_ctl, "-D", f"{self.dir}/data", "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_pg():
    pg = PrivatePostgres()
    yield pg
    pg.close()


def write(s, i: int) -> httpx.Response:
    return httpx.post(f"{s.url}/api/topics/work/{i}", json={"i": i}, timeout=15)


def test_postgres_restarted_under_two_nodes(servers, private_pg):
    factory = nodes_with_bus(servers, private_pg.url)
    start = next(factory)
    got: queue.Queue = queue.Queue()
    sub = mqtt.Client(client_id="pg-restart-sub", clean_session=False, protocol=mqtt.MQTTv311)
    try:
        a, b = start(2)
        subscribed: queue.Queue = queue.Queue()
        sub.on_message = lambda cl, u, m: got.put(m.topic)
        sub.on_subscribe = lambda *x: subscribed.put(True)
        # B may drop it while the database is away: it comes back within 2 s of trying
        # (paho's default backoff grows to two minutes).
        sub.reconnect_delay_set(min_delay=1, max_delay=2)
        sub.connect("127.0.0.1", b.port("mqtt"))
        sub.loop_start()
        sub.subscribe("work/#", qos=1)
        subscribed.get(timeout=WAIT)
        acked = []
        for i in range(3):
            assert write(a, i).status_code == 202
            acked.append(i)

        private_pg.stop()
        for s in (a, b):
            started = time.monotonic()
            r = write(s, 100)
            assert r.status_code == 503 and r.json()["code"] == "unavailable", r.text
            assert time.monotonic() - started < 5, "a write fails fast, not after a timeout"
            ready = wait_for("/readyz to say not ready",
                             lambda s=s: (r := httpx.get(f"{s.url}/readyz")).status_code == 503 and r.json(),
                             timeout=15)
            assert "PostgreSQL" in ready["reason"], ready

        private_pg.start()
        for s in (a, b):
            wait_for("/readyz to say ready again", lambda s=s: httpx.get(f"{s.url}/readyz").status_code == 200,
                     timeout=20)
        # Ready means ready: the first reads and writes through each node succeed (a
        # pooled connection the restart ended is replaced, not reported).
        for s in (a, b):
            r = httpx.get(f"{s.url}/api/poll", params={"topic": "work/#", "since": 0, "wait": 0}, timeout=15)
            assert r.status_code == 200, r.text
        for i in range(3, 9):
            r = write(a if i % 2 else b, i)
            assert r.status_code == 202, r.text
            acked.append(i)

        # Again, with no write while it is down: the writers' connections idled through
        # the restart, and the first write after it still succeeds.
        private_pg.stop()
        for s in (a, b):
            wait_for("/readyz to say not ready", lambda s=s: httpx.get(f"{s.url}/readyz").status_code == 503,
                     timeout=15)
        time.sleep(1.2)
        private_pg.start()
        for s in (a, b):
            wait_for("/readyz to say ready again", lambda s=s: httpx.get(f"{s.url}/readyz").status_code == 200,
                     timeout=20)
        for i in range(9, 11):
            r = write(a if i % 2 else b, i)
            assert r.status_code == 202, r.text
            acked.append(i)

        seen = []
        deadline = time.time() + 3 * WAIT
        want = sorted(f"work/{i}" for i in acked)
        while sorted(set(seen)) != want and time.time() < deadline:
            try:
                seen.append(got.get(timeout=0.2))
            except queue.Empty:
                pass
        assert sorted(set(seen)) == want, f"every acknowledged write, through B; B's log:\n{b.log()[-4000:]}"
        r = httpx.get(f"{b.url}/api/poll", params={"topic": "work/#", "since": 0, "wait": 0}, timeout=15)
        assert r.status_code == 200, r.text
        events = r.json()["events"]
        seqs = [e["sequence"] for e in events]
        assert [e["subject"] for e in events] == [f"work/{i}" for i in acked], "nothing refused was logged"
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"no gap: {seqs}"
    finally:
        sub.loop_stop()
        sub.disconnect()
        next(factory, None)
