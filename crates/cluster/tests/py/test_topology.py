"""AMQP topology across the nodes of a cluster, with pika and stomp.py: what a client
declares, binds or deletes through one node holds through every node, as in a RabbitMQ
cluster. A lookup on another node finds a fresh declaration at once (it asks the store
on a miss); a change to something another node already knows (a new binding, a
deletion) reaches it through an announcement in the log, and the node that made it
answers the client once every other node has applied it."""

from __future__ import annotations

import time
import uuid

import pika
import pytest
import stomp
from cluster_nodes import WAIT, amqp


def eventually(what: str, check, timeout: float = WAIT):
    """`check()` until it is truthy; its last value."""
    deadline = time.time() + timeout
    while True:
        v = check()
        if v or time.time() > deadline:
            assert v, f"{what} within {timeout} s"
            return v
        time.sleep(0.05)


def declare_orders(ch, queue: str) -> None:
    """A durable topic exchange `orders` and a durable `queue` bound to it by `eu.*`."""
    ch.exchange_declare("orders", "topic", durable=True)
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, "orders", "eu.*")


def test_exchanges_queues_and_bindings_declared_through_one_node_work_through_another(nodes_with_bus):
    """Declared through A: a durable topic exchange, a durable queue bound to it. At once
    through B: both answer a passive declare, a confirmed mandatory publish to the
    exchange is routed (not returned), and B's consumer gets it. A binding added through
    A routes what is published through B right after the bind-ok; the queue deleted
    through A cancels B's consumer and is gone on B (404 on a passive declare)."""
    a, b = nodes_with_bus(2)
    ca, cb = amqp(a), amqp(b)
    try:
        cha = ca.channel()
        declare_orders(cha, "eu-orders")

        chb = cb.channel()
        chb.exchange_declare("orders", passive=True)
        assert chb.queue_declare("eu-orders", passive=True).method.queue == "eu-orders"
        chb.confirm_delivery()
        persistent = pika.BasicProperties(delivery_mode=2)
        # Raises UnroutableError if B returned it as NO_ROUTE.
        chb.basic_publish("orders", "eu.paris", b"paris", persistent, mandatory=True)

        got: list[tuple[str, bytes]] = []
        chb.basic_consume("eu-orders", lambda ch, m, p, body: (got.append((m.routing_key, body)), ch.basic_ack(m.delivery_tag)))
        deadline = time.time() + WAIT
        while not got and time.time() < deadline:
            cb.process_data_events(time_limit=0.05)
        assert got == [("eu.paris", b"paris")]

        # A answers bind-ok once B has applied the binding: B routes the very next
        # publish by it (a mandatory one would come back NO_ROUTE otherwise).
        for n in range(5):
            cha.queue_bind("eu-orders", "orders", f"us{n}.*")
            chb.basic_publish("orders", f"us{n}.nyc", b"nyc", persistent, mandatory=True)
        want = {f"us{n}.nyc" for n in range(5)}
        deadline = time.time() + WAIT
        while not want <= {k for k, _ in got} and time.time() < deadline:
            cb.process_data_events(time_limit=0.05)
        assert want <= {k for k, _ in got}, got

        tags = list(chb.consumer_tags)
        assert tags
        cha.queue_delete("eu-orders")
        deadline = time.time() + WAIT
        while chb.consumer_tags and time.time() < deadline:
            cb.process_data_events(time_limit=0.05)
        assert not chb.consumer_tags, "B's consumer was cancelled when A deleted the queue"
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            chb.queue_declare("eu-orders", passive=True)
        assert e.value.reply_code == 404
    finally:
        for c in (ca, cb):
            if c.is_open:
                c.close()


def test_a_stomp_client_on_another_node_uses_a_queue_declared_through_amqp(nodes_with_bus):
    """A queue pika declared through A is `/amq/queue/<name>` for stomp.py on B at once:
    B does not answer `NOT_FOUND`, and the message pika publishes through A arrives."""
    a, b = nodes_with_bus(2)
    name = f"reports-{uuid.uuid4().hex[:6]}"
    ca = amqp(a)
    got: list[str] = []

    class Listener(stomp.ConnectionListener):
        def on_message(self, frame):
            got.append(frame.body)

        def on_error(self, frame):
            got.append(f"ERROR {frame.headers.get('message')}")

    conn = stomp.Connection12([("127.0.0.1", b.port("stomp"))], heartbeats=(0, 0))
    conn.set_listener("l", Listener())
    try:
        ch = ca.channel()
        ch.queue_declare(name, durable=True)
        conn.connect("guest", "guest", wait=True)
        conn.subscribe(f"/amq/queue/{name}", id="1", ack="auto", headers={"receipt": "sub"})
        ch.basic_publish("", name, b"quarterly", pika.BasicProperties(delivery_mode=2))
        eventually("the message through B", lambda: got)
        assert got == ["quarterly"]
    finally:
        if conn.is_connected():
            conn.disconnect()
        ca.close()


def test_a_binding_changed_while_consumers_on_two_nodes_hold_messages_delivers_nothing_twice(nodes_with_bus):
    """The queue's group runs on one node and its consumers sit on both. Each consumer
    holds a message unacked while five bindings are added and removed through A: the
    group takes the new filters where it runs (no member leaves it), so every message
    reaches exactly one consumer once, none flagged redelivered."""
    a, b = nodes_with_bus(2)
    ca, cb = amqp(a), amqp(b)
    try:
        admin = ca.channel()
        declare_orders(admin, "work")
        admin.confirm_delivery()
        persistent = pika.BasicProperties(delivery_mode=2)

        got: dict[str, list[tuple[str, bool, int]]] = {"a": [], "b": []}
        cha, chb = ca.channel(), cb.channel()
        for ch, side in ((cha, "a"), (chb, "b")):
            ch.basic_qos(prefetch_count=10)
            ch.basic_consume("work", lambda c, m, p, body, side=side: got[side].append((m.routing_key, m.redelivered, m.delivery_tag)))

        def pump(seconds: float):
            ca.process_data_events(time_limit=seconds / 2)
            cb.process_data_events(time_limit=seconds / 2)

        def keys() -> list[str]:
            return sorted(k for side in got.values() for k, _, _ in side)

        for n in range(6):
            admin.basic_publish("orders", f"eu.{n}", b"eu", persistent)
        deadline = time.time() + WAIT
        while len(keys()) < 6 and time.time() < deadline:
            pump(0.1)
        assert len(keys()) == 6 and got["a"] and got["b"], got
        # Each side acks all but its first delivery.
        for ch, side in ((cha, "a"), (chb, "b")):
            for _, _, tag in got[side][1:]:
                ch.basic_ack(tag)
        pump(0.2)

        for n in range(5):
            admin.queue_bind("work", "orders", f"us{n}.*")
            admin.basic_publish("orders", f"us{n}.nyc", b"us", persistent, mandatory=True)
            admin.queue_unbind("work", "orders", f"us{n}.*")
            pump(0.1)
        want = sorted([f"eu.{n}" for n in range(6)] + [f"us{n}.nyc" for n in range(5)])
        deadline = time.time() + WAIT
        while len(keys()) < len(want) and time.time() < deadline:
            pump(0.1)
        pump(1.0)
        assert keys() == want, got
        assert not any(r for side in got.values() for _, r, _ in side), got
    finally:
        for c in (ca, cb):
            if c.is_open:
                c.close()
