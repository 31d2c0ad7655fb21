"""Runs `polyport serve` for the black-box tests: `start_server()` and the `Server` it
returns, and the pytest fixtures built on them (`spawn`, `blog`, `base_url`, `client`),
which the conftest.py of both Python suites (crates/http/tests/py and
crates/graphql/tests/py) re-export. Kept out of conftest.py so that test modules can
import from it by a name of its own: every conftest.py is imported as `conftest`, which
is ambiguous once both suites run in one pytest.

Each test gets a fresh `polyport serve` process (port 0, its own temporary data dir) and
talks to it over real sockets. The binary is `target/debug/polyport` unless the
`POLYPORT_BIN` environment variable names another one; build it first with
`cargo build -p polyport`.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[4]
STARTUP_TIMEOUT = 15.0
SHUTDOWN_TIMEOUT = 10.0


def polyport_bin() -> Path:
    return Path(os.environ.get("POLYPORT_BIN") or REPO_ROOT / "target" / "debug" / "polyport")


@dataclass
class Server:
    """A running `polyport serve` process."""

    proc: subprocess.Popen
    data_dir: Path
    log_path: Path
    http: str  # "127.0.0.1:PORT"
    stopped: bool = field(default=False)
    # With POLYPORT_TEST_STORE=cluster2: a second node on the same store and bus, which
    # serves every face but HTTP (so a REST write and an MQTT read cross nodes).
    peer: Server | None = field(default=None)

    @property
    def url(self) -> str:
        return f"http://{self.http}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.http}/ws"

    def port(self, name: str) -> int:
        """The port a face (`mqtt`, `amqp`, `stomp`, `grpc`, …) listens on (the peer
        node's, for every face but HTTP, in a two-node run)."""
        if self.peer is not None and name not in ("http", "https"):
            return self.peer.port(name)
        listeners = json.loads((self.data_dir / "listeners.json").read_text())
        return int(listeners[name].rsplit(":", 1)[1])

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit code (None if it had to be killed). In a
        two-node run, the deployment's NATS bucket and log stream go with the nodes."""
        if self.peer is not None:
            self.peer.stop()
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        bucket = store_env(self.data_dir).get("POLYPORT_BUCKET") if self.peer is not None else None
        if bucket:
            delete_stream(f"KV_{bucket}")
            delete_stream(f"polyport-{bucket}-log")
        return code


def delete_stream(stream: str, nats: str | None = None) -> str:
    """Deletes a JetStream stream with JetStream's API over the plain NATS protocol (no
    client library needed for one request); returns the server's answer."""
    url = nats or os.environ.get("POLYPORT_TEST_NATS", "nats://127.0.0.1:4222")
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        f = s.makefile("rwb")
        f.readline()  # INFO
        inbox = f"_INBOX.{uuid.uuid4().hex}"
        f.write(f"CONNECT {{\"verbose\":false}}\r\nSUB {inbox} 1\r\n"
                f"PUB $JS.API.STREAM.DELETE.{stream} {inbox} 0\r\n\r\nPING\r\n".encode())
        f.flush()
        while True:
            line = f.readline().decode()
            if not line:
                return ""
            if line.startswith("MSG"):
                size = int(line.split()[-1])
                return f.read(size + 2).decode().strip()


def _read_listeners(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not written yet, or caught half-written
    # A server with `[tls] only` has no plain-text HTTP listener, only `https`.
    return doc if isinstance(doc, dict) and (doc.get("http") or doc.get("https")) else None


def wait_for(what, check, timeout: float = 10.0):
    """Polls `check` until it returns something truthy (returned); fails the test after
    `timeout` seconds naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")


def store_env(data_dir: Path) -> dict[str, str]:
    """The environment that puts a server (or an offline CLI command) for `data_dir` on
    the store under test: with `POLYPORT_TEST_STORE=postgres`, the cluster engine, each
    data dir in a schema of its own (the same on a restart); with `cluster2`, that and a
    NATS bus with a deployment of its own, and a second node (see `Server.peer`); else
    nothing (SQLite)."""
    mode = os.environ.get("POLYPORT_TEST_STORE")
    if mode not in ("postgres", "cluster2"):
        return {}
    tag = hashlib.sha1(str(data_dir).encode()).hexdigest()[:20]
    env = {
        "POLYPORT_STORE": os.environ.get("POLYPORT_STORE", "postgres://postgres@127.0.0.1/test"),
        "POLYPORT_STORE_SCHEMA": "t_" + tag,
    }
    if not _SCHEMAS:
        atexit.register(_drop_schemas)
    _SCHEMAS.add((env["POLYPORT_STORE"], env["POLYPORT_STORE_SCHEMA"]))
    if mode == "cluster2":
        env["POLYPORT_BUS"] = os.environ.get("POLYPORT_TEST_NATS", "nats://127.0.0.1:4222")
        env["POLYPORT_BUCKET"] = "t-" + tag
    return env


# Every (database, schema) a server of this run was put in: a schema outlives its
# server's stop (a restart finds it again), so they go when the test run ends.
_SCHEMAS: set[tuple[str, str]] = set()


def _drop_schemas() -> None:
    for db in {db for db, _ in _SCHEMAS}:
        drops = "".join(f'DROP SCHEMA IF EXISTS "{s}" CASCADE;' for d, s in _SCHEMAS if d == db)
        try:
            subprocess.run(["psql", db, "-qc", drops], capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            pass  # hygiene only: a leftover schema harms no later run (each has its own)


# Arguments the peer node does not take: the seed is the first node's to make, and the
# listen addresses are the first node's (the peer listens on free ports).
_FIRST_NODE_ONLY = {"--demo", "--http", "--grpc", "--mqtt", "--amqp", "--stomp"}


def _peer_args(extra: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for a in extra:
        if skip:
            skip = False
        elif a in _FIRST_NODE_ONLY:
            skip = True
        elif a.split("=", 1)[0] not in _FIRST_NODE_ONLY:
            out.append(a)
    return out


def start_server(data_dir: Path, *extra: str, http: str = "127.0.0.1:0") -> Server:
    """Starts `polyport serve` on `data_dir` and waits for its listeners.json. `http` is
    the listen address: port 0 (the default) picks a free port; a fixed one lets a test
    restart the server on the same address. The log is appended to, so a restart on the
    same data dir keeps the earlier runs' lines."""
    exe = polyport_bin()
    if not exe.is_file():
        pytest.fail(f"{exe} not found: run `cargo build -p polyport` or set POLYPORT_BIN", pytrace=False)
    data_dir.mkdir(parents=True, exist_ok=True)
    listeners = data_dir / "listeners.json"
    listeners.unlink(missing_ok=True)
    log_path = data_dir / "server.log"
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "info")
    # Tests never let webhook deliveries leave this machine.
    env.setdefault("POLYPORT_WEBHOOKS_ALLOW_PUBLIC", "false")
    env.setdefault("POLYPORT_WEBHOOKS_ALLOW_NETWORKS", "127.0.0.0/8")
    for k, v in store_env(data_dir).items():
        env.setdefault(k, v)  # a test that names its store keeps it
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(exe), "serve", "--data-dir", str(data_dir), "--http", http,
             *([] if "--grpc" in extra else ["--grpc", "127.0.0.1:0"]),
             *([] if "--mqtt" in extra else ["--mqtt", "127.0.0.1:0"]),
             *([] if "--amqp" in extra else ["--amqp", "127.0.0.1:0"]),
             *([] if "--stomp" in extra else ["--stomp", "127.0.0.1:0"]), *extra],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            cwd=data_dir,
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        doc = _read_listeners(listeners)
        if doc:
            server = Server(proc=proc, data_dir=data_dir, log_path=log_path, http=doc.get("http") or doc["https"])
            if os.environ.get("POLYPORT_TEST_STORE") == "cluster2" and not os.environ.get("POLYPORT_TEST_PEER_OF"):
                os.environ["POLYPORT_TEST_PEER_OF"] = str(data_dir)
                saved = {k: os.environ.get(k) for k in store_env(data_dir)}
                os.environ.update(store_env(data_dir))  # the first node's store and bus
                try:
                    server.peer = start_server(data_dir / "peer", *_peer_args(extra))
                finally:
                    del os.environ["POLYPORT_TEST_PEER_OF"]
                    for k, v in saved.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
            return server
        if proc.poll() is not None:
            pytest.fail(
                f"polyport exited with {proc.returncode} before writing {listeners}:\n{log_path.read_text(errors='replace')}",
                pytrace=False,
            )
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    pytest.fail(f"no {listeners} after {STARTUP_TIMEOUT}s:\n{log_path.read_text(errors='replace')}", pytrace=False)


