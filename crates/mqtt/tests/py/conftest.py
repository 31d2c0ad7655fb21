"""Black-box tests of Polyport's MQTT broker with the third-party paho-mqtt client (1.6,
whose `mqtt.Client()` API seed 000's snippets use unchanged). Server fixtures are the HTTP
suite's (crates/http/tests/py/polyport_server.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HTTP_TESTS = Path(__file__).resolve().parents[3] / "http" / "tests" / "py"
if str(HTTP_TESTS) not in sys.path:
    sys.path.append(str(HTTP_TESTS))

from polyport_server import base_url, blog, client, spawn, start_server  # noqa: E402, F401  (fixtures)


@pytest.fixture
def mqtt_port(blog) -> int:
    """The MQTT port of a `--demo blog` server."""
    listeners = json.loads((blog.data_dir / "listeners.json").read_text())
    return int(listeners["mqtt"].rsplit(":", 1)[1])

