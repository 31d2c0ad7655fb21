"""`[auth]` holds on every HTTP route: with `anonymous = false`, REST, SSE, `/ws`,
GraphQL and the index answer 401 (problem+json, `WWW-Authenticate: Basic`) without
credentials or with wrong ones, and serve a configured user over `Authorization: Basic`;
probes and signed inbound hooks stay reachable; nothing is written by a refused call."""

from __future__ import annotations

import asyncio
import json
import subprocess

import httpx
import pytest
import websockets
import websockets.exceptions
from polyport_server import servers  # noqa: F401  (fixture)

AUTH = '[auth]\nusers = { alice = "s3cret" }\nanonymous = false\n'
ALICE = ("alice", "s3cret")


@pytest.fixture
def locked(servers):
    return servers.start(AUTH, "--demo", "blog")


def test_every_route_wants_credentials(locked):
    with httpx.Client(base_url=locked.url, timeout=10) as anon:
        for method, path in [("GET", "/"), ("GET", "/api/collections/posts/records"), ("GET", "/api/events"),
                             ("POST", "/graphql"), ("GET", "/openapi.json"), ("GET", "/metrics"), ("GET", "/nowhere")]:
            r = anon.request(method, path, json={"query": "{ __typename }"} if method == "POST" else None)
            assert r.status_code == 401, (path, r.status_code, r.text)
            assert r.headers["www-authenticate"].startswith("Basic realm=")
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["code"] == "unauthenticated"
        r = anon.post("/api/collections/posts/records", json={"title": "anon", "author": "123"})
        assert r.status_code == 401
        for probe in ("/healthz", "/readyz"):
            assert anon.get(probe).status_code == 200
    with httpx.Client(base_url=locked.url, timeout=10, auth=("alice", "wrong")) as wrong:
        assert wrong.get("/api/collections").status_code == 401
    with httpx.Client(base_url=locked.url, timeout=10, headers={"Authorization": "Bearer abc"}) as bearer:
        r = bearer.get("/api/collections")
        assert r.status_code == 401 and "not valid" in r.json()["detail"]
    with httpx.Client(base_url=locked.url, timeout=10, auth=ALICE) as alice:
        titles = [p["title"] for p in alice.get("/api/collections/posts/records").json()["items"]]
        assert "anon" not in titles and len(titles) == 2
        assert alice.post("/api/collections/posts/records", json={"title": "mine", "author": "123"}).status_code == 201
        r = alice.post("/graphql", json={"query": "{ user(id: 123) { username } }"})
        assert r.json()["data"]["user"]["username"] == "john_doe"


def test_a_refused_write_does_not_leave_its_client_a_dead_connection(locked):
    # The refused body is never read, so the server closes the connection after the
    # 401; it must say so, or a pooled client sends its next request down that socket.
    with httpx.Client(base_url=locked.url, timeout=10, auth=("alice", "wrong")) as wrong:
        for i in range(200):
            r = wrong.patch("/api/collections/posts/records/x", json={"title": "x" * (i * 97)})
            assert r.status_code == 401
            assert r.headers.get("connection") == "close", r.headers
        assert wrong.get("/api/collections").headers.get("connection") != "close"


def test_streams_and_sockets_take_the_same_credentials(locked):
    async def scenario():
        url = f"ws://{locked.http}/ws"
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        assert refused.value.response.status_code == 401
        auth = httpx.BasicAuth(*ALICE)._auth_header
        async with websockets.connect(url, additional_headers={"Authorization": auth}) as ws:
            await ws.send(json.dumps({"op": "subscribe", "id": "1", "topic": "sensors/#"}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply["type"] == "ok", reply
        async with httpx.AsyncClient(base_url=locked.url, auth=ALICE, timeout=10) as alice:
            async with alice.stream("GET", "/api/events", params={"topic": "sensors/#"}) as sse:
                assert sse.status_code == 200
    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_no_users_means_loopback_only_unless_allowed(tmp_path, spawn):
    """Like Mosquitto 2: with no identity source, a listener beyond loopback stops
    start-up with a message saying what to do; `--allow-anonymous` (or users) lets it run."""
    from polyport_server import polyport_bin

    p = subprocess.run(
        [str(polyport_bin()), "serve", "--data-dir", str(tmp_path / "d"), "--http", "127.0.0.1:0",
         "--grpc", "127.0.0.1:0", "--mqtt", "0.0.0.0:0", "--amqp", "127.0.0.1:0", "--stomp", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )
    assert p.returncode != 0
    assert "mqtt on 0.0.0.0:0" in p.stderr and "--allow-anonymous" in p.stderr and "[auth] users" in p.stderr, p.stderr
    s = spawn("--mqtt", "0.0.0.0:0", "--allow-anonymous")
    assert httpx.get(f"{s.url}/healthz").status_code == 200


def test_tokens_let_streams_and_sockets_in_through_the_query(locked):
    with httpx.Client(base_url=locked.url, timeout=10) as anon:
        assert anon.post("/api/auth/token").status_code == 401, "a token needs a signed-in caller"
        tok = anon.post("/api/auth/token", auth=ALICE).json()
        assert tok["expires_in"] == 300 and tok["token"].startswith("pp1.")
        assert anon.get("/api/collections", params={"access_token": tok["token"]}).status_code == 200
        assert anon.get("/api/collections", headers={"Authorization": f"Bearer {tok['token']}"}).status_code == 200
        forged = tok["token"][:-2] + ("AA" if not tok["token"].endswith("AA") else "BB")
        r = anon.get("/api/collections", params={"access_token": forged})
        assert r.status_code == 401 and "not valid" in r.json()["detail"]

    async def socket():
        url = f"ws://{locked.http}/ws?access_token={tok['token']}"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"op": "subscribe", "id": "1", "topic": "sensors/#"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ok"
    asyncio.run(asyncio.wait_for(socket(), 20))


def test_a_browser_eventsource_signs_in_with_a_token(locked):
    """Debian's Chromium (scripts/setup-clients): the page fetches a token with Basic, then
    its EventSource (which cannot send headers) subscribes with ?access_token=."""
    from playwright.sync_api import sync_playwright
    from test_browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=90_000)  # a cold first start of Chromium can take a while
        try:
            page = browser.new_page()
            page.goto(f"{locked.url}/healthz")  # same origin as the API; a probe needs no credentials
            result = page.evaluate("""async (creds) => {
              const auth = {Authorization: 'Basic ' + btoa(creds)};
              const refused = await new Promise((resolve) => {
                const es = new EventSource('/api/events?topic=browser/%23');
                es.onerror = () => { resolve(es.readyState); es.close(); };
                es.onopen = () => { resolve('opened'); es.close(); };
              });
              const {token} = await (await fetch('/api/auth/token', {method: 'POST', headers: auth})).json();
              const event = await new Promise((resolve, reject) => {
                const es = new EventSource('/api/events?topic=browser/%23&access_token=' + encodeURIComponent(token));
                es.onopen = () => fetch('/api/topics/browser/a', {method: 'POST', headers: {...auth, 'content-type': 'application/json'}, body: '{"n": 1}'});
                es.onmessage = (m) => { es.close(); resolve(JSON.parse(m.data)); };
                es.onerror = () => { es.close(); reject(new Error('EventSource with a token failed')); };
                setTimeout(() => reject(new Error('no event within 8 s')), 8000);
              });
              return {refused, subject: event.subject, data: event.data};
            }""", "alice:s3cret")
        finally:
            browser.close()
    assert result == {"refused": 2, "subject": "browser/a", "data": {"n": 1}}, result
