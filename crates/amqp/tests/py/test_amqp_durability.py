"""Durable topology and confirmed persistent messages survive `kill -9`. Acknowledgements
reach the disk within about half a second, so (as with RabbitMQ) a message acked just
before a crash may come once more; nothing unacked is lost, nothing is invented."""

from __future__ import annotations

import pika
from amqp_clients import connect, drain, servers  # noqa: F401


def test_confirmed_messages_and_durable_topology_survive_kill_9(servers):
    s = servers.start()
    conn = connect(s)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("jobs", "direct", durable=True)
    ch.queue_declare("jobs.email", durable=True)
    ch.queue_bind("jobs.email", "jobs", "email")
    for i in range(50):
        ch.basic_publish("jobs", "email", f"job {i}".encode(), pika.BasicProperties(delivery_mode=2))
    # Ten are consumed and acked before the crash; they must not come back.
    got = drain(ch, "jobs.email", 10, auto_ack=False)
    for m, _, _ in got:
        ch.basic_ack(m.delivery_tag)
    conn.process_data_events(time_limit=0.8)  # let the acks reach the group's position
    servers.kill9(s)
    s2 = servers.restart(s)
    ch2 = connect(s2).channel()
    ch2.exchange_declare("jobs", "direct", passive=True)
    assert ch2.queue_declare("jobs.email", passive=True).method.queue == "jobs.email"
    ch2.basic_publish("jobs", "email", b"after restart", pika.BasicProperties(delivery_mode=2))
    _m, _p, body = ch2.basic_get("jobs.email", auto_ack=True)
    first = body.decode()
    again = int(first.split()[1])
    assert again <= 10, f"delivery resumed at {first}"
    rest = [first] + [b.decode() for _, _, b in drain(ch2, "jobs.email", 50 - again)]
    assert rest == [f"job {i}" for i in range(again, 50)] + ["after restart"]
