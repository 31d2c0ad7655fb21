"""Polyport's STOMP broker as stomp.py sees it: versions, queues with competing
consumers, the three ack modes, NACK, receipts, transactions, durable topic
subscriptions, the shared tree with AMQP and MQTT, bad input answered with ERROR, and
receipted SENDs surviving `kill -9`."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pika
import pytest
import stomp
import websockets
from stomp_clients import WAIT, connect, mqtt_listener, port, raw, servers  # noqa: F401
from webhook_receivers import Api, Receiver


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_every_version_sends_and_receives_on_a_queue(servers, version):
    s = servers.start()
    conn, got = connect(s, version)
    if version != "1.0":
        assert got.connected["version"] == version
    assert got.connected["server"].startswith("Polyport/")
    conn.subscribe("/queue/greetings", id="g1", ack="auto")
    conn.send("/queue/greetings", "hello, " + version, headers={"receipt": "sent"})
    assert got.receipt() == "sent"
    (h, body), = got.take(1)
    assert body == "hello, " + version
    assert h["destination"] == "/queue/greetings" and h["subscription"] == "g1"
    conn.disconnect()


def test_a_queue_shares_work_between_consumers_and_acks_per_mode(servers):
    s = servers.start()
    a, got_a = connect(s)
    b, got_b = connect(s)
    for c, name in ((a, "a"), (b, "b")):
        c.subscribe("/queue/work", id=name, ack="client-individual", headers={"prefetch-count": "1"})
    producer, _ = connect(s)
    for i in range(6):
        producer.send("/queue/work", f"job {i}")
    done, by, nacked, deadline = set(), {"a": 0, "b": 0}, None, time.monotonic() + WAIT
    while len(done) < 6:
        assert time.monotonic() < deadline, f"done {sorted(done)}"
        for c, got, name in ((a, got_a, "a"), (b, got_b, "b")):
            try:
                h, body = got.messages.get(timeout=0.05)
            except Exception:  # noqa: BLE001 - queue.Empty
                continue
            if nacked is None and name == "b":
                nacked = body
                c.nack(h["ack"])  # requeued: it comes again, flagged redelivered
                continue
            if body == nacked:
                assert h.get("redelivered") == "true"
            assert body not in done, f"{body} delivered twice"
            done.add(body)
            by[name] += 1
            c.ack(h["ack"])
    assert done == {f"job {i}" for i in range(6)}
    assert by["a"] > 0 and by["b"] > 0, f"one consumer took everything: {by}"
    got_a.quiet(0.3)
    got_b.quiet(0.3)


def test_client_ack_is_cumulative_and_unacked_messages_return_on_disconnect(servers):
    s = servers.start()
    c, got = connect(s)
    c.subscribe("/queue/batch", id="1", ack="client")
    for i in range(3):
        c.send("/queue/batch", f"m{i}")
    msgs = got.take(3)
    c.ack(msgs[1][0]["ack"])  # acks m0 and m1
    c.disconnect()
    c2, got2 = connect(s)
    c2.subscribe("/queue/batch", id="1", ack="auto")
    (h, body), = got2.take(1)
    assert body == "m2" and h.get("redelivered") == "true"
    got2.quiet(0.5)


def test_transactions_hold_sends_and_acks_until_commit(servers):
    s = servers.start()
    c, got = connect(s)
    c.subscribe("/queue/tx", id="1", ack="client-individual")
    tx = c.begin()
    c.send("/queue/tx", "in tx", transaction=tx)
    got.quiet(0.5)
    c.commit(tx)
    (h, body), = got.take(1)
    assert body == "in tx"
    tx2 = c.begin()
    c.ack(h["ack"], transaction=tx2)
    c.abort(tx2)  # the ack is dropped: the message is still ours, unacked
    c.disconnect()
    c2, got2 = connect(s)
    c2.subscribe("/queue/tx", id="1")
    assert got2.take(1)[0][1] == "in tx"


def test_topics_are_the_shared_tree_for_mqtt_and_amqp(servers):
    s = servers.start()
    c, got = connect(s)
    c.subscribe("/topic/sensors.*", id="t", ack="auto")
    time.sleep(0.2)
    with mqtt_listener(s, "sensors/#") as (m, heard):
        c.send("/topic/sensors.temperature", "21.5", headers={"receipt": "r"})
        assert got.receipt() == "r"
        assert heard.wait(1) == [("sensors/temperature", b"21.5")]
        m.publish("sensors/humidity", b"40", qos=1).wait_for_publish(WAIT)
        bodies = sorted(b for _, b in got.take(2))
        assert bodies == ["21.5", "40"]
    # AMQP: pika publishes to queue `jobs`, STOMP consumes /queue/jobs; and back.
    pc = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port(s, "amqp")))
    ch = pc.channel()
    ch.queue_declare("jobs", durable=True)
    ch.basic_publish("", "jobs", b"from pika", pika.BasicProperties(correlation_id="c-9", headers={"k": "v"}))
    c.subscribe("/queue/jobs", id="j")
    (h, body), = got.take(1)
    assert (body, h["correlation-id"], h["k"], h["destination"]) == ("from pika", "c-9", "v", "/queue/jobs")
    c.unsubscribe("j", headers={"receipt": "u"})
    assert got.receipt() == "u"
    c.send("/amq/queue/jobs", "from stomp", headers={"priority": "3", "receipt": "s"})
    assert got.receipt() == "s"
    _m, props, b = ch.basic_get("jobs", auto_ack=True)
    assert b == b"from stomp" and props.priority == 3
    pc.close()


def test_durable_topic_subscriptions_collect_while_away(servers):
    s = servers.start()
    c, got = connect(s)
    c.subscribe("/topic/news.#", id="reader-1", ack="client-individual", headers={"durable": "true", "auto-delete": "false"})
    c.disconnect()
    p, _ = connect(s)
    p.send("/topic/news.world", "while away", headers={"receipt": "r"})
    time.sleep(0.3)
    c2, got2 = connect(s)
    c2.subscribe("/topic/news.#", id="reader-1", ack="client-individual", headers={"durable": "true", "auto-delete": "false"})
    (h, body), = got2.take(1)
    assert body == "while away" and h["destination"] == "/topic/news.world"
    c2.ack(h["ack"])
    c2.unsubscribe("reader-1", headers={"durable": "true"})  # drops the durable queue
    c2.disconnect()


def error_of(reply: bytes) -> tuple[str, bytes]:
    assert b"ERROR\n" in reply, reply
    frame = reply[reply.index(b"ERROR\n"):]
    head, _, body = frame.partition(b"\n\n")
    headers = dict(line.split(":", 1) for line in head.decode().split("\n")[1:])
    return headers["message"], body.rstrip(b"\0\n")


CONNECT = b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0"


def test_bad_input_gets_an_error_frame_and_a_close(servers):
    s = servers.start()
    message, body = error_of(raw(s, CONNECT + b"FLY\n\n\0"))
    assert message == "malformed frame" and b"unknown command 'FLY'" in body
    message, body = error_of(raw(s, CONNECT + b"SUBSCRIBE\ndestination:/queue/a\n\n\0"))
    assert message == "Missing id" and b"STOMP 1.2" in body
    message, body = error_of(raw(s, CONNECT + b"ACK\nid:nope\n\n\0"))
    assert message == "Unknown message"
    message, body = error_of(raw(s, CONNECT + b"SEND\ndestination:/queue/a\nk:\\t\n\n\0"))
    assert b"escape" in body
    message, _ = error_of(raw(s, CONNECT + b"SEND\ndestination:/nowhere/a\n\n\0"))
    assert message == "Bad destination"
    reply = raw(s, b"CONNECT\naccept-version:2.0\n\n\0")
    assert b"version:1.0,1.1,1.2" in reply
    big = b"SEND\ndestination:/queue/a\ncontent-length:99999999\n\n"
    message, body = error_of(raw(s, CONNECT + big))
    assert b"too large" in body
    # The error closed only that connection: others carry on.
    c, got = connect(s)
    c.subscribe("/queue/a", id="1")
    c.send("/queue/a", "fine")
    assert got.take(1)[0][1] == "fine"


def test_receipted_sends_survive_kill_9(servers):
    s = servers.start()
    c, got = connect(s)
    for i in range(30):
        c.send("/queue/durable-jobs", f"job {i}", headers={"receipt": f"r{i}"})
    assert [got.receipt() for _ in range(30)] == [f"r{i}" for i in range(30)]
    servers.kill9(s)
    s2 = servers.restart(s)
    c2, got2 = connect(s2)
    c2.subscribe("/queue/durable-jobs", id="1")
    assert [b for _, b in got2.take(30)] == [f"job {i}" for i in range(30)]


def test_rpc_replies_come_back_through_a_temp_queue(servers):
    """`reply-to: /temp-queue/answers` gives the caller a private queue; a STOMP responder
    replies to the rewritten `reply-to`, and so does an AMQP one (pika) by its name."""
    s = servers.start()
    server, requests = connect(s)
    server.subscribe("/queue/rpc.square", id="srv")
    caller, answers = connect(s)
    caller.send("/queue/rpc.square", "12", headers={"reply-to": "/temp-queue/answers", "correlation-id": "c-1"})
    (h, body), = requests.take(1)
    assert h["reply-to"].startswith("/queue/stomp-temp-"), h
    server.send(h["reply-to"], str(int(body) ** 2), headers={"correlation-id": h["correlation-id"]})
    (rh, rbody), = answers.take(1)
    assert (rbody, rh["correlation-id"], rh["subscription"]) == ("144", "c-1", "/temp-queue/answers")
    server.unsubscribe("srv", headers={"receipt": "u"})
    assert requests.receipt() == "u"

    pc = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port(s, "amqp")))
    ch = pc.channel()
    caller.send("/queue/rpc.square", "5", headers={"reply-to": "/temp-queue/answers", "correlation-id": "c-2"})
    deadline = time.monotonic() + WAIT
    while True:
        m, props, body = ch.basic_get("rpc.square", auto_ack=True)
        if m is not None:
            break
        assert time.monotonic() < deadline, "the request never reached AMQP"
        time.sleep(0.05)
    ch.basic_publish("", props.reply_to, b"25", pika.BasicProperties(correlation_id=props.correlation_id))
    (rh, rbody), = answers.take(1)
    assert (rbody, rh["correlation-id"]) == ("25", "c-2")
    pc.close()

    # An MQTT responder publishes to the queue's name as a topic; RabbitMQ's
    # `/reply-queue/` form reaches the same queue.
    queue_name = h["reply-to"].removeprefix("/queue/")
    m = mqtt.Client(client_id="rpc-responder")
    m.connect("127.0.0.1", port(s, "mqtt"))
    m.loop_start()
    m.publish(queue_name, b"from mqtt", qos=1).wait_for_publish(WAIT)
    m.loop_stop()
    m.disconnect()
    server.send(f"/reply-queue/{queue_name}", "from reply-queue")
    assert sorted(b for _, b in answers.take(2)) == ["from mqtt", "from reply-queue"]


def test_sse_and_record_changes_meet_stomp_topics(servers):
    s = servers.start()
    c, got = connect(s)
    c.subscribe("/topic/collections.posts.#", id="posts", headers={"receipt": "sub"})
    assert got.receipt() == "sub"
    with httpx.Client(base_url=s.url, timeout=WAIT) as http, http.stream(
        "GET", "/api/events", params={"topic": "sensors/#"}
    ) as sse:
        lines = sse.iter_lines()
        c.send("/topic/sensors.temperature", "21.5", headers={"content-type": "text/plain", "receipt": "r"})
        assert got.receipt() == "r"
        data = next(line for line in lines if line.startswith("data:"))
        event = json.loads(data[5:])
        assert (event["subject"], event["data"], event["source"]) == ("sensors/temperature", "21.5", "/polyport/stomp")
        r = http.post("/api/collections/posts/records", json={"id": "p1", "title": "hello"})
        assert r.status_code == 201, r.text
    (h, body), = got.take(1)
    assert h["destination"] == "/topic/collections.posts.p1"
    assert json.loads(body)["record"]["title"] == "hello"


def test_silent_clients_are_dropped_after_missed_heart_beats(servers):
    s = servers.start("[stomp]\nheartbeat_ms = 200\n")

    def open_(beats: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port(s)), timeout=WAIT)
        sock.sendall(f"CONNECT\naccept-version:1.2\nhost:/\nheart-beat:{beats}\n\n\0".encode())
        assert b"heart-beat:200,200" in sock.recv(4096)
        return sock

    silent, lively = open_("200,0"), open_("200,0")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        lively.sendall(b"\n")  # a heart-beat
        time.sleep(0.1)
    silent.settimeout(0.5)
    assert silent.recv(4096) == b"", "the silent client is still connected"
    lively.sendall(b"SUBSCRIBE\nid:1\ndestination:/queue/hb\nreceipt:alive\n\n\0")
    lively.settimeout(WAIT)
    assert b"receipt-id:alive" in lively.recv(4096)
    silent.close()
    lively.close()


def test_queue_arguments_on_subscribe_and_header_limits(servers):
    s = servers.start("[stomp]\nmax_headers = 16\n")
    c, got = connect(s)
    # x-* headers on the first SUBSCRIBE declare the queue with those arguments.
    c.subscribe("/queue/capped", id="cap", headers={"x-max-length": "2", "receipt": "s"})
    assert got.receipt() == "s"
    c.unsubscribe("cap", headers={"receipt": "u"})
    assert got.receipt() == "u"
    for i in range(5):
        c.send("/queue/capped", f"m{i}", headers={"receipt": f"r{i}"})
    assert [got.receipt() for _ in range(5)] == [f"r{i}" for i in range(5)]
    c.subscribe("/queue/capped", id="cap2")
    assert [b for _, b in got.take(2)] == ["m3", "m4"], "drop-head kept the newest two"
    got.quiet(0.5)
    many = "".join(f"h{i}:v\n" for i in range(20)).encode()
    message, body = error_of(raw(s, CONNECT + b"SEND\ndestination:/queue/a\n" + many + b"\n\0"))
    assert b"too many headers" in body


def test_the_readme_snippet_runs_as_written(servers):
    """The README's stomp.py example, only the port changed: its SEND reaches MQTT."""
    readme = (Path(__file__).resolve().parents[4] / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "import stomp" in b]
    s = servers.start()
    with mqtt_listener(s, "sensors/temperature") as (_m, heard):
        code = snippet.replace("61613", str(port(s))) + "\nconn.disconnect(receipt='bye')\n"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT)
        assert out.returncode == 0, out.stderr
        assert heard.wait(1) == [("sensors/temperature", b"21.5")]


