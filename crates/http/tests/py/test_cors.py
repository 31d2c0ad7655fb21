"""CORS as a browser meets it (crates/http/src/cors.rs): the default lets every origin
call and says so the same way to all; a configured list echoes only its own origins; a
preflight allows the method and headers asked for, `Authorization` included, which a
`*` would not cover. (test_browser.py drives the same from a real Chromium page.)"""

from __future__ import annotations

import httpx
from polyport_server import servers  # noqa: F401  (fixture)

PREFLIGHT = {
    "Origin": "https://app.example",
    "Access-Control-Request-Method": "PATCH",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def test_by_default_every_origin_may_call_and_preflights_allow_authorization(servers):
    s = servers.start()
    with httpx.Client(base_url=s.url, timeout=10) as c:
        r = c.options("/api/collections/posts/records/x", headers=PREFLIGHT)
        assert r.status_code == 204, r.text
        assert r.headers["access-control-allow-origin"] == "*"
        assert r.headers["access-control-allow-methods"] == "PATCH"
        assert r.headers["access-control-allow-headers"] == "authorization, content-type"
        assert int(r.headers["access-control-max-age"]) > 0

        r = c.post("/api/collections/posts/records", json={"title": "t"}, headers={"Origin": "https://app.example"})
        assert r.status_code == 201
        assert r.headers["access-control-allow-origin"] == "*"
        assert set(r.headers["access-control-expose-headers"].split(",")) == {"etag", "location"}
        # Without an Origin (curl, servers) the answer is the same: a cache may share it.
        assert c.get(r.headers["location"]).headers["access-control-allow-origin"] == "*"
        # A plain OPTIONS is no preflight: it reaches the routes (405, with CORS headers).
        r = c.options("/api/collections", headers={"Origin": "https://app.example"})
        assert r.status_code == 405 and r.headers["access-control-allow-origin"] == "*"


def test_a_configured_list_echoes_its_own_origins_only(servers):
    s = servers.start('[http]\ncors_origins = ["https://app.example", "https://admin.example/"]\n')
    with httpx.Client(base_url=s.url, timeout=10) as c:
        for origin in ("https://app.example", "https://admin.example"):
            r = c.get("/api/collections", headers={"Origin": origin})
            assert r.headers["access-control-allow-origin"] == origin
            assert "origin" in r.headers["vary"].lower()
        r = c.get("/api/collections", headers={"Origin": "https://evil.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        r = c.options("/api/collections", headers={**PREFLIGHT, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_cors_can_be_turned_off(servers):
    s = servers.start("[http]\ncors_origins = []\n")
    r = httpx.get(f"{s.url}/api/collections", headers={"Origin": "https://app.example"}, timeout=10)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
