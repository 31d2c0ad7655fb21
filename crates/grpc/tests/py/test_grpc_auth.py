"""`[auth]` on gRPC: with `anonymous = false` a call without `authorization` metadata,
or with a wrong password, fails UNAUTHENTICATED and writes nothing; `Basic` credentials of
a configured user are served; `grpc.health.v1` answers probes without credentials."""

from __future__ import annotations

import base64

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_helpers import TIMEOUT, grpc_target
from polyport_server import start_server


def basic(user: str, password: str) -> tuple:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return (("authorization", f"Basic {token}"),)


def test_calls_need_credentials(pb, tmp_path):
    s = start_server(tmp_path / "data", "--demo", "blog", "--config", str(write_config(tmp_path)))
    try:
        with grpc.insecure_channel(grpc_target(s)) as ch:
            users = pb.collections_grpc.UserServiceStub(ch)
            posts = pb.collections_grpc.PostServiceStub(ch)
            for md in ((), basic("alice", "wrong")):
                with pytest.raises(grpc.RpcError) as e:
                    users.GetUser(pb.collections.GetUserRequest(id="123"), metadata=md, timeout=TIMEOUT)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, e.value
                with pytest.raises(grpc.RpcError) as e:
                    posts.CreatePost(pb.collections.CreatePostRequest(title="anon", author="123"), metadata=md, timeout=TIMEOUT)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            alice = basic("alice", "s3cret")
            assert users.GetUser(pb.collections.GetUserRequest(id="123"), metadata=alice, timeout=TIMEOUT).username == "john_doe"
            page = posts.ListPosts(pb.collections.ListPostsRequest(), metadata=alice, timeout=TIMEOUT)
            assert "anon" not in [p.title for p in page.records]
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert s.stop() == 0, s.log()[-4000:]


def write_config(tmp_path):
    cfg = tmp_path / "polyport.toml"
    cfg.write_text('[auth]\nusers = { alice = "s3cret" }\nanonymous = false\n')
    return cfg
