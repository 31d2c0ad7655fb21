"""The seed articles' examples, run against `polyport serve --demo blog`.

Seed 002 walks through REST on a blog: `GET /users/123` answers the user `john_doe`, and
a second request lists that user's posts. Polyport serves the same data under
/api/collections/…, with the relation `posts.author -> users` for the second step.
"""

from __future__ import annotations

import httpx


def test_seed_002_get_user_123_is_john_doe(client: httpx.Client):
    r = client.get("/api/collections/users/records/123")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    user = r.json()
    assert user["id"] == "123"
    assert user["username"] == "john_doe"
    assert "@" in user["email"]
    assert r.headers["etag"] == f'"{user["version"]}"'


def test_seed_002_the_users_posts_and_their_author(client: httpx.Client):
    r = client.get("/api/collections/posts/records", params={"filter": 'author = "123"', "sort": "title", "expand": "author"})
    assert r.status_code == 200, r.text
    posts = r.json()["items"]
    assert [p["title"] for p in posts] == ["Hello, Polyport", "Realtime everywhere"]
    assert all(p["expand"]["author"]["username"] == "john_doe" for p in posts)