def test_websocket_carries_several_frames_per_message_and_frames_split_across_messages(servers):
    s = servers.start()

    async def main():
        async with websockets.connect(f"ws://{s.http}/stomp", subprotocols=["v12.stomp"]) as ws:
            assert ws.subprotocol == "v12.stomp"
            # CONNECT, SUBSCRIBE and half a SEND in one message, the rest in the next.
            await ws.send(
                "CONNECT\naccept-version:1.2\nhost:/\n\n\0"
                "SUBSCRIBE\nid:1\ndestination:/queue/ws-frames\nreceipt:s\n\n\0"
                "SEND\ndestination:/queue/ws-"
            )
            await ws.send("frames\n\nsplit\0")
            got = ""
            while "split" not in got:
                got += await asyncio.wait_for(ws.recv(), WAIT)
            assert got.startswith("CONNECTED\n") and "receipt-id:s" in got
            assert "MESSAGE\n" in got and "destination:/queue/ws-frames" in got

    asyncio.run(main())


def test_a_stomp_send_reaches_sse_and_a_webhook_with_one_sequence(servers):
    s = servers.start()
    api = Api(s.url)
    rx = Receiver()
    try:
        ep = api.create_endpoint(rx.url, topics=["sensors/#"])
        rx.secrets = {"s": ep["secret"]}
        c, got = connect(s)
        with httpx.Client(base_url=s.url, timeout=WAIT) as http, http.stream(
            "GET", "/api/events", params={"topic": "sensors/#"}
        ) as sse:
            lines = sse.iter_lines()
            c.subscribe("/topic/sensors.#", id="t")
            c.send("/topic/sensors.temperature", "21.5", headers={"receipt": "r", "sequence": "999"})
            assert got.receipt() == "r"
            seq = int(next(line for line in lines if line.startswith("id:"))[3:].strip())
            [(headers, body)] = got.take(1)
            assert (headers["sequence"], body) == (str(seq), "21.5"), "STOMP shows the log's sequence, not the sender's"
        [r] = rx.wait_count(1, timeout=WAIT)
        assert r.verified == {"s": True}
        assert r.webhook_id == f"msg_{ep['id']}_{seq}", "the webhook carries the SSE event's sequence"
        assert r.event()["subject"] == "sensors/temperature" and r.event()["data"] == "21.5"
    finally:
        rx.close()
        api.close()


