"""NATS for the cluster tests: where it is (POLYPORT_TEST_NATS, else this machine's),
whether it answers, and deleting a test's KV bucket or stream."""

from __future__ import annotations

import os
import socket

from polyport_server import delete_stream as _delete_stream

NATS = os.environ.get("POLYPORT_TEST_NATS", "nats://127.0.0.1:4222")


def nats_reachable() -> bool:
    host, port = NATS.removeprefix("nats://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


def delete_bucket(bucket: str) -> str:
    """Deletes a test's KV bucket; returns the server's answer."""
    return delete_stream(f"KV_{bucket}")


def delete_stream(stream: str) -> str:
    """Deletes a stream on the tests' NATS; returns the server's answer."""
    return _delete_stream(stream, NATS)
