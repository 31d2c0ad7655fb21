"""NATS for the cluster tests: where it is (POLYPORT_TEST_NATS, else this machine's),
whether it answers, and deleting a test's KV bucket with JetStream's API over the plain
NATS protocol (no client library needed for one request)."""

from __future__ import annotations

import os
import socket
import uuid

NATS = os.environ.get("POLYPORT_TEST_NATS", "nats://127.0.0.1:4222")


def nats_reachable() -> bool:
    host, port = NATS.removeprefix("nats://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


def delete_bucket(bucket: str) -> str:
    """Deletes a test's bucket with JetStream's API over the plain NATS protocol (no
    client library needed for one request); returns the server's answer."""
    host, port = NATS.removeprefix("nats://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        f = s.makefile("rwb")
        f.readline()  # INFO
        inbox = f"_INBOX.{uuid.uuid4().hex}"
        f.write(f"CONNECT {{\"verbose\":false}}\r\nSUB {inbox} 1\r\n"
                f"PUB $JS.API.STREAM.DELETE.KV_{bucket} {inbox} 0\r\n\r\nPING\r\n".encode())
        f.flush()
        while True:
            line = f.readline().decode()
            if not line:
                return ""
            if line.startswith("MSG"):
                size = int(line.split()[-1])
                return f.read(size + 2).decode().strip()
