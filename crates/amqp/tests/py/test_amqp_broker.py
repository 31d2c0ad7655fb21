"""The broker as pika sees it: queues, routing, acks and redelivery, prefetch, confirms,
basic.get, mandatory returns, and errors in the protocol's own words (only the failing
channel closes)."""

from __future__ import annotations

import os
import socket
import time

import pika
import pytest
from amqp_clients import connect, drain, port, quiet, servers, wait_until  # noqa: F401


def test_direct_and_topic_routing_and_the_default_exchange(servers):
    s = servers.start()
    ch = connect(s).channel()
    ch.exchange_declare("orders", "direct")
    ch.exchange_declare("events", "topic")
    for q in ("eu", "us", "all_events", "created"):
        ch.queue_declare(q)
    ch.queue_bind("eu", "orders", "eu")
    ch.queue_bind("us", "orders", "us")
    ch.queue_bind("all_events", "events", "#")
    ch.queue_bind("created", "events", "*.created")
    ch.basic_publish("orders", "eu", b"o1")
    ch.basic_publish("orders", "us", b"o2")
    ch.basic_publish("events", "post.created", b"e1")
    ch.basic_publish("events", "post.deleted.soft", b"e2")
    ch.basic_publish("", "eu", b"direct-to-queue")
    assert [b for _, _, b in drain(ch, "eu", 2)] == [b"o1", b"direct-to-queue"]
    assert [b for _, _, b in drain(ch, "us", 1)] == [b"o2"]
    got = drain(ch, "all_events", 2)
    assert [(m.exchange, m.routing_key, b) for m, _, b in got] == [
        ("events", "post.created", b"e1"),
        ("events", "post.deleted.soft", b"e2"),
    ]
    assert [b for _, _, b in drain(ch, "created", 1)] == [b"e1"]
    quiet(ch, "created", 0.5)


def test_manual_acks_redeliver_what_a_closed_channel_held(servers):
    s = servers.start()
    conn = connect(s)
    ch = conn.channel()
    ch.queue_declare("work", durable=True)
    for i in range(5):
        ch.basic_publish("", "work", str(i).encode(), pika.BasicProperties(delivery_mode=2))
    a = conn.channel()
    a.basic_qos(prefetch_count=2)
    seen = []
    for method, _props, body in a.consume("work", inactivity_timeout=5):
        assert method is not None
        seen.append((method.delivery_tag, body))
        if len(seen) == 2:
            break
    a.basic_ack(seen[0][0])  # "0" done; "1" is held unacked when the channel closes
    a.close()
    b = conn.channel()
    got = drain(b, "work", 4, auto_ack=False)
    assert [body for _, _, body in got] == [b"1", b"2", b"3", b"4"]
    assert got[0][0].redelivered, "held unacked by the closed channel"
    assert not got[-1][0].redelivered, "never delivered before (prefetch 2)"
    for m, _, _ in got:
        b.basic_ack(m.delivery_tag)
    quiet(b, "work", 0.5)


