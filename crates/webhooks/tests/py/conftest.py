"""Black-box tests of Polyport's webhooks: outbound deliveries (crates/webhooks) received by
real HTTP receivers on 127.0.0.1, and inbound hooks (`POST /hooks/{source}`).

The server machinery is the HTTP suite's (crates/http/tests/py/polyport_server.py, put on
`sys.path` here as the GraphQL suite does): every server runs with
POLYPORT_WEBHOOKS_ALLOW_PUBLIC=false and POLYPORT_WEBHOOKS_ALLOW_NETWORKS=127.0.0.0/8, so
no delivery can leave the loopback range. Receivers and the REST helper live in
webhook_receivers.py. Build the binary first (`cargo build -p polyport`, or set
`POLYPORT_BIN`), set up the clients with `scripts/setup-clients`, then run
`.venv/bin/pytest -q crates/webhooks/tests/py`.

Figures measured along the way (the isolation latencies, the crash test's counts) are
printed in the terminal summary.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

HTTP_TESTS = Path(__file__).resolve().parents[3] / "http" / "tests" / "py"
if str(HTTP_TESTS) not in sys.path:
    sys.path.append(str(HTTP_TESTS))

from polyport_server import Server, start_server  # noqa: E402
from webhook_receivers import FIGURES, Api, BlackHole, Receiver  # noqa: E402


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("webhook figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


class Servers:
    """Starts `polyport serve` processes for one test: `start(config=TOML, env={...})`.
    At the end every server still running is stopped with SIGTERM and must exit 0 within
    10 s; one the test killed with `kill9` is left alone."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self.started: list[Server] = []
        self.killed: set[int] = set()

    def start(self, config: str | None = None, env: dict[str, str] | None = None, data_dir: Path | None = None, *extra: str) -> Server:
        data_dir = data_dir or self._tmp.mktemp("polyport-data")
        args = list(extra)
        if config is not None:
            cfg = data_dir.parent / f"{data_dir.name}.toml"
            cfg.write_text(config)
            args += ["--config", str(cfg)]
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
        self.started.append(s)
        return s

    def kill9(self, s: Server):
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(timeout=10)
        s.stopped = True
        self.killed.add(id(s))

    def stop_all(self) -> list[str]:
        failures = []
        for s in self.started:
            if id(s) in self.killed:
                continue
            code = s.stop()
            if code != 0:
                failures.append(f"polyport on {s.http} exited with {code!r} after SIGTERM; log:\n{s.log()[-4000:]}")
        return failures


@pytest.fixture
def servers(tmp_path_factory):
    sv = Servers(tmp_path_factory)
    yield sv
    failures = sv.stop_all()
    assert not failures, "\n\n".join(failures)


@pytest.fixture
def server(servers) -> Server:
    """A fresh server whose deliveries may reach 127.0.0.0/8 only."""
    return servers.start()


@pytest.fixture
def api(server):
    a = Api(server.url)
    yield a
    a.close()


@pytest.fixture
def receivers():
    """Makes receivers (`receivers(secrets={...}, reply=...)`); closes them at the end."""
    made: list = []

    def _make(**kw) -> Receiver:
        r = Receiver(**kw)
        made.append(r)
        return r

    yield _make
    for r in made:
        r.close()


@pytest.fixture
def blackholes():
    made: list[BlackHole] = []

    def _make() -> BlackHole:
        b = BlackHole()
        made.append(b)
        return b

    yield _make
    for b in made:
        b.close()
