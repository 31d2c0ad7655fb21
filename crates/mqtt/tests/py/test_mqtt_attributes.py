"""Typed message attributes between MQTT 5 and every other door (README, "Message
attributes"), through paho-mqtt, httpx (SSE and CloudEvents binary-mode `ce-*` headers),
websockets, grpcurl and a Standard Webhooks receiver:

- what an HTTP client sends can never steer MQTT (`ce-mqtt-client`, `ce-mqtt-expires`,
  `ce-mqtt-qos` were once read as MQTT's own meaning; they are user headers now);
- an MQTT 5 PUBLISH with every property arrives everywhere with the documented
  attributes; a REST publish with the documented `ce-*` headers reaches MQTT 5 as the
  matching properties."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from mqtt_clients import WAIT, Paho, connected, mqtt_port, server, servers  # noqa: F401 (fixtures)
from paho.mqtt.subscribeoptions import SubscribeOptions
from realtime_clients import WsClient, open_sse

WEBHOOK_TESTS = Path(__file__).resolve().parents[3] / "webhooks" / "tests" / "py"
if str(WEBHOOK_TESTS) not in sys.path:
    sys.path.append(str(WEBHOOK_TESTS))

from webhook_receivers import Api, Receiver, new_secret  # noqa: E402

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def subscribe_no_local(c: Paho, topic: str) -> None:
    c.c.subscribe(topic, options=SubscribeOptions(qos=1, noLocal=True))
    c.subacks.get(timeout=WAIT)


def test_http_headers_cannot_steer_mqtt(server):
    port = mqtt_port(server)
    victim = Paho(port, "victim", v5=True)
    assert victim.connect() == (0, 0)
    subscribe_no_local(victim, "forge/#")
    r = httpx.post(
        f"{server.url}/api/topics/forge/a",
        content=b"from http",
        headers={"content-type": "text/plain", "ce-mqtt-client": "victim", "ce-mqtt-expires": "1", "ce-mqtt-qos": "0"},
    )
    assert r.status_code == 202, r.text
    (m,) = victim.take(1)  # not suppressed as the victim's own, not expired
    assert m.payload == b"from http"
    assert m.qos == 1, "delivered at the subscription's QoS, not the forged one"
    assert ("mqtt-client", "victim") in m.properties.UserProperty, "forged headers are plain user properties"
    # The victim's own publish is still suppressed by no-local.
    victim.publish("forge/b", b"mine", qos=1)
    victim.nothing_more()
    victim.close()


def publish_with_every_property(port: int, topic: str) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    pub = connected(port, "all-props", v5=True)
    p = Properties(PacketTypes.PUBLISH)
    p.ContentType = "application/json"
    p.PayloadFormatIndicator = 1
    p.ResponseTopic = "replies/kitchen"
    p.CorrelationData = b"req-42"
    p.UserProperty = [("unit", "celsius"), ("site", "home")]
    p.MessageExpiryInterval = 3600
    info = pub.c.publish(topic, b'{"temp": 21.5}', qos=2, retain=True, properties=p)
    info.wait_for_publish(timeout=WAIT)
    pub.close()


def assert_documented_extensions(ce: dict, before: float) -> None:
    assert ce["datacontenttype"] == "application/json" and ce["data"] == {"temp": 21.5}
    assert ce["replyto"] == "replies/kitchen"
    assert ce["correlationid"] == "req-42"
    assert ce["guarantee"] == "exactly-once"
    assert ce["retain"] is True
    expiry = datetime.fromisoformat(ce["expirytime"].replace("Z", "+00:00")).timestamp()
    assert before + 3590 < expiry < time.time() + 3610, ce["expirytime"]
    assert (ce["unit"], ce["site"]) == ("celsius", "home"), "user properties are extensions"
    assert ce["source"] == "/polyport/mqtt"


def test_an_mqtt5_publish_arrives_everywhere_with_its_attributes(server):
    port = mqtt_port(server)
    secret = new_secret()
    rx = Receiver(secrets={"s": secret})
    api = Api(server.url)
    before = time.time()
    try:
        api.create_endpoint(rx.url, topics=["attr/#"], secret=secret)

        async def scenario():
            async with httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(WAIT, read=30.0)) as client:
                sse = await open_sse(client, {"topic": "attr/#"})
                ws = await WsClient.connect(server.ws_url)
                await ws.ok("subscribe", topic="attr/#")
                await asyncio.to_thread(publish_with_every_property, port, "attr/kitchen")
                got_sse = json.loads((await sse.next()).data)
                got_ws = await ws.next_event()
                await ws.close()
                await sse.close()
                return got_sse, got_ws

        ce, ws_msg = asyncio.run(asyncio.wait_for(scenario(), 30))
        assert_documented_extensions(ce, before)
        assert_documented_extensions(ws_msg["event"], before)
        [hook] = rx.wait_count(1, timeout=WAIT)
        assert hook.verified == {"s": True}, hook.errors
        assert_documented_extensions(hook.event(), before)

        out = subprocess.run(
            [GRPCURL, "-plaintext", "-max-time", "3", "-d", json.dumps({"filters": ["attr/#"], "since": 0}),
             json.loads((server.data_dir / "listeners.json").read_text())["grpc"], "polyport.v1.Topics/Subscribe"],
            capture_output=True, text=True, timeout=20,
        )
        first = json.loads(out.stdout[: out.stdout.index("\n}") + 2])
        assert first["attributes"]["replyto"] == "replies/kitchen", first
        assert first["attributes"]["guarantee"] == "exactly-once"
        assert first["attributes"]["retain"] == "true"
        assert base64.b64decode(first["payload"]) == b'{"temp": 21.5}'
        assert first["headers"] == {"unit": "celsius", "site": "home"}
    finally:
        api.close()
        rx.close()


def test_a_rest_publish_with_ce_headers_reaches_mqtt5_as_properties(server):
    port = mqtt_port(server)
    sub = connected(port, "ce-sub", "ce/#", v5=True)
    expiry = datetime.fromtimestamp(time.time() + 120, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    r = httpx.post(
        f"{server.url}/api/topics/ce/order",
        json={"order": 7},
        headers={
            "ce-replyto": "orders/replies",
            "ce-correlationid": "order-7",
            "ce-expirytime": expiry,
            "ce-trace": "t-9",
        },
    )
    assert r.status_code == 202, r.text
    (m,) = sub.take(1)
    props = m.properties
    assert props.ResponseTopic == "orders/replies"
    assert props.CorrelationData == b"order-7"
    assert 100 <= props.MessageExpiryInterval <= 120
    assert props.ContentType == "application/json"
    assert props.UserProperty == [("trace", "t-9")]
    sub.close()


def test_a_bad_attribute_header_is_a_problem_naming_it(server):
    r = httpx.post(f"{server.url}/api/topics/ce/bad", content=b"x", headers={"ce-priority": "high"})
    assert r.status_code == 400
    assert "ce-priority" in r.json()["detail"]
    r = httpx.post(f"{server.url}/api/topics/ce/bad", content=b"x", headers={"ce-replyto": "a/#"})
    assert r.status_code == 400 and "ce-replyto" in r.json()["detail"]


def test_a_websocket_publish_with_attributes_reaches_mqtt5_as_properties(server):
    port = mqtt_port(server)
    sub = connected(port, "ws-attr-sub", "wsattr/#", v5=True)

    async def scenario():
        ws = await WsClient.connect(server.ws_url)
        ok = await ws.ok("publish", topic="wsattr/q", data={"ask": 1},
                         attributes={"replyto": "wsattr/answers", "correlationid": "q-1", "priority": 3},
                         headers={"app": "browser"})
        bad = await ws.request("publish", topic="wsattr/q", data={}, attributes={"mqtt-qos": "0"})
        bad_value = await ws.request("publish", topic="wsattr/q", data={}, attributes={"priority": 42})
        await ws.close()
        return ok, bad, bad_value

    ok, bad, bad_value = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert isinstance(ok["sequence"], int)
    assert bad["type"] == "error" and "mqtt-qos" in bad["message"] and "headers" in bad["message"], bad
    assert bad_value["type"] == "error" and "priority" in bad_value["message"], bad_value
    (m,) = sub.take(1)  # the refused publishes were not published
    assert m.properties.ResponseTopic == "wsattr/answers"
    assert m.properties.CorrelationData == b"q-1"
    assert m.properties.UserProperty == [("app", "browser")]
    sub.nothing_more()
    sub.close()
