"""One data and event model behind every face: what gRPC writes, REST and GraphQL read;
what REST writes, gRPC Watch/Subscribe see with the same sequence as SSE and long-poll."""

from __future__ import annotations

import base64
import queue
import threading
import uuid

import httpx
import pytest
from google.protobuf import json_format, struct_pb2
from httpx_sse import connect_sse

from grpc_helpers import TIMEOUT


class Reader:
    """Drains a gRPC response stream on a thread so a test can wait with a timeout."""

    def __init__(self, call):
        self.call = call
        self.items: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for item in self.call:
                self.items.put(item)
        except Exception as e:  # noqa: BLE001  (cancelled at the end, or a real error)
            self.items.put(e)

    def next(self, timeout: float = TIMEOUT):
        try:
            item = self.items.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing on the stream within {timeout}s") from None
        if isinstance(item, Exception):
            raise item
        return item

    def until(self, pred, timeout: float = TIMEOUT):
        """The first item matching `pred` (earlier ones are skipped)."""
        while True:
            item = self.next(timeout)
            if pred(item):
                return item

    def close(self):
        self.call.cancel()
        self.thread.join(timeout=5)


@pytest.fixture
def readers():
    opened: list[Reader] = []

    def _open(call) -> Reader:
        r = Reader(call)
        opened.append(r)
        return r

    yield _open
    for r in opened:
        r.close()


def log_position(http: httpx.Client) -> int:
    """The current end of the event log, as long-poll reports it."""
    r = http.get("/api/poll", params={"topic": "no-such/topic", "since": 0, "wait": 0})
    assert r.status_code == 200, r.text
    return r.json()["cursor"]


def long_poll(http: httpx.Client, **params) -> list[dict]:
    r = http.get("/api/poll", params={"wait": 5, **params})
    assert r.status_code == 200, r.text
    return r.json()["events"]


def sse_first(http: httpx.Client, pred, **params) -> dict:
    """The first SSE event (as `{id, data}`) matching `pred`."""
    import json

    with connect_sse(http, "GET", "/api/events", params=params, timeout=TIMEOUT) as source:
        for ev in source.iter_sse():
            if not ev.data:
                continue
            doc = {"id": ev.id, "data": json.loads(ev.data)}
            if pred(doc):
                return doc
    raise AssertionError("SSE stream ended")


def test_record_created_over_grpc_is_read_over_rest_and_graphql(pb, posts, records, http):
    title = f"From gRPC {uuid.uuid4().hex[:6]}"
    typed = posts.CreatePost(pb.collections.CreatePostRequest(title=title, author="123", tags=["grpc", "x"]),
                             timeout=TIMEOUT)

    rest = http.get(f"/api/collections/posts/records/{typed.id}")
    assert rest.status_code == 200, rest.text
    assert rest.headers["etag"] == '"1"'
    body = rest.json()
    assert (body["title"], body["author"], body["tags"], body["version"]) == (title, "123", ["grpc", "x"], 1)

    gql = http.post("/graphql", json={"query": f'{{ post(id: "{typed.id}") {{ title author {{ username }} }} }}'})
    assert gql.status_code == 200, gql.text
    assert gql.json() == {"data": {"post": {"title": title, "author": {"username": "john_doe"}}}}

    # The generic API writes the same records.
    data = struct_pb2.Struct()
    data.update({"title": "Generic", "author": "123"})
    generic = records.Create(pb.records.CreateRecordRequest(collection="posts", data=data), timeout=TIMEOUT)
    assert http.get(f"/api/collections/posts/records/{generic.id}").json()["title"] == "Generic"
    gql = http.post("/graphql", json={"query": f'{{ post(id: "{generic.id}") {{ title }} }}'})
    assert gql.json() == {"data": {"post": {"title": "Generic"}}}


