"""Subscriptions through gql's WebsocketsTransport, over both GraphQL websocket
subprotocols: `graphql-transport-ws` and the legacy `graphql-ws`. A post written over REST
arrives on `recordChanged` with the same `sequence` SSE reports for it; `events` with
`since: 0` replays the log, then continues live."""

from __future__ import annotations

import asyncio
import itertools
import json
import re

import httpx
import pytest
import websockets
from gql import Client
from gql.transport.exceptions import TransportQueryError

from graphql_clients import SUBPROTOCOLS, Subscription, code_of, request, ws_transport
from realtime_clients import TIMEOUT, next_matching, open_sse

RECORD_CHANGED = """subscription($filter: String) {
  recordChanged(collection: "posts", filter: $filter) { type operation sequence collection id record }
}"""
EVENTS = """subscription($since: Long) {
  events(topic: "sensors/#", since: $since) { id sequence type subject datacontenttype data }
}"""


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 45))


def async_client(server) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(TIMEOUT, read=30.0))


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
def test_record_changed_sees_a_rest_write_with_the_sse_sequence(blog, subprotocol):
    async def scenario():
        async with async_client(blog) as http:
            sse = await open_sse(http, {"collection": "posts"})
            transport = ws_transport(blog, subprotocol)
            async with Client(transport=transport) as session:
                assert transport.subprotocol == subprotocol  # negotiated, not a fallback
                sub = Subscription(session, RECORD_CHANGED)
                probes = itertools.count()

                async def probe():
                    r = await http.post("/api/collections/posts/records", json={"title": f"probe {next(probes)}", "author": "123"})
                    assert r.status_code == 201, r.text

                await sub.wait_live(probe)

                r = await http.post("/api/collections/posts/records", json={"title": "seen everywhere", "author": "123"})
                assert r.status_code == 201, r.text
                post = r.json()

                change = await next_matching(sub, lambda d: d["recordChanged"]["id"] == post["id"], "change of the new post")
                change = change["recordChanged"]
                assert change["type"] == "posts.created" and change["operation"] == "created"
                assert change["collection"] == "posts"
                assert change["record"]["title"] == "seen everywhere"
                assert change["record"]["version"] == 1

                ev = await next_matching(sse, lambda e: json.loads(e.data)["data"]["record"]["id"] == post["id"], "SSE event of the new post")
                cloudevent = json.loads(ev.data)
                assert change["sequence"] == cloudevent["sequence"] == int(ev.id)
                assert isinstance(change["sequence"], int) and change["sequence"] > 0

                # an update of that post arrives next, with a later sequence, and the
                # filter argument narrows what is delivered
                sub2 = Subscription(session, RECORD_CHANGED, filter='title = "seen everywhere"')
                await sub2.wait_live(lambda: http.patch(f"/api/collections/posts/records/{post['id']}", json={"body": "probe"}))
                r = await http.patch(f"/api/collections/posts/records/{post['id']}", json={"body": "edited"})
                assert r.status_code == 200, r.text
                upd = await next_matching(sub2, lambda d: d["recordChanged"]["record"].get("body") == "edited", "update")
                upd = upd["recordChanged"]
                assert upd["operation"] == "updated" and upd["sequence"] > change["sequence"]
                assert upd["record"]["version"] == r.json()["version"]
                await probe()  # not matching the filter: sub2 must not see it
                await asyncio.sleep(0.3)
                while not sub2.queue.empty():
                    assert sub2.queue.get_nowait()["recordChanged"]["id"] == post["id"]
                await sub.close()
                await sub2.close()
            await sse.close()

    run(scenario())


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
def test_events_since_zero_replays_then_continues_live(blog, subprotocol):
    async def publish(http, topic, body) -> int:
        r = await http.post(f"/api/topics/{topic}", json=body)
        assert r.status_code == 202, r.text
        return r.json()["sequence"]

    async def scenario():
        async with async_client(blog) as http:
            earlier = [await publish(http, "sensors/temp", {"c": 20}), await publish(http, "sensors/hall/door", {"open": True})]
            await publish(http, "other/topic", {"not": "mine"})

            transport = ws_transport(blog, subprotocol)
            async with Client(transport=transport) as session:
                assert transport.subprotocol == subprotocol
                sub = Subscription(session, EVENTS, since=0)
                replayed = [(await sub.next())["events"] for _ in range(2)]
                assert [e["sequence"] for e in replayed] == earlier
                assert [e["subject"] for e in replayed] == ["sensors/temp", "sensors/hall/door"]
                assert [e["data"] for e in replayed] == [{"c": 20}, {"open": True}]
                assert all(e["type"] == "polyport.message" and e["id"] for e in replayed)

                live = await publish(http, "sensors/temp", {"c": 21})
                await publish(http, "other/topic", {"not": "mine"})
                last = await publish(http, "sensors/temp", {"c": 22})
                got = [(await sub.next())["events"] for _ in range(2)]
                assert [(e["sequence"], e["data"]) for e in got] == [(live, {"c": 21}), (last, {"c": 22})]
                assert sub.queue.empty()

                # resuming from a known sequence replays only what came after it
                resumed = Subscription(session, EVENTS, since=earlier[1])
                again = [(await resumed.next())["events"]["sequence"] for _ in range(2)]
                assert again == [live, last]
                await sub.close()
                await resumed.close()

    run(scenario())


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
def test_subscription_errors_carry_codes_and_the_connection_stays_usable(blog, subprotocol):
    cases = [
        ('subscription { events(topic: "a/#/b") { sequence } }', "invalid_topic"),
        ('subscription { events(topic: "sensors/#", since: 999999) { sequence } }', "position_unavailable"),
        ('subscription { events(topic: "sensors/#", since: -1) { sequence } }', "invalid_request"),
        ('subscription { recordChanged(collection: "posts", filter: "title ~") { sequence } }', "invalid_filter"),
        ("subscription { nope { sequence } }", None),  # unknown field: rejected by validation
    ]

    async def first_error(session, text):
        try:
            async for data in session.subscribe(request(text)):
                raise AssertionError(f"{text}: got {data!r} instead of an error")
        except TransportQueryError as e:
            assert e.errors and e.errors[0]["message"], e
            return e.errors
        raise AssertionError(f"{text}: the subscription ended without an error")

    async def scenario():
        transport = ws_transport(blog, subprotocol)
        async with Client(transport=transport) as session:
            for text, code in cases:
                errors = await asyncio.wait_for(first_error(session, text), TIMEOUT)
                if code is not None:
                    assert code_of(errors[0]) == code, (text, errors)
            # the same connection still serves queries and subscriptions
            assert await session.execute(request("{ user(id: 123) { username } }")) == {"user": {"username": "john_doe"}}
            async with async_client(blog) as http:
                r = await http.post("/api/topics/sensors/x", json={"ok": True})
                assert r.status_code == 202, r.text
            sub = Subscription(session, EVENTS, since=0)
            assert (await sub.next())["events"]["data"] == {"ok": True}
            await sub.close()

    run(scenario())


