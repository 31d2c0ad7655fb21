"""Crash safety of the outbox: `kill -9` the server with ~2000 deliveries still pending
(a slow receiver holds the queue back), restart it on the same data directory with the
receiver healthy, and every acknowledged event reaches the receiver, each under its own
`msg_{endpoint}_{seq}` webhook-id (at least once: a request in flight at the kill may come
twice)."""

from __future__ import annotations

import threading
import time

from polyport_server import wait_for
from webhook_receivers import FIGURES, Api, Reply, new_secret

EVENTS = 2000
PUBLISHERS = 4
DRAIN_TIMEOUT = 60.0


def test_kill_9_with_pending_deliveries_then_restart_delivers_every_one(servers, receivers):
    secret = new_secret()
    slow = threading.Event()
    slow.set()
    rx = receivers(secrets={"s": secret}, reply=lambda r, n: Reply(delay=0.02) if slow.is_set() else Reply())
    server = servers.start()
    api = Api(server.url)
    ep = api.create_endpoint(rx.url, topics=["bulk/#"], retry_schedule=[1] * 10, secret=secret)

    seqs: list[int] = []
    lock = threading.Lock()
    errors: list[str] = []

    def publish(worker: int):
        a = Api(server.url)
        try:
            for i in range(worker, EVENTS, PUBLISHERS):
                s = a.publish(f"bulk/{worker}", {"i": i})  # asserts the 202
                with lock:
                    seqs.append(s)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
        finally:
            a.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=publish, args=(w,)) for w in range(PUBLISHERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    publish_secs = time.monotonic() - t0
    assert not errors and len(seqs) == EVENTS, errors[:3]

    servers.kill9(server)  # every event above was acknowledged (202) before this
    api.close()
    before = set(rx.ok_ids())
    expected = {f"msg_{ep['id']}_{s}" for s in seqs}
    pending_at_kill = len(expected - before)
    assert pending_at_kill >= 1000, f"only {pending_at_kill} deliveries were pending at the kill"

    slow.clear()  # the receiver is healthy from now on
    restarted = servers.start(data_dir=server.data_dir)
    t1 = time.monotonic()
    rx.wait_for(lambda reqs: expected <= {r.webhook_id for r in reqs if r.status == 200}, DRAIN_TIMEOUT,
                f"all {EVENTS} webhook-ids after the restart")
    drain_secs = time.monotonic() - t1

    got = rx.snapshot()
    assert all(r.verified == {"s": True} for r in got)
    ids = [r.webhook_id for r in got if r.status == 200]
    assert set(ids) == expected  # nothing for anything else
    duplicates = len(ids) - len(set(ids))
    api2 = Api(restarted.url)
    try:
        # The server agrees: nothing left pending or dead. A delivery's outcome is
        # written after its response arrives (on a cluster, by whichever node holds the
        # endpoint), so the last few may trail the receiver by a moment.
        wait_for("no delivery left pending", lambda: api2.deliveries(ep["id"], status="pending") == [], timeout=10)
        assert api2.deliveries(ep["id"], status="dead") == []
    finally:
        api2.close()
    FIGURES.append(
        f"crash: {EVENTS} events published in {publish_secs:.1f}s, {pending_at_kill} deliveries pending at kill -9, "
        f"all delivered {drain_secs:.1f}s after restart ({duplicates} duplicate(s))"
    )
