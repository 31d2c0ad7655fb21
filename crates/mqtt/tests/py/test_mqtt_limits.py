"""Connection caps (`[limits]`): a client past the per-address cap hears CONNACK "Quota
exceeded" (MQTT 5) or "Server unavailable" (3.1.1); the clients already connected carry
on, and a place freed is a place taken."""

from __future__ import annotations

import time

from mqtt_clients import Paho, _int, connected, mqtt_port
from polyport_server import servers  # noqa: F401  (fixture)

LIMITS = "[limits]\nmax_connections_per_address = 3\n"


def test_a_client_past_the_cap_is_told_why_and_the_others_carry_on(servers):
    s = servers.start(LIMITS)
    port = mqtt_port(s)
    held = [connected(port, f"c{i}", "limits/#") for i in range(3)]
    try:
        v5 = Paho(port, "over5", v5=True)
        assert v5.connect()[1] == 0x97, "MQTT 5: Quota exceeded"
        v3 = Paho(port, "over3")
        assert v3.connect()[1] == 3, "3.1.1: Server unavailable"
        held[0].publish("limits/a", b"still here")
        for c in held:
            assert [m.payload for m in c.take(1)] == [b"still here"]
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the server frees the place once it sees the close
            c = Paho(port, "later")
            rc = c.connect()[1]
            if rc == 0:
                held.append(c)
                break
            assert time.monotonic() < deadline, f"the freed place was not given out (CONNACK {rc})"
            time.sleep(0.1)
    finally:
        for c in held:
            c.close()


def test_subscriptions_past_the_per_connection_cap_are_refused_in_suback(servers):
    s = servers.start("[mqtt]\nmax_subscriptions = 2\n")
    port = mqtt_port(s)
    for v5, refused in ((True, 0x97), (False, 0x80)):
        c = Paho(port, f"subs-{v5}", v5=v5)
        try:
            assert c.connect()[1] == 0
            c.subscribe("cap/0", 1)
            c.subscribe("cap/1", 1)
            c.c.subscribe("cap/2", qos=1)
            assert [_int(g) for g in c.subacks.get(timeout=10)] == [refused], "MQTT 5: Quota exceeded; 3.1.1: failure"
            c.subscribe("cap/0", 0)  # replacing a subscription is not a new one
            c.publish("cap/1", b"still subscribed", qos=1)
            assert [m.payload for m in c.take(1)] == [b"still subscribed"]
        finally:
            c.close()
