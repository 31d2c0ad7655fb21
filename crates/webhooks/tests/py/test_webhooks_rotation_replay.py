"""Secret rotation with an overlap window (both signatures sent, receivers on either
secret verify), and replay of every matching event since a sequence with the same ids."""

from __future__ import annotations

import time

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from webhook_receivers import Reply, new_secret, ts


def test_rotation_sends_both_signatures_during_the_overlap(api, receivers):
    old, new = new_secret(), new_secret()
    rx = receivers(secrets={"old": old})
    ep = api.create_endpoint(rx.url, topics=["rot/#"], secret=old)

    api.publish("rot/1", {"n": 1})
    [before] = rx.wait_count(1, timeout=10)
    assert len(before.signatures) == 1 and before.verified == {"old": True}

    rotated = api.rotate(ep["id"], secret=new, overlap_secs=3)
    assert rotated["secret"] == new
    # During the overlap one delivery serves two receivers: one that still knows only
    # the old secret, one already switched to the new one. Each verifies on its own.
    rx.secrets = {"old": old, "new": new}
    api.publish("rot/2", {"n": 2})
    during = rx.wait_count(2, timeout=10)[1]
    assert len(during.signatures) == 2, during.headers["webhook-signature"]
    assert during.verified == {"old": True, "new": True}, during.errors
    assert Webhook(old).verify(during.body, during.headers)["data"] == {"n": 2}
    assert Webhook(new).verify(during.body, during.headers)["data"] == {"n": 2}

    # After the overlap only the new secret signs.
    left = ts(rotated["previous_until"]) - time.time()
    assert 0 < left <= 3.5, rotated
    time.sleep(left + 0.3)
    rx.secrets = {"new": new}
    api.publish("rot/3", {"n": 3})
    after = rx.wait_count(3, timeout=10)[2]
    assert len(after.signatures) == 1 and after.verified == {"new": True}
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after.body, after.headers)

    # Without a secret, rotation generates one; a bad one is a validation error.
    gen = api.rotate(ep["id"])
    assert gen["secret"].startswith("whsec_") and gen["secret"] not in (old, new)
    bad = api.c.post(f"/api/webhooks/endpoints/{ep['id']}/rotate-secret", json={"secret": "whsec_short"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "secret"


def test_recover_since_resends_matching_events_after_n_with_the_same_ids(api, receivers):
    secret = new_secret()
    rx = receivers(secrets={"s": secret})
    ep = api.create_endpoint(rx.url, event_types=["posts.*"], secret=secret)
    a = api.create_record("posts", {"title": "a"})
    api.publish("sensors/x", {"not": "a post"})  # in the log, but not for this endpoint
    api.create_record("posts", {"title": "b"})
    api.c.patch(f"/api/collections/posts/records/{a['id']}", json={"title": "a2"}).raise_for_status()
    first = rx.wait_count(3, timeout=10)
    seqs = [r.event()["sequence"] for r in first]
    for s in seqs:  # as the operator sees them before replaying
        api.wait_delivery(ep["id"], s, "delivered", timeout=5)
    n = seqs[0]  # recover everything after the first post

    assert api.recover(ep["id"], since=n) == {"requeued": 2}
    replayed = rx.wait_count(5, timeout=10)[3:]
    assert [r.webhook_id for r in replayed] == [r.webhook_id for r in first[1:]]
    assert [r.webhook_id for r in replayed] == [f"msg_{ep['id']}_{s}" for s in seqs[1:]]
    assert [r.body for r in replayed] == [r.body for r in first[1:]]  # the same CloudEvents
    assert all(r.verified == {"s": True} for r in rx.snapshot())
    time.sleep(0.5)
    assert len(rx.snapshot()) == 5  # the first post and the sensor event were not resent

    for s in seqs[1:]:
        d = api.wait_delivery(ep["id"], s, "delivered", timeout=5)
        assert [a["status"] for a in d["attempt_log"]] == [200, 200]

    # since=0 replays the whole matching log.
    assert api.recover(ep["id"], since=0) == {"requeued": 3}
    again = rx.wait_count(8, timeout=10)[5:]
    assert [r.webhook_id for r in again] == [f"msg_{ep['id']}_{s}" for s in seqs]


def test_a_resend_requested_while_the_delivery_is_in_flight_is_not_lost(api, receivers):
    # The first request is answered (200) only after 1 s; the resend is asked for while
    # it is still in flight, so it must go out after it, not be absorbed by its outcome.
    rx = receivers(reply=lambda r, n: Reply(delay=1.0) if n == 1 else Reply())
    ep = api.create_endpoint(rx.url, topics=["inflight/#"])
    rx.secrets = {"s": ep["secret"]}
    seq = api.publish("inflight/1", {"n": 1})
    rx.wait_count(1, timeout=10, ok_only=False)
    r = api.c.post(f"/api/webhooks/endpoints/{ep['id']}/deliveries/{seq}/retry")
    assert r.status_code == 202 and r.json() == {"requeued": 1}
    got = rx.wait_count(2, timeout=10)
    assert [x.webhook_id for x in got] == [f"msg_{ep['id']}_{seq}"] * 2
    d = api.wait_delivery(ep["id"], seq, "delivered", timeout=5)
    assert d["attempts"] == 2 and [a["status"] for a in d["attempt_log"]] == [200, 200]


def test_a_secret_is_shown_once_and_never_listed(api, server):
    """The create and rotate answers carry the secret; REST list/get/patch, GraphQL's
    `webhookEndpoints` and a later patch never do, so reading the registry is not enough
    to forge deliveries."""
    ep = api.create_endpoint("http://127.0.0.1:9/hook", topics=["s/#"])
    assert ep["secret"].startswith("whsec_")
    assert "secret" not in api.endpoint(ep["id"])
    assert all("secret" not in e for e in api.endpoints())
    assert "secret" not in api.patch_endpoint(ep["id"], description="quiet")
    rotated = api.rotate(ep["id"], overlap_secs=60)
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != ep["secret"]
    assert rotated["previous_secret"] == ep["secret"], "the rotate answer names what it replaced"
    after = api.endpoint(ep["id"])
    assert "secret" not in after and "previous_secret" not in after
    r = httpx.post(f"{server.url}/graphql", json={"query": "{ webhookEndpoints { id secret } }"})
    assert r.json()["data"]["webhookEndpoints"] == [{"id": ep["id"], "secret": None}]
