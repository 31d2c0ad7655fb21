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

from polyport_server import Server, base_url, blog, client, spawn, start_server  # noqa: E402, F401  (fixtures)
from mqtt_clients import Servers  # noqa: E402


@pytest.fixture
def mqtt_port(blog) -> int:
    """The MQTT port of a `--demo blog` server."""
    listeners = json.loads((blog.data_dir / "listeners.json").read_text())
    return int(listeners["mqtt"].rsplit(":", 1)[1])


@pytest.fixture
def servers(tmp_path_factory):
    """Servers started with `servers.start(config)`, which a test may SIGKILL and restart;
    every one still running at the end must stop with exit code 0 on SIGTERM."""
    sv = Servers(tmp_path_factory)
    yield sv
    failures = sv.stop_all()
    assert not failures, "\n\n".join(failures)


@pytest.fixture
def server(servers) -> Server:
    return servers.start()
