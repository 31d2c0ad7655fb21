"""Collection rules (PocketBase-style `list`/`view`/`create`/`update`/`delete` with
@auth and @request.body) hold on every face: REST, GraphQL, gRPC, and the realtime
streams (SSE, MQTT), where a subscriber never receives a change to a record its `view`
rule hides; lists (and their counts) never reveal one; refused writes change nothing."""

from __future__ import annotations

import json
import queue
import subprocess

import httpx
import paho.mqtt.client as mqtt
import pytest

import doors

CONFIG = """
[auth]
users = { alice = "alice-pass", bob = "bob-pass", root = { password = "root-pass", role = "admin" } }
anonymous = true
"""
ALICE, BOB, ROOT = ("alice", "alice-pass"), ("bob", "bob-pass"), ("root", "root-pass")
MINE = "public = true || owner = @auth.id"
NOTES = {
    "name": "notes",
    "fields": [{"name": "title", "type": "text", "required": True}, {"name": "owner", "type": "text"},
               {"name": "public", "type": "bool"}],
    "rules": {
        "list": MINE,
        "view": MINE,
        "create": "@auth.id != null && @request.body.owner = @auth.id",
        "update": "owner = @auth.id && (@request.body.owner = null || @request.body.owner = @auth.id)",
        "delete": "owner = @auth.id",
    },
}


def client(s, creds=None) -> httpx.Client:
    return httpx.Client(base_url=f"{s.url}/api/collections/notes", timeout=10, headers=doors.authorization(creds))


@pytest.fixture
def ruled(servers):
    s = servers.start(CONFIG)
    with httpx.Client(base_url=s.url, timeout=10, headers=doors.authorization(ROOT)) as root:
        r = root.post("/api/collections", json=NOTES)
        assert r.status_code == 201, r.text
        assert r.json()["rules"]["view"] == MINE
    return s


def titles(c: httpx.Client) -> tuple[list[str], int]:
    r = c.get("/records", params={"count": "true", "sort": "title"})
    assert r.status_code == 200, r.text
    return [x["title"] for x in r.json()["items"]], r.json()["total"]


def test_rules_decide_who_lists_reads_and_writes_which_records(ruled):
    alice, bob, anon, root = client(ruled, ALICE), client(ruled, BOB), client(ruled), client(ruled, ROOT)
    assert alice.post("/records", json={"id": "a1", "title": "alice private", "owner": "alice"}).status_code == 201
    r = alice.post("/records", json={"title": "forged", "owner": "bob"})
    assert r.status_code == 403 and r.json()["code"] == "forbidden" and "create rule" in r.json()["detail"], r.text
    assert anon.post("/records", json={"title": "anon", "owner": None}).status_code == 403
    assert bob.post("/records", json={"id": "b1", "title": "bob private", "owner": "bob"}).status_code == 201
    assert bob.post("/records", json={"id": "b2", "title": "bob public", "owner": "bob", "public": True}).status_code == 201

    assert titles(alice) == (["alice private", "bob public"], 2)
    assert titles(anon) == (["bob public"], 1)
    assert titles(root) == (["alice private", "bob private", "bob public"], 3)
    # A filter of the caller's own narrows further; it never widens the rule.
    r = alice.get("/records", params={"filter": 'owner = "bob"', "count": "true"})
    assert [x["title"] for x in r.json()["items"]] == ["bob public"] and r.json()["total"] == 1

    assert alice.get("/records/b1").status_code == 404, "a hidden record does not exist for alice"
    assert alice.get("/records/b2").status_code == 200
    # Changing someone else's record: forbidden when she can see it, not found when not.
    assert alice.patch("/records/b2", json={"title": "defaced"}).status_code == 403
    assert alice.patch("/records/b1", json={"title": "defaced"}).status_code == 404
    assert alice.delete("/records/b2").status_code == 403
    assert alice.put("/records/b1", json={"title": "replaced", "owner": "alice"}).status_code == 404
    # Her own: allowed, but not handing it to someone else (@request.body).
    assert alice.patch("/records/a1", json={"title": "alice edited"}).status_code == 200
    assert alice.patch("/records/a1", json={"owner": "bob"}).status_code == 403
    assert titles(root)[0] == ["alice edited", "bob private", "bob public"], "nothing refused was written"
    assert alice.delete("/records/a1").status_code == 204


