"""The realtime transports as their users see them: a write through REST arrives on SSE,
NDJSON, long-poll and WebSocket with one CloudEvents `sequence`; SSE resumes after
Last-Event-ID; record subscriptions filter; a WebSocket chat room broadcasts."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from realtime_clients import TIMEOUT, WsClient, open_ndjson, open_sse, poll

POSTS = {"topic": "collections/posts/+"}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def async_client(server) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(TIMEOUT, read=30.0))


def assert_cloudevent(ev: dict) -> None:
    for key in ("specversion", "id", "source", "type", "subject", "time"):
        assert key in ev, (key, ev)
    assert ev["specversion"] == "1.0"


def test_one_rest_write_reaches_sse_ndjson_longpoll_and_websocket_with_one_sequence(blog):
    async def scenario():
        async with async_client(blog) as client:
            sse = await open_sse(client, POSTS)
            assert sse.response.headers["content-type"].startswith("text/event-stream")
            nd = await open_ndjson(client, POSTS)
            assert nd.response.headers["content-type"].startswith("application/x-ndjson")
            ws = await WsClient.connect(blog.ws_url)
            sub = await ws.ok("subscribe", topic="collections/posts/+")
            cursor = (await poll(client, POSTS, wait=0))["cursor"]
            # The long-poll is already waiting when the write lands.
            long_poll = asyncio.create_task(poll(client, POSTS, since=cursor, wait=20))
            await asyncio.sleep(0.2)
            assert not long_poll.done(), "long-poll answered before there was an event"

            started = time.monotonic()
            r = await client.post(
                "/api/collections/posts/records",
                json={"title": "Live!", "author": "123", "tags": ["realtime"]},
            )
            assert r.status_code == 201, r.text
            rec = r.json()

            got_sse = await sse.next()
            got_nd = await nd.next()
            got_ws = await ws.next_event()
            polled = await asyncio.wait_for(long_poll, TIMEOUT)
            assert time.monotonic() - started < 5, "long-poll did not answer as soon as the event existed"

            ce_sse = json.loads(got_sse.data)
            ce_ws = got_ws["event"]
            assert got_ws["subscription"] == sub["subscription"]
            assert len(polled["events"]) == 1, polled
            ce_poll = polled["events"][0]

            seen = {"SSE": ce_sse, "NDJSON": got_nd, "long-poll": ce_poll, "WebSocket": ce_ws}
            seqs = {name: ev.get("sequence") for name, ev in seen.items()}
            assert len(set(seqs.values())) == 1, seqs
            seq = ce_sse["sequence"]
            assert isinstance(seq, int) and seq > 3, seqs  # the demo seeded 3 events
            assert got_sse.id == str(seq)
            assert polled["cursor"] == seq
            for name, ev in seen.items():
                assert_cloudevent(ev)
                assert ev["type"] == "posts.created", (name, ev)
                assert ev["subject"] == f"collections/posts/{rec['id']}", (name, ev)
                assert ev["data"]["record"] == rec, (name, ev)
                assert ev == ce_sse, f"{name} carries a different envelope than SSE"

            await ws.close()
            await sse.close()
            await nd.close()

    run(scenario())


def test_sse_resume_with_last_event_id_gets_exactly_the_events_after_it(blog):
    async def scenario():
        async with async_client(blog) as client:
            seqs = []
            for i in range(5):
                r = await client.post("/api/topics/resume/t", json={"n": i})
                assert r.status_code == 202, r.text
                seqs.append(r.json()["sequence"])
                # Noise on a topic the subscriber does not ask for.
                assert (await client.post("/api/topics/resume/other", json={"n": i})).status_code == 202
            assert seqs == sorted(seqs) and len(set(seqs)) == 5

            for how, params, headers in [
                ("Last-Event-ID", {"topic": "resume/t"}, {"Last-Event-ID": str(seqs[1])}),
                ("since", {"topic": "resume/t", "since": seqs[1]}, None),
            ]:
                sse = await open_sse(client, params, headers)
                got = await sse.take(len(seqs) - 2)
                assert [int(e.id) for e in got] == seqs[2:], how
                assert [json.loads(e.data)["data"]["n"] for e in got[:3]] == [2, 3, 4], how

                # Then live events follow with nothing in between.
                r = await client.post("/api/topics/resume/t", json={"n": "live"})
                live_seq = r.json()["sequence"]
                nxt = await sse.next()
                assert int(nxt.id) == live_seq, how
                await sse.close()
                seqs.append(live_seq)

            # Resuming at the newest event gets nothing old, only what comes next.
            sse = await open_sse(client, {"topic": "resume/t"}, {"Last-Event-ID": str(seqs[-1])})
            r = await client.post("/api/topics/resume/t", json={"n": "last"})
            assert int((await sse.next()).id) == r.json()["sequence"]
            await sse.close()

    run(scenario())


def test_filtered_record_subscription_delivers_only_matching_changes(blog):
    sub = {"collection": "posts", "filter": 'author="123"'}

    async def scenario():
        async with async_client(blog) as client:
            sse = await open_sse(client, sub)
            nd = await open_ndjson(client, sub)
            ws = await WsClient.connect(blog.ws_url)
            await ws.ok("subscribe", collection="posts", filter='author="123"')
            cursor = (await poll(client, sub, wait=0))["cursor"]

            async def rest(method, path, **kw):
                r = await client.request(method, path, **kw)
                assert r.status_code < 300, r.text
                return r

            await rest("POST", "/api/collections/users/records", json={"id": "456", "username": "jane"})
            await rest("POST", "/api/collections/posts/records", json={"id": "theirs", "title": "Jane's", "author": "456"})
            await rest("POST", "/api/collections/posts/records", json={"id": "mine", "title": "John's", "author": "123"})
            await rest("PATCH", "/api/collections/posts/records/theirs", json={"title": "Jane's, edited"})
            await rest("PATCH", "/api/collections/posts/records/mine", json={"title": "John's, edited"})
            await rest("DELETE", "/api/collections/posts/records/theirs")
            await rest("DELETE", "/api/collections/posts/records/mine")
            await rest("POST", "/api/collections/posts/records", json={"id": "last", "title": "Sentinel", "author": "123"})
            want = [
                ("posts.created", "mine"),
                ("posts.updated", "mine"),
                ("posts.deleted", "mine"),
                ("posts.created", "last"),
            ]

            def summary(events):
                return [(e["type"], e["data"]["record"]["id"]) for e in events]

            got_sse = [json.loads(e.data) for e in await sse.take(4)]
            got_nd = await nd.take(4)
            got_ws = [m["event"] for m in await ws.events.take(4)]
            got_poll = []
            while len(got_poll) < 4:
                page = await poll(client, sub, since=cursor, wait=5)
                assert page["events"], f"long-poll stalled after {summary(got_poll)}"
                got_poll += page["events"]
                cursor = page["cursor"]

            for name, got in [("SSE", got_sse), ("NDJSON", got_nd), ("WebSocket", got_ws), ("long-poll", got_poll)]:
                assert summary(got) == want, name
                assert all(e["data"]["record"]["author"] == "123" for e in got), name
            assert [e["sequence"] for e in got_sse] == [e["sequence"] for e in got_poll]

            # A filter without a collection, or a broken one, is refused up front.
            r = await client.get("/api/events", params={"filter": 'author="123"'})
            assert r.status_code == 400
            r = await client.get("/api/stream", params={"collection": "posts", "filter": "author =="})
            assert r.status_code == 400 and "position" in r.json()
            bad = await ws.request("subscribe", collection="posts", filter="author ==")
            assert bad["type"] == "error" and bad["code"] == "invalid_filter", bad

            for f in (sse, nd):
                await f.close()
            await ws.close()

    run(scenario())


def test_websocket_chat_room_broadcasts_each_message_to_every_member(blog):
    """Seed 001: "the server broadcasts each message to every member"."""

    async def scenario():
        members = [await WsClient.connect(blog.ws_url, name) for name in ("alice", "bob", "carol")]
        outsider = await WsClient.connect(blog.ws_url, "dave")
        subscription = {}
        for m in members:
            subscription[m.name] = (await m.ok("subscribe", topic="chat/room1"))["subscription"]
        await outsider.ok("subscribe", topic="chat/room2")

        sent = []
        for m in members:
            msg = {"from": m.name, "text": f"hi, I am {m.name}"}
            reply = await m.ok("publish", topic="chat/room1", data=msg)
            assert isinstance(reply["sequence"], int), reply
            sent.append((reply["sequence"], msg))

        for m in members:
            got = [e["event"] for e in await m.events.take(3)]
            assert [(e["sequence"], e["data"]) for e in got] == sent, m.name
            assert all(e["subject"] == "chat/room1" for e in got)

        # Room 2 saw none of it: its first event is its own.
        reply = await outsider.ok("publish", topic="chat/room2", data={"from": "dave", "text": "anyone?"})
        ev = (await outsider.next_event())["event"]
        assert ev["sequence"] == reply["sequence"] and ev["subject"] == "chat/room2"

        # Someone who leaves stops receiving; the others go on.
        bob = members[1]
        await bob.ok("unsubscribe", subscription=subscription["bob"])
        reply = await members[0].ok("publish", topic="chat/room1", data={"from": "alice", "text": "bye bob"})
        for m in (members[0], members[2]):
            assert (await m.next_event())["event"]["sequence"] == reply["sequence"]
        await asyncio.sleep(0.3)
        assert bob.events.queue.empty()

        for c in [*members, outsider]:
            await c.close()

    run(scenario())


def test_sigterm_closes_open_streams_and_exits_0(spawn):
    server = spawn("--demo", "blog")

    async def scenario():
        async with async_client(server) as client:
            sse = await open_sse(client, POSTS)
            nd = await open_ndjson(client, POSTS)
            ws = await WsClient.connect(server.ws_url)
            await ws.ok("subscribe", topic="#")
            started = time.monotonic()
            code = await asyncio.to_thread(server.stop)
            assert code == 0, server.log()[-4000:]
            assert time.monotonic() - started < 10
            # Every stream was ended by the server, not left hanging.
            for feed in (sse, nd, ws.events):
                await asyncio.wait_for(asyncio.shield(feed.task), TIMEOUT)
            assert ws.conn.close_code == 1001, (ws.conn.close_code, ws.conn.close_reason)
            await ws.close()

    run(scenario())
