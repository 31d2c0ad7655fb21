"""Black-box tests of Polyport's STOMP broker with third-party clients (stomp.py; pika
and paho for the other sides). Server fixtures are the HTTP suite's
(crates/http/tests/py/polyport_server.py)."""

from __future__ import annotations

import sys
from pathlib import Path

HTTP_TESTS = Path(__file__).resolve().parents[3] / "http" / "tests" / "py"
if str(HTTP_TESTS) not in sys.path:
    sys.path.append(str(HTTP_TESTS))

# The webhook suite's receiver and API helpers, for the cross-protocol test.
WEBHOOK_TESTS = Path(__file__).resolve().parents[3] / "webhooks" / "tests" / "py"
if str(WEBHOOK_TESTS) not in sys.path:
    sys.path.append(str(WEBHOOK_TESTS))
