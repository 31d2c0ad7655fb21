"""Faults a receiver can throw at the delivery engine, and what the subscriber and the
operator (REST attempt log, events) see: 500 then 200, a timeout, 429/503 with
Retry-After, 410 Gone, exhausted retries and recovery, and a dead endpoint next to a
healthy one (the healthy one's latency, measured with and without the neighbour).
"""

from __future__ import annotations

import statistics
import time

import pytest
from webhook_receivers import FIGURES, Api, Reply, closed_port, new_secret, ts, wait_until


def test_500_then_200_is_retried_and_delivered_exactly_once(api, receivers):
    secret = new_secret()
    rx = receivers(
        secrets={"s": secret},
        reply=lambda r, n: Reply(500, body=b'{"error": "boom"}') if n == 1 else Reply(),
    )
    ep = api.create_endpoint(rx.url, topics=["orders/#"], retry_schedule=[1, 1, 1], secret=secret)
    seq = api.publish("orders/1", {"total": 10})
    d = api.wait_delivery(ep["id"], seq, "delivered", timeout=10)
    time.sleep(1.5)  # longer than any retry could wait: a third copy would have come by now

    reqs = rx.snapshot()
    want_id = f"msg_{ep['id']}_{seq}"
    assert [(r.webhook_id, r.status) for r in reqs] == [(want_id, 500), (want_id, 200)]
    assert all(r.verified == {"s": True} for r in reqs)
    assert rx.ok_ids() == [want_id]  # delivered once successfully

    d = api.delivery(ep["id"], seq)
    assert d["status"] == "delivered" and d["attempts"] == 2 and d["last_status"] == 200
    first, second = d["attempt_log"]
    assert (first["number"], first["status"], first["error"]) == (1, 500, "HTTP 500")
    assert "boom" in first["response"]
    assert (second["number"], second["status"]) == (2, 200) and "error" not in second
    gap = ts(second["at"]) - ts(first["at"])
    assert 0 <= gap <= 2.5, f"full jitter over a 1 s schedule, got {gap:.2f}s"


def test_a_receiver_slower_than_the_timeout_is_retried(servers, receivers):
    server = servers.start(config="[webhooks]\ntimeout_secs = 1\n")
    api = Api(server.url)
    try:
        rx = receivers(reply=lambda r, n: Reply(delay=3.0) if n == 1 else Reply())
        ep = api.create_endpoint(rx.url, topics=["slow/#"], retry_schedule=[1, 1])
        rx.secrets = {"s": ep["secret"]}
        seq = api.publish("slow/1", {"x": 1})
        d = api.wait_delivery(ep["id"], seq, "delivered", timeout=10)
        first, second = d["attempt_log"]
        assert "status" not in first, first
        assert "timed out" in first["error"], first["error"]
        assert 900 <= first["latency_ms"] < 2500, first
        assert second["status"] == 200
        ids = rx.ids()
        assert len(ids) == 2 and set(ids) == {f"msg_{ep['id']}_{seq}"}
    finally:
        api.close()


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(api, receivers, status):
    # The schedule alone would wait a random 0-600 s: the retry ~1 s later is Retry-After's.
    rx = receivers(reply=lambda r, n: Reply(status, headers={"Retry-After": "1"}) if n == 1 else Reply())
    ep = api.create_endpoint(rx.url, topics=["busy/#"], retry_schedule=[600])
    rx.secrets = {"s": ep["secret"]}
    seq = api.publish("busy/1", {"x": 1})
    d = api.wait_delivery(ep["id"], seq, "delivered", timeout=10)
    first, second = d["attempt_log"]
    assert first["status"] == status and second["status"] == 200
    gap = ts(second["at"]) - ts(first["at"])
    assert 0.9 <= gap <= 2.5, f"Retry-After: 1 but the next attempt came {gap:.2f}s later"
    a, b = rx.snapshot()
    assert 0.9 <= b.at - a.at <= 2.5 and a.webhook_id == b.webhook_id


