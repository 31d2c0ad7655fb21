"""The graphql-transport-ws protocol's rules, with a raw websocket client: each breach
(a socket that never sends `connection_init` included) closes the socket with the close
code graphql-ws's PROTOCOL.md gives it, and `ping` is answered with `pong`."""

from __future__ import annotations

import asyncio
import base64
import json

import websockets

from realtime_clients import TIMEOUT

SUB = {"query": 'subscription { events(topic: "proto/#") { sequence } }'}


async def connect(server):
    return await websockets.connect(f"ws://{server.http}/graphql", subprotocols=["graphql-transport-ws"])


async def close_code(sock) -> tuple[int, str]:
    try:
        while True:
            await asyncio.wait_for(sock.recv(), TIMEOUT)
    except websockets.exceptions.ConnectionClosed as e:
        return e.rcvd.code, e.rcvd.reason


async def acked(server):
    sock = await connect(server)
    await sock.send(json.dumps({"type": "connection_init"}))
    assert json.loads(await asyncio.wait_for(sock.recv(), TIMEOUT)) == {"type": "connection_ack"}
    return sock


def test_protocol_breaches_close_with_the_protocols_codes(shared_blog):
    async def scenario():
        sock = await connect(shared_blog)
        await sock.send("{not json")
        code, reason = await close_code(sock)
        assert code == 4400 and reason, (code, reason)

        sock = await connect(shared_blog)
        await sock.send(json.dumps({"id": "1", "type": "subscribe", "payload": SUB}))
        assert await close_code(sock) == (4401, "Unauthorized")

        sock = await connect(shared_blog)  # and says nothing: closed after 3 s
        started = asyncio.get_running_loop().time()
        assert await close_code(sock) == (4408, "Connection initialisation timeout")
        assert 2.5 < asyncio.get_running_loop().time() - started < TIMEOUT

        sock = await acked(shared_blog)
        await sock.send(json.dumps({"type": "connection_init"}))
        assert (await close_code(sock))[0] == 4429

        sock = await acked(shared_blog)
        await sock.send(json.dumps({"id": "1", "type": "subscribe", "payload": SUB}))
        await sock.send(json.dumps({"id": "1", "type": "subscribe", "payload": SUB}))
        assert await close_code(sock) == (4409, "Subscriber for 1 already exists")

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_ping_is_answered_and_a_completed_id_can_be_used_again(shared_blog):
    async def scenario():
        sock = await acked(shared_blog)
        await sock.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(sock.recv(), TIMEOUT)) == {"type": "pong"}
        await sock.send(json.dumps({"id": "1", "type": "subscribe", "payload": SUB}))
        await sock.send(json.dumps({"id": "1", "type": "complete"}))
        assert json.loads(await asyncio.wait_for(sock.recv(), TIMEOUT)) == {"type": "complete", "id": "1"}
        # a query over the socket: one `next`, then `complete`
        await sock.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": "{ user(id: 123) { username } }"}}))
        assert json.loads(await asyncio.wait_for(sock.recv(), TIMEOUT)) == {
            "type": "next", "id": "1", "payload": {"data": {"user": {"username": "john_doe"}}}}
        assert json.loads(await asyncio.wait_for(sock.recv(), TIMEOUT)) == {"type": "complete", "id": "1"}
        await sock.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_refused_credentials_on_each_protocol(servers):
    """graphql-transport-ws closes with 4403; the legacy graphql-ws sends
    `connection_error` (with the reason) and then closes."""
    s = servers.start('[auth]\nusers = { alice = "s3cret" }\nanonymous = false\n', "--demo", "blog")
    bad = {"Authorization": "Basic " + base64.b64encode(b"alice:wrong").decode()}

    async def scenario():
        sock = await websockets.connect(f"ws://{s.http}/graphql", subprotocols=["graphql-transport-ws"])
        await sock.send(json.dumps({"type": "connection_init", "payload": bad}))
        code, reason = await close_code(sock)
        assert code == 4403 and reason, (code, reason)

        sock = await websockets.connect(f"ws://{s.http}/graphql", subprotocols=["graphql-ws"])
        await sock.send(json.dumps({"type": "connection_init", "payload": bad}))
        msg = json.loads(await asyncio.wait_for(sock.recv(), TIMEOUT))
        assert msg["type"] == "connection_error" and msg["payload"]["message"], msg
        assert (await close_code(sock))[0] == 1011

        # the right password is let in on both
        good = {"Authorization": "Basic " + base64.b64encode(b"alice:s3cret").decode()}
        for protocol in ("graphql-transport-ws", "graphql-ws"):
            sock = await websockets.connect(f"ws://{s.http}/graphql", subprotocols=[protocol])
            await sock.send(json.dumps({"type": "connection_init", "payload": good}))
            assert json.loads(await asyncio.wait_for(sock.recv(), TIMEOUT)) == {"type": "connection_ack"}
            await sock.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
