"""Connection caps (`[limits]`): pika past the per-address cap is refused at
connection.open with 530 NOT_ALLOWED, as RabbitMQ refuses one past a vhost's connection
limit (pika reports a close at that stage as ProbableAccessDeniedError); the connections
already open carry on."""

from __future__ import annotations

import time

import pika
import pytest

from amqp_clients import connect, servers  # noqa: F401  (fixture)


def test_a_connection_past_the_cap_gets_530_and_the_others_carry_on(servers):
    s = servers.start("[limits]\nmax_connections_per_address = 2\n")
    a, b = connect(s), connect(s)
    try:
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as refused:
            connect(s)
        assert "(530) 'NOT_ALLOWED - connection limit reached" in str(refused.value)
        pub = a.channel()
        pub.queue_declare("limits-q")
        pub.basic_publish("", "limits-q", b"still here")
        sub = b.channel()
        deadline = time.monotonic() + 5
        while (got := sub.basic_get("limits-q", auto_ack=True))[2] is None:
            assert time.monotonic() < deadline, "the open connections stopped working"
            b.sleep(0.05)
        assert got[2] == b"still here"
    finally:
        a.close()
        b.close()
