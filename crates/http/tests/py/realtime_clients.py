"""Small asyncio clients for Polyport's four realtime transports, each feeding what it
receives into a queue so a test can await "the next event" with a timeout.

Every opener returns only once the server has answered the subscription (SSE / NDJSON:
response headers, which the server sends after the subscription is live; WebSocket: the
`ok` reply to `subscribe`), so a write made afterwards is guaranteed to be seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any

import httpx
import websockets
from httpx_sse import aconnect_sse

TIMEOUT = 10.0


def _retrieve(task: asyncio.Task) -> None:
    # A reader that dies after its test already failed must not add asyncio noise.
    if not task.cancelled():
        task.exception()


class Feed:
    """Items pushed by a background reader task."""

    def __init__(self, name: str):
        self.name = name
        self.queue: asyncio.Queue = asyncio.Queue()
        self.ready = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.response: httpx.Response | None = None

    async def started(self) -> "Feed":
        assert self.task is not None
        ready = asyncio.create_task(self.ready.wait())
        done, _ = await asyncio.wait({ready, self.task}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            ready.cancel()
            raise AssertionError(f"{self.name}: not subscribed within {TIMEOUT}s")
        if not self.ready.is_set():
            ready.cancel()
            self.task.result()  # raises the reader's error
            raise AssertionError(f"{self.name}: stream ended before it started")
        return self

    async def next(self, timeout: float = TIMEOUT) -> Any:
        get = asyncio.ensure_future(self.queue.get())
        assert self.task is not None
        done, _ = await asyncio.wait({get, self.task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            return get.result()
        get.cancel()
        if self.task in done:
            exc = self.task.exception()
            raise AssertionError(f"{self.name}: stream ended ({exc!r}) while waiting for an event")
        raise AssertionError(f"{self.name}: no event within {timeout}s")

    async def take(self, n: int, timeout: float = TIMEOUT) -> list:
        return [await self.next(timeout) for _ in range(n)]

    async def close(self) -> None:
        if self.task and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


async def next_matching(feed: Feed, predicate, what: str, limit: int = 50):
    """The first of the feed's next `limit` items that `predicate` accepts."""
    for _ in range(limit):
        item = await feed.next()
        if predicate(item):
            return item
    raise AssertionError(f"{feed.name}: no {what} among {limit} items")


async def open_sse(client: httpx.AsyncClient, params, headers: dict | None = None) -> Feed:
    """`GET /api/events`; items are httpx_sse.ServerSentEvent (comments are skipped)."""
    feed = Feed("SSE")

    async def run():
        async with aconnect_sse(client, "GET", "/api/events", params=params, headers=dict(headers or {})) as es:
            feed.response = es.response
            es.response.raise_for_status()
            feed.ready.set()
            async for ev in es.aiter_sse():
                feed.queue.put_nowait(ev)

    feed.task = asyncio.create_task(run())
    feed.task.add_done_callback(_retrieve)
    return await feed.started()


async def open_ndjson(client: httpx.AsyncClient, params) -> Feed:
    """`GET /api/stream`; items are parsed JSON lines (CloudEvents)."""
    feed = Feed("NDJSON")

    async def run():
        async with client.stream("GET", "/api/stream", params=params) as r:
            feed.response = r
            r.raise_for_status()
            feed.ready.set()
            async for line in r.aiter_lines():
                if line.strip():
                    feed.queue.put_nowait(json.loads(line))

    feed.task = asyncio.create_task(run())
    feed.task.add_done_callback(_retrieve)
    return await feed.started()


async def poll(client: httpx.AsyncClient, params, **extra) -> dict:
    """One `GET /api/poll`; returns {"events", "cursor", "epoch"}."""
    r = await client.get("/api/poll", params=list(_items(params)) + list(extra.items()))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def _items(params):
    return params.items() if isinstance(params, dict) else params


class WsClient:
    """One `/ws` connection: `request()` sends an op and awaits the reply with its `id`;
    `event` messages go to `events`."""

    _ids = itertools.count(1)

    def __init__(self, conn, name: str):
        self.conn = conn
        self.name = name
        self.pending: dict[Any, asyncio.Future] = {}
        self.events = Feed(f"WebSocket {name}")
        self.events.ready.set()
        self.other: list[dict] = []
        self.events.task = asyncio.create_task(self._read())
        self.events.task.add_done_callback(_retrieve)

    @classmethod
    async def connect(cls, url: str, name: str = "ws") -> "WsClient":
        conn = await asyncio.wait_for(websockets.connect(url, open_timeout=TIMEOUT), TIMEOUT)
        return cls(conn, name)

    async def _read(self):
        async for raw in self.conn:
            msg = json.loads(raw)
            kind = msg.get("type")
            if kind in ("ok", "error") and msg.get("id") in self.pending:
                self.pending.pop(msg["id"]).set_result(msg)
            elif kind == "event":
                self.events.queue.put_nowait(msg)
            else:
                self.other.append(msg)

    async def request(self, op: str, **fields) -> dict:
        rid = f"{self.name}-{next(self._ids)}"
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        await self.conn.send(json.dumps({"op": op, "id": rid, **fields}))
        try:
            reply = await asyncio.wait_for(fut, TIMEOUT)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.name}: no reply to {op} within {TIMEOUT}s") from None
        assert reply["id"] == rid
        return reply

    async def ok(self, op: str, **fields) -> dict:
        reply = await self.request(op, **fields)
        assert reply["type"] == "ok", reply
        return reply

    async def next_event(self, timeout: float = TIMEOUT) -> dict:
        return await self.events.next(timeout)

    async def close(self):
        await self.conn.close()
        await self.events.close()