def test_a_binding_made_while_a_consumer_holds_messages_delivers_nothing_twice(servers):
    """RabbitMQ routes by a new binding from the next publish on and leaves deliveries
    alone. A consumer holding one message unacked (and having acked later ones) sees
    each message once across five bindings and unbindings made meanwhile, none flagged
    redelivered; a publish is routed by the bindings it was published under even when an
    unbind follows it at once; the held one is then acked like any other, and nothing
    comes again when the queue is consumed anew."""
    s = servers.start()
    conn = connect(s)
    admin = conn.channel()
    admin.exchange_declare("orders", "topic", durable=True)
    admin.queue_declare("eu-orders", durable=True)
    admin.queue_bind("eu-orders", "orders", "eu.*")
    admin.confirm_delivery()  # each publish is in the log before the next unbind
    persistent = pika.BasicProperties(delivery_mode=2)
    for city in ("paris", "rome", "oslo"):
        admin.basic_publish("orders", f"eu.{city}", city.encode(), persistent)

    c = conn.channel()
    got: list[tuple[str, bool, int]] = []
    c.basic_consume("eu-orders", lambda ch, m, p, b: got.append((m.routing_key, m.redelivered, m.delivery_tag)))
    wait_until(lambda: (conn.process_data_events(time_limit=0.05), len(got) == 3)[1], "three deliveries")
    for _, _, tag in got[1:]:
        c.basic_ack(tag)  # rome and oslo done; paris is held
    for n in range(5):
        admin.queue_bind("eu-orders", "orders", f"us{n}.*")
        admin.basic_publish("orders", f"us{n}.nyc", b"nyc", persistent)
        admin.queue_unbind("eu-orders", "orders", f"us{n}.*")
        with pytest.raises(pika.exceptions.UnroutableError):
            admin.basic_publish("orders", f"us{n}.boston", b"not routed", persistent, mandatory=True)
    # Without confirms too: a channel's publish is routed by the binding it was
    # published under, though the unbind right behind it overtakes its commit.
    raw = conn.channel()
    raw.queue_bind("eu-orders", "orders", "late.*")
    raw.basic_publish("orders", "late.lima", b"lima", persistent)
    raw.queue_unbind("eu-orders", "orders", "late.*")
    want = ["eu.paris", "eu.rome", "eu.oslo"] + [f"us{n}.nyc" for n in range(5)] + ["late.lima"]
    wait_until(lambda: (conn.process_data_events(time_limit=0.05), len(got) >= len(want))[1], "the new bindings' messages")
    conn.process_data_events(time_limit=0.5)
    assert [k for k, _, _ in got] == want
    assert not any(r for _, r, _ in got), "nothing comes again"
    for _, _, tag in [got[0]] + got[3:]:
        c.basic_ack(tag)
    c.close()
    quiet(conn.channel(), "eu-orders", 0.5)


def test_nack_requeues_and_reject_drops(servers):
    s = servers.start()
    ch = connect(s).channel()
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"a")
    ch.basic_publish("", "q", b"b")
    m1, _, body1 = ch.basic_get("q")
    assert body1 == b"a" and m1.message_count == 1
    ch.basic_nack(m1.delivery_tag, requeue=True)
    m2, _, body2 = ch.basic_get("q")
    assert body2 == b"a" and m2.redelivered
    ch.basic_reject(m2.delivery_tag, requeue=False)
    m3, _, body3 = ch.basic_get("q", auto_ack=True)
    assert body3 == b"b"
    assert ch.basic_get("q") == (None, None, None)


def test_prefetch_bounds_unacked_deliveries(servers):
    s = servers.start()
    ch = connect(s).channel()
    ch.queue_declare("p")
    for i in range(10):
        ch.basic_publish("", "p", str(i).encode())
    ch.basic_qos(prefetch_count=3)
    got = []
    ch.basic_consume("p", lambda c, m, p, b: got.append(m.delivery_tag))

    def settle(want: int) -> None:
        deadline = time.monotonic() + 5
        while len(got) < want and time.monotonic() < deadline:
            ch.connection.process_data_events(time_limit=0.1)
        ch.connection.process_data_events(time_limit=0.5)  # and no more than that

    settle(3)
    assert len(got) == 3, got
    ch.basic_ack(got[-1], multiple=True)
    settle(6)
    assert len(got) == 6, got


def test_confirms_and_mandatory_returns(servers):
    s = servers.start()
    ch = connect(s).channel()
    ch.confirm_delivery()
    ch.queue_declare("c")
    ch.basic_publish("", "c", b"confirmed")  # raises unless acked
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish("amq.direct", "nobody-home", b"lost", mandatory=True)
    assert [b for _, _, b in drain(ch, "c", 1)] == [b"confirmed"]


