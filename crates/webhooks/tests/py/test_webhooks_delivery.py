"""Deliveries as a subscriber sees them: signed per Standard Webhooks (checked by the
third-party `standardwebhooks` library), the CloudEvent as the body, one stable
webhook-id per event and endpoint; seed 000's Flask receiver working unchanged; the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
from polyport_server import polyport_bin
from webhook_receivers import Api, free_port, new_secret, wait_until


def test_deliveries_verify_with_standardwebhooks_and_carry_the_cloudevent(api, receivers):
    rx = receivers()
    # No secret given: the server generates one and returns it once, at registration.
    ep = api.create_endpoint(rx.url, event_types=["posts.*"], description="blog posts")
    assert ep["secret"].startswith("whsec_") and ep["enabled"] is True
    rx.secrets = {"current": ep["secret"]}

    post = api.create_record("posts", {"title": "Hello hooks", "views": 1})
    api.c.patch(f"/api/collections/posts/records/{post['id']}", json={"views": 2}).raise_for_status()
    api.publish("sensors/t", {"c": 21})  # not a posts.* event: not delivered
    api.c.delete(f"/api/collections/posts/records/{post['id']}").raise_for_status()

    got = rx.wait_count(3, timeout=10)
    assert all(r.verified == {"current": True} for r in got), [r.errors for r in got]
    events = [r.event() for r in got]
    assert [e["type"] for e in events] == ["posts.created", "posts.updated", "posts.deleted"]
    assert events[0]["specversion"] == "1.0" and events[0]["data"]["record"]["title"] == "Hello hooks"
    assert events[1]["data"]["previous"]["views"] == 1 and events[1]["data"]["record"]["views"] == 2
    for r, e in zip(got, events):
        assert r.headers["content-type"] == "application/json"
        assert r.webhook_id == f"msg_{ep['id']}_{e['sequence']}"
        assert abs(int(r.headers["webhook-timestamp"]) - r.wall) < 5
        assert len(r.signatures) == 1 and r.signatures[0].startswith("v1,")
    # In order per endpoint, and nothing else arrives.
    assert [e["sequence"] for e in events] == sorted(e["sequence"] for e in events)
    time.sleep(0.5)
    assert len(rx.snapshot()) == 3

    listed = api.deliveries(ep["id"])
    assert {d["status"] for d in listed} == {"delivered"} and len(listed) == 3
    d = api.delivery(ep["id"], events[0]["sequence"])
    assert d["id"] == got[0].webhook_id and d["attempts"] == 1
    [a] = d["attempt_log"]
    assert a["status"] == 200 and "error" not in a and a["response"] == '{"ok": true}'


def test_custom_headers_and_topic_filters(api, receivers):
    secret = new_secret()
    rx = receivers(secrets={"s": secret})
    ep = api.create_endpoint(rx.url, topics=["sensors/#"], headers={"X-Tenant": "acme"}, secret=secret)
    assert ep["secret"] == secret
    api.publish("other/x", {"skip": True})
    seq = api.publish("sensors/kitchen/temp", {"c": 22.5})
    [r] = rx.wait_count(1, timeout=10)
    assert r.headers["x-tenant"] == "acme"
    assert r.event()["data"] == {"c": 22.5} and r.event()["sequence"] == seq
    assert r.webhook_id == f"msg_{ep['id']}_{seq}"
    # Headers the signature depends on cannot be overridden.
    bad = api.c.post("/api/webhooks/endpoints", json={"url": rx.url, "headers": {"webhook-id": "x"}})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "headers.webhook-id"


# Seed 000's receiver, verbatim but for the port (`app.run(debug=True)` -> `port=…`).
SEED_000_FLASK = """\
from flask import Flask, request, jsonify

app = Flask(__name__)

@app.route('/webhook', methods=['POST'])
def webhook():
    event_data = request.json  # Received event data from the webhook
    print('Received event:', event_data)

    # Process the event data here

    return jsonify({'message': 'Webhook received successfully'})

if __name__ == '__main__':
    app.run(debug=True, port=PORT)
"""


def _wait_port(port: int, proc: subprocess.Popen, timeout: float):
    def up():
        if proc.poll() is not None:
            raise AssertionError(f"the Flask receiver exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_until(up, timeout, f"the Flask receiver on port {port}")


def test_seed_000_flask_receiver_gets_post_changes_made_over_rest(api, tmp_path):
    port = free_port()
    app = tmp_path / "receiver.py"
    app.write_text(SEED_000_FLASK.replace("PORT", str(port)))
    out = tmp_path / "flask.out"
    with open(out, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(app)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=tmp_path,
            start_new_session=True,  # debug=True runs a reloader parent and a child: stop both
        )
    try:
        _wait_port(port, proc, timeout=15)
        ep = api.create_endpoint(f"http://127.0.0.1:{port}/webhook", event_types=["posts.*"])
        post = api.create_record("posts", {"title": "From REST", "author": "123"})
        api.c.patch(f"/api/collections/posts/records/{post['id']}", json={"title": "Edited"}).raise_for_status()
        api.create_record("users", {"username": "not_a_post"})

        def delivered():
            items = api.deliveries(ep["id"])
            return items if len(items) == 2 and all(d["status"] == "delivered" for d in items) else None

        items = wait_until(delivered, 15, "both post changes delivered to Flask")
        for d in items:
            [a] = api.delivery(ep["id"], d["seq"])["attempt_log"]
            assert a["status"] == 200
            assert json.loads(a["response"]) == {"message": "Webhook received successfully"}
        # What the seed's handler printed: the parsed CloudEvents, nothing for users.
        text = wait_until(lambda: out.read_text() if out.read_text().count("Received event:") >= 2 else None, 5, "Flask's prints")
        printed = [line for line in text.splitlines() if line.startswith("Received event:")]
        assert len(printed) == 2, text
        assert "'type': 'posts.created'" in printed[0] and "'title': 'From REST'" in printed[0]
        assert "'type': 'posts.updated'" in printed[1] and "'title': 'Edited'" in printed[1]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def _cli(server, *args: str) -> str:
    r = subprocess.run(
        [str(polyport_bin()), "webhooks", *args, "--server", server.url],
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, f"polyport webhooks {' '.join(args)} exited {r.returncode}: {r.stderr}"
    return r.stdout


def test_cli_add_then_deliveries_shows_the_delivery_and_its_attempt(server, receivers):
    rx = receivers()
    added = json.loads(_cli(server, "add", rx.url, "--events", "posts.*", "--description", "from the CLI"))
    ep_id, secret = added["id"], added["secret"]
    assert ep_id.startswith("ep_") and added["event_types"] == ["posts.*"]
    rx.secrets = {"cli": secret}

    listing = _cli(server, "list")
    assert ep_id in listing and rx.url in listing and "enabled" in listing

    with httpx.Client(base_url=server.url, timeout=10) as c:
        c.post("/api/collections/posts/records", json={"title": "cli"}).raise_for_status()
    [r] = rx.wait_count(1, timeout=10)
    assert r.verified == {"cli": True}
    seq = r.event()["sequence"]
    api = Api(server.url)
    try:
        api.wait_delivery(ep_id, seq, "delivered", timeout=5)
    finally:
        api.close()

    out = _cli(server, "deliveries", ep_id)
    lines = out.splitlines()
    assert lines[0].startswith(f"msg_{ep_id}_{seq}  seq {seq}  posts.created  delivered  attempts 1"), out
    assert lines[1].strip().startswith("#1 ") and "status 200" in lines[1], out

    assert f"deleted {ep_id}" in _cli(server, "rm", ep_id)
    assert ep_id not in _cli(server, "list")