def test_410_disables_the_endpoint_at_once_and_says_so_on_the_bus(api, receivers):
    rx = receivers(reply=lambda r, n: Reply(410, body=b'{"gone": true}'))
    ep = api.create_endpoint(rx.url, topics=["gone/#"], retry_schedule=[1, 1, 1])
    rx.secrets = {"s": ep["secret"]}
    seq = api.publish("gone/1", {"x": 1})

    e = wait_until(lambda: (lambda e: e if not e["enabled"] else None)(api.endpoint(ep["id"])), 5, "the endpoint to be disabled")
    assert "410" in e["disabled_reason"], e
    assert api.delivery(ep["id"], seq)["attempts"] == 1  # no retries against a 410

    polled = api.poll("webhooks/#", since=0, wait=2)
    [ev] = [x for x in polled["events"] if x["type"] == "webhook.endpoint.disabled"]
    assert ev["subject"] == f"webhooks/endpoints/{ep['id']}"  # the subject is the topic
    assert ev["data"]["endpoint_id"] == ep["id"] and ev["data"]["url"] == rx.url and "410" in ev["data"]["reason"]

    # Disabled means nothing more is sent.
    api.publish("gone/2", {"x": 2})
    time.sleep(1.5)
    assert len(rx.snapshot()) == 1
    assert "disabled" in api.c.get("/api/webhooks/endpoints").text

    # The receiver is back: re-enabling clears the reason and the held delivery goes out.
    rx.reply = lambda r, n: Reply()
    e = api.patch_endpoint(ep["id"], enabled=True)
    assert e["enabled"] is True and "disabled_reason" not in e
    api.wait_delivery(ep["id"], seq, "delivered", timeout=10)
    assert rx.ok_ids() == [f"msg_{ep['id']}_{seq}"]


def test_exhausted_retries_go_dead_and_recover_resends_with_the_same_id(api, receivers):
    secret = new_secret()
    rx = receivers(secrets={"s": secret}, reply=lambda r, n: Reply(500))
    ep = api.create_endpoint(rx.url, topics=["jobs/#"], retry_schedule=[1], secret=secret)
    seqs = [api.publish("jobs/a", {"n": 1}), api.publish("jobs/b", {"n": 2})]
    for s in seqs:
        d = api.wait_delivery(ep["id"], s, "dead", timeout=10)
        assert d["attempts"] == 2 and [a["status"] for a in d["attempt_log"]] == [500, 500]
    dead = api.deliveries(ep["id"], status="dead")
    assert sorted(d["seq"] for d in dead) == seqs
    assert api.deliveries(ep["id"], status="pending") == []
    ids = [f"msg_{ep['id']}_{s}" for s in seqs]
    assert rx.ids() == [ids[0], ids[0], ids[1], ids[1]]

    rx.reply = lambda r, n: Reply()  # the receiver is fixed
    assert api.recover(ep["id"]) == {"requeued": 2}
    rx.wait_count(2, timeout=10)
    assert rx.ok_ids() == ids  # the same webhook-ids, in order
    for s in seqs:
        d = api.wait_delivery(ep["id"], s, "delivered", timeout=5)
        assert [a["status"] for a in d["attempt_log"]] == [500, 500, 200]
    assert api.recover(ep["id"]) == {"requeued": 0}  # the dead-letter list is empty now

    # Resending one delivery by hand: again the same id.
    r = api.c.post(f"/api/webhooks/endpoints/{ep['id']}/deliveries/{seqs[0]}/retry")
    assert r.status_code == 202 and r.json() == {"requeued": 1}
    rx.wait_count(3, timeout=10)
    assert rx.ok_ids() == [*ids, ids[0]]
    assert all(r.verified == {"s": True} for r in rx.snapshot())


def _latencies(api, rx, topic: str, n: int) -> list[float]:
    """Publishes `n` events one at a time; for each, seconds from just before the publish
    request to the healthy receiver's receipt."""
    out = []
    for i in range(n):
        t0 = time.monotonic()
        seq = api.publish(topic, {"i": i})
        got = rx.wait_for(
            lambda reqs: next((r for r in reversed(reqs) if r.event().get("sequence") == seq), None),
            10,
            f"event {seq} at the healthy receiver",
        )
        out.append(got.at - t0)
        time.sleep(0.02)
    return out


def _summary(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=10)
    return f"p50 {statistics.median(xs) * 1000:.1f} ms, p90 {q[8] * 1000:.1f} ms, max {max(xs) * 1000:.1f} ms (n={len(xs)})"


