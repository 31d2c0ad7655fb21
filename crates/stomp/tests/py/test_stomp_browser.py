"""Seed 001's browser chat over STOMP on WebSocket: two tabs of headless Debian Chromium,
each running @stomp/stompjs from a page of another origin, talk through
`/topic/chat.room1` on Polyport's `/stomp`, and an MQTT client on `chat/room1` sees every
line. Skipped without Chromium unless `CI` is set (as the HTTP suite's browser test)."""

from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

import pytest
from stomp_clients import WAIT, mqtt_listener, servers  # noqa: F401
from test_browser import CHROMIUM, CHROMIUM_ARGS, sync_playwright

STOMPJS = Path(__file__).resolve().parents[4] / "node_modules/@stomp/stompjs/bundles/stomp.umd.min.js"

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK) and "CI" not in os.environ,
    reason=f"{CHROMIUM} is not installed (scripts/setup-clients installs it)",
)

# A chat room page: joins `room` as `me` on the Polyport of `?ws=URL` and keeps every
# line it receives in `window.lines`.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>chat</title>
<script>STOMPJS</script>
<script>
const params = new URLSearchParams(location.search);
window.lines = [];
window.ready = false;
const client = new StompJs.Client({
  brokerURL: params.get('ws'),
  connectHeaders: { login: 'guest', passcode: 'guest', host: '/' },
  reconnectDelay: 0,
});
client.onConnect = () => {
  client.subscribe('/topic/chat.room1', (m) => window.lines.push(JSON.parse(m.body)));
  window.ready = true;
};
client.activate();
window.say = (text) => client.publish({
  destination: '/topic/chat.room1',
  body: JSON.stringify({ from: params.get('me'), text }),
  headers: { 'content-type': 'application/json' },
});
</script>
"""


def test_two_browser_tabs_chat_over_stomp_websocket_and_mqtt_listens(servers):
    s = servers.start()
    html = PAGE.replace("STOMPJS", STOMPJS.read_text()).encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args):
            pass

    pages = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=pages.serve_forever, daemon=True).start()
    try:
        with mqtt_listener(s, "chat/room1") as (_m, heard):
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=90_000)  # a cold first start of Chromium can take a while
                try:
                    ws = f"ws://{s.http}/stomp"
                    tabs = []
                    for me in ("alice", "bob"):
                        page = browser.new_page()
                        page.goto(f"http://127.0.0.1:{pages.server_port}/?ws={ws}&me={me}", timeout=WAIT * 1000)
                        page.wait_for_function("window.ready", polling=50, timeout=WAIT * 1000)
                        tabs.append(page)
                    alice, bob = tabs
                    alice.evaluate("say('hi bob')")
                    bob.wait_for_function("window.lines.length >= 1", polling=50, timeout=WAIT * 1000)
                    bob.evaluate("say('hi alice')")
                    for tab in tabs:
                        tab.wait_for_function("window.lines.length >= 2", polling=50, timeout=WAIT * 1000)
                        assert tab.evaluate("window.lines") == [
                            {"from": "alice", "text": "hi bob"},
                            {"from": "bob", "text": "hi alice"},
                        ]
                finally:
                    browser.close()
            assert [t for t, _ in heard.wait(2)] == ["chat/room1", "chat/room1"]
            assert b"hi alice" in heard[1][1]
    finally:
        pages.shutdown()
