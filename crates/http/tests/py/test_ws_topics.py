"""Raw topic sockets (`/ws/topics/{topic…}`) through the `websockets` client: plain frames
in and out, no JSON protocol. The seed 000 snippet itself runs in the Node suite
(crates/http/tests/js/ws_topics.test.mjs); here: filters, other protocols, bad input."""

from __future__ import annotations

import json

import httpx
import paho.mqtt.client as mqtt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

WAIT = 10


def ws_base(server) -> str:
    return f"ws://{server.http}/ws/topics"


def mqtt_port(server) -> int:
    listeners = json.loads((server.data_dir / "listeners.json").read_text())
    return int(listeners["mqtt"].rsplit(":", 1)[1])


def test_a_filter_socket_follows_many_topics_and_refuses_to_publish(blog):
    with connect(f"{ws_base(blog)}/sensors/%23") as follower, connect(f"{ws_base(blog)}/sensors/kitchen/temp") as kitchen:
        kitchen.send("21.5")
        httpx.post(f"{blog.url}/api/topics/sensors/garage/door", content=b"\x00\x01", headers={"content-type": "application/octet-stream"})
        assert follower.recv(timeout=WAIT) == "21.5"
        assert follower.recv(timeout=WAIT) == b"\x00\x01", "binary payloads arrive as binary frames"
        assert kitchen.recv(timeout=WAIT) == "21.5", "the sender hears its own message"
        follower.send("who am I talking to?")
        with pytest.raises(ConnectionClosed) as closed:
            follower.recv(timeout=WAIT)
        assert closed.value.rcvd.code == 1008
        assert "filter" in closed.value.rcvd.reason
        # The publishing socket is unaffected.
        kitchen.send("22.0")
        assert kitchen.recv(timeout=WAIT) == "22.0"


def test_mqtt_and_raw_sockets_share_the_topic(blog):
    got = []
    sub = mqtt.Client(client_id="raw-peer")
    sub.on_message = lambda c, u, m: got.append(m.payload)
    subscribed = []
    sub.on_subscribe = lambda *a: subscribed.append(True)
    sub.connect("127.0.0.1", mqtt_port(blog))
    sub.loop_start()
    sub.subscribe("chat/lobby", qos=1)
    try:
        with connect(f"{ws_base(blog)}/chat/lobby") as room:
            deadline_wait(lambda: subscribed)
            room.send("hi from a browser")
            assert room.recv(timeout=WAIT) == "hi from a browser"
            deadline_wait(lambda: got)
            assert got == [b"hi from a browser"]
            pub = mqtt.Client(client_id="raw-pub")
            pub.connect("127.0.0.1", mqtt_port(blog))
            pub.loop_start()
            pub.publish("chat/lobby", "hi from a device", qos=1).wait_for_publish(timeout=WAIT)
            pub.loop_stop()
            assert room.recv(timeout=WAIT) == "hi from a device"
    finally:
        sub.loop_stop()


def test_published_frames_are_events_everyone_else_reads(blog):
    with connect(f"{ws_base(blog)}/notes/1?content_type=application/json") as notes:
        notes.send('{"text": "remember the milk"}')
        assert json.loads(notes.recv(timeout=WAIT)) == {"text": "remember the milk"}
    r = httpx.get(f"{blog.url}/api/poll", params={"topic": "notes/1", "since": 0, "wait": 0})
    (ev,) = r.json()["events"]
    assert ev["datacontenttype"] == "application/json"
    assert ev["data"] == {"text": "remember the milk"}
    assert ev["source"] == "/polyport/ws"


def test_since_resumes_and_an_unavailable_position_is_refused_before_the_upgrade(blog):
    seqs = [httpx.post(f"{blog.url}/api/topics/feed/x", content=t, headers={"content-type": "text/plain"}).json()["sequence"] for t in (b"a", b"b", b"c")]
    with connect(f"{ws_base(blog)}/feed/x?since={seqs[0]}") as late:
        assert [late.recv(timeout=WAIT), late.recv(timeout=WAIT)] == ["b", "c"]
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{ws_base(blog)}/feed/x?since={seqs[-1] + 1000}")
    assert refused.value.response.status_code == 410
    assert json.loads(refused.value.response.body)["code"] == "position_unavailable"


def test_a_replayed_backlog_arrives_whole_and_in_order(blog):
    """Frames ready together leave in one write: a backlog of 300, every fifth binary,
    arrives complete, in order, each frame its own message of its own kind."""
    sent = [(bytes([0, i % 256, 1]) if i % 5 == 0 else f"m{i}".encode()) for i in range(300)]
    with httpx.Client(base_url=blog.url) as c:
        first = None
        for body in sent:
            ctype = "application/octet-stream" if body[:1] == b"\x00" else "text/plain"
            seq = c.post("/api/topics/backlog/x", content=body, headers={"content-type": ctype}).json()["sequence"]
            first = first or seq
    with connect(f"{ws_base(blog)}/backlog/x?since={first - 1}") as late:
        got = [late.recv(timeout=WAIT) for _ in sent]
    want = [b if b[:1] == b"\x00" else b.decode() for b in sent]
    assert got == want


@pytest.mark.parametrize("path", ["a/%00/b", "a/#/b", "bad+/x"])
def test_an_invalid_topic_is_a_problem_not_a_socket(blog, path):
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{ws_base(blog)}/{path.replace('#', '%23')}")
    assert refused.value.response.status_code == 400
    assert json.loads(refused.value.response.body)["code"] == "invalid_topic"


def deadline_wait(cond, timeout: float = WAIT) -> None:
    import time

    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)
