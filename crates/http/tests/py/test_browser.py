"""A real browser's EventSource against Polyport: headless Debian Chromium, driven with
playwright, on a page of another origin (so CORS is exercised), including the automatic
resume after a server restart through `Last-Event-ID`.

Chromium is Debian's `/usr/bin/chromium`, installed by `scripts/setup-clients`; playwright
only drives it (never `playwright install`). Without it the test is skipped, unless `CI`
is set: there a missing browser is a failure.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from polyport_server import SHUTDOWN_TIMEOUT, Server, start_server

try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright
except ImportError as e:  # pragma: no cover - an out-of-date .venv
    sync_playwright = None
    PLAYWRIGHT_IMPORT_ERROR = e
    PlaywrightError = Exception

CHROMIUM = Path("/usr/bin/chromium")
# The network here is closed; these keep Chromium from waiting on it (or on a GPU).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 10_000  # bound of every wait on the page

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK) and "CI" not in os.environ,
    reason=f"{CHROMIUM} is not installed (scripts/setup-clients installs Debian's chromium); "
    "with CI set this test fails instead",
)

# The page records what each EventSource delivers. `listen(name, url)` opens one into
# `streams[name]`; the page itself opens `browser` on the topic tree `browser/#` of the
# Polyport named in its `?polyport=HOST:PORT`, and `window.got` is that stream's list.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Polyport EventSource</title>
<script>
window.streams = {};
window.listen = function (name, url) {
  const s = {got: [], opens: 0, errors: 0, readyState: 0};
  window.streams[name] = s;
  const es = new EventSource(url);
  es.onopen = () => { s.opens++; s.readyState = es.readyState; };
  es.onerror = () => { s.errors++; s.readyState = es.readyState; };
  es.onmessage = (m) => {
    let ev;
    try { ev = JSON.parse(m.data); } catch (e) { ev = {unparsable: m.data}; }
    s.got.push({id: m.lastEventId, type: ev.type, sequence: ev.sequence ?? null,
                data: ev.data ?? null, unparsable: ev.unparsable ?? null});
  };
  return s;
};
const polyport = new URLSearchParams(location.search).get('polyport');
window.got = listen('browser', `http://${polyport}/api/events?topic=browser/%23`).got;
</script>
<p>Polyport EventSource test page</p>
"""


class _PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(server: Server) -> None:
    code = server.stop()
    assert code == 0, (
        f"polyport exited with {code!r} after SIGTERM (want 0 within {SHUTDOWN_TIMEOUT}s); log:\n{server.log()[-4000:]}"
    )