def test_a_client_past_the_connection_cap_gets_an_error_frame(servers):
    s = servers.start("[limits]\nmax_connections_per_address = 2\n")
    c1, got1 = connect(s)
    c2, _ = connect(s)
    message, body = error_of(raw(s, CONNECT))
    assert message == "Connection limit reached" and b"maximum of 2" in body
    c1.subscribe("/queue/limits", id="1")
    c2.send("/queue/limits", "still here")
    assert got1.take(1)[0][1] == "still here"


def test_a_subscription_past_the_cap_gets_an_error_frame_and_others_carry_on(servers):
    """`[stomp] max_subscriptions`: the SUBSCRIBE past it is an ERROR naming the setting
    (STOMP closes after ERROR); another connection subscribes and receives as before."""
    s = servers.start("[stomp]\nmax_subscriptions = 2\n")
    greedy, got_greedy = connect(s)
    greedy.subscribe("/topic/cap.a", id="a")
    greedy.subscribe("/topic/cap.b", id="b")
    greedy.subscribe("/topic/cap.c", id="c")
    headers, body = got_greedy.errors.get(timeout=WAIT)
    assert headers["message"] == "Too many subscriptions", headers
    assert "max_subscriptions" in body and "maximum of 2" in body, body
    other, got = connect(s)
    other.subscribe("/queue/cap-other", id="1", headers={"receipt": "sub"})
    assert got.receipt() == "sub"
    other.send("/queue/cap-other", "still here")
    assert got.take(1)[0][1] == "still here"
    other.disconnect()


