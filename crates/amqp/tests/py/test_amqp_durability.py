"""Durable topology and confirmed persistent messages survive `kill -9`. Acknowledgements
reach the disk within about half a second, so (as with RabbitMQ) a message acked just
before a crash may come once more; nothing unacked is lost, nothing is invented."""

from __future__ import annotations

import threading

import pika
from amqp_clients import connect, drain, servers, wait_until  # noqa: F401


def test_confirmed_messages_and_durable_topology_survive_kill_9(servers):
    s = servers.start()
    conn = connect(s)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("jobs", "direct", durable=True)
    ch.queue_declare("jobs.email", durable=True)
    ch.queue_bind("jobs.email", "jobs", "email")
    ch.exchange_declare("jobs.in", "topic", durable=True)
    ch.exchange_bind("jobs", "jobs.in", "#")
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
    # Through the durable exchange-to-exchange binding.
    ch2.basic_publish("jobs.in", "email", b"after restart", pika.BasicProperties(delivery_mode=2))
    _m, _p, body = ch2.basic_get("jobs.email", auto_ack=True)
    first = body.decode()
    again = int(first.split()[1])
    assert again <= 10, f"delivery resumed at {first}"
    rest = [first] + [b.decode() for _, _, b in drain(ch2, "jobs.email", 50 - again)]
    assert rest == [f"job {i}" for i in range(again, 50)] + ["after restart"]


def test_a_crash_mid_stream_loses_nothing_confirmed_and_invents_nothing(servers):
    """`kill -9` while one connection publishes with confirms and another consumes with
    manual acks: after the restart the queue holds every confirmed message not acked
    before the crash, and nothing that was never published."""
    s = servers.start()
    setup = connect(s).channel()
    setup.queue_declare("stream", durable=True)
    sent, confirmed, acked = [], [], []

    def publish():
        try:
            ch = connect(s).channel()
            ch.confirm_delivery()
            for i in range(100_000):
                sent.append(i)
                ch.basic_publish("", "stream", str(i).encode(), pika.BasicProperties(delivery_mode=2))
                confirmed.append(i)  # basic_publish returned: the broker confirmed it
        except Exception:  # noqa: BLE001 - the broker was killed under us
            pass

    def consume():
        try:
            ch = connect(s).channel()
            ch.basic_qos(prefetch_count=20)
            for m, _p, body in ch.consume("stream", inactivity_timeout=10):
                if m is None:
                    return
                ch.basic_ack(m.delivery_tag)
                acked.append(int(body))
        except Exception:  # noqa: BLE001
            pass

    threads = [threading.Thread(target=publish), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    wait_until(lambda: len(confirmed) >= 400 and len(acked) >= 100, "publishing and consuming under way", 30)
    servers.kill9(s)
    for t in threads:
        t.join(timeout=15)
        assert not t.is_alive()
    s2 = servers.restart(s)
    ch = connect(s2).channel()
    after = []
    for m, _p, body in ch.consume("stream", auto_ack=True, inactivity_timeout=3):
        if m is None:
            break
        after.append(int(body))
    assert after, "the unacked messages are gone"
    assert after == sorted(after), "the queue kept its order"
    assert set(after) <= set(sent), "a message that was never published appeared"
    missing = set(confirmed) - set(acked) - set(after)
    assert not missing, f"confirmed messages lost: {sorted(missing)[:10]}"


def test_confirmed_transient_messages_survive_a_crash_of_the_process(servers):
    """Transient messages are confirmed once in the write-ahead log, without waiting for
    the disk (issue 15): a `kill -9` of Polyport keeps them all, in order (RabbitMQ would
    lose them with its process); only a power cut could take the unsynced tail."""
    s = servers.start()
    ch = connect(s).channel()
    ch.confirm_delivery()
    ch.queue_declare("transient.q", durable=True)
    for i in range(200):
        ch.basic_publish("", "transient.q", f"t{i}".encode(), pika.BasicProperties(delivery_mode=1))
    servers.kill9(s)
    ch2 = connect(servers.restart(s)).channel()
    got = [b.decode() for _, _, b in drain(ch2, "transient.q", 200)]
    assert got == [f"t{i}" for i in range(200)]
