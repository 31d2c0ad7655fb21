"""The MQTT broker's features as a user meets them, through third-party clients (paho-mqtt
1.6, mosquitto_pub/mosquitto_sub, websockets, httpx) and, where a client library hides
what the wire says (unacknowledged deliveries, reason codes), a raw socket:

persistent sessions (also across `kill -9`), clean start, MQTT 5 session and message
expiry, DUP redelivery, MQTT over WebSocket, `$SYS`, the Mosquitto CLI tools,
authentication, server-to-client topic aliases, MQTT → SSE / WebSocket / webhooks, and
bad input (unknown protocol level, oversized packets, invalid UTF-8 topic names).

Every server here is started by the `servers` fixture (conftest.py, not `spawn`), because
one test SIGKILLs its server and restarts it on the same data dir."""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from mqtt_clients import (  # noqa: F401  (servers, server: fixtures)
    MOSQUITTO_PUB,
    MOSQUITTO_SUB,
    QUIET,
    WAIT,
    Paho,
    server,
    servers,
    Raw,
    connect_packet,
    connected,
    http_port,
    mqtt_port,
    mstr,
    parse_publish3,
    payloads,
    pkt,
    publish_packet,
    read_lines,
    subscribe_packet,
    vbi,
)
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from realtime_clients import WsClient, open_sse
from websockets.sync.client import connect as ws_connect

WEBHOOK_TESTS = Path(__file__).resolve().parents[3] / "webhooks" / "tests" / "py"
if str(WEBHOOK_TESTS) not in sys.path:
    sys.path.append(str(WEBHOOK_TESTS))

from webhook_receivers import Api, Receiver, new_secret  # noqa: E402


# ---------------------------------------------------------------------------------------
# 1-4: sessions


def test_persistent_session_311_gets_what_was_published_while_away_without_resubscribing(server):
    port = mqtt_port(server)
    sub = Paho(port, "keeper", clean=False)
    present, rc = sub.connect()
    assert (present, rc) == (0, 0), "a brand-new session"
    sub.subscribe("away/1", qos=1)
    sub.close()

    pub = connected(port, "pub-away")
    for i in range(5):
        pub.publish("away/1", f"m{i}", qos=1)
    pub.close()

    back = Paho(port, "keeper", clean=False)
    present, rc = back.connect()
    assert rc == 0 and present == 1, f"session present={present} rc={rc}: the session was not kept"
    msgs = back.take(5)  # no SUBSCRIBE: the session's subscription delivers them
    assert payloads(msgs) == [f"m{i}".encode() for i in range(5)], "all five, in order"
    assert {(m.topic, m.qos) for m in msgs} == {("away/1", 1)}
    back.nothing_more(0.5)
    back.close()


def test_persistent_session_and_retained_message_survive_kill_9(servers):
    s = servers.start()
    port = mqtt_port(s)
    sub = Paho(port, "survivor", clean=False)
    assert sub.connect() == (0, 0)
    sub.subscribe("crash/q", qos=1)
    sub.close()

    pub = connected(port, "pub-crash")
    for i in range(3):
        pub.publish("crash/q", f"c{i}", qos=1)
    pub.publish("crash/retained", "kept", qos=1, retain=True)
    pub.close()

    servers.kill9(s)
    s2 = servers.restart(s)
    port = mqtt_port(s2)

    back = Paho(port, "survivor", clean=False)
    present, rc = back.connect()
    assert rc == 0 and present == 1, f"after kill -9: session present={present} rc={rc}"
    msgs = back.take(3)
    assert payloads(msgs) == [b"c0", b"c1", b"c2"], "the three QoS 1 messages, in order"
    assert all(m.topic == "crash/q" for m in msgs)
    back.close()

    fresh = connected(port, "fresh", "crash/retained")
    [m] = fresh.take(1)
    assert (m.topic, m.payload, m.retain) == ("crash/retained", b"kept", 1)
    fresh.close()