def test_properties_round_trip(servers):
    s = servers.start()
    ch = connect(s).channel()
    ch.queue_declare("props")
    sent = pika.BasicProperties(
        content_type="application/json", content_encoding="utf-8", message_id="m-1",
        correlation_id="corr-1", reply_to="replies", priority=3, delivery_mode=2,
        type="order.placed", headers={"tenant": "acme"}, expiration="60000",
    )
    ch.basic_publish("", "props", b'{"a":1}', sent)
    (_, got, body), = drain(ch, "props", 1)
    assert body == b'{"a":1}'
    for field in ("content_type", "content_encoding", "message_id", "correlation_id", "reply_to",
                  "priority", "delivery_mode", "type", "headers"):
        assert getattr(got, field) == getattr(sent, field), field
    assert 0 < int(got.expiration) <= 60000


def test_errors_close_only_the_failing_channel(servers):
    s = servers.start()
    conn = connect(s)
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("missing", passive=True)
    assert e.value.reply_code == 404 and "no queue 'missing' in vhost '/'" in e.value.reply_text
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.exchange_declare("amq.mine", "direct")
    assert e.value.reply_code == 403
    ch = conn.channel()
    ch.exchange_declare("kinds", "direct")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.exchange_declare("kinds", "fanout")
    assert e.value.reply_code == 406 and "inequivalent arg 'type'" in e.value.reply_text
    ch = conn.channel()
    ch.basic_publish("no-such-exchange", "k", b"x")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("after")  # the close arrives before this reply
    assert e.value.reply_code == 404
    # The connection and new channels still work.
    ok = conn.channel()
    ok.queue_declare("fine")
    ok.basic_publish("", "fine", b"still here")
    assert [b for _, _, b in drain(ok, "fine", 1)] == [b"still here"]


def test_exclusive_queues_belong_to_their_connection(servers):
    s = servers.start()
    owner = connect(s)
    q = owner.channel().queue_declare("", exclusive=True).method.queue
    assert q.startswith("amq.gen-")
    other = connect(s).channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        other.basic_consume(q, lambda *a: None)
    assert e.value.reply_code == 405
    owner.close()
    probe = connect(s).channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        probe.queue_declare(q, passive=True)
    assert e.value.reply_code == 404, "an exclusive queue goes with its connection"


def test_a_wrong_protocol_header_gets_ours_back(servers):
    s = servers.start()
    with socket.create_connection(("127.0.0.1", port(s, "amqp")), timeout=5) as sock:
        sock.sendall(b"AMQP\x01\x01\x00\x0a")
        assert sock.recv(8) == b"AMQP\x00\x00\x09\x01"
        assert sock.recv(8) == b"", "then the server closes"


def test_bad_credentials_are_refused(servers):
    s = servers.start('[auth]\nusers = { alice = "s3cret" }\nanonymous = false\n')
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(s, credentials=pika.PlainCredentials("alice", "wrong"))
    ok = connect(s, credentials=pika.PlainCredentials("alice", "s3cret"))
    ok.channel().queue_declare("authed")
    ok.close()


def test_transactions_hold_publishes_and_acks_until_commit(servers):
    s = servers.start()
    ch = connect(s).channel()
    ch.queue_declare("txq")
    ch.tx_select()
    ch.basic_publish("", "txq", b"rolled back")
    ch.tx_rollback()
    ch.basic_publish("", "txq", b"committed")
    peek = connect(s).channel()
    assert peek.basic_get("txq") == (None, None, None), "nothing before commit"
    ch.tx_commit()
    m, _, body = ch.basic_get("txq")
    assert body == b"committed"
    ch.basic_ack(m.delivery_tag)
    ch.tx_rollback()  # the ack is undone: the message is still ours, unacknowledged
    ch.basic_ack(m.delivery_tag)
    ch.tx_commit()
    assert ch.basic_get("txq") == (None, None, None)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.confirm_delivery()
    assert e.value.reply_code == 406


