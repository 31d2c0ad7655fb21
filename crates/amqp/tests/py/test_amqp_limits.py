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


def test_consumers_past_the_cap_close_the_channel_with_406_and_others_carry_on(servers):
    """`[amqp] max_consumers` counts one connection's consumers over all its channels;
    the one past it closes its channel (406, naming the setting), the connection and
    other connections keep consuming."""
    s = servers.start("[amqp]\nmax_consumers = 2\n")
    a, b = connect(s), connect(s)
    try:
        ch1, ch2 = a.channel(), a.channel()
        ch1.queue_declare("cap-q")
        ch1.basic_consume("cap-q", lambda *_: None, auto_ack=True)
        ch2.basic_consume("cap-q", lambda *_: None, auto_ack=True)
        ch3 = a.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            ch3.basic_consume("cap-q", lambda *_: None, auto_ack=True)
        assert closed.value.reply_code == 406, closed.value
        assert "max_consumers" in closed.value.reply_text
        got = []
        other = b.channel()
        other.queue_declare("cap-other")
        other.basic_consume("cap-other", lambda c, m, p, body: got.append(body), auto_ack=True)
        a.channel().basic_publish("", "cap-other", b"for b")
        deadline = time.monotonic() + 5
        while not got:
            assert time.monotonic() < deadline, "another connection stopped being served"
            b.process_data_events(time_limit=0.1)
        assert got == [b"for b"]
        assert a.is_open
    finally:
        a.close()
        b.close()
