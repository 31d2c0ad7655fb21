"""MQTT 5 rules a conformant broker keeps and a client relies on, through paho-mqtt and,
where paho hides the packet (reason codes, exact sizes), raw bytes:

- a session resumed with Clean Start = 0 and no Session Expiry Interval still gets what
  was queued while the client was away [MQTT-3.1.2-5], minus what expired;
- a client that exceeds the server's Receive Maximum gets DISCONNECT 0x93 (§3.3.4), QoS 2
  flows counting until PUBCOMP, resends of known packet ids not counting;
- a PUBLISH that fits the client's Maximum Packet Size is delivered, one byte more is not
  [MQTT-3.1.2-24/25], after topic-alias substitution too;
- a delayed will goes out after its delay (or when the session ends, if sooner), and not
  at all when the client resumes its session in time (§3.1.3.2.2)."""

from __future__ import annotations

import socket
import struct
import time

import httpx
from mqtt_clients import (  # noqa: F401  (servers, server: fixtures)
    QUIET,
    WAIT,
    Paho,
    server,
    servers,
    Raw,
    connected,
    mqtt_port,
    mstr,
    payloads,
    pkt,
    publish_packet,
    subscribe_packet,
    vbi,
)
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def connect5(client_id: str, props: bytes = b"", *, clean: bool = True) -> bytes:
    """A raw MQTT 5 CONNECT with the given encoded properties."""
    body = mstr("MQTT") + bytes([5, 0x02 if clean else 0x00]) + struct.pack("!H", 60)
    return pkt(0x10, body + vbi(len(props)) + props + mstr(client_id))


def reason_of_disconnect(packets: list[tuple[int, bytes]]) -> int | None:
    """The reason code of the DISCONNECT among `packets`, if the server sent one."""
    for first, body in packets:
        if first & 0xF0 == 0xE0:
            return body[0] if body else 0
    return None


# ---------------------------------------------------------------------------------------
# session resume


def test_resume_without_a_session_expiry_property_still_delivers_the_backlog(server):
    port = mqtt_port(server)
    sub = Paho(port, "resumer", v5=True, clean=True, props={"SessionExpiryInterval": 300})
    assert sub.connect() == (0, 0)
    sub.subscribe("backlog/#", qos=1)
    sub.close()

    pub = connected(port, v5=True)
    pub.publish("backlog/1", b"one", qos=1)
    pub.publish("backlog/2", b"stale", qos=1, props={"MessageExpiryInterval": 1})
    pub.publish("backlog/3", b"three", qos=2)
    pub.close()
    time.sleep(2.2)  # backlog/2 expires while queued

    # Clean Start = 0 and no Session Expiry Interval: the session resumes whole; the new
    # expiry (0) only means it ends at this connection's end.
    again = Paho(port, "resumer", v5=True, clean=False)
    assert again.connect() == (1, 0), "the session is present"
    got = again.take(2)
    assert payloads(got) == [b"one", b"three"], "queued messages, in order, minus the expired one"
    again.nothing_more()
    again.close()

    third = Paho(port, "resumer", v5=True, clean=False)
    assert third.connect() == (0, 0), "the session ended with the connection that had expiry 0"
    third.close()


# ---------------------------------------------------------------------------------------
# receive maximum


RECEIVE_MAX_3 = "[mqtt]\nreceive_max = 3\n"