def test_clean_session_discards_the_persistent_session_and_its_queue(server):
    port = mqtt_port(server)
    sub = Paho(port, "discard-me", clean=False)
    assert sub.connect() == (0, 0)
    sub.subscribe("discard/t", qos=1)
    sub.close()
    pub = connected(port, "pub-discard")
    pub.publish("discard/t", "queued-1", qos=1)
    pub.publish("discard/t", "queued-2", qos=1)

    clean = Paho(port, "discard-me", clean=True)
    present, rc = clean.connect()
    assert (present, rc) == (0, 0), f"clean session: session present must be 0, got {present}"
    clean.nothing_more(QUIET)
    clean.close()

    again = Paho(port, "discard-me", clean=False)
    present, rc = again.connect()
    assert (present, rc) == (0, 0), f"the discarded session came back: session present={present}"
    again.nothing_more(0.5)
    # And with no subscription left, new messages do not reach it either.
    pub.publish("discard/t", "after", qos=1)
    again.nothing_more(0.5)
    again.close()
    pub.close()


def test_mqtt5_session_expiry_interval_ends_a_parked_session(server):
    port = mqtt_port(server)
    for cid, expiry in (("short-lived", 1), ("long-lived", 60)):
        c = Paho(port, cid, v5=True, clean=False, props={"SessionExpiryInterval": expiry})
        assert c.connect() == (0, 0)
        c.subscribe("expiry/t", qos=1)
        c.close()
    time.sleep(3)
    for cid, want in (("short-lived", 0), ("long-lived", 1)):
        c = Paho(port, cid, v5=True, clean=False, props={"SessionExpiryInterval": 60})
        present, rc = c.connect()
        assert rc == 0 and present == want, f"{cid}: session present={present}, want {want} after 3 s"
        c.close()


# ---------------------------------------------------------------------------------------
# 5: redelivery with DUP


def test_unacknowledged_qos1_delivery_is_resent_with_dup_on_reconnect(server):
    port = mqtt_port(server)
    raw = Raw(port)
    raw.send(connect_packet("raw-dup", clean=False))
    assert raw.connack() == (0, 0)
    raw.send(subscribe_packet(7, "dup/t", 1))
    _, suback = raw.expect(0x90)
    assert suback == b"\x00\x07\x01", f"SUBACK {suback!r}"

    pub = connected(port, "pub-dup")
    pub.publish("dup/t", "once", qos=1)
    first = parse_publish3(*raw.expect(0x30))
    assert (first["topic"], first["payload"], first["qos"], first["dup"]) == ("dup/t", b"once", 1, False)
    raw.close()  # no PUBACK

    raw = Raw(port)
    raw.send(connect_packet("raw-dup", clean=False))
    assert raw.connack() == (1, 0), "session present"
    again = parse_publish3(*raw.expect(0x30))
    assert (again["topic"], again["payload"], again["qos"]) == ("dup/t", b"once", 1)
    assert again["dup"], f"redelivery without the DUP flag: {again}"
    assert again["pid"] == first["pid"], "a resent PUBLISH keeps its packet identifier (MQTT-4.4.0-1)"
    raw.send(pkt(0x40, struct.pack("!H", again["pid"])))  # PUBACK
    raw.send(b"\xe0\x00")
    raw.close()

    raw = Raw(port)
    raw.send(connect_packet("raw-dup", clean=False))
    assert raw.connack() == (1, 0)
    with pytest.raises(socket.timeout):
        p = raw.read(QUIET)
        raise AssertionError(f"acknowledged message delivered again: {p}")
    raw.send(b"\xe0\x00")
    raw.close()
    pub.close()


@pytest.mark.parametrize("clean", [True, False], ids=["clean", "persistent"])
def test_subscribing_again_replaces_the_options_without_interrupting_the_flow(server, clean):
    """[MQTT-3.8.4-3]: the same filter subscribed again replaces the subscription, and the
    flow of publications MUST NOT be interrupted: nothing lost, repeated or reordered
    while the SUBSCRIBE is handled; the new QoS holds from then on. mosquitto_sub sends
    its SUBSCRIBE again on every resume of a persistent session."""
    port = mqtt_port(server)
    tag = "c" if clean else "p"
    sub = Paho(port, f"resub-{tag}", clean=clean)
    sub.connect()
    sub.subscribe(f"resub/{tag}/#", qos=1)
    pub = connected(port, f"resub-pub-{tag}")
    n = 300
    sent = [f"m{i}" for i in range(n)]

    def publish_all():
        for m in sent:
            pub.publish(f"resub/{tag}/x", m, qos=1)

    import threading

    t = threading.Thread(target=publish_all)
    t.start()
    for _ in range(20):
        sub.subscribe(f"resub/{tag}/#", qos=1)
        time.sleep(0.01)
    t.join(timeout=WAIT)
    got = sub.take(n)
    assert [m.payload.decode() for m in got] == sent
    assert all(m.qos == 1 for m in got)
    sub.nothing_more(QUIET)

    sub.subscribe(f"resub/{tag}/#", qos=0)
    pub.publish(f"resub/{tag}/x", "after", qos=1)
    [m] = sub.take(1)
    assert (m.payload, m.qos) == (b"after", 0), "the new subscription's QoS applies"
    sub.close()
    pub.close()