def test_a_queue_whose_topic_is_ephemeral_is_memory_only_unless_a_send_says_persistent(servers):
    """With `amqp/q/telemetry` in `events.ephemeral_topics`, SENDs to `/queue/telemetry`
    are delivered but never written to the log (a replay from 0 does not have them), as
    RabbitMQ keeps a SEND without `persistent:true` in memory; `persistent:true` still
    goes to disk, and an ordinary `/queue` is logged as before."""
    s = servers.start(config='[events]\nephemeral_topics = ["amqp/q/telemetry"]\n')
    conn, got = connect(s)
    conn.subscribe("/queue/telemetry", id="t", ack="auto")
    conn.subscribe("/queue/jobs", id="j", ack="auto")
    conn.send("/queue/telemetry", "reading", headers={"receipt": "r1"})
    conn.send("/queue/telemetry", "kept", headers={"receipt": "r2", "persistent": "true"})
    conn.send("/queue/jobs", "job", headers={"receipt": "r3"})
    assert [got.receipt(), got.receipt(), got.receipt()] == ["r1", "r2", "r3"]
    assert sorted(body for _, body in got.take(3)) == ["job", "kept", "reading"]
    r = httpx.get(f"{s.url}/api/poll", params={"topic": "amqp/q/#", "since": 0, "wait": 0}, timeout=10)
    assert r.status_code == 200, r.text
    logged = sorted((e["subject"], base64_or_text(e)) for e in r.json()["events"])
    assert logged == [("amqp/q/jobs", "job"), ("amqp/q/telemetry", "kept")], logged
    conn.disconnect()


def base64_or_text(e: dict) -> str:
    """A CloudEvent's payload as text (`data` for JSON or text, `data_base64` otherwise)."""
    if "data_base64" in e:
        return base64.b64decode(e["data_base64"]).decode()
    return e["data"] if isinstance(e["data"], str) else json.dumps(e["data"])