def test_watch_sees_rest_create_with_the_same_sequence_as_sse_and_long_poll(pb, posts, records, http, readers):
    since = log_position(http)
    typed = readers(posts.WatchPosts(pb.collections.WatchPostsRequest(since=since), timeout=30))
    generic = readers(records.Watch(pb.records.WatchRequest(collection="posts", since=since), timeout=30))

    title = f"From REST {uuid.uuid4().hex[:6]}"
    r = http.post("/api/collections/posts/records", json={"title": title, "author": "123", "tags": ["rest"]})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]

    t = typed.until(lambda c: c.record.id == pid)
    assert (t.type, t.operation) == ("posts.created", "created")
    assert (t.record.title, t.record.author, list(t.record.tags), t.record.version) == (title, "123", ["rest"], 1)
    assert not t.HasField("previous")

    g = generic.until(lambda c: c.record.id == pid)
    assert (g.type, g.operation, g.record.collection) == ("posts.created", "created", "posts")
    assert json_format.MessageToDict(g.record.data)["title"] == title

    polled = [e for e in long_poll(http, collection="posts", since=since) if e["data"]["record"]["id"] == pid]
    assert len(polled) == 1
    seq = polled[0]["sequence"]
    assert t.sequence == g.sequence == seq > since

    sse = sse_first(http, lambda d: d["data"].get("data", {}).get("record", {}).get("id") == pid,
                    collection="posts", since=since)
    assert int(sse["id"]) == sse["data"]["sequence"] == seq

    # An update over REST arrives with the previous version, again on one sequence.
    r = http.patch(f"/api/collections/posts/records/{pid}", json={"title": title + "!"})
    assert r.status_code == 200, r.text
    t2 = typed.until(lambda c: c.record.id == pid)
    g2 = generic.until(lambda c: c.record.id == pid)
    assert t2.operation == g2.operation == "updated"
    assert (t2.record.title, t2.previous.title, t2.record.version) == (title + "!", title, 2)
    polled = long_poll(http, collection="posts", id=pid, since=seq)
    assert [e["sequence"] for e in polled] == [t2.sequence] == [g2.sequence]


