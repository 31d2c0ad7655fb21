"""Black-box tests of Polyport's gRPC face, driven with the third-party Python grpcio stack
(grpcio, grpcio-tools, grpcio-reflection, grpcio-health-checking).

The server machinery is the HTTP suite's, shared rather than copied: this puts
crates/http/tests/py on `sys.path` and re-exports the fixtures of its polyport_server.py
(`spawn`, `blog`: a fresh `polyport serve --demo blog` with users/123 john_doe and posts
1 and 2; `start_server` already passes `--grpc 127.0.0.1:0`). `shared_blog` is one such
server per module; `channel` an insecure channel to its gRPC port (from listeners.json).

Stubs are generated once per session with `python -m grpc_tools.protoc` from
 (a) the shipped protos in proto/polyport/v1, and
 (b) what `polyport proto --server URL` prints for a running demo server, written to a
     temporary dir as polyport/collections.proto,
plus the googleapis subset in protos/google/rpc (to decode `grpc-status-details-bin`).
`pb` exposes the generated modules.

Build the binary first (`cargo build -p polyport`, or set `POLYPORT_BIN`), set up the
clients with `scripts/setup-clients`, then run `.venv/bin/pytest -q crates/grpc/tests/py`.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import grpc
import httpx
import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[3]
HTTP_TESTS = REPO_ROOT / "crates" / "http" / "tests" / "py"
SHIPPED_PROTOS = REPO_ROOT / "proto"
RPC_PROTOS = HERE / "protos"

if str(HTTP_TESTS) not in sys.path:
    sys.path.append(str(HTTP_TESTS))
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))

from grpc_helpers import TIMEOUT, grpc_target  # noqa: E402
from polyport_server import blog, client, polyport_bin, spawn, start_server  # noqa: E402, F401  (fixtures)


@pytest.fixture(scope="session")
def polyport_exe() -> str:
    """The `polyport` binary under test (POLYPORT_BIN or target/debug/polyport)."""
    return str(polyport_bin())


def _stop(server) -> None:
    code = server.stop()
    assert code == 0, f"polyport on {server.http} exited with {code!r} after SIGTERM; log:\n{server.log()[-4000:]}"


def _protoc(out: Path, includes: list[Path], files: list[str]) -> None:
    cmd = [sys.executable, "-m", "grpc_tools.protoc",
           *(f"-I{p}" for p in includes),
           f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *files]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"


@pytest.fixture(scope="session")
def collections_proto(tmp_path_factory) -> str:
    """What `polyport proto --server URL` prints for a fresh `--demo blog` server."""
    server = start_server(tmp_path_factory.mktemp("polyport-proto"), "--demo", "blog")
    try:
        r = subprocess.run([str(polyport_bin()), "proto", "--server", server.url],
                           capture_output=True, text=True, timeout=30)
    finally:
        _stop(server)
    assert r.returncode == 0, f"polyport proto failed ({r.returncode}):\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="session")
def pb(tmp_path_factory, collections_proto):
    """The generated modules: `records`, `topics` (polyport.v1), `collections`
    (polyport.collections, from `polyport proto`), each with its `_grpc` twin, plus
    `status` and `error_details` (google.rpc)."""
    src = tmp_path_factory.mktemp("proto-src")
    (src / "polyport").mkdir()
    (src / "polyport" / "collections.proto").write_text(collections_proto)
    out = tmp_path_factory.mktemp("proto-gen")
    _protoc(out, [SHIPPED_PROTOS], ["polyport/v1/records.proto", "polyport/v1/topics.proto"])
    _protoc(out, [src], ["polyport/collections.proto"])
    _protoc(out, [RPC_PROTOS], ["google/rpc/status.proto", "google/rpc/error_details.proto"])
    # `google` is already a package (protobuf's); graft our google/rpc onto it.
    import google

    google.__path__.append(str(out / "google"))
    sys.path.insert(0, str(out))
    mods = {
        "records": "polyport.v1.records_pb2",
        "records_grpc": "polyport.v1.records_pb2_grpc",
        "topics": "polyport.v1.topics_pb2",
        "topics_grpc": "polyport.v1.topics_pb2_grpc",
        "collections": "polyport.collections_pb2",
        "collections_grpc": "polyport.collections_pb2_grpc",
        "status": "google.rpc.status_pb2",
        "error_details": "google.rpc.error_details_pb2",
    }
    return SimpleNamespace(**{k: importlib.import_module(v) for k, v in mods.items()})


@pytest.fixture(scope="module")
def shared_blog(tmp_path_factory):
    """One `--demo blog` server for a whole module (tests use their own collections or ids
    so they do not disturb each other); stopped with SIGTERM, must exit 0."""
    server = start_server(tmp_path_factory.mktemp("polyport-data"), "--demo", "blog")
    yield server
    _stop(server)


@pytest.fixture(scope="module")
def channel(shared_blog):
    """An insecure (h2c) channel to the shared server's gRPC port, ready."""
    ch = grpc.insecure_channel(grpc_target(shared_blog))
    grpc.channel_ready_future(ch).result(timeout=TIMEOUT)
    yield ch
    ch.close()


@pytest.fixture
def http(shared_blog):
    """An httpx client on the shared server's HTTP port."""
    with httpx.Client(base_url=shared_blog.url, timeout=TIMEOUT) as c:
        yield c


@pytest.fixture
def records(pb, channel):
    return pb.records_grpc.RecordsStub(channel)


@pytest.fixture
def topics(pb, channel):
    return pb.topics_grpc.TopicsStub(channel)


@pytest.fixture
def users(pb, channel):
    return pb.collections_grpc.UserServiceStub(channel)


@pytest.fixture
def posts(pb, channel):
    return pb.collections_grpc.PostServiceStub(channel)
