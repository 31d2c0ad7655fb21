"""Black-box tests of Polyport's SOAP face (`/soap` on the HTTP port) with the
third-party `zeep` client, raw envelopes over httpx (parsed back with lxml), and the
GraphQL suite's gql helpers for the cross-protocol test. Server fixtures are the HTTP
suite's (crates/http/tests/py/polyport_server.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

for suite in ("http", "graphql"):
    path = Path(__file__).resolve().parents[3] / suite / "tests" / "py"
    if str(path) not in sys.path:
        sys.path.append(str(path))

from polyport_server import blog, servers, spawn, start_server  # noqa: E402, F401  (fixtures)


@pytest.fixture(scope="module")
def shared_blog(tmp_path_factory):
    """One `--demo blog` server for a module whose tests only read or are refused."""
    server = start_server(tmp_path_factory.mktemp("polyport-data"), "--demo", "blog")
    yield server
    code = server.stop()
    assert code == 0, f"polyport on {server.http} exited with {code!r} after SIGTERM; log:\n{server.log()[-4000:]}"


@pytest.fixture
def http(shared_blog):
    with httpx.Client(base_url=shared_blog.url, timeout=10.0) as c:
        yield c
