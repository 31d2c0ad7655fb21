"""Server reflection (v1alpha through grpcio-reflection's client, v1 through a raw call)
and health — the way grpcurl, Postman or Evans discover a server with no .proto at hand."""

from __future__ import annotations

import threading
import time

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from grpc_helpers import TIMEOUT


def dynamic_unary(channel, pool, service: str, method: str):
    """A unary callable plus its request class, built only from reflected descriptors."""
    m = pool.FindServiceByName(service).FindMethodByName(method)
    req_cls = message_factory.GetMessageClass(m.input_type)
    resp_cls = message_factory.GetMessageClass(m.output_type)
    call = channel.unary_unary(f"/{service}/{method}", request_serializer=req_cls.SerializeToString,
                               response_deserializer=resp_cls.FromString)
    return call, req_cls


def test_v1alpha_client_discovers_and_calls_user_service(channel):
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {"polyport.collections.UserService", "polyport.collections.PostService",
            "polyport.v1.Records", "polyport.v1.Topics"} <= services

    pool = descriptor_pool.DescriptorPool(db)
    svc = pool.FindServiceByName("polyport.collections.UserService")
    assert {m.name for m in svc.methods} == {"CreateUser", "GetUser", "ListUsers", "UpdateUser", "DeleteUser",
                                            "WatchUsers"}
    assert svc.FindMethodByName("WatchUsers").server_streaming
    user = pool.FindMessageTypeByName("polyport.collections.User")
    assert {"id", "version", "username", "name", "email"} <= set(user.fields_by_name)

    get_user, GetUserRequest = dynamic_unary(channel, pool, "polyport.collections.UserService", "GetUser")
    reply = get_user(GetUserRequest(id="123"), timeout=TIMEOUT)
    assert (reply.id, reply.username, reply.email) == ("123", "john_doe", "john.doe@example.com")

    # The generic API too: Struct comes from the well-known types the server also reflects.
    get, GetRecordRequest = dynamic_unary(channel, pool, "polyport.v1.Records", "Get")
    rec = get(GetRecordRequest(collection="posts", id="2"), timeout=TIMEOUT)
    assert rec.data.fields["title"].string_value == "Realtime everywhere"


def reflect_v1(channel, *requests: reflection_pb2.ServerReflectionRequest):
    """Raw bidi call to grpc.reflection.v1 (its messages are wire-identical to v1alpha's)."""
    call = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                 request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    return list(call(iter(requests), timeout=TIMEOUT))


def test_v1_reflection_lists_services_and_serves_files(channel):
    listed, by_symbol = reflect_v1(
        channel,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="polyport.collections.PostService"),
    )
    assert listed.WhichOneof("message_response") == "list_services_response", listed
    names = {s.name for s in listed.list_services_response.service}
    assert {"polyport.collections.UserService", "polyport.collections.PostService", "polyport.v1.Records",
            "polyport.v1.Topics"} <= names

    assert by_symbol.WhichOneof("message_response") == "file_descriptor_response", by_symbol
    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in by_symbol.file_descriptor_response.file_descriptor_proto]
    coll = next(f for f in files if f.name == "polyport/collections.proto")
    assert coll.package == "polyport.collections"
    post_svc = next(s for s in coll.service if s.name == "PostService")
    assert "WatchPosts" in {m.name for m in post_svc.method}


def test_v1_reflection_unknown_symbol_is_not_found(channel):
    # The reflection spec answers with an ErrorResponse in the stream; tonic-reflection
    # (which Polyport serves) ends the call with a NOT_FOUND status instead. Either way the
    # client sees NOT_FOUND for the symbol.
    try:
        (resp,) = reflect_v1(channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Thing"))
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND and "no.such.Thing" in e.details()
    else:
        assert resp.WhichOneof("message_response") == "error_response", resp
        assert resp.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_collection_created_over_rest_appears_in_reflection(pb, channel, http):
    name = "gadgets"  # new on this module's server
    message, service = "Gadget", "polyport.collections.GadgetService"
    assert service not in set(ProtoReflectionDescriptorDatabase(channel).get_services())
    r = http.post("/api/collections", json={"name": name, "fields": [
        {"name": "label", "type": "text", "required": True},
        {"name": "weight", "type": "number"},
    ]})
    assert r.status_code == 201, r.text

    deadline = time.monotonic() + 5
    while True:
        db = ProtoReflectionDescriptorDatabase(channel)  # fresh: the client caches answers
        if service in set(db.get_services()):
            break
        assert time.monotonic() < deadline, f"{service} not in reflection 5 s after creating {name}"
        time.sleep(0.05)

    pool = descriptor_pool.DescriptorPool(db)
    create, CreateReq = dynamic_unary(channel, pool, service, f"Create{message}")
    made = create(CreateReq(label="sprocket", weight=1.5), timeout=TIMEOUT)
    assert made.id and made.label == "sprocket" and made.weight == 1.5
    assert http.get(f"/api/collections/{name}/records/{made.id}").json()["label"] == "sprocket"

    # Health follows the catalog too.
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status == \
        health_pb2.HealthCheckResponse.SERVING


def test_health_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "polyport.v1.Records", "polyport.v1.Topics", "polyport.collections.UserService"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, service


def test_health_unknown_service_is_not_found(channel):
    health = health_pb2_grpc.HealthStub(channel)
    try:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=TIMEOUT)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND
    else:
        raise AssertionError("Check on an unknown service answered")


def test_health_watch_streams_current_status(channel):
    health = health_pb2_grpc.HealthStub(channel)
    stream = health.Watch(health_pb2.HealthCheckRequest(service="polyport.v1.Records"), timeout=TIMEOUT)
    try:
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        stream.cancel()


def test_new_service_is_callable_as_soon_as_health_says_serving(channel, http):
    # Regression: the catalog swap used to report SERVING (and publish reflection) before
    # the new routes were in place, so an eager client got UNIMPLEMENTED now and then.
    health = health_pb2_grpc.HealthStub(channel)
    for i in range(15):
        name, message = f"eager{i}s", f"Eager{i}"
        service = f"polyport.collections.{message}Service"
        create = channel.unary_unary(f"/{service}/Create{message}", request_serializer=lambda b: b,
                                     response_deserializer=lambda b: b)
        done = threading.Event()
        threading.Thread(target=lambda: (http.post("/api/collections", json={
            "name": name, "fields": [{"name": "label", "type": "text"}]}), done.set()), daemon=True).start()
        deadline = time.monotonic() + 5
        while True:
            try:
                if health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND, e
            assert time.monotonic() < deadline, f"{service} never became SERVING"
        create(b"\x52\x01x", timeout=TIMEOUT)  # label = "x" (field 10, length-delimited)
        assert done.wait(TIMEOUT)