def test_browser_eventsource_receives_events_and_resumes_after_a_server_restart(tmp_path):
    if sync_playwright is None:
        pytest.fail(f"playwright is not importable ({PLAYWRIGHT_IMPORT_ERROR}): run scripts/setup-clients", pytrace=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is not installed and CI is set: run scripts/setup-clients", pytrace=False)

    data_dir = tmp_path / "polyport-data"
    addr = f"127.0.0.1:{_free_port()}"  # fixed, so the restarted server has the same address
    base = f"http://{addr}"
    servers: list[Server] = []
    console: list[str] = []
    es_requests: list = []  # playwright Requests of the `browser` EventSource, in order

    page_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    threading.Thread(target=page_server.serve_forever, daemon=True).start()
    page_url = f"http://127.0.0.1:{page_server.server_address[1]}/?polyport={addr}"

    def publish(client: httpx.Client, n: int) -> int:
        r = client.post(f"{base}/api/topics/browser/a", json={"n": n, "text": f"hé {n}"})
        assert r.status_code == 202, r.text
        return r.json()["sequence"]

    try:
        servers.append(start_server(data_dir, http=addr))
        with sync_playwright() as pw, httpx.Client(timeout=10.0) as client:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=90_000)  # a cold first start of Chromium can take a while
            try:
                page = browser.new_page()
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                page.on(
                    "request",
                    lambda r: es_requests.append(r) if "/api/events?topic=browser" in r.url else None,
                )

                def state(name: str = "browser") -> dict:
                    return page.evaluate("(n) => window.streams[n]", name)

                def wait_for(js: str, what: str, name: str = "browser") -> None:
                    try:
                        page.wait_for_function(js, polling=50, timeout=WAIT_MS)
                        return
                    except PlaywrightError as e:
                        error = e.__class__.__name__
                    pytest.fail(
                        f"{what}: not within {WAIT_MS} ms ({error})\n"
                        f"page state of {name!r}: {json.dumps(state(name), ensure_ascii=False)}\n"
                        f"console: {console}\nserver log:\n{servers[-1].log()[-3000:]}",
                        pytrace=False,
                    )

                page.goto(page_url, timeout=WAIT_MS)
                # Open means the response headers came, which Polyport sends once the
                # subscription is live: a publish from now on is seen.
                wait_for("() => window.streams.browser.opens >= 1", "EventSource open")

                # 1. Three events, live.
                assert [publish(client, n) for n in (1, 2, 3)] == [1, 2, 3]
                wait_for("() => window.got.length >= 3", "events 1..3 in the browser")

                # 2. SIGTERM ends the stream; the browser notices and schedules its reconnect
                # (Chromium waits ~3 s; Polyport sends no `retry:`).
                _stop(servers[-1])
                wait_for("() => window.streams.browser.errors >= 1", "the browser noticing the closed stream")
                restarted = time.monotonic()
                servers.append(start_server(data_dir, http=addr))
                # 3. Two events while the browser is still waiting to reconnect: it can only
                # get them by resuming with Last-Event-ID: 3 and the server replaying them.
                assert [publish(client, n) for n in (4, 5)] == [4, 5]
                published_after = time.monotonic() - restarted
                before = state()
                assert before["opens"] == 1, (
                    f"the browser reconnected before events 4 and 5 were published "
                    f"({published_after:.2f} s after the restart), so this run did not test the replay: {before}"
                )
                assert [e["id"] for e in before["got"]] == ["1", "2", "3"], before
                wait_for("() => window.got.length >= 5", "events 4 and 5 after the reconnect")

                # 4. A record change reaches a second EventSource on the collection.
                page.evaluate("(u) => { listen('notes', u); }", f"{base}/api/events?collection=notes")
                wait_for("() => window.streams.notes.opens >= 1", "EventSource on ?collection=notes open", "notes")
                r = client.post(
                    f"{base}/api/collections/notes/records",
                    json={"id": "n1", "title": "written while a browser watches"},
                )
                assert r.status_code == 201, r.text
                wait_for("() => window.streams.notes.got.length >= 1", "the record change", "notes")

                notes = state("notes")
                assert len(notes["got"]) == 1, notes
                change = notes["got"][0]
                assert change["id"] == "6" and change["sequence"] == 6, change
                assert change["type"] == "notes.created", change
                assert change["data"]["type"] == "notes.created", change
                assert change["data"]["record"]["id"] == "n1", change
                assert change["data"]["record"]["title"] == "written while a browser watches", change

                # The topic stream: exactly 1..5 in order, no duplicate, no notice, each
                # CloudEvent's data what was published.
                final = state()
                assert final["opens"] == 2, final  # one reconnect
                assert [e["id"] for e in final["got"]] == ["1", "2", "3", "4", "5"], final
                assert [e["sequence"] for e in final["got"]] == [1, 2, 3, 4, 5], final
                assert all(e["type"] == "polyport.message" for e in final["got"]), final
                assert [e["data"] for e in final["got"]] == [{"n": n, "text": f"hé {n}"} for n in range(1, 6)], final

                # The reconnect carried Last-Event-ID: 3 (the first request none).
                assert len(es_requests) >= 2, [r.url for r in es_requests]
                first, again = es_requests[0].all_headers(), es_requests[1].all_headers()
                assert "last-event-id" not in first, first
                assert again.get("last-event-id") == "3", again
                assert not [m for m in console if m.startswith(("error", "pageerror"))], console
            finally:
                browser.close()
    finally:
        page_server.shutdown()
        page_server.server_close()
        for s in servers:
            if not s.stopped:
                _stop(s)