# ---------------------------------------------------------------------------------------
# 6: WebSocket


def test_mqtt_over_websocket_talks_to_tcp_clients(server):
    port, wsport = mqtt_port(server), http_port(server)

    # The handshake picks the `mqtt` subprotocol, and the socket speaks MQTT.
    with ws_connect(f"ws://{server.http}/mqtt", subprotocols=["mqtt"], open_timeout=WAIT, proxy=None) as ws:
        assert ws.subprotocol == "mqtt"
        assert ws.response.headers.get("Sec-WebSocket-Protocol") == "mqtt"
        ws.send(connect_packet("ws-raw"))
        reply = ws.recv(timeout=WAIT)
        assert isinstance(reply, bytes) and reply[0] == 0x20 and reply[3] == 0, f"CONNACK over WebSocket: {reply!r}"

    over_ws = connected(wsport, "ws-paho", "ws/in", transport="websockets")
    tcp_sub = connected(port, "tcp-sub", "ws/out")
    tcp_pub = connected(port, "tcp-pub")

    tcp_pub.publish("ws/in", "tcp to ws", qos=1)
    [m] = over_ws.take(1)
    assert (m.topic, m.payload) == ("ws/in", b"tcp to ws")

    over_ws.publish("ws/out", "ws to tcp", qos=1)
    [m] = tcp_sub.take(1)
    assert (m.topic, m.payload, m.qos) == ("ws/out", b"ws to tcp", 1)
    for c in (over_ws, tcp_sub, tcp_pub):
        c.close()


# ---------------------------------------------------------------------------------------
# 7: $SYS


def test_sys_topics_are_published_retained_hidden_from_hash_and_read_only(servers):
    s = servers.start("[mqtt]\nsys_interval_secs = 1\n")
    port = mqtt_port(s)
    everything = connected(port, "hash-sub", "#", qos=0)
    watcher = connected(port, "sys-watcher", "$SYS/#", qos=0)
    time.sleep(1.5)  # at least one $SYS round while both are connected

    late = connected(port, "sys-late", "$SYS/broker/clients/connected", qos=0)
    [m] = late.take(1, timeout=5)
    assert m.topic == "$SYS/broker/clients/connected" and m.retain == 1, (m.topic, m.retain)
    assert m.payload.decode().isdigit() and int(m.payload) >= 1, f"clients connected: {m.payload!r}"
    late.close()

    # `#` does not match $SYS topics (MQTT-4.7.2-1), though $SYS/# sees plenty.
    time.sleep(1.2)
    sys_msgs = []
    while not watcher.messages.empty():
        sys_msgs.append(watcher.messages.get())
    assert sys_msgs and all(m.topic.startswith("$SYS/broker/") for m in sys_msgs), [m.topic for m in sys_msgs]
    p = connected(port, "plain-pub")
    p.publish("plain/t", "visible", qos=1)
    seen = []
    while True:
        try:
            m = everything.messages.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError("the `#` subscriber did not get plain/t") from None
        seen.append(m.topic)
        if m.topic == "plain/t":
            break
    assert not [t for t in seen if t.startswith("$")], f"`#` matched: {seen}"

    # Clients cannot publish to $SYS: PUBACK reason 0x87, and nobody receives it.
    spy = connected(port, "sys-spy", "$SYS/x", qos=1)
    raw = Raw(port)
    raw.send(connect_packet("sys-writer", level=5))
    assert raw.connack()[1] == 0
    raw.send(publish_packet("$SYS/x", b"forged", qos=1, pid=9, v5=True))
    _, ack = raw.expect(0x40)
    assert ack[:2] == b"\x00\x09"
    reason = ack[2] if len(ack) > 2 else 0
    assert reason == 0x87, f"PUBACK reason {reason:#04x}, want 0x87 Not authorized"
    spy.nothing_more(QUIET)
    raw.send(b"\xe0\x00")
    raw.close()
    for c in (spy, p, everything, watcher):
        c.close()


