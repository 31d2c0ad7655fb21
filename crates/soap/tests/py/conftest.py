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

from polyport_server import blog, servers, shared_blog, spawn  # noqa: E402, F401  (fixtures)


@pytest.fixture
def http(shared_blog):
    with httpx.Client(base_url=shared_blog.url, timeout=10.0) as c:
        yield c
