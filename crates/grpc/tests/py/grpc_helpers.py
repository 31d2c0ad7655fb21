"""Helpers shared by the gRPC black-box tests (a module of its own: test modules cannot
import `conftest` reliably when several suites run in one pytest session)."""

from __future__ import annotations

import json

TIMEOUT = 10.0  # seconds, for every gRPC call


def grpc_target(server) -> str:
    """The gRPC listen address ("127.0.0.1:PORT") from the server's listeners.json."""
    doc = json.loads((server.data_dir / "listeners.json").read_text())
    assert doc.get("grpc"), f"listeners.json has no grpc address: {doc}"
    return doc["grpc"]