class Servers:
    """Servers for one test, for suites that need more than `spawn`: `start(config=TOML,
    env={...}, data_dir=…)` runs `polyport serve` (on a fresh data dir unless given),
    `kill9(s)` SIGKILLs one, `restart(s)` starts it again on the same data dir with the
    same arguments. `stop_all()` stops every server still running with SIGTERM and returns
    a failure for each that did not exit 0 (a killed one is left alone)."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self.running: list[Server] = []
        self._how: dict[int, tuple[tuple[str, ...], dict[str, str] | None]] = {}

    def start(self, config: str | None = None, *extra: str, env: dict[str, str] | None = None,
              data_dir: Path | None = None) -> Server:
        data_dir = data_dir or self._tmp.mktemp("polyport-data")
        args = list(extra)
        if config is not None:
            cfg = data_dir.parent / f"{data_dir.name}.toml"
            cfg.write_text(config)
            args += ["--config", str(cfg)]
        return self._start(data_dir, tuple(args), env)

    def _start(self, data_dir: Path, args: tuple[str, ...], env: dict[str, str] | None) -> Server:
        saved = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})  # start_server copies os.environ into the child
        try:
            s = start_server(data_dir, *args)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self._how[id(s)] = (args, env)
        self.running.append(s)
        return s

    def kill9(self, s: Server) -> None:
        if s.peer is not None:
            s.peer.proc.send_signal(signal.SIGKILL)
            s.peer.proc.wait(timeout=SHUTDOWN_TIMEOUT)
            s.peer.stopped = True
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(timeout=SHUTDOWN_TIMEOUT)
        s.stopped = True
        self.running.remove(s)

    def restart(self, s: Server) -> Server:
        assert s.stopped, "restart() is for a server that was stopped or killed"
        args, env = self._how[id(s)]
        return self._start(s.data_dir, args, env)

    def stop_all(self) -> list[str]:
        failures = []
        for s in self.running:
            code = s.stop()
            if code != 0:
                failures.append(f"polyport on {s.http} exited with {code!r} after SIGTERM; log:\n{s.log()[-4000:]}")
        return failures


@pytest.fixture
def servers(tmp_path_factory):
    """A `Servers` for the test; every server still running at the end must stop with exit
    code 0 on SIGTERM."""
    sv = Servers(tmp_path_factory)
    yield sv
    failures = sv.stop_all()
    assert not failures, "\n\n".join(failures)


@pytest.fixture
def spawn(tmp_path_factory):
    """Starts servers on demand (`spawn("--demo", "blog")`); stops each with SIGTERM at the
    end of the test and asserts that it exits 0 within 10 s."""
    servers: list[Server] = []

    def _spawn(*extra: str) -> Server:
        s = start_server(tmp_path_factory.mktemp("polyport-data"), *extra)
        servers.append(s)
        return s

    yield _spawn
    failures = []
    for s in servers:
        code = s.stop()
        if code != 0:
            failures.append(
                f"polyport on {s.http} exited with {code!r} after SIGTERM (want 0 within {SHUTDOWN_TIMEOUT}s); log:\n{s.log()[-4000:]}"
            )
    assert not failures, "\n\n".join(failures)


@pytest.fixture(scope="module")
def shared_blog(tmp_path_factory):
    """One `--demo blog` server for a whole module, for tests that only read (or only
    send bad input) and so cannot disturb each other; stopped like `spawn`'s servers."""
    server = start_server(tmp_path_factory.mktemp("polyport-data"), "--demo", "blog")
    yield server
    code = server.stop()
    assert code == 0, f"polyport on {server.http} exited with {code!r} after SIGTERM; log:\n{server.log()[-4000:]}"


@pytest.fixture
def blog(spawn) -> Server:
    """A fresh server seeded with `--demo blog` (users/123 john_doe with posts 1 and 2)."""
    return spawn("--demo", "blog")


@pytest.fixture
def base_url(blog) -> str:
    """The base URL (`http://127.0.0.1:PORT`) of a fresh `--demo blog` server."""
    return blog.url


@pytest.fixture
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=10.0) as c:
        yield c

