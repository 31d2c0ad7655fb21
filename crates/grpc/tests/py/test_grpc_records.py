"""The shipped generic API `polyport.v1.Records` (documents as google.protobuf.Struct),
through stubs generated from proto/polyport/v1/records.proto."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from grpc_helpers import TIMEOUT


def struct(d: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


def as_dict(s: struct_pb2.Struct) -> dict:
    return json_format.MessageToDict(s)


@pytest.fixture
def coll() -> str:
    """A fresh schemaless collection name (writing to it creates it)."""
    return f"notes_{uuid.uuid4().hex[:10]}"


def test_create_get_struct_round_trip(pb, records, coll):
    r = pb.records
    doc = {
        "title": "Grüße, gRPC ✓",
        "views": 3,
        "ratio": 0.25,
        "draft": False,
        "nothing": None,
        "tags": ["a", 1, True, None, {"deep": [1.5]}],
        "meta": {"lang": "en", "nested": {"k": "v"}},
    }
    created = records.Create(r.CreateRecordRequest(collection=coll, id="n1", data=struct(doc)), timeout=TIMEOUT)
    assert (created.id, created.collection, created.version) == ("n1", coll, 1)
    assert created.created_at.seconds > 0 and created.updated_at == created.created_at
    assert as_dict(created.data) == doc

    got = records.Get(r.GetRecordRequest(collection=coll, id="n1"), timeout=TIMEOUT)
    assert got == created

    # No id: the server picks one.
    auto = records.Create(r.CreateRecordRequest(collection=coll, data=struct({"x": 1})), timeout=TIMEOUT)
    assert auto.id and auto.id != "n1"


def test_get_on_a_typed_collection(pb, records):
    got = records.Get(pb.records.GetRecordRequest(collection="posts", id="1"), timeout=TIMEOUT)
    data = as_dict(got.data)
    assert data["title"] == "Hello, Polyport"
    assert data["author"] == "123"
    assert data["tags"] == ["intro"]


def test_list_pagination_filter_and_total(pb, records, coll):
    r = pb.records
    for i in range(7):
        records.Create(r.CreateRecordRequest(collection=coll, id=f"r{i}", data=struct({"n": i, "odd": i % 2 == 1})),
                       timeout=TIMEOUT)

    seen, token, pages = [], "", 0
    while True:
        page = records.List(r.ListRecordsRequest(collection=coll, sort="n", page_size=3, page_token=token),
                            timeout=TIMEOUT)
        pages += 1
        assert len(page.records) <= 3
        assert not page.HasField("total"), "total is only sent with count=true"
        seen += [x.id for x in page.records]
        token = page.next_page_token
        if not token:
            break
        assert pages < 10, "pagination does not end"
    assert seen == [f"r{i}" for i in range(7)]
    assert pages == 3

    odd = records.List(r.ListRecordsRequest(collection=coll, filter="odd = true && n > 1", sort="-n", count=True),
                       timeout=TIMEOUT)
    assert [x.id for x in odd.records] == ["r5", "r3"]
    assert odd.HasField("total") and odd.total == 2
    assert odd.next_page_token == ""

    everything = records.List(r.ListRecordsRequest(collection=coll, page_size=2, count=True), timeout=TIMEOUT)
    assert everything.total == 7 and len(everything.records) == 2 and everything.next_page_token


def test_list_bad_filter_is_invalid_argument(pb, records):
    with pytest.raises(grpc.RpcError) as e:
        records.List(pb.records.ListRecordsRequest(collection="posts", filter='title ~ "unterminated'),
                     timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_update_merge_replace_and_versions(pb, records, coll):
    r = pb.records
    records.Create(r.CreateRecordRequest(collection=coll, id="u1", data=struct({"a": 1, "b": {"x": 1, "y": 2}, "c": "keep"})),
                   timeout=TIMEOUT)

    # Merge (JSON merge patch): null removes, nested objects merge, the rest stays.
    merged = records.Update(r.UpdateRecordRequest(collection=coll, id="u1", data=struct({"a": None, "b": {"y": 3}}),
                                                  expected_version=1), timeout=TIMEOUT)
    assert merged.version == 2
    assert as_dict(merged.data) == {"b": {"x": 1, "y": 3}, "c": "keep"}

    # Replace: the document becomes exactly the new one.
    replaced = records.Update(r.UpdateRecordRequest(collection=coll, id="u1", data=struct({"z": "only"}), replace=True),
                              timeout=TIMEOUT)
    assert replaced.version == 3
    assert as_dict(replaced.data) == {"z": "only"}
    assert replaced.created_at == merged.created_at

    # A stale expected_version is refused and changes nothing.
    for replace in (False, True):
        with pytest.raises(grpc.RpcError) as e:
            records.Update(r.UpdateRecordRequest(collection=coll, id="u1", data=struct({"z": "stale"}),
                                                 replace=replace, expected_version=2), timeout=TIMEOUT)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, e.value.details()
    now = records.Get(r.GetRecordRequest(collection=coll, id="u1"), timeout=TIMEOUT)
    assert now.version == 3 and as_dict(now.data) == {"z": "only"}


def test_delete(pb, records, coll):
    r = pb.records
    records.Create(r.CreateRecordRequest(collection=coll, id="d1", data=struct({"v": 1})), timeout=TIMEOUT)
    records.Update(r.UpdateRecordRequest(collection=coll, id="d1", data=struct({"v": 2})), timeout=TIMEOUT)

    with pytest.raises(grpc.RpcError) as e:
        records.Delete(r.DeleteRecordRequest(collection=coll, id="d1", expected_version=1), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    gone = records.Delete(r.DeleteRecordRequest(collection=coll, id="d1", expected_version=2), timeout=TIMEOUT)
    assert gone.id == "d1" and as_dict(gone.data) == {"v": 2}

    for call in (lambda: records.Get(r.GetRecordRequest(collection=coll, id="d1"), timeout=TIMEOUT),
                 lambda: records.Delete(r.DeleteRecordRequest(collection=coll, id="d1"), timeout=TIMEOUT)):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_create_existing_id_is_already_exists(pb, records, coll):
    r = pb.records
    records.Create(r.CreateRecordRequest(collection=coll, id="dup", data=struct({})), timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError) as e:
        records.Create(r.CreateRecordRequest(collection=coll, id="dup", data=struct({})), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