def test_a_dead_endpoint_does_not_slow_a_healthy_one(api, receivers, blackholes):
    healthy = receivers()
    ep = api.create_endpoint(healthy.url, topics=["lat/#"])
    healthy.secrets = {"s": ep["secret"]}
    _latencies(api, healthy, "lat/warmup", 5)
    base = _latencies(api, healthy, "lat/base", 30)

    # Two dead neighbours on the same events: one never answers (each attempt holds for
    # the 15 s timeout), one refuses connections (fails at once, retried every <= 1 s).
    hole = blackholes()
    dead = [
        api.create_endpoint(hole.url, topics=["lat/#"], retry_schedule=[1] * 20),
        api.create_endpoint(f"http://127.0.0.1:{closed_port()}/hook", topics=["lat/#"], retry_schedule=[1] * 20),
    ]
    api.publish("lat/prime", {"prime": True})
    time.sleep(1.5)  # their workers are up and stuck
    with_dead = _latencies(api, healthy, "lat/dead", 30)

    for d in dead:
        pending = api.deliveries(d["id"], status="pending")
        assert len(pending) >= 30, f"{d['url']}: the neighbour should be backlogged, has {len(pending)} pending"
        assert api.deliveries(d["id"], status="delivered") == []
    assert all(r.verified == {"s": True} and r.status == 200 for r in healthy.snapshot())

    b50, d50 = statistics.median(base), statistics.median(with_dead)
    FIGURES.append(f"isolation: healthy endpoint alone:          {_summary(base)}")
    FIGURES.append(f"isolation: next to a black hole + a refuser: {_summary(with_dead)}")
    assert d50 <= 2 * b50 + 0.050, f"p50 {d50 * 1000:.1f} ms with a dead neighbour vs {b50 * 1000:.1f} ms alone"


def test_an_endpoint_with_concurrency_delivers_side_by_side_and_a_failure_holds_back_nothing(api, receivers):
    """`concurrency: 8` to a receiver that takes 0.5 s per request: 16 events arrive with
    several requests in flight at once (one at a time they would take 8 s), and the first
    event's delivery, answered 500 once, is retried on its own without holding back the
    fifteen after it. The same receiver registered without `concurrency` sees one request
    at a time, in order."""
    first_failed = []

    def reply(r, n):
        if r.event()["data"]["i"] == 0 and not first_failed:
            first_failed.append(r.at)
            return Reply(500)
        return Reply(delay=0.5)

    rx = receivers(reply=reply)
    ep = api.create_endpoint(rx.url, topics=["side/#"], concurrency=8, retry_schedule=[2])
    assert ep["concurrency"] == 8
    rx.secrets = {"s": ep["secret"]}
    seqs = [api.publish("side/by", {"i": i}) for i in range(16)]
    for seq in seqs:
        api.wait_delivery(ep["id"], seq, "delivered", timeout=15)
    reqs = [r for r in rx.snapshot() if r.status == 200]
    assert sorted(r.event()["data"]["i"] for r in reqs) == list(range(16))
    starts = sorted(r.at for r in reqs)
    # Most requests that overlap any one (each is held 0.5 s).
    overlap = max(sum(1 for t in starts if s <= t < s + 0.5) for s in starts)
    assert overlap >= 4, f"at most {overlap} requests in flight at once"
    retried = next(r.at for r in reqs if r.event()["data"]["i"] == 0)
    others = [r.at for r in reqs if r.event()["data"]["i"] != 0]
    assert min(others) < retried, "the failed delivery held back the others"
    span = max(starts) - min(starts)
    FIGURES.append(f"16 deliveries to a 0.5 s receiver with concurrency 8: {span:.2f} s from first to last request (one at a time: ≥ 7.5 s)")
    assert span < 5.0, span

    # Without `concurrency`: strictly one at a time, in order.
    rx2 = receivers(reply=lambda r, n: Reply(delay=0.2))
    ep2 = api.create_endpoint(rx2.url, topics=["line/#"])
    assert "concurrency" not in ep2
    rx2.secrets = {"s": ep2["secret"]}
    seqs2 = [api.publish("line/up", {"i": i}) for i in range(4)]
    api.wait_delivery(ep2["id"], seqs2[-1], "delivered", timeout=15)
    got = rx2.snapshot()
    assert [r.event()["data"]["i"] for r in got] == [0, 1, 2, 3]
    assert all(b.at - a.at >= 0.19 for a, b in zip(got, got[1:])), "two requests overlapped"


