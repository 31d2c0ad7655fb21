"""Black-box tests of one identity on every door: users, API keys, JWTs and sign-in
tokens, checked alike by REST, /ws, GraphQL (HTTP and WebSocket), gRPC, MQTT, AMQP,
STOMP and SOAP, each through a client we did not write, and each refusal in that
protocol's own words. Server fixtures are the HTTP suite's."""

from __future__ import annotations

import sys
from pathlib import Path

for suite in ("http", "graphql", "mqtt"):
    path = Path(__file__).resolve().parents[3] / suite / "tests" / "py"
    if str(path) not in sys.path:
        sys.path.append(str(path))

from polyport_server import servers  # noqa: E402, F401  (fixture)