def test_exceeding_the_receive_maximum_gets_disconnect_0x93(servers):
    s = servers.start(RECEIVE_MAX_3)
    port = mqtt_port(s)
    bystander = connected(port, "bystander", "rm/#", v5=True)

    raw = Raw(port)
    raw.send(connect5("greedy"))
    _, body = raw.expect(0x20)
    assert body[1] == 0, "CONNACK accepted"
    # Three QoS 2 flows left open (no PUBREL): the quota is used up.
    for pid in (1, 2, 3):
        raw.send(publish_packet("rm/q2", b"m%d" % pid, qos=2, pid=pid, v5=True))
        _, ack = raw.expect(0x50)
        assert struct.unpack("!H", ack[:2])[0] == pid
    # A resend of a known packet id is not a new flow: acknowledged again, not counted.
    dup = bytearray(publish_packet("rm/q2", b"m1", qos=2, pid=1, v5=True))
    dup[0] |= 0x08
    raw.send(bytes(dup))
    _, ack = raw.expect(0x50)
    assert struct.unpack("!H", ack[:2])[0] == 1
    # Finishing one flow frees one slot.
    raw.send(pkt(0x62, struct.pack("!H", 1) + b"\x00\x00"))  # PUBREL 1
    raw.expect(0x70)  # PUBCOMP
    raw.send(publish_packet("rm/q2", b"m4", qos=2, pid=4, v5=True))
    raw.expect(0x50)
    # A fourth open flow is one too many.
    raw.send(publish_packet("rm/q2", b"m5", qos=2, pid=5, v5=True))
    assert reason_of_disconnect(raw.closed_within()) == 0x93
    raw.close()

    # Every accepted message was published once; the one past the quota was not.
    got = bystander.take(4)
    assert sorted(payloads(got)) == [b"m1", b"m2", b"m3", b"m4"]
    bystander.nothing_more()
    # Nobody else was affected.
    bystander.publish("rm/after", b"still here", qos=1)
    assert payloads(bystander.take(1)) == [b"still here"]
    bystander.close()


def test_a_client_within_the_receive_maximum_is_never_cut_off(servers):
    s = servers.start(RECEIVE_MAX_3)
    port = mqtt_port(s)
    sub = connected(port, "rm-sub", "rmok/#", v5=True)
    pub = Paho(port, "rm-pub", v5=True)
    # paho 1.6 does not read the server's Receive Maximum from CONNACK; its own in-flight
    # window is set to match, as a user of this server would. 30 QoS 2 messages queued at
    # once must all get through on one connection.
    pub.c.max_inflight_messages_set(3)
    assert pub.connect() == (0, 0)
    infos = [pub.c.publish("rmok/t", b"n%02d" % i, qos=2) for i in range(30)]
    for info in infos:
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published()
    assert payloads(sub.take(30)) == [b"n%02d" % i for i in range(30)]
    assert pub.disconnects.empty(), "the publisher was not disconnected"
    pub.close()
    sub.close()


# ---------------------------------------------------------------------------------------
# maximum packet size


def mqtt3_publish(port: int, topic: str, *bodies: bytes) -> None:
    """Publishes each body at QoS 1 from a 3.1.1 client (so it carries no properties)."""
    p = connected(port, "sizer")
    for b in bodies:
        p.publish(topic, b, qos=1)
    p.close()


def received_publishes(raw: Raw, until: bytes) -> list[tuple[str, bytes]]:
    """(topic, payload) of the QoS 0 MQTT 5 PUBLISHes read until one carries `until`."""
    out = []
    while True:
        first, body = raw.expect(0x30)
        (tlen,) = struct.unpack("!H", body[:2])
        topic = body[2 : 2 + tlen].decode()
        rest = body[2 + tlen :]
        # properties: a variable byte integer length, then the properties
        n, shift, i = 0, 0, 0
        while True:
            b = rest[i]
            n |= (b & 0x7F) << shift
            shift += 7
            i += 1
            if not b & 0x80:
                break
        payload = rest[i + n :]
        out.append((topic, payload))
        if payload == until:
            return out


def test_a_publish_exactly_the_clients_maximum_packet_size_is_delivered(server):
    port = mqtt_port(server)
    raw = Raw(port)
    raw.send(connect5("small-pipe", b"\x27" + struct.pack("!I", 100)))  # Maximum Packet Size
    raw.expect(0x20)
    raw.send(subscribe_packet(1, "size/t", 0, v5=True))
    raw.expect(0x90)
    # To this client: 1 fixed header + 1 length + 2+6 topic + 1 (no properties) + payload.
    fits, over = b"a" * 89, b"b" * 90  # 100 and 101 bytes on the wire
    mqtt3_publish(port, "size/t", fits, over, b"end")
    got = received_publishes(raw, b"end")
    assert [p for _, p in got] == [fits, b"end"], "the 100-byte packet arrives, the 101-byte one does not"
    raw.close()