def test_events_carry_message_attributes_and_user_headers(blog):
    query = """subscription { events(topic: "orders/#", since: 0) { subject attributes headers data } }"""

    async def scenario():
        async with async_client(blog) as http:
            r = await http.post(
                "/api/topics/orders/7",
                json={"n": 7},
                headers={"ce-replyto": "orders/replies", "ce-correlationid": "o-7", "ce-priority": "5", "ce-trace": "t"},
            )
            assert r.status_code == 202, r.text
            async with Client(transport=ws_transport(blog, SUBPROTOCOLS[0])) as session:
                sub = Subscription(session, query)
                ev = (await sub.next())["events"]
                await sub.close()
                return ev

    ev = run(scenario())
    assert ev["attributes"] == {"replyto": "orders/replies", "correlationid": "o-7", "priority": 5}
    assert ev["headers"] == [["trace", "t"]]
    assert ev["data"] == {"n": 7}



SHARED_QUERY = 'subscription { recordChanged(collection: "notes") { operation sequence record } }'


def test_subscribers_of_one_query_each_get_every_change_and_a_stalled_one_loses_none(servers):
    """Subscribers asking the same thing are served by one execution (/metrics counts
    executions and the subscriptions they serve); one that stops reading falls far behind
    the others (the server's subscriber queue is 8 here) and
    still receives every change, in order, once it reads again; one leaving ends nobody
    else's subscription."""
    s = servers.start("[events]\nsubscriber_queue = 8\n", "--demo", "blog")
    big = "x" * 16_000  # enough changes of this size fill the stalled socket's buffers
    count = 700

    async def raw_next(sock, timeout=TIMEOUT) -> dict:
        msg = json.loads(await asyncio.wait_for(sock.recv(), timeout))
        assert msg["type"] == "next" and msg["id"] == "s", msg
        return msg["payload"]["data"]["recordChanged"]

    async def sub_next(sub) -> dict:
        return (await sub.next())["recordChanged"]

    async def changes(next_change, n) -> list[tuple[str, int]]:
        """The next `n` changes other than probes, as (id, sequence)."""
        got = []
        while len(got) < n:
            c = await next_change()
            if not c["record"]["id"].startswith("probe"):
                got.append((c["record"]["id"], c["sequence"]))
        return got

    async def shared(http) -> tuple[int, int]:
        """(executions, subscriptions they serve) from /metrics."""
        text = (await http.get("/metrics")).text
        gauge = lambda name: int(float(re.search(rf"^{name} (\S+)$", text, re.M).group(1)))  # noqa: E731
        return gauge("polyport_graphql_shared_executions"), gauge("polyport_graphql_shared_subscriptions")

    async def scenario():
        async with async_client(s) as http:
            r = await http.post("/api/collections", json={"name": "notes", "fields": [{"name": "body", "type": "text"}]})
            assert r.status_code == 201, r.text
            probes = itertools.count()

            async def probe():
                r = await http.post("/api/collections/notes/records", json={"id": f"probe{next(probes)}"})
                assert r.status_code == 201, r.text

            stalled = await websockets.connect(f"ws://{s.http}/graphql", subprotocols=["graphql-transport-ws"],
                                               max_queue=1, max_size=2**22)
            await stalled.send(json.dumps({"type": "connection_init"}))
            assert json.loads(await stalled.recv())["type"] == "connection_ack"
            await stalled.send(json.dumps({"id": "s", "type": "subscribe", "payload": {"query": SHARED_QUERY}}))
            while True:  # live once a probe arrives
                await probe()
                try:
                    await raw_next(stalled, 0.2)
                    break
                except asyncio.TimeoutError:
                    pass
            async with Client(transport=ws_transport(s, SUBPROTOCOLS[0])) as one, \
                    Client(transport=ws_transport(s, SUBPROTOCOLS[1])) as two:
                subs = [Subscription(one, SHARED_QUERY), Subscription(two, SHARED_QUERY)]
                for sub in subs:
                    await sub.wait_live(probe)
                # one execution for all three (gql prints the document its own way)
                assert await shared(http) == (1, 3)

                async def write_all():
                    for i in range(count):
                        r = await http.post("/api/collections/notes/records", json={"id": f"n{i:04}", "body": big})
                        assert r.status_code == 201, r.text

                fast = [changes(lambda sub=sub: sub_next(sub), count) for sub in subs]
                _, *seen = await asyncio.gather(write_all(), *fast)
                want = [f"n{i:04}" for i in range(count)]
                for got in seen:
                    assert [i for i, _ in got] == want
                sequences = [q for _, q in seen[0]]
                assert sequences == sorted(sequences) and len(set(sequences)) == count
                assert seen[0] == seen[1]

                # the stalled subscriber reads at last: every change, in order, none twice
                assert await changes(lambda: raw_next(stalled), count) == seen[0]
                assert await shared(http) == (1, 2), "the stalled one went on alone"

                # one leaving ends nobody else's subscription
                await subs[0].close()
                r = await http.post("/api/collections/notes/records", json={"id": "after"})
                assert r.status_code == 201, r.text
                assert (await changes(lambda: sub_next(subs[1]), 1))[0][0] == "after"
                assert (await changes(lambda: raw_next(stalled), 1))[0][0] == "after"
                await subs[1].close()
            await stalled.close()

    run(scenario())
