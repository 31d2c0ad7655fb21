"""schemathesis (`st run`) against the live /openapi.json of a `--demo blog` server: no
server errors, and every response conforms to the document (status code, content type,
headers, body schema).

Two runs, each on its own fresh server. Collection admin (create/patch/delete a
collection) changes the very schemas the record operations are checked against, and
schemathesis loads the document once, so record operations and collection admin are
fuzzed separately. The never-ending streams (/api/events, /api/stream) and the
long-poll (/api/poll, which waits up to two minutes by design) are left out; the
realtime tests cover them.

`POLYPORT_ST_SEED` picks the seed (default fixed, for reproducible CI; `random` for a new
one each run) and `POLYPORT_ST_EXAMPLES` the examples per operation (default 30).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from polyport_server import servers  # noqa: F401  (fixture)

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)
STREAMS = ["/api/events", "/api/stream", "/api/poll"]
COLLECTION_ADMIN = r"^/api/collections(/\{name\})?$"
# A user or key created on an open server makes it refuse anonymous callers from then on,
# so the identity routes get a run (and a server) of their own.
IDENTITY_ADMIN = r"^/api/auth/(users|keys)"


def st_exe() -> Path:
    exe = Path(sys.executable).parent / "st"
    if not exe.exists():
        pytest.fail(f"{exe} not found: run scripts/setup-clients", pytrace=False)
    return exe


def run_st(server, workdir: Path, *selection: str) -> None:
    args = [
        str(st_exe()),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        os.environ.get("POLYPORT_ST_EXAMPLES", "30"),
        "--request-timeout",
        "10",
        "--output-truncate",
        "true",
        *[a for p in STREAMS for a in ("--exclude-path", p)],
        *selection,
    ]
    seed = os.environ.get("POLYPORT_ST_SEED", "20261123")
    if seed != "random":
        args += ["--seed", seed]
    env = dict(os.environ, NO_COLOR="1", COLUMNS="120")
    try:
        proc = subprocess.run(
            args, cwd=workdir, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=150
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"st run did not finish in 150 s:\n{(e.stdout or b'')[-6000:]!r}", pytrace=False)
    out = proc.stdout + proc.stderr
    (workdir / "st-output.txt").write_text(out)
    assert "panicked" not in server.log(), server.log()[-6000:]
    assert proc.returncode == 0, f"st run exited {proc.returncode}:\n{out[-12000:]}"
    assert "Tested:" in out, out[-4000:]


def test_records_topics_and_ops_conform_to_openapi(blog, tmp_path):
    run_st(blog, tmp_path, "--exclude-path-regex", f"{COLLECTION_ADMIN}|{IDENTITY_ADMIN}")


def test_collection_admin_conforms_to_openapi(blog, tmp_path):
    run_st(blog, tmp_path, "--include-path-regex", COLLECTION_ADMIN)


def test_identity_admin_conforms_to_openapi(servers, tmp_path):
    s = servers.start(None, "--demo", "blog", env={"POLYPORT_ADMIN_PASSWORD": "st-admin-password"})
    run_st(s, tmp_path, "--include-path-regex", IDENTITY_ADMIN, "--auth", "admin:st-admin-password")


def test_openapi_document_describes_the_live_collections(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    assert schemas["Users"]["properties"]["username"]["anyOf"][0] == {"type": "string"}
    assert schemas["PostsCreate"]["required"] == ["title", "author"]
    for path in ("/api/collections/posts/records", "/api/collections/users/records/{id}", "/api/events", "/api/stream", "/api/poll", "/api/topics/{topic}"):
        assert path in doc["paths"], path

    # A collection created at runtime appears in the document at once.
    r = client.post("/api/collections", json={"name": "blog_tags", "fields": [{"name": "label", "type": "text", "required": True}]})
    assert r.status_code == 201, r.text
    doc = client.get("/openapi.json").json()
    assert "/api/collections/blog_tags/records" in doc["paths"]
    assert doc["components"]["schemas"]["BlogTagsCreate"]["required"] == ["label"]
