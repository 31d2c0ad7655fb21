"""The typed per-collection services (package `polyport.collections`), through stubs that
grpcio-tools generated from `polyport proto` output — what a user following the README
does: print the proto, run protoc, call `UserService`."""

from __future__ import annotations

import subprocess

import grpc
import pytest

from grpc_helpers import TIMEOUT


def test_polyport_proto_prints_typed_services(collections_proto):
    text = collections_proto
    assert "package polyport.collections;" in text
    for line in (
        "service UserService {",
        "rpc CreateUser(CreateUserRequest) returns (User);",
        "rpc GetUser(GetUserRequest) returns (User);",
        "rpc ListUsers(ListUsersRequest) returns (ListUsersResponse);",
        "rpc WatchUsers(WatchUsersRequest) returns (stream UserChange);",
        "service PostService {",
        "rpc WatchPosts(WatchPostsRequest) returns (stream PostChange);",
    ):
        assert line in text, line


def test_polyport_proto_all_includes_shipped_protos(shared_blog, polyport_exe):
    r = subprocess.run([polyport_exe, "proto", "--all", "--server", shared_blog.url],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    for marker in ("service Records {", "service Topics {", "service UserService {"):
        assert marker in r.stdout, marker


def test_seed_snippet_create_then_get_user(pb, users):
    # Seed 002's snippet, as written.
    created = users.CreateUser(pb.collections.CreateUserRequest(name="John Doe", email="john.doe@example.com"),
                               timeout=TIMEOUT)
    assert isinstance(created, pb.collections.User)
    assert created.id
    assert created.name == "John Doe"
    assert created.email == "john.doe@example.com"
    assert created.version == 1
    assert created.created_at.seconds > 0

    got = users.GetUser(pb.collections.GetUserRequest(id=created.id), timeout=TIMEOUT)
    assert got == created


def test_demo_user_123_is_john_doe(pb, users):
    user = users.GetUser(pb.collections.GetUserRequest(id="123"), timeout=TIMEOUT)
    assert user.id == "123"
    assert user.username == "john_doe"
    assert user.name == "John Doe"
    assert user.email == "john.doe@example.com"


def test_typed_post_fields_and_list(pb, posts):
    post = posts.GetPost(pb.collections.GetPostRequest(id="1"), timeout=TIMEOUT)
    assert post.title == "Hello, Polyport"
    assert post.author == "123"
    assert list(post.tags) == ["intro"]

    page = posts.ListPosts(pb.collections.ListPostsRequest(filter='author = "123"', sort="id", count=True),
                           timeout=TIMEOUT)
    ids = [p.id for p in page.records]
    assert ids[:2] == ["1", "2"]
    assert page.HasField("total") and page.total == len(ids)


def test_typed_update_changes_only_set_fields_and_delete(pb, users):
    c = pb.collections
    u = users.CreateUser(c.CreateUserRequest(username="typed_upd", name="Before", email="b@example.com"),
                         timeout=TIMEOUT)
    upd = users.UpdateUser(c.UpdateUserRequest(id=u.id, name="After", expected_version=1), timeout=TIMEOUT)
    assert (upd.name, upd.email, upd.username, upd.version) == ("After", "b@example.com", "typed_upd", 2)

    with pytest.raises(grpc.RpcError) as e:
        users.UpdateUser(c.UpdateUserRequest(id=u.id, name="Stale", expected_version=1), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    gone = users.DeleteUser(c.DeleteUserRequest(id=u.id), timeout=TIMEOUT)
    assert gone.id == u.id and gone.name == "After"
    with pytest.raises(grpc.RpcError) as e:
        users.GetUser(c.GetUserRequest(id=u.id), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_typed_create_duplicates_are_already_exists(pb, users):
    c = pb.collections
    with pytest.raises(grpc.RpcError) as e:
        users.CreateUser(c.CreateUserRequest(id="123", name="Again"), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # `username` is unique in the demo schema.
    with pytest.raises(grpc.RpcError) as e:
        users.CreateUser(c.CreateUserRequest(username="john_doe"), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "username" in e.value.details()