def test_queue_arguments_message_ttl_and_the_unsupported_ones(servers):
    s = servers.start()
    conn = connect(s)
    ch = conn.channel()
    ch.queue_declare("short", arguments={"x-message-ttl": 300, "x-queue-type": "quorum"})
    ch.basic_publish("", "short", b"stale")
    time.sleep(0.6)
    ch.basic_publish("", "short", b"fresh")
    _, _, body = ch.basic_get("short", auto_ack=True)
    assert body == b"fresh", "the stale one expired in the queue"
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("prioritised", arguments={"x-max-priority": 10})
    assert e.value.reply_code == 540 and "x-max-priority" in e.value.reply_text


def test_length_limits_drop_the_oldest_or_refuse_the_newest(servers):
    s = servers.start()
    ch = connect(s).channel()
    ch.queue_declare("latest3", arguments={"x-max-length": 3})
    ch.queue_declare("first3", arguments={"x-max-length": 3, "x-overflow": "reject-publish"})
    ch.queue_declare("small", arguments={"x-max-length-bytes": 10})
    for i in range(6):
        ch.basic_publish("", "latest3", f"m{i}".encode())
        ch.basic_publish("", "first3", f"m{i}".encode())
        ch.basic_publish("", "small", f"{i}----".encode())  # 5 bytes each
    assert [b for _, _, b in drain(ch, "latest3", 3)] == [b"m3", b"m4", b"m5"]
    assert [b for _, _, b in drain(ch, "first3", 3)] == [b"m0", b"m1", b"m2"]
    assert [b for _, _, b in drain(ch, "small", 2)] == [b"4----", b"5----"]


def test_headers_exchanges_route_by_header(servers):
    s = servers.start()
    ch = connect(s).channel()
    ch.exchange_declare("by-format", "headers")
    ch.queue_declare("pdf-a4")
    ch.queue_declare("any-report")
    ch.queue_bind("pdf-a4", "by-format", arguments={"x-match": "all", "format": "pdf", "size": "a4"})
    ch.queue_bind("any-report", "amq.headers", arguments={"x-match": "any", "type": "report", "urgent": None})
    ch.basic_publish("by-format", "", b"both", pika.BasicProperties(headers={"format": "pdf", "size": "a4"}))
    ch.basic_publish("by-format", "", b"one", pika.BasicProperties(headers={"format": "pdf", "size": "a3"}))
    ch.basic_publish("amq.headers", "", b"urgent", pika.BasicProperties(headers={"urgent": 1}))
    ch.basic_publish("amq.headers", "", b"plain", pika.BasicProperties(headers={"type": "memo"}))
    assert [b for _, _, b in drain(ch, "pdf-a4", 1)] == [b"both"]
    assert [b for _, _, b in drain(ch, "any-report", 1)] == [b"urgent"]
    quiet(ch, "pdf-a4", 0.5)
    quiet(ch, "any-report", 0.5)


def test_a_client_that_misses_heartbeats_is_disconnected(servers):
    s = servers.start()
    silent = connect(s, heartbeat=1)
    lively = connect(s, heartbeat=1)
    ch = lively.channel()
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:  # `lively` answers heartbeats, `silent` does not
        lively.process_data_events(time_limit=0.2)
    with pytest.raises((pika.exceptions.StreamLostError, pika.exceptions.ConnectionClosed,
                        pika.exceptions.AMQPConnectionError)):
        silent.channel().queue_declare("too-late")
    ch.queue_declare("still-here")


