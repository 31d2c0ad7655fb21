"""Black-box tests of Polyport's GraphQL face (`/graphql` on the HTTP port), driven with
the third-party `gql` client (HTTP through httpx, subscriptions through websockets).

The server machinery is the HTTP suite's, shared rather than copied: this puts
crates/http/tests/py on `sys.path` and re-exports the fixtures of its polyport_server.py
— `spawn`, `blog` (a fresh `polyport serve --demo blog`: users/123 john_doe with posts 1
and 2), `base_url`, `client` (an httpx.Client on it) — so its `realtime_clients` (SSE
reader) is importable too. `shared_blog` and `shared_client` are one server per module,
for tests that cannot disturb each other. Build the binary first (`cargo build -p
polyport`, or set `POLYPORT_BIN`), set up the clients with `scripts/setup-clients`, then
run `.venv/bin/pytest -q crates/graphql/tests/py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

HTTP_TESTS = Path(__file__).resolve().parents[3] / "http" / "tests" / "py"
if str(HTTP_TESTS) not in sys.path:
    sys.path.append(str(HTTP_TESTS))

from polyport_server import base_url, blog, client, servers, shared_blog, spawn, start_server  # noqa: E402, F401  (fixtures)


@pytest.fixture
def shared_client(shared_blog):
    with httpx.Client(base_url=shared_blog.url, timeout=10.0) as c:
        yield c
