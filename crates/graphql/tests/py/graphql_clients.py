"""gql clients on a test server, and the small helpers the GraphQL tests share.

`http_client(server)` is a synchronous gql Client over HTTP (httpx); it does not fetch
the schema, so every query is validated by the server, not by gql. `query()` returns
`data` and fails on errors; `query_errors()` expects errors and returns them (each a
dict with `message` and, from resolvers, `extensions.code`). `Subscription` runs one
gql subscription over a websocket session and queues what it yields, so a test can await
the next result with a timeout.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXTransport
from gql.transport.websockets import WebsocketsTransport

from realtime_clients import TIMEOUT, Feed, _retrieve

# gql's WebsocketsTransport constants: the two subprotocols the server must speak.
GRAPHQL_TRANSPORT_WS = WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL  # "graphql-transport-ws"
LEGACY_GRAPHQL_WS = WebsocketsTransport.APOLLO_SUBPROTOCOL  # "graphql-ws" (subscriptions-transport-ws)
SUBPROTOCOLS = [GRAPHQL_TRANSPORT_WS, LEGACY_GRAPHQL_WS]


def graphql_url(server) -> str:
    return f"{server.url}/graphql"


def http_client(server, *, fetch_schema: bool = False) -> Client:
    transport = HTTPXTransport(url=graphql_url(server), timeout=TIMEOUT)
    return Client(transport=transport, fetch_schema_from_transport=fetch_schema, execute_timeout=TIMEOUT)


def ws_transport(server, subprotocol: str) -> WebsocketsTransport:
    return WebsocketsTransport(
        url=f"ws://{server.http}/graphql",
        subprotocols=[subprotocol],
        connect_timeout=TIMEOUT,
        ack_timeout=TIMEOUT,
        close_timeout=5,
    )


def request(text: str, **variables: Any) -> GraphQLRequest:
    return GraphQLRequest(text, variable_values=variables or None)


def query(gql_client: Client, text: str, **variables: Any) -> dict:
    """Runs a query or mutation; returns `data` (a TransportQueryError fails the test)."""
    return gql_client.execute(request(text, **variables))


def query_errors(gql_client: Client, text: str, **variables: Any) -> list[dict]:
    """Runs a request that must fail; returns the GraphQL `errors`."""
    try:
        data = gql_client.execute(request(text, **variables))
    except TransportQueryError as e:
        assert isinstance(e.errors, list) and e.errors, e
        for err in e.errors:
            assert isinstance(err.get("message"), str) and err["message"], err
        return e.errors
    raise AssertionError(f"expected GraphQL errors, got data {data!r}")


def code_of(err: dict) -> str | None:
    return (err.get("extensions") or {}).get("code")


def store_reads(client: httpx.Client) -> int:
    """`polyport_store_read_seconds_count` from GET /metrics: reads the store has served."""
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    m = re.search(r"^polyport_store_read_seconds_count(?:\{[^}]*\})? (\d+(?:\.\d+)?)$", r.text, re.M)
    assert m, f"no polyport_store_read_seconds_count in /metrics:\n{r.text[:2000]}"
    return int(float(m.group(1)))


def wait_until(predicate, what: str, timeout: float = TIMEOUT, interval: float = 0.05):
    """Polls `predicate` until it returns something truthy (returned) or fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(interval)


class Subscription(Feed):
    """One subscription on a gql websocket session; items are the results' `data`."""

    def __init__(self, session, text: str, **variables: Any):
        super().__init__(f"subscription {text.split('{', 2)[1].strip()}")
        self.ready.set()  # neither protocol acknowledges a subscribe; see wait_live()

        async def run():
            async for data in session.subscribe(request(text, **variables)):
                self.queue.put_nowait(data)

        self.task = asyncio.create_task(run())
        self.task.add_done_callback(_retrieve)

    async def wait_live(self, probe, timeout: float = TIMEOUT) -> list:
        """Calls the async `probe()` (which should cause an event this subscription sees)
        every 0.2 s until something arrives; returns what arrived. Neither GraphQL
        websocket protocol says when a subscription is live, so this is how a test knows
        that a later write will be delivered live rather than racing the subscribe."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await probe()
            try:
                first = await self.next(timeout=0.2)
            except AssertionError:
                if self.task.done():
                    raise
                continue
            seen = [first]
            while not self.queue.empty():
                seen.append(self.queue.get_nowait())
            return seen
        raise AssertionError(f"{self.name}: nothing arrived within {timeout}s of probing")
