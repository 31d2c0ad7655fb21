"""Black-box tests of cluster membership: several `polyport serve --bus nats://…`
processes on free ports against the NATS JetStream server on this machine
(127.0.0.1:4222 unless POLYPORT_TEST_NATS names another).

The server machinery is the HTTP suite's (crates/http/tests/py/polyport_server.py, put on
`sys.path` here as the GraphQL suite does). Build the binary first (`cargo build -p
polyport`, or set `POLYPORT_BIN`), set up the clients with `scripts/setup-clients`, then
run `.venv/bin/pytest -q crates/cluster/tests/py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

HTTP_TESTS = Path(__file__).resolve().parents[3] / "http" / "tests" / "py"
if str(HTTP_TESTS) not in sys.path:
    sys.path.append(str(HTTP_TESTS))

from polyport_server import Server, servers  # noqa: E402, F401  (fixture)


import cluster_nodes  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def nodes(servers):
    """Starts nodes on one fresh schema: `nodes(3)`."""
    yield from cluster_nodes.node_factory(servers)


@pytest.fixture
def nodes_with_bus(servers):
    """Nodes on one fresh schema and one fresh NATS deployment (bucket)."""
    yield from cluster_nodes.nodes_with_bus(servers)
