"""Black-box tests of TLS on every listener, each through a client we did not write:
httpx and websockets (HTTPS, h2 by ALPN, WSS), grpcio and grpcurl (gRPC), paho (MQTTS),
pika (AMQPS), stomp.py (STOMP over TLS), against a CA each test makes (pki.py). Server
fixtures are the HTTP suite's."""

from __future__ import annotations

import sys
from pathlib import Path

for suite in ("http", "identity"):
    path = Path(__file__).resolve().parents[3] / suite / "tests" / "py"
    if str(path) not in sys.path:
        sys.path.append(str(path))

from polyport_server import servers  # noqa: E402, F401  (fixture)