def test_live_watch_without_since(pb, posts, http, readers):
    call = posts.WatchPosts(pb.collections.WatchPostsRequest(filter='title ~ "live-watch"'), timeout=30)
    call.initial_metadata()  # the server answers once the subscription is live
    watch = readers(call)
    for i in range(3):
        r = http.post("/api/collections/posts/records", json={"title": f"live-watch {i}", "author": "123"})
        assert r.status_code == 201, r.text
    http.post("/api/collections/posts/records", json={"title": "not matching", "author": "123"})
    got = [watch.next() for _ in range(3)]
    assert [c.record.title for c in got] == [f"live-watch {i}" for i in range(3)]
    seqs = [c.sequence for c in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


def test_watch_single_record_by_id(pb, posts, http, readers):
    r = http.post("/api/collections/posts/records", json={"title": "watch me", "author": "123"})
    pid = r.json()["id"]
    call = posts.WatchPosts(pb.collections.WatchPostsRequest(id=pid), timeout=30)
    call.initial_metadata()
    watch = readers(call)
    http.post("/api/collections/posts/records", json={"title": "someone else", "author": "123"})
    assert http.delete(f"/api/collections/posts/records/{pid}").status_code in (200, 204)
    change = watch.next()
    assert (change.operation, change.record.id) == ("deleted", pid)


def test_subscribe_sees_rest_publish_with_exact_bytes(pb, topics, http, readers):
    base = f"grpc-test/{uuid.uuid4().hex[:8]}"
    payload = bytes(range(256)) + b"\r\n\x00 end"
    call = topics.Subscribe(pb.topics.SubscribeRequest(filters=[f"{base}/#"]), timeout=30)
    call.initial_metadata()
    sub = readers(call)

    r = http.post(f"/api/topics/{base}/blob", content=payload,
                  headers={"content-type": "application/octet-stream", "ce-type": "com.example.blob"})
    assert r.status_code == 202, r.text
    seq = r.json()["sequence"]

    ev = sub.next()
    assert ev.payload == payload
    assert (ev.topic, ev.type, ev.content_type) == (f"{base}/blob", "com.example.blob", "application/octet-stream")
    assert ev.HasField("sequence") and ev.sequence == seq
    assert ev.id == r.json()["id"]

    # Replay from a position gives the same event again.
    replay = readers(topics.Subscribe(pb.topics.SubscribeRequest(filters=[f"{base}/#"], since=seq - 1), timeout=30))
    again = replay.next()
    assert (again.sequence, again.payload) == (seq, payload)


def test_grpc_publish_is_seen_over_long_poll(pb, topics, http):
    topic = f"grpc-test/{uuid.uuid4().hex[:8]}/pub"
    payload = b"\xff\xfe binary \x00"
    since = log_position(http)
    resp = topics.Publish(pb.topics.PublishRequest(topic=topic, payload=payload, content_type="application/octet-stream",
                                                   headers={"x-origin": "grpc"}), timeout=TIMEOUT)
    assert resp.id and resp.HasField("sequence")
    (ev,) = long_poll(http, topic=topic, since=since)
    assert ev["sequence"] == resp.sequence and ev["id"] == resp.id
    assert base64.b64decode(ev["data_base64"]) == payload


def test_chat_subscribe_then_publish_receives_own_message(pb, topics, http):
    t = pb.topics
    topic = f"chat/{uuid.uuid4().hex[:8]}"
    since = log_position(http)

    def actions():
        yield t.ChatRequest(subscribe=t.SubscribeRequest(filters=[topic]))
        yield t.ChatRequest(publish=t.PublishRequest(topic=topic, payload=b'{"text": "hi"}',
                                                     content_type="application/json"))

    call = topics.Chat(actions(), timeout=30)
    try:
        ev = next(call)
    finally:
        call.cancel()
    assert (ev.topic, ev.type, ev.content_type) == (topic, "polyport.message", "application/json")
    assert ev.payload == b'{"text": "hi"}'
    (polled,) = long_poll(http, topic=topic, since=since)
    assert polled["sequence"] == ev.sequence
    assert polled["data"] == {"text": "hi"}


def _post_fields(channel) -> set[str]:
    """The fields of `polyport.collections.Post` as the server's reflection serves them now."""
    from google.protobuf import descriptor_pool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    return set(pool.FindMessageTypeByName("polyport.collections.Post").fields_by_name)


def test_watchers_share_an_event_yet_a_watch_from_before_a_schema_change_keeps_its_shape(pb, blog, readers):
    # The server encodes an event's message once and sends those bytes to every watch of
    # that shape; a watch opened before its collection gained a field is of another shape.
    import time

    import grpc

    from grpc_helpers import grpc_target

    channel = grpc.insecure_channel(grpc_target(blog))
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    posts = pb.collections_grpc.PostServiceStub(channel)
    http = httpx.Client(base_url=blog.url, timeout=TIMEOUT)

    def watch():
        call = posts.WatchPosts(pb.collections.WatchPostsRequest(), timeout=30)
        call.initial_metadata()  # answered once the subscription is live
        return readers(call)

    def create(**doc) -> str:
        r = http.post("/api/collections/posts/records", json={"author": "123", **doc})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    old = [watch() for _ in range(3)]
    pid = create(title="shared", tags=["a", "b"])
    got = [w.until(lambda c: c.record.id == pid) for w in old]
    assert (got[0].operation, got[0].record.title, list(got[0].record.tags)) == ("created", "shared", ["a", "b"])
    assert len({m.SerializeToString() for m in got}) == 1

    fields = http.get("/api/collections/posts").json()["fields"]
    r = http.patch("/api/collections/posts", json={"fields": fields + [{"name": "subtitle", "type": "text"}]})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + TIMEOUT
    while "subtitle" not in _post_fields(channel):
        assert time.monotonic() < deadline, "the gRPC catalog never gained posts.subtitle"
        time.sleep(0.1)
    new = watch()

    pid = create(title="after", subtitle="zz-subtitle-zz")
    before, after = old[0].until(lambda c: c.record.id == pid), new.until(lambda c: c.record.id == pid)
    assert before.record.title == after.record.title == "after"
    # These stubs predate the field: the new watch's message carries it as unknown bytes,
    # the old watch's (encoded for the definition it was opened on) does not.
    assert b"zz-subtitle-zz" in after.record.SerializeToString()
    assert b"zz-subtitle-zz" not in before.record.SerializeToString()
    for w in old[1:]:
        assert w.until(lambda c: c.record.id == pid).SerializeToString() == before.SerializeToString()
    http.close()
    channel.close()