@pytest.mark.parametrize("bad", [0, 65, -1, "8"])
def test_a_concurrency_outside_1_to_64_is_refused(api, receivers, bad):
    rx = receivers()
    r = api.c.post("/api/webhooks/endpoints", json={"url": rx.url, "concurrency": bad})
    assert r.status_code in (400, 422), r.text
    body = r.json()
    if r.status_code == 422 and body.get("errors"):
        assert [e["field"] for e in body["errors"]] == ["concurrency"], body


def test_retries_waiting_ahead_do_not_hold_back_newer_deliveries_when_order_is_given_up(api, receivers):
    """With `concurrency`, 70 deliveries answered 429 with `Retry-After: 60` wait a minute
    for their retry; the five published after them arrive at once (the worker reads what
    is due, not the 64 oldest pending, which here all wait)."""
    later = Reply(429, headers={"Retry-After": "60"})
    rx = receivers(reply=lambda r, n: later if r.event()["data"]["i"] < 70 else Reply())
    ep = api.create_endpoint(rx.url, topics=["ahead/#"], concurrency=8)
    rx.secrets = {"s": ep["secret"]}
    for i in range(70):
        api.publish("ahead/x", {"i": i})
    wait_until(lambda: len({r.event()["data"]["i"] for r in rx.snapshot()}) >= 70, 20, "the 70 first attempts")
    seqs = [api.publish("ahead/x", {"i": 70 + k}) for k in range(5)]
    for seq in seqs:
        api.wait_delivery(ep["id"], seq, "delivered", timeout=10)
    assert sorted(r.event()["data"]["i"] for r in rx.snapshot() if r.status == 200) == list(range(70, 75))


def test_one_slow_delivery_does_not_hold_back_those_after_it_when_order_is_given_up(api, receivers):
    """`concurrency: 4`, 100 events, the receiver holds the first one's request 4 s and
    answers the rest at once: the 99 others all arrive while the first is still held,
    however many the worker read at a time (it keeps 4 in flight, not a batch that waits
    for its slowest)."""
    rx = receivers(reply=lambda r, n: Reply(delay=4.0) if r.event()["data"]["i"] == 0 else Reply())
    ep = api.create_endpoint(rx.url, topics=["slow/#"], concurrency=4)
    rx.secrets = {"s": ep["secret"]}
    for i in range(100):
        api.publish("slow/x", {"i": i})
    wait_until(lambda: len({r.event()["data"]["i"] for r in rx.snapshot()}) >= 100, 15, "all 100 requests")
    got = {r.event()["data"]["i"]: r.at for r in rx.snapshot()}
    last_other = max(t for i, t in got.items() if i != 0)
    assert last_other - got[0] < 3.0, f"the others arrived up to {last_other - got[0]:.1f} s after the held one"


def test_an_endpoint_turned_back_to_ordered_delivers_one_at_a_time_again(api, receivers):
    """An endpoint switched from `concurrency: 8` back to 1 (PATCH) lets what is in flight
    finish, then delivers strictly one at a time, in order."""
    rx = receivers(reply=lambda r, n: Reply(delay=0.2))
    ep = api.create_endpoint(rx.url, topics=["turn/#"], concurrency=8)
    rx.secrets = {"s": ep["secret"]}
    first = [api.publish("turn/a", {"i": i}) for i in range(8)]
    for seq in first:
        api.wait_delivery(ep["id"], seq, "delivered", timeout=10)
    assert api.patch_endpoint(ep["id"], concurrency=1)["concurrency"] == 1
    time.sleep(1.5)  # the worker sees the change within a second
    before = len(rx.snapshot())
    seqs = [api.publish("turn/b", {"i": 100 + i}) for i in range(5)]
    api.wait_delivery(ep["id"], seqs[-1], "delivered", timeout=15)
    later = rx.snapshot()[before:]
    assert [r.event()["data"]["i"] for r in later] == [100, 101, 102, 103, 104]
    assert all(b.at - a.at >= 0.19 for a, b in zip(later, later[1:])), "two requests overlapped"