@pytest.mark.skipif(os.environ.get("POLYPORT_TEST_STORE") == "cluster2", reason="two nodes: a queue no node reads expires its messages when a node next reads it (README, Cluster mode)")
def test_rejected_and_expired_messages_are_dead_lettered_with_x_death(servers):
    s = servers.start()
    ch = connect(s).channel()
    ch.exchange_declare("dlx", "fanout")
    ch.queue_declare("dead")
    ch.queue_bind("dead", "dlx")
    ch.queue_declare("work", arguments={"x-dead-letter-exchange": "dlx"})
    ch.queue_declare("brief", arguments={"x-message-ttl": 200, "x-dead-letter-exchange": "dlx",
                                         "x-dead-letter-routing-key": "timeouts"})
    ch.basic_publish("", "work", b"bad job", pika.BasicProperties(headers={"attempt": 3}))
    m, _, _ = ch.basic_get("work")
    ch.basic_reject(m.delivery_tag, requeue=False)
    (dm, props, body), = drain(ch, "dead", 1)
    assert body == b"bad job"
    death = props.headers["x-death"][0]
    assert death["reason"] == "rejected" and death["queue"] == "work"
    assert props.headers["attempt"] == 3, "the original headers stay, typed"
    ch.basic_publish("", "brief", b"too slow")
    # Expired and dead-lettered without anyone reading `brief`.
    (dm, props, body), = drain(ch, "dead", 1)
    assert ch.basic_get("brief") == (None, None, None)
    assert body == b"too slow" and props.headers["x-death"][0]["reason"] == "expired"
    assert dm.routing_key == "timeouts"


def test_exchange_to_exchange_bindings_route_along_the_path(servers):
    s = servers.start()
    conn = connect(s)
    ch = conn.channel()
    ch.exchange_declare("x.src", "topic")
    ch.exchange_declare("x.dst", "direct", internal=True)
    ch.exchange_declare("x.all", "fanout")
    ch.exchange_bind("x.dst", "x.src", "orders.*")
    ch.exchange_bind("x.all", "amq.topic", "sensors.#")
    ch.queue_declare("eu_orders")
    ch.queue_declare("readings")
    ch.queue_bind("eu_orders", "x.dst", "orders.eu")
    ch.queue_bind("readings", "x.all", "")
    ch.basic_publish("x.src", "orders.eu", b"eu")
    ch.basic_publish("x.src", "orders.us", b"us")  # passes x.src, not x.dst's key
    ch.basic_publish("x.src", "other.eu", b"other")  # stopped at x.src
    ch.basic_publish("amq.topic", "sensors.kitchen.temp", b"21.5")
    got = drain(ch, "eu_orders", 1)
    # The delivery names the exchange it was published to, with its routing key.
    assert [(m.exchange, m.routing_key, b) for m, _, b in got] == [("x.src", "orders.eu", b"eu")]
    quiet(ch, "eu_orders", 0.5)
    got = drain(ch, "readings", 1)
    assert [(m.exchange, m.routing_key, b) for m, _, b in got] == [
        ("amq.topic", "sensors.kitchen.temp", b"21.5")
    ]

    # A cycle delivers once; deleting a source that is bound from is refused with if-unused.
    ch.exchange_bind("x.src", "x.dst", "#")
    ch.basic_publish("x.src", "orders.eu", b"once")
    assert [b for _, _, b in drain(ch, "eu_orders", 1)] == [b"once"]
    quiet(ch, "eu_orders", 0.5)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.exchange_delete("x.src", if_unused=True)
    assert e.value.reply_code == 406
    ch = conn.channel()

    # Unbinding stops the flow; an internal exchange takes no publishes of its own.
    ch.exchange_unbind("x.dst", "x.src", "orders.*")
    ch.basic_publish("x.src", "orders.eu", b"after unbind")
    quiet(ch, "eu_orders", 0.5)
    ch.basic_publish("x.dst", "orders.eu", b"direct")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_get("eu_orders")
    assert e.value.reply_code == 403
    assert "internal exchange 'x.dst'" in e.value.reply_text
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.exchange_bind("x.dst", "missing", "k")
    assert (e.value.reply_code, e.value.reply_text) == (
        404,
        "NOT_FOUND - no exchange 'missing' in vhost '/'",
    )


