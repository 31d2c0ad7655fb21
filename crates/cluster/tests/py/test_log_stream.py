"""The cluster's event log as a JetStream stream, read with nats-py: every logged event,
whichever node and face wrote it, is the stream message whose sequence is the event's
`sequence`, on a subject made of its topic, carrying its CloudEvent. When the node
relaying the log is killed, a survivor takes the relay over and the stream goes on
without a gap or a duplicate."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import nats
import paho.mqtt.client as mqtt
from cluster_nodes import WAIT
from nats_helpers import NATS


def logged(s, since: int = 0) -> list[dict]:
    r = httpx.get(f"{s.url}/api/poll", params={"topic": "#", "since": since, "wait": 0}, timeout=WAIT)
    assert r.status_code == 200, r.text
    return r.json()["events"]


async def stream_messages(stream: str, count: int) -> list:
    """The stream's messages 1..count, waiting up to WAIT for the last one."""
    nc = await nats.connect(NATS)
    try:
        js = nc.jetstream()
        deadline = time.time() + WAIT
        while (await js.stream_info(stream)).state.last_seq < count:
            assert time.time() < deadline, f"the stream did not reach {count}"
            await asyncio.sleep(0.05)
        return [await js.get_msg(stream, seq) for seq in range(1, count + 1)]
    finally:
        await nc.close()


def check(stream: str, events: list[dict], bucket: str):
    msgs = asyncio.run(stream_messages(stream, events[-1]["sequence"]))
    by_seq = {m.seq: m for m in msgs}
    assert sorted(by_seq) == list(range(1, events[-1]["sequence"] + 1)), "one message per sequence"
    for e in events:
        m = by_seq[e["sequence"]]
        body = json.loads(m.data)
        assert (body["id"], body["sequence"], body["subject"]) == (e["id"], e["sequence"], e["subject"])
        assert m.headers["Polyport-Topic"] == e["subject"]
        assert m.subject == f"polyport.{bucket}.log." + e["subject"].replace("/", ".")


def test_the_log_is_a_jetstream_stream_with_the_events_sequences(servers, nodes_with_bus):
    a, b = nodes_with_bus(2)
    bucket = nodes_with_bus.bucket
    stream = f"polyport-{bucket}-log"
    r = httpx.post(f"{a.url}/api/collections/notes/records", json={"title": "from A"})
    assert r.status_code == 201, r.text
    r = httpx.post(f"{b.url}/api/topics/sensors/t1", json={"c": 21.5})
    assert r.status_code in (200, 202), r.text
    pub = mqtt.Client(client_id="log-pub", protocol=mqtt.MQTTv311)
    pub.connect("127.0.0.1", b.port("mqtt"))
    pub.loop_start()
    pub.publish("sensors/t2", b"22", qos=1).wait_for_publish(timeout=WAIT)
    events = logged(a)
    assert len(events) == 3, events
    check(stream, events, bucket)

    # Kill the node that relays (only it exports the relay's lag): the other one takes
    # the lease over and continues.
    relaying = [s for s in (a, b) if "polyport_cluster_log_relay_lag" in httpx.get(f"{s.url}/metrics").text]
    assert len(relaying) == 1, "one node relays"
    [dead] = relaying
    survivor = b if dead is a else a
    servers.kill9(dead)
    pub.loop_stop()
    pub.disconnect()
    pub = mqtt.Client(client_id="log-pub-2", protocol=mqtt.MQTTv311)
    pub.connect("127.0.0.1", survivor.port("mqtt"))
    pub.loop_start()
    for i in range(5):
        pub.publish(f"sensors/after/{i}", b"x", qos=1).wait_for_publish(timeout=WAIT)
    pub.loop_stop()
    pub.disconnect()
    events = logged(survivor)
    assert len(events) == 8, events
    check(stream, events, bucket)