def test_maximum_packet_size_counts_the_topic_as_sent_with_an_alias(server):
    port = mqtt_port(server)
    raw = Raw(port)
    # Maximum Packet Size 100, Topic Alias Maximum 4.
    raw.send(connect5("alias-pipe", b"\x27" + struct.pack("!I", 100) + b"\x22" + struct.pack("!H", 4)))
    raw.expect(0x20)
    raw.send(subscribe_packet(1, "size/a", 0, v5=True))
    raw.expect(0x90)
    # The first PUBLISH sets the alias (topic + alias property); later ones send only the
    # alias: 1 + 1 + 2 (empty topic) + 1 + 3 (alias property) + payload = 100 at 92 bytes.
    first, fits, over = b"first", b"c" * 92, b"d" * 93
    mqtt3_publish(port, "size/a", first, fits, over, b"end")
    got = received_publishes(raw, b"end")
    assert [p for _, p in got] == [first, fits, b"end"]
    assert got[0][0] == "size/a" and all(t == "" for t, _ in got[1:]), "later ones use the alias"
    raw.close()


# ---------------------------------------------------------------------------------------
# delayed wills


def device_with_will(port: int, client_id: str, delay: int, session_expiry: int) -> Paho:
    dev = Paho(port, client_id, v5=True, clean=True, props={"SessionExpiryInterval": session_expiry})
    wp = Properties(PacketTypes.WILLMESSAGE)
    wp.WillDelayInterval = delay
    dev.c.will_set(f"wills/{client_id}", b"gone", qos=1, properties=wp)
    assert dev.connect() == (0, 0)
    return dev


def vanish(dev: Paho) -> None:
    """Drops the connection without DISCONNECT, as a device losing power does."""
    dev.c.loop_stop()
    sock = dev.c.socket()
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def test_a_delayed_will_is_published_after_its_delay(server):
    port = mqtt_port(server)
    watch = connected(port, "will-watch", "wills/#", v5=True)
    dev = device_with_will(port, "late", delay=2, session_expiry=60)
    vanish(dev)
    gone_at = time.monotonic()
    watch.nothing_more(within=1.5)  # not before the delay
    (m,) = watch.take(1, timeout=5)
    assert (m.topic, m.payload) == ("wills/late", b"gone")
    assert time.monotonic() - gone_at >= 1.9
    watch.close()


def test_a_delayed_will_goes_out_when_the_session_ends_first(server):
    port = mqtt_port(server)
    watch = connected(port, "will-watch2", "wills/#", v5=True)
    dev = device_with_will(port, "short-lived", delay=30, session_expiry=1)
    vanish(dev)
    (m,) = watch.take(1, timeout=5)  # at the session's end (1 s), not after 30 s
    assert (m.topic, m.payload) == ("wills/short-lived", b"gone")
    watch.close()


def test_a_delayed_will_is_not_published_when_the_session_resumes_in_time(server):
    port = mqtt_port(server)
    watch = connected(port, "will-watch3", "wills/#", v5=True)
    dev = device_with_will(port, "flaky", delay=2, session_expiry=60)
    vanish(dev)
    time.sleep(0.5)
    back = Paho(port, "flaky", v5=True, clean=False, props={"SessionExpiryInterval": 60})
    assert back.connect() == (1, 0), "the session was resumed"
    watch.nothing_more(within=3.5)  # well past the delay: no will
    back.close()
    watch.nothing_more(within=QUIET)  # a clean DISCONNECT publishes no will either
    watch.close()


def test_paho_with_a_window_larger_than_the_receive_maximum_is_told_why(servers):
    s = servers.start(RECEIVE_MAX_3)
    pub = Paho(mqtt_port(s), "rm-wide", v5=True)
    assert pub.connect() == (0, 0)
    for i in range(10):  # paho's default window is 20 messages
        pub.c.publish("rmwide/t", b"x", qos=2)
    assert pub.wait_closed() == 0x93, "DISCONNECT with Receive Maximum exceeded"


def test_rest_still_sees_mqtt_traffic_after_conformance_disconnects(servers):
    """A connection cut off for a protocol violation leaves the rest of the server alone."""
    s = servers.start(RECEIVE_MAX_3)
    port = mqtt_port(s)
    raw = Raw(port)
    raw.send(connect5("violator"))
    raw.expect(0x20)
    for pid in range(1, 5):
        raw.send(publish_packet("viol/t", b"x", qos=2, pid=pid, v5=True))
    assert reason_of_disconnect(raw.closed_within()) == 0x93
    r = httpx.post(f"{s.url}/api/topics/viol/ok", content=b"fine", headers={"content-type": "text/plain"})
    assert r.status_code == 202, r.text
