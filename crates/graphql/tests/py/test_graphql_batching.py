"""No N+1: a page of N users with their posts costs a constant number of store reads,
counted by the server's own `polyport_store_read_seconds_count` (GET /metrics)."""

from __future__ import annotations

import asyncio

import httpx

from graphql_clients import http_client, query, store_reads
from realtime_clients import TIMEOUT

N = 30
PAGE = """query($n: Int) {
  userList(first: $n, filter: "username ~ \\"reader-\\"", sort: "username") {
    nodes { username posts { title author { username } } }
  }
}"""


def seed(base_url: str) -> None:
    """N users with 2 posts each, over REST (concurrently, to keep the test short)."""

    async def one(client: httpx.AsyncClient, i: int):
        r = await client.post("/api/collections/users/records", json={"id": f"r{i:02}", "username": f"reader-{i:02}"})
        assert r.status_code == 201, r.text
        for k in range(2):
            r = await client.post("/api/collections/posts/records", json={"title": f"post {k} of reader-{i:02}", "author": f"r{i:02}"})
            assert r.status_code == 201, r.text

    async def all_():
        async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client:
            await asyncio.gather(*(one(client, i) for i in range(N)))

    asyncio.run(asyncio.wait_for(all_(), 60))


def reads_for(client, action) -> int:
    before = store_reads(client)
    action()
    return store_reads(client) - before


def test_user_page_with_posts_costs_constant_store_reads(blog, client):
    seed(blog.url)
    gql = http_client(blog)

    def check_page(n):
        users = query(gql, PAGE, n=n)["userList"]["nodes"]
        assert [u["username"] for u in users] == [f"reader-{i:02}" for i in range(n)]
        for u in users:
            assert sorted(p["title"] for p in u["posts"]) == [f"post {k} of {u['username']}" for k in range(2)]
            assert all(p["author"]["username"] == u["username"] for p in u["posts"])

    check_page(N)  # warm-up: the first request may load lazily initialised state
    small = reads_for(client, lambda: check_page(2))
    large = reads_for(client, lambda: check_page(N))
    # users page + one batched reverse lookup (posts) + one batched forward lookup (author)
    assert large <= 5, f"{large} store reads for {N} users with posts (N+1 would be > {N})"
    assert large <= small + 1, f"reads grew with N: {small} for 2 users, {large} for {N}"

    # The counter does see per-record work: the same data fetched REST-style, one request
    # per user, costs at least N reads.
    def rest_style():
        for i in range(N):
            r = client.get("/api/collections/posts/records", params={"filter": f'author = "r{i:02}"'})
            assert r.status_code == 200 and len(r.json()["items"]) == 2, r.text

    assert reads_for(client, rest_style) >= N