def test_rules_hold_on_graphql_and_grpc_too(ruled):
    bob = client(ruled, BOB)
    bob.post("/records", json={"id": "b1", "title": "bob private", "owner": "bob"})
    bob.post("/records", json={"id": "b2", "title": "bob public", "owner": "bob", "public": True})
    r = httpx.post(f"{ruled.url}/graphql", headers=doors.authorization(ALICE), json={
        "query": '{ noteList { totalCount edges { node { title } } } b1: note(id: "b1") { title } }'})
    data = r.json()["data"]
    assert [e["node"]["title"] for e in data["noteList"]["edges"]] == ["bob public"] and data["noteList"]["totalCount"] == 1, r.text
    assert data["b1"] is None
    auth = doors.authorization(ALICE)["Authorization"]
    out = subprocess.run([doors.GRPCURL, "-plaintext", "-H", f"authorization: {auth}", "-d",
                          json.dumps({"collection": "notes"}), f"127.0.0.1:{ruled.port('grpc')}",
                          "polyport.v1.Records/List"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "bob public" in out.stdout and "bob private" not in out.stdout, out.stdout


def test_subscribers_only_receive_changes_their_view_rule_admits(ruled):
    got: queue.Queue = queue.Queue()
    sub = mqtt.Client(client_id="alice-sub", protocol=mqtt.MQTTv311)
    sub.username_pw_set(*ALICE)
    subscribed = queue.Queue()
    sub.on_subscribe = lambda c, u, mid, granted: subscribed.put(granted)
    sub.on_message = lambda c, u, m: got.put(json.loads(m.payload))
    sub.connect("127.0.0.1", ruled.port("mqtt"))
    sub.loop_start()
    sub.subscribe("collections/notes/#", qos=1)
    assert list(subscribed.get(timeout=10)) == [1]
    with httpx.Client(timeout=10, headers=doors.authorization(ALICE)) as alice_http, \
            alice_http.stream("GET", f"{ruled.url}/api/events", params={"collection": "notes"}) as sse:
        assert sse.status_code == 200
        bob = client(ruled, BOB)
        bob.post("/records", json={"id": "b1", "title": "bob private", "owner": "bob"})
        bob.post("/records", json={"id": "b2", "title": "bob public", "owner": "bob", "public": True})
        bob.patch("/records/b1", json={"title": "bob private, edited"})
        bob.patch("/records/b1", json={"public": True, "title": "bob now public"})
        seen = []
        for line in sse.iter_lines():
            if line.startswith("data:"):
                seen.append(json.loads(line[5:])["data"]["record"]["title"])
                if len(seen) == 2:
                    break
        assert seen == ["bob public", "bob now public"], seen
    mqtt_seen = [got.get(timeout=10)["record"]["title"] for _ in range(2)]  # MQTT carries the payload itself
    assert mqtt_seen == ["bob public", "bob now public"], mqtt_seen
    sub.disconnect()
    sub.loop_stop()


def test_graphql_subscribers_asking_the_same_thing_each_see_what_their_view_rule_admits(ruled):
    """Identical GraphQL subscriptions share one execution per caller, never across
    callers: each of alice, bob, an anonymous client and an admin sees what its own view
    rule admits of the same writes."""
    import asyncio

    import websockets

    query = 'subscription { recordChanged(collection: "notes") { record } }'
    callers = {"alice": ALICE, "bob": BOB, "anonymous": None, "root": ROOT}
    probes = iter(range(10_000))

    def write(creds, **note):
        r = client(ruled, creds).post("/records", json=note)
        assert r.status_code == 201, r.text

    def probe():
        write(ROOT, id=f"probe{next(probes)}", title="probe", owner="root", public=True)

    async def title(sock, timeout) -> str:
        msg = json.loads(await asyncio.wait_for(sock.recv(), timeout))
        assert msg["type"] == "next", msg
        return msg["payload"]["data"]["recordChanged"]["record"]["title"]

    async def subscribe(creds):
        sock = await websockets.connect(f"ws://{ruled.http}/graphql", subprotocols=["graphql-transport-ws"])
        await sock.send(json.dumps({"type": "connection_init", "payload": doors.authorization(creds)}))
        assert json.loads(await sock.recv())["type"] == "connection_ack"
        await sock.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
        while True:  # live once a probe arrives
            await asyncio.to_thread(probe)
            try:
                await title(sock, 0.3)
                return sock
            except asyncio.TimeoutError:
                pass

    async def scenario() -> dict[str, list[str]]:
        socks = {who: await subscribe(creds) for who, creds in callers.items()}
        write(BOB, id="b1", title="bob private", owner="bob")
        write(BOB, id="b2", title="bob public", owner="bob", public=True)
        write(ALICE, id="a1", title="alice private", owner="alice")
        write(ROOT, id="end", title="end", owner="root", public=True)
        seen = {}
        for who, sock in socks.items():
            seen[who] = []
            while (t := await title(sock, 10)) != "end":
                if t != "probe":
                    seen[who].append(t)
            await sock.close()
        return seen

    seen = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert seen == {
        "alice": ["bob public", "alice private"],
        "bob": ["bob private", "bob public"],
        "anonymous": ["bob public"],
        "root": ["bob private", "bob public", "alice private"],
    }, seen


def test_bad_and_admin_only_rules(ruled):
    with httpx.Client(base_url=ruled.url, timeout=10, headers=doors.authorization(ROOT)) as root:
        r = root.post("/api/collections", json={"name": "bad", "rules": {"view": "owner = @auth.password"}})
        assert r.status_code in (400, 422) and r.json()["errors"][0]["field"] == "rules.view", r.text
        assert root.post("/api/collections", json={"name": "locked", "rules": {"view": "true"}}).status_code == 201
        assert root.post("/api/collections/locked/records", json={"id": "x"}).status_code == 201
        # Rules can be changed with a merge patch; `null` makes one admin-only again.
        assert root.patch("/api/collections/notes", json={"rules": {"list": None}}).status_code == 200
    alice = httpx.Client(base_url=ruled.url, timeout=10, headers=doors.authorization(ALICE))
    r = alice.get("/api/collections/locked/records")
    assert r.status_code == 403 and "only admins may list" in r.json()["detail"], r.text
    assert alice.get("/api/collections/locked/records/x").status_code == 200, "view is open"
    assert alice.post("/api/collections/locked/records", json={}).status_code == 403
    assert alice.get("/api/collections/notes/records").status_code == 403


def test_shared_queues_cannot_carry_ruled_changes_for_callers_bound_by_rules(ruled):
    """An AMQP queue (or a STOMP exchange subscription) is shared by whoever consumes it,
    so it cannot apply each consumer's view rule: binding one to a ruled collection's
    changes is refused (403 ACCESS_REFUSED / STOMP ERROR) unless an admin does it."""
    import pika
    import pika.exceptions

    params = lambda creds: pika.ConnectionParameters(  # noqa: E731
        "127.0.0.1", ruled.port("amqp"), credentials=pika.PlainCredentials(*creds))
    alice = pika.BlockingConnection(params(ALICE))
    ch = alice.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", "sensors.#")  # nothing ruled: fine
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        ch.queue_bind(q, "amq.topic", "collections.notes.*")
    assert refused.value.reply_code == 403 and "view rules" in refused.value.reply_text
    ch = alice.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ch.queue_bind(ch.queue_declare("", exclusive=True).method.queue, "amq.topic", "#")
    alice.close()

    root = pika.BlockingConnection(params(ROOT))
    rch = root.channel()
    rq = rch.queue_declare("", exclusive=True).method.queue
    rch.queue_bind(rq, "amq.topic", "collections.notes.*")
    client(ruled, BOB).post("/records", json={"id": "b1", "title": "bob private", "owner": "bob"})
    for method, _, body in rch.consume(rq, auto_ack=True, inactivity_timeout=10):
        assert method is not None, "the admin's queue gets every change"
        assert json.loads(body)["record"]["title"] == "bob private"
        break
    root.close()

    conn, errors = doors.stomp_session(ruled, ALICE)
    conn.subscribe("/exchange/amq.topic/collections.notes.*", id="1")
    assert "Access refused" in errors.get(timeout=10)
