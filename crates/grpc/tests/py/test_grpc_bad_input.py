"""Bad input gets gRPC's own answers (status codes, google.rpc details) and leaves the
server healthy. The module's last test checks health after everything before it."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_helpers import TIMEOUT


def raw_unary(channel, method: str):
    """A unary call that sends and returns raw bytes, as a broken client would."""
    return channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


def status_details(pb, err: grpc.RpcError):
    """`grpc-status-details-bin` from the trailers, decoded as google.rpc.Status."""
    raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, f"no grpc-status-details-bin in {err.trailing_metadata()!r}"
    st = pb.status.Status.FromString(raw)
    assert st.code == err.code().value[0]
    return st


def bad_request(pb, st) -> list[tuple[str, str]]:
    out = []
    for any_ in st.details:
        if any_.Is(pb.error_details.BadRequest.DESCRIPTOR):
            br = pb.error_details.BadRequest()
            any_.Unpack(br)
            out += [(v.field, v.description) for v in br.field_violations]
    return out


@pytest.mark.parametrize("method", ["/polyport.v1.Records/Get", "/polyport.collections.UserService/GetUser",
                                    "/polyport.v1.Records/Watch"])
def test_undecodable_bytes_are_invalid_argument(channel, method):
    # 0xff: field 31 with wire type 7, which does not exist.
    call = raw_unary(channel, method) if not method.endswith("Watch") else channel.unary_stream(
        method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as e:
        r = call(b"\xff\xff\xff\xff", timeout=TIMEOUT)
        if method.endswith("Watch"):
            next(r)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()


def test_wrong_wire_type_is_invalid_argument(channel):
    # Field 1 (`collection`, a string) sent as a varint.
    with pytest.raises(grpc.RpcError) as e:
        raw_unary(channel, "/polyport.v1.Records/Get")(b"\x08\x01", timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("method", ["/polyport.v1.Records/Nope", "/polyport.collections.UserService/FlyUser",
                                    "/polyport.collections.NopeService/GetNope", "/no.such.Service/Call"])
def test_unknown_method_is_unimplemented(channel, method):
    with pytest.raises(grpc.RpcError) as e:
        raw_unary(channel, method)(b"", timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_typed_validation_failure_carries_bad_request_details(pb, posts):
    with pytest.raises(grpc.RpcError) as e:
        posts.CreatePost(pb.collections.CreatePostRequest(body="no title, no author"), timeout=TIMEOUT)
    err = e.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "validation_failed" in err.details()
    violations = dict(bad_request(pb, status_details(pb, err)))
    assert {"title", "author"} <= set(violations), violations
    assert all(violations.values()), "each violation has a description"


def test_generic_validation_failure_carries_bad_request_details(pb, records):
    data = struct_pb2.Struct()
    data.update({"title": 42, "author": "123", "surprise": True})
    with pytest.raises(grpc.RpcError) as e:
        records.Create(pb.records.CreateRecordRequest(collection="posts", data=data), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {f for f, _ in bad_request(pb, status_details(pb, e.value))}
    assert "title" in fields, fields


def test_unique_violation_is_already_exists_with_field(pb, users):
    with pytest.raises(grpc.RpcError) as e:
        users.CreateUser(pb.collections.CreateUserRequest(username="john_doe"), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "username" in {f for f, _ in bad_request(pb, status_details(pb, e.value))}


def test_unknown_collection_is_not_found(pb, records):
    r = pb.records
    for call in (
        lambda: records.Get(r.GetRecordRequest(collection="no_such_things", id="1"), timeout=TIMEOUT),
        lambda: records.List(r.ListRecordsRequest(collection="no_such_things"), timeout=TIMEOUT),
        lambda: next(records.Watch(r.WatchRequest(collection="no_such_things"), timeout=TIMEOUT)),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value.details()
        assert "no_such_things" in e.value.details()


def test_unknown_record_is_not_found(pb, users):
    with pytest.raises(grpc.RpcError) as e:
        users.GetUser(pb.collections.GetUserRequest(id="nobody"), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_filter_and_topic_are_invalid_argument(pb, posts, topics):
    with pytest.raises(grpc.RpcError) as e:
        next(posts.WatchPosts(pb.collections.WatchPostsRequest(filter="title ~~ ("), timeout=TIMEOUT))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        topics.Publish(pb.topics.PublishRequest(topic="", payload=b"x"), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        next(topics.Subscribe(pb.topics.SubscribeRequest(filters=["a/#/b"]), timeout=TIMEOUT))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_page_size_out_of_range_is_invalid_argument(pb, records):
    for size in (-1, 100_000):
        with pytest.raises(grpc.RpcError) as e:
            records.List(pb.records.ListRecordsRequest(collection="posts", page_size=size), timeout=TIMEOUT)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_message_is_refused(channel):
    # A 6 MiB `collection` string: over the 4 MiB default limit.
    with pytest.raises(grpc.RpcError) as e:
        raw_unary(channel, "/polyport.v1.Records/Get")(b"\x0a" + b"\x80\x80\x80\x03" + b"x" * (6 << 20),
                                                       timeout=TIMEOUT)
    # gRPC's status-code guide says RESOURCE_EXHAUSTED; tonic's decoder (which enforces
    # GrpcConfig::max_message before any Polyport code runs) answers OUT_OF_RANGE.
    assert e.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE)
    assert "too large" in e.value.details()


def test_empty_chat_action_is_invalid_argument(pb, topics):
    call = topics.Chat(iter([pb.topics.ChatRequest()]), timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError) as e:
        next(call)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_server_still_healthy_after_all_of_it(pb, channel, users):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "polyport.v1.Records"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status == \
            health_pb2.HealthCheckResponse.SERVING
    assert users.GetUser(pb.collections.GetUserRequest(id="123"), timeout=TIMEOUT).username == "john_doe"
