"""Inbound hooks: `POST /hooks/{source}` as GitHub, Stripe, a Standard Webhooks sender
(signed by the `standardwebhooks` library) and a token-holding script would call it.
Good signatures answer 202 and the event is on `hooks/{source}` for every subscriber; a
bad one answers 401 and nothing at all is stored."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import datetime, timezone

import httpx
import pytest
from polyport_server import start_server
from standardwebhooks import Webhook
from webhook_receivers import Api, new_secret

GITHUB_SECRET = "It's a Secret to Everybody"
STRIPE_SECRET = "whsec_stripe_" + base64.b64encode(b"stripe test secret 0123456789").decode()
STANDARD_SECRET = new_secret()
TOKEN = "t0ken-" + uuid.uuid4().hex

CONFIG = f"""
[hooks]
require_known_sources = false

[hooks.sources.github]
scheme = "github"
secret = "{GITHUB_SECRET}"

[hooks.sources.stripe]
scheme = "stripe"
secret = "{STRIPE_SECRET}"

[hooks.sources.svix]
scheme = "standard_webhooks"
secret = "{STANDARD_SECRET}"

[hooks.sources.ci]
scheme = "token"
secret = "{TOKEN}"
"""


@pytest.fixture(scope="module")
def hooks_server(tmp_path_factory):
    """One server for the module, with the four signed sources configured."""
    data = tmp_path_factory.mktemp("polyport-hooks")
    cfg = data.parent / "hooks.toml"
    cfg.write_text(CONFIG)
    s = start_server(data, "--config", str(cfg))
    yield s
    code = s.stop()
    assert code == 0, f"polyport exited with {code!r}; log:\n{s.log()[-4000:]}"


@pytest.fixture
def c(hooks_server):
    with httpx.Client(base_url=hooks_server.url, timeout=10) as client:
        yield client


def head(c: httpx.Client) -> int:
    """The log's last sequence (every topic)."""
    r = c.get("/api/poll", params={"topic": "#", "since": 0, "wait": 0, "limit": 1000})
    assert r.status_code == 200, r.text
    return r.json()["cursor"]


def stored(c: httpx.Client, source: str, seq: int) -> dict:
    r = c.get("/api/poll", params={"topic": f"hooks/{source}", "since": seq - 1, "wait": 2})
    assert r.status_code == 200, r.text
    [ev] = [e for e in r.json()["events"] if e["sequence"] == seq]
    return ev


def accepted(r: httpx.Response, source: str) -> int:
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["topic"] == f"hooks/{source}" and body["id"] and isinstance(body["sequence"], int)
    return body["sequence"]


def refused(c: httpx.Client, r: httpx.Response, before: int):
    assert r.status_code == 401, r.text
    assert r.json()["code"] == "bad_signature"
    assert head(c) == before, "a refused hook must store nothing"


def test_github_x_hub_signature_256(c):
    payload = {"ref": "refs/heads/main", "commits": [{"id": "abc123", "message": "Fix"}], "pusher": {"name": "octocat"}}
    body = json.dumps(payload).encode()
    sig = "sha256=" + hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4())}

    seq = accepted(c.post("/hooks/github", content=body, headers={**headers, "X-Hub-Signature-256": sig}), "github")
    ev = stored(c, "github", seq)
    assert ev["type"] == "github.push" and ev["data"] == payload and ev["subject"] == "hooks/github"

    before = head(c)
    wrong = "sha256=" + hmac.new(b"not the secret", body, hashlib.sha256).hexdigest()
    refused(c, c.post("/hooks/github", content=body, headers={**headers, "X-Hub-Signature-256": wrong}), before)
    tampered = body.replace(b"octocat", b"mallory")
    refused(c, c.post("/hooks/github", content=tampered, headers={**headers, "X-Hub-Signature-256": sig}), before)
    refused(c, c.post("/hooks/github", content=body, headers=headers), before)  # unsigned


def _stripe_header(body: bytes, t: int, secret: str = STRIPE_SECRET) -> str:
    sig = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={sig}"


