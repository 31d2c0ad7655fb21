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

import sys
from pathlib import Path

import pytest

HTTP_TESTS = Path(__file__).resolve().parents[3] / "http" / "tests" / "py"
if str(HTTP_TESTS) not in sys.path:
    sys.path.append(str(HTTP_TESTS))

from polyport_server import Server, servers  # noqa: E402, F401  (fixture)
from webhook_receivers import FIGURES, Api, BlackHole, Receiver  # noqa: E402


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("webhook figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


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