def test_x_expires_deletes_a_queue_left_unused(servers):
    s = servers.start()
    conn = connect(s)
    ch = conn.channel()
    ch.queue_declare("short_lived", arguments={"x-expires": 600})
    ch.queue_declare("kept_alive", arguments={"x-expires": 600})
    ch.queue_declare("consumed", arguments={"x-expires": 600})
    ch.basic_consume("consumed", lambda *a: None, auto_ack=True)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        ch.basic_get("kept_alive")  # a get is a use: the clock restarts
        conn.process_data_events(time_limit=0.2)
    ch.queue_declare("kept_alive", passive=True)
    ch.queue_declare("consumed", passive=True)  # a queue with a consumer never expires
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("short_lived", passive=True)
    assert (e.value.reply_code, e.value.reply_text) == (
        404,
        "NOT_FOUND - no queue 'short_lived' in vhost '/'",
    )
    ch = conn.channel()
    time.sleep(1.0)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ch.queue_declare("kept_alive", passive=True)


def test_publishers_are_blocked_while_the_disk_falls_behind(servers):
    """With the store's write queue nearly full (here: another process holds SQLite's
    write lock, like a stalled disk) publishing connections get `connection.blocked` and
    are not read; once the disk catches up they get `connection.unblocked` and nothing
    they sent is lost."""
    import sqlite3

    s = servers.start("[events]\nwrite_queue = 32\n")
    conn = connect(s)
    ch = conn.channel()
    ch.queue_declare("slow_disk", durable=True)
    events = []
    conn.add_on_connection_blocked_callback(lambda _c, frame: events.append(("blocked", frame.method.reason)))
    conn.add_on_connection_unblocked_callback(lambda _c, _f: events.append(("unblocked", None)))
    db = sqlite3.connect(s.data_dir / "polyport.db", timeout=5, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")  # the writer now waits for the lock
    try:
        for i in range(200):
            ch.basic_publish("", "slow_disk", str(i).encode(), pika.BasicProperties(delivery_mode=2))
        wait_until(lambda: (conn.process_data_events(time_limit=0.1), events)[1], "connection.blocked")
        assert events[0][0] == "blocked" and "write queue" in events[0][1]
    finally:
        db.execute("COMMIT")
        db.close()
    wait_until(lambda: (conn.process_data_events(time_limit=0.1), len(events) > 1)[1], "connection.unblocked")
    assert events[1] == ("unblocked", None)
    got = [int(b) for _, _, b in drain(ch, "slow_disk", 200)]
    assert got == list(range(200))


def test_a_message_published_before_an_unbind_is_delivered_though_it_reaches_the_queue_after(servers):
    """A queue reads ahead only a window of messages ([amqp] queue_window); one published
    behind a full window reaches the queue once there is room, which here is after the
    unbind that followed its publish. It is routed by the binding of its time, so it is
    delivered, with the exchange and routing key it was published with."""
    s = servers.start("[amqp]\nqueue_window = 2\n")
    conn = connect(s)
    ch = conn.channel()
    ch.exchange_declare("orders", "topic", durable=True)
    ch.queue_declare("late", durable=True)
    ch.queue_bind("late", "orders", "fill.*")
    ch.confirm_delivery()
    persistent = pika.BasicProperties(delivery_mode=2)
    for n in range(4):
        ch.basic_publish("orders", f"fill.{n}", b"x", persistent)
    ch.queue_bind("late", "orders", "eu.*")
    ch.basic_publish("orders", "eu.paris", b"paris", persistent)
    ch.queue_unbind("late", "orders", "eu.*")
    got = drain(ch, "late", 5, timeout=5)
    assert [(m.exchange, m.routing_key, b) for m, _, b in got] == [
        ("orders", f"fill.{n}", b"x") for n in range(4)
    ] + [("orders", "eu.paris", b"paris")]