def test_a_silent_client_is_disconnected_after_one_and_a_half_keep_alives(servers):
    """Keep-alive is enforced by the broker's sweep (issue 15): an MQTT 5 client that
    asks for 1 s and then says nothing hears DISCONNECT 0x8D (Keep alive timeout) after
    1.5 s, within a second of slack, and one that keeps pinging stays."""
    s = servers.start()
    port = mqtt_port(s)
    silent, pinging = Raw(port), Raw(port)
    silent.send(connect_packet("ka-silent", level=5, keepalive=1))
    pinging.send(connect_packet("ka-pinging", level=5, keepalive=1))
    assert silent.connack()[1] == 0 and pinging.connack()[1] == 0
    started = time.monotonic()
    deadline = started + 4
    while time.monotonic() < deadline:
        pinging.send(b"\xc0\x00")
        assert pinging.expect(0xD0) is not None, "PINGRESP"
        time.sleep(0.4)
        silent.s.settimeout(0.01)
        try:
            head = silent.s.recv(1)
        except socket.timeout:
            continue
        assert head == b"\xe0", f"expected DISCONNECT, got {head!r}"
        break
    else:
        raise AssertionError("the silent client was not disconnected within 4 s")
    waited = time.monotonic() - started
    assert 1.4 <= waited <= 3.0, f"disconnected after {waited:.2f}s"
    silent.s.settimeout(WAIT)
    body = silent._exact(silent._exact(1)[0])
    assert body[0] == 0x8D, f"DISCONNECT reason {body[0]:#04x}, want 0x8D Keep alive timeout"
    pinging.send(b"\xc0\x00")
    assert pinging.expect(0xD0) is not None, "the pinging client is still served"
    pinging.send(b"\xe0\x00")
    for r in (silent, pinging):
        r.close()


def test_metrics_count_every_mqtt_message_in_and_out(servers):
    """`/metrics` counts what the broker carried (the counters are resolved once and kept
    on the hot path, issue 15): five QoS 0 publishes to one subscriber are five in, five
    out, and five ephemeral events published."""
    s = servers.start()
    port = mqtt_port(s)

    def counters() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{http_port(s)}/metrics", timeout=WAIT).text
        out = {}
        for line in text.splitlines():
            if line.startswith(("polyport_mqtt_messages_", 'polyport_events_published_total{durable="false"}')):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    before = counters()
    sub = connected(port, "metrics-sub", "metrics/#", qos=0)
    pub = connected(port, "metrics-pub")
    for i in range(5):
        pub.publish(f"metrics/{i}", b"x", qos=0)
    assert len(sub.take(5)) == 5
    after = counters()

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert grew("polyport_mqtt_messages_in_total") == 5, after
    assert grew("polyport_mqtt_messages_out_total") == 5, after
    assert grew('polyport_events_published_total{durable="false"}') >= 5, after
    for c in (sub, pub):
        c.close()


# ---------------------------------------------------------------------------------------
# 8: mosquitto_pub / mosquitto_sub


def mosquitto_pub(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True, text=True, timeout=WAIT
    )