def test_stripe_signature(c):
    payload = {"id": "evt_1", "type": "payment_intent.succeeded", "data": {"object": {"amount": 2000}}}
    body = json.dumps(payload).encode()
    now = int(time.time())
    seq = accepted(
        c.post("/hooks/stripe", content=body, headers={"Content-Type": "application/json", "Stripe-Signature": _stripe_header(body, now)}),
        "stripe",
    )
    ev = stored(c, "stripe", seq)
    assert ev["type"] == "stripe.payment_intent.succeeded" and ev["data"] == payload

    before = head(c)
    for bad in [
        _stripe_header(body, now, secret="whsec_other"),  # another secret
        _stripe_header(body, now - 3600),  # correctly signed, but an hour old (replay)
        f"t={now}",  # no v1
    ]:
        refused(c, c.post("/hooks/stripe", content=body, headers={"Content-Type": "application/json", "Stripe-Signature": bad}), before)


def test_standard_webhooks_signed_by_the_library(c):
    payload = {"type": "invoice.paid", "data": {"invoice": "in_42"}}
    body = json.dumps(payload)
    msg_id = "msg_" + uuid.uuid4().hex
    when = datetime.now(tz=timezone.utc)

    def signed(secret: str) -> dict:
        return {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, when, body),
        }

    seq = accepted(c.post("/hooks/svix", content=body, headers=signed(STANDARD_SECRET)), "svix")
    ev = stored(c, "svix", seq)
    assert ev["type"] == "svix.invoice.paid" and ev["data"] == payload

    before = head(c)
    refused(c, c.post("/hooks/svix", content=body, headers=signed(new_secret())), before)
    h = signed(STANDARD_SECRET)
    refused(c, c.post("/hooks/svix", content=body.replace("in_42", "in_43"), headers=h), before)


def test_shared_token(c):
    body = b"deploy=done&env=prod"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    s1 = accepted(c.post("/hooks/ci", content=body, headers={**form, "Authorization": f"Bearer {TOKEN}"}), "ci")
    s2 = accepted(c.post("/hooks/ci", content=body, headers={**form, "X-Hook-Token": TOKEN}), "ci")
    for s in (s1, s2):
        ev = stored(c, "ci", s)
        assert ev["type"] == "ci.received"
        assert ev["datacontenttype"] == "application/x-www-form-urlencoded"
        raw = ev.get("data_base64")
        assert (base64.b64decode(raw) if raw else ev["data"].encode()) == body

    before = head(c)
    refused(c, c.post("/hooks/ci", content=body, headers={**form, "Authorization": "Bearer nope"}), before)
    refused(c, c.post("/hooks/ci", content=body, headers={**form, "X-Hook-Token": TOKEN + "x"}), before)
    refused(c, c.post("/hooks/ci", content=body, headers=form), before)


def test_unconfigured_source_is_accepted_when_not_required(c):
    xml = b"<alert><level>high</level></alert>"
    seq = accepted(c.post("/hooks/monitoring", content=xml, headers={"Content-Type": "application/xml"}), "monitoring")
    ev = stored(c, "monitoring", seq)
    assert ev["type"] == "monitoring.received"
    raw = ev.get("data_base64")
    assert (base64.b64decode(raw) if raw else ev["data"].encode()) == xml
    r = c.post("/hooks/not a name", content=b"{}")
    assert r.status_code in (400, 404), r.text


def test_inbound_hooks_fan_out_to_outbound_webhooks(hooks_server, receivers):
    api = Api(hooks_server.url)
    rx = receivers()
    ep = api.create_endpoint(rx.url, topics=["hooks/github"])
    try:
        rx.secrets = {"s": ep["secret"]}
        body = json.dumps({"zen": "Keep it logically awesome."}).encode()
        sig = "sha256=" + hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
        seq = accepted(api.c.post("/hooks/github", content=body, headers={"X-GitHub-Event": "ping", "X-Hub-Signature-256": sig, "Content-Type": "application/json"}), "github")
        [r] = rx.wait_count(1, timeout=10)
        assert r.verified == {"s": True}
        assert r.webhook_id == f"msg_{ep['id']}_{seq}"
        assert r.event()["type"] == "github.ping" and r.event()["data"] == {"zen": "Keep it logically awesome."}
    finally:
        api.c.delete(f"/api/webhooks/endpoints/{ep['id']}")
        api.close()


def test_unknown_sources_are_refused_when_required(servers):
    s = servers.start(config="[hooks]\nrequire_known_sources = true\n")
    with httpx.Client(base_url=s.url, timeout=10) as c:
        before = head(c)
        r = c.post("/hooks/anything", json={"x": 1})
        assert r.status_code == 404 and r.json()["code"] == "not_found", r.text
        assert head(c) == before
