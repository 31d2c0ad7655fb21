"""One model: a record created over SOAP reaches REST, GraphQL (query and the
`recordChanged` subscription) and SSE with one sequence; a record written over REST is
read over SOAP; a SOAP Publish reaches an SSE subscriber."""

from __future__ import annotations

import asyncio
import itertools
import json

import httpx
from gql import Client

from graphql_clients import GRAPHQL_TRANSPORT_WS, Subscription, http_client, query, ws_transport
from realtime_clients import TIMEOUT, next_matching, open_sse
from soap_clients import zeep_service

RECORD_CHANGED = """subscription {
  recordChanged(collection: "posts") { operation sequence id record }
}"""


def test_a_soap_create_reaches_rest_graphql_and_sse_with_one_sequence(blog):
    svc = zeep_service(blog, "1.2")

    async def scenario():
        async with httpx.AsyncClient(base_url=blog.url, timeout=httpx.Timeout(TIMEOUT, read=30.0)) as http:
            sse = await open_sse(http, {"collection": "posts"})
            async with Client(transport=ws_transport(blog, GRAPHQL_TRANSPORT_WS)) as session:
                sub = Subscription(session, RECORD_CHANGED)
                probes = itertools.count()
                await sub.wait_live(lambda: asyncio.to_thread(svc.CreatePost, title=f"probe {next(probes)}", author="123"))

                post = await asyncio.to_thread(svc.CreatePost, title="over SOAP", author="123", tags=["soap"])
                change = await next_matching(sub, lambda d: d["recordChanged"]["id"] == post.id, "the SOAP post")
                ev = await next_matching(sse, lambda e: json.loads(e.data)["data"]["record"]["id"] == post.id, "the SOAP post")
                assert change["recordChanged"]["sequence"] == json.loads(ev.data)["sequence"] == int(ev.id)
                assert change["recordChanged"]["record"]["title"] == "over SOAP"
                await sse.close()
            rest = (await http.get(f"/api/collections/posts/records/{post.id}")).json()
            assert (rest["title"], rest["tags"], rest["version"]) == ("over SOAP", ["soap"], 1)
            return post

    post = asyncio.run(asyncio.wait_for(scenario(), 60))
    data = query(http_client(blog), "query($id: ID!) { post(id: $id) { title author { username } } }", id=post.id)
    assert data["post"] == {"title": "over SOAP", "author": {"username": "john_doe"}}


def test_a_rest_write_is_read_over_soap_and_a_soap_publish_reaches_sse(blog):
    svc = zeep_service(blog)
    with httpx.Client(base_url=blog.url, timeout=TIMEOUT) as http:
        r = http.post("/api/collections/posts/records", json={"id": "r1", "title": "over REST", "author": "123", "tags": ["a", "b"]})
        assert r.status_code == 201, r.text
        r = http.patch("/api/collections/posts/records/r1", json={"body": "patched"})
        assert r.status_code == 200, r.text
    got = svc.GetPost(id="r1")
    assert (got.title, got.body, got.tags, got.version) == ("over REST", "patched", ["a", "b"], 2)

    async def scenario():
        async with httpx.AsyncClient(base_url=blog.url, timeout=httpx.Timeout(TIMEOUT, read=30.0)) as http:
            sse = await open_sse(http, {"topic": "sensors/#"})
            sent = await asyncio.to_thread(svc.Publish, topic="sensors/temperature", data="21.5", content_type="text/plain")
            ev = await sse.next()
            body = json.loads(ev.data)
            assert (int(ev.id), body["subject"], body["data"]) == (sent.sequence, "sensors/temperature", "21.5")
            await sse.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