def mosquitto_sub(port: int, *args: str) -> tuple[subprocess.Popen, queue.Queue]:
    """Starts `mosquitto_sub -d …` and returns once it printed that its SUBACK came."""
    proc = subprocess.Popen(
        # Line-buffered: a pipe would otherwise hold the debug lines until it exits.
        ["stdbuf", "-oL", MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-d", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    lines = read_lines(proc)
    deadline = time.monotonic() + WAIT
    seen = []
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            proc.kill()
            raise AssertionError(f"mosquitto_sub {args}: no SUBACK within {WAIT}s: {seen}") from None
        if line is None:
            raise AssertionError(f"mosquitto_sub {args} exited ({proc.wait()}) before its SUBACK: {seen}")
        seen.append(line)
        if "received SUBACK" in line:
            return proc, lines


def sub_output(proc: subprocess.Popen, lines: queue.Queue) -> tuple[list[str], int]:
    """The message lines `mosquitto_sub -d -v` printed until it exited (its debug lines
    left out)."""
    try:
        code = proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rest = []
        while not lines.empty():
            rest.append(lines.get())
        raise AssertionError(f"mosquitto_sub did not exit within {WAIT}s; printed {rest}") from None
    out = []
    while True:
        line = lines.get(timeout=WAIT)
        if line is None:
            break
        if not line.startswith(("Client ", "Subscribed (mid")):
            out.append(line)
    proc.stdout.close()
    return out, code


def test_mosquitto_pub_and_sub_interoperate(server):
    port = mqtt_port(server)
    for version in ("mqttv311", "mqttv5"):
        proc, lines = mosquitto_sub(port, "-V", version, "-t", "t/#", "-C", "3", "-v")
        for i in range(3):
            r = mosquitto_pub(port, "-V", version, "-q", "1", "-t", "t/x", "-m", f"{version}-{i}")
            assert r.returncode == 0, r.stdout + r.stderr
        out, code = sub_output(proc, lines)
        assert code == 0 and out == [f"t/x {version}-{i}" for i in range(3)], (version, code, out)

    # Retained.
    r = mosquitto_pub(port, "-q", "1", "-r", "-t", "t/door", "-m", "open")
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(
        [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-t", "t/door", "-C", "1", "-v", "-W", "5"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert (r.returncode, r.stdout) == (0, "t/door open\n"), (r.returncode, r.stdout, r.stderr)

    # A persistent session (-c -i ID -q 1) gets what was published while it was not running.
    proc, lines = mosquitto_sub(port, "-c", "-i", "mosq-persist", "-q", "1", "-t", "p/mosq", "-v", "-W", "1")
    out, _ = sub_output(proc, lines)
    assert out == ["Timed out"], out  # -W 1 ends it, with nothing received
    for m in ("away-1", "away-2"):
        r = mosquitto_pub(port, "-q", "1", "-t", "p/mosq", "-m", m)
        assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(
        [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-c", "-i", "mosq-persist", "-q", "1", "-t", "p/mosq",
         "-v", "-C", "2", "-W", "5"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert (r.returncode, r.stdout) == (0, "p/mosq away-1\np/mosq away-2\n"), (r.returncode, r.stdout, r.stderr)


# ---------------------------------------------------------------------------------------
# 9: authentication


def test_username_and_password_are_checked(servers):
    s = servers.start('[auth]\nusers = { alice = "s3cret" }\nanonymous = false\n')
    port = mqtt_port(s)

    alice = Paho(port, "alice-1", user=("alice", "s3cret"))
    assert alice.connect() == (0, 0)
    alice.subscribe("auth/t", qos=1)
    alice5 = Paho(port, "alice-5", v5=True, user=("alice", "s3cret"))
    assert alice5.connect() == (0, 0)
    alice5.close()

    wrong = Paho(port, "mallory-3", user=("alice", "wrong"))
    assert wrong.connect() == (0, 4), "3.1.1: 4 = bad user name or password"
    wrong.wait_closed()
    wrong5 = Paho(port, "mallory-5", v5=True, user=("alice", "wrong"))
    assert wrong5.connect() == (0, 0x86), "MQTT 5: 0x86 Bad User Name or Password"
    wrong5.wait_closed()
    nobody = Paho(port, "anonymous")
    present, rc = nobody.connect()
    assert rc in (4, 5), f"anonymous client: CONNACK {rc}, want refused (4 or 5)"
    nobody.wait_closed()

    r = mosquitto_pub(port, "-u", "alice", "-P", "s3cret", "-q", "1", "-t", "auth/t", "-m", "from mosquitto")
    assert r.returncode == 0, r.stdout + r.stderr
    [m] = alice.take(1)
    assert m.payload == b"from mosquitto"
    r = mosquitto_pub(port, "-u", "alice", "-P", "nope", "-q", "1", "-t", "auth/t", "-m", "forged")
    assert r.returncode != 0, "a wrong password must fail mosquitto_pub"
    r = mosquitto_pub(port, "-q", "1", "-t", "auth/t", "-m", "anonymous")
    assert r.returncode != 0, "no credentials must fail mosquitto_pub"
    alice.nothing_more(0.5)
    alice.close()


# ---------------------------------------------------------------------------------------
# 10-11: MQTT 5 message expiry, topic aliases


def test_mqtt5_message_expiry_drops_stale_queued_messages(server):
    port = mqtt_port(server)
    sub = Paho(port, "expiring", v5=True, clean=False, props={"SessionExpiryInterval": 300})
    assert sub.connect() == (0, 0)
    sub.subscribe("exp/t", qos=1)
    sub.close()

    pub = connected(port, "pub-exp", v5=True)
    pub.publish("exp/t", "short", qos=1, props={"MessageExpiryInterval": 1})
    pub.publish("exp/t", "long", qos=1, props={"MessageExpiryInterval": 60})
    pub.close()
    time.sleep(2.5)

    back = Paho(port, "expiring", v5=True, clean=False, props={"SessionExpiryInterval": 300})
    assert back.connect() == (1, 0)
    [m] = back.take(1)
    assert m.payload == b"long", f"got {m.payload!r} first: the expired message was delivered"
    back.nothing_more(QUIET)
    left = getattr(m.properties, "MessageExpiryInterval", None)
    # What is forwarded is the lifetime left (MQTT-3.3.2-6): 60 minus the 2.5 s it waited.
    assert left is not None and 1 <= left <= 58, f"MessageExpiryInterval {left}"
    back.close()


def test_server_uses_topic_aliases_within_the_clients_maximum(server):
    port = mqtt_port(server)
    sub = connected(port, "aliased", "alias/#", v5=True, props={"TopicAliasMaximum": 5})
    pub = connected(port, "pub-alias", v5=True)
    topics = ["alias/a", "alias/b", "alias/c"]
    sent = [(topics[i % 3], f"{topics[i % 3]}|{i}".encode()) for i in range(20)]
    for t, p in sent:
        pub.publish(t, p, qos=1)
    msgs = sub.take(20)
    # paho 1.6 hands aliased PUBLISHes over as they are on the wire (empty topic name plus
    # the TopicAlias property), so a client resolves them as a v5 client library would.
    aliases: dict[int, str] = {}
    resolved, used, empty = [], set(), 0
    for m in msgs:
        alias = getattr(m.properties, "TopicAlias", None)
        if alias is not None:
            assert 1 <= alias <= 5, f"topic alias {alias} outside the client's maximum 5"
            used.add(alias)
        if m.topic:
            if alias is not None:
                aliases[alias] = m.topic
            resolved.append(m.topic)
        else:
            empty += 1
            assert alias in aliases, f"empty topic with unknown alias {alias}"
            resolved.append(aliases[alias])
    assert list(zip(resolved, payloads(msgs))) == sent
    assert used, "no message carried a TopicAlias property"
    assert empty, "aliases were set up but never used (every PUBLISH repeated its topic name)"
    sub.close()
    pub.close()


# ---------------------------------------------------------------------------------------
# 12: MQTT to the other protocols


def test_mqtt_publish_reaches_sse_websocket_and_a_webhook(server):
    port = mqtt_port(server)
    secret = new_secret()
    rx = Receiver(secrets={"s": secret})
    api = Api(server.url)
    try:
        ep = api.create_endpoint(rx.url, topics=["xp/#"], secret=secret)
        payload = '{"temp": 21.5}'

        async def scenario():
            async with httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(WAIT, read=30.0)) as client:
                sse = await open_sse(client, {"topic": "xp/#"})
                ws = await WsClient.connect(server.ws_url)
                sub = await ws.ok("subscribe", topic="xp/#")
                pub = await asyncio.to_thread(connected, port, "pub-xp")
                await asyncio.to_thread(pub.publish, "xp/kitchen", payload, 1)
                got_sse = json.loads((await sse.next()).data)
                got_ws = await ws.next_event()
                await asyncio.to_thread(pub.close)
                await ws.close()
                await sse.close()
                return got_sse, got_ws, sub

        ce, ws_msg, sub = asyncio.run(asyncio.wait_for(scenario(), 30))
        assert ce["subject"] == "xp/kitchen" and ce["data"] == payload, ce
        assert isinstance(ce["sequence"], int)
        assert ws_msg["subscription"] == sub["subscription"]
        assert ws_msg["event"]["sequence"] == ce["sequence"], (ws_msg, ce)
        assert ws_msg["event"]["data"] == payload

        [r] = rx.wait_count(1, timeout=WAIT)
        assert r.verified == {"s": True}, r.errors
        ev = r.event()
        assert (ev["subject"], ev["data"], ev["sequence"]) == ("xp/kitchen", payload, ce["sequence"])
        assert r.webhook_id == f"msg_{ep['id']}_{ce['sequence']}"
    finally:
        api.close()
        rx.close()


# ---------------------------------------------------------------------------------------
# 13: bad input


def test_unknown_protocol_level_is_refused(server):
    port = mqtt_port(server)
    raw = Raw(port)
    raw.send(connect_packet("level-6", level=6))
    got = raw.closed_within(WAIT)
    # Either closed at once, or a refusal (3.1.1: 1 unacceptable protocol version; 5: 0x84).
    assert len(got) <= 1, got
    if got:
        first, body = got[0]
        assert first == 0x20 and body[1] in (0x01, 0x84), f"not a refusing CONNACK: {first:#04x} {body!r}"
    raw.close()
    # The broker still serves others.
    c = connected(port, "after-level-6")
    c.close()


def test_oversized_packet_gets_disconnect_0x95_and_others_are_unaffected(servers):
    s = servers.start("[mqtt]\nmax_packet_size = 1024\n")
    port = mqtt_port(s)
    healthy = connected(port, "healthy", "big/#", v5=True)
    advertised = getattr(healthy.connack_props, "MaximumPacketSize", None)
    assert advertised == 1024, f"CONNACK Maximum Packet Size {advertised}"

    raw = Raw(port)
    raw.send(connect_packet("too-big", level=5))
    assert raw.connack()[1] == 0
    raw.send(publish_packet("big/one", b"x" * 4096, qos=0, v5=True))
    got = raw.closed_within(WAIT)
    assert got and got[-1][0] == 0xE0, f"no DISCONNECT before the close: {got}"
    assert got[-1][1][:1] == b"\x95", f"DISCONNECT reason {got[-1][1]!r}, want 0x95 Packet too large"
    raw.close()

    p = connected(port, "small-pub", v5=True)
    p.publish("big/small", "fits", qos=1)
    [m] = healthy.take(1)
    assert (m.topic, m.payload) == ("big/small", b"fits"), "the oversized one must not have been published"
    for c in (p, healthy):
        c.close()


def test_publish_with_invalid_utf8_topic_closes_the_connection(server):
    port = mqtt_port(server)
    healthy = connected(port, "utf8-healthy", "#", qos=0)
    raw = Raw(port)
    raw.send(connect_packet("bad-utf8"))
    assert raw.connack() == (0, 0)
    raw.send(publish_packet(b"bad/\xff\xfe", b"x", qos=1, pid=3))
    got = raw.closed_within(WAIT)
    assert not [p for p in got if p[0] & 0xF0 == 0x40], f"the bad PUBLISH was acknowledged: {got}"
    raw.close()
    p = connected(port, "utf8-pub")
    p.publish("good/t", "fine", qos=1)
    [m] = healthy.take(1)
    assert (m.topic, m.payload) == ("good/t", b"fine")
    for c in (p, healthy):
        c.close()


def test_a_burst_of_packets_in_one_write_is_handled_in_full(server):
    """Hundreds of QoS 1 PUBLISHes in one TCP write: every one is acknowledged and
    delivered (the loop handles buffered packets in batches and must drop none at a
    batch's end)."""
    port = mqtt_port(server)
    sub = connected(port, "burst-sub", "burst/#", qos=1)
    raw = Raw(port)
    raw.send(connect_packet("burst-pub"))
    assert raw.connack() == (0, 0)
    n = 300
    raw.send(b"".join(publish_packet("burst/t", str(i).encode(), qos=1, pid=i + 1) for i in range(n)))
    acked = [struct.unpack("!H", raw.expect(0x40)[1][:2])[0] for _ in range(n)]
    assert acked == list(range(1, n + 1))
    got = payloads(sub.take(n))
    assert got == [str(i).encode() for i in range(n)]
    raw.close()
