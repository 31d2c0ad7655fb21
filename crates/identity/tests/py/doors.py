"""Each protocol's door, driven by a third-party client: `door(server, creds)` returns
True when the server lets the caller in and False when it refuses, after checking the
refusal is the protocol's own (HTTP 401 problem, CONNACK code, AMQP 403, STOMP ERROR,
gRPC UNAUTHENTICATED, SOAP Fault, GraphQL connection refused). `creds` is
(username, password), ("bearer", token) or None."""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import subprocess
import sys
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pika
import pika.exceptions
import requests
import stomp
import websockets
import websockets.exceptions
import zeep
import zeep.exceptions
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport
from zeep.transports import Transport
from zeep.wsse.username import UsernameToken

TIMEOUT = 10
GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def authorization(creds) -> dict:
    if creds is None:
        return {}
    user, secret = creds
    if user == "bearer":
        return {"Authorization": f"Bearer {secret}"}
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


def as_password(creds) -> tuple[str, str] | None:
    """Password-only protocols take a bearer token as the password."""
    if creds is None:
        return None
    user, secret = creds
    return ("token", secret) if user == "bearer" else (user, secret)


def rest(s, creds) -> bool:
    r = httpx.get(f"{s.url}/api/collections/posts/records", headers=authorization(creds), timeout=TIMEOUT)
    if r.status_code == 200:
        return True
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "unauthenticated" and r.headers["www-authenticate"]
    return False


def ws(s, creds) -> bool:
    """/ws, signed in the browser way: the secret in ?access_token= (a password is first
    traded for a sign-in token, as a page would)."""
    query = ""
    if creds is not None:
        user, secret = creds
        token = secret
        if user != "bearer":
            r = httpx.post(f"{s.url}/api/auth/token", headers=authorization(creds), timeout=TIMEOUT)
            if r.status_code != 200:
                assert r.status_code == 401, r.text
                return False
            token = r.json()["token"]
        query = f"?access_token={token}"

    async def run() -> bool:
        try:
            async with websockets.connect(f"ws://{s.http}/ws{query}") as sock:
                await sock.send(json.dumps({"op": "subscribe", "id": "1", "topic": "doors/#"}))
                reply = json.loads(await asyncio.wait_for(sock.recv(), TIMEOUT))
                assert reply["type"] == "ok", reply
                return True
        except websockets.exceptions.InvalidStatus as e:
            assert e.response.status_code == 401
            return False

    return asyncio.run(run())


def graphql_ws(s, creds) -> bool:
    """graphql-ws clients send credentials in `connection_init` (gql's init_payload)."""
    payload = authorization(creds)

    async def run() -> bool:
        transport = WebsocketsTransport(url=f"ws://{s.http}/graphql", init_payload=payload,
                                        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
                                        connect_timeout=TIMEOUT, ack_timeout=TIMEOUT, close_timeout=2)
        try:
            async with Client(transport=transport, execute_timeout=TIMEOUT) as session:
                data = await session.execute(gql("{ user(id: 123) { username } }"))
                assert data["user"]["username"] == "john_doe"
                return True
        except Exception as e:  # gql raises its own transport errors for a refused init
            assert "4403" in repr(e) or "Forbidden" in repr(e) or "unauthenticated" in repr(e) \
                or "closed" in repr(e).lower(), repr(e)
            return False

    return asyncio.run(asyncio.wait_for(run(), 30))


def graphql_http(s, creds) -> bool:
    r = httpx.post(f"{s.url}/graphql", json={"query": "{ user(id: 123) { username } }"},
                   headers=authorization(creds), timeout=TIMEOUT)
    if r.status_code == 200 and "errors" not in r.json():
        return True
    assert r.status_code == 401, r.text
    return False


def grpc(s, creds) -> bool:
    cmd = [GRPCURL, "-plaintext"]
    for k, v in authorization(creds).items():
        cmd += ["-H", f"{k.lower()}: {v}"]
    cmd += ["-d", json.dumps({"collection": "users", "id": "123"}), f"127.0.0.1:{s.port('grpc')}",
            "polyport.v1.Records/Get"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT * 3)
    if out.returncode == 0:
        assert "john_doe" in out.stdout, out.stdout
        return True
    assert "Unauthenticated" in out.stderr, out.stderr
    return False


def mqtt_(s, creds) -> bool:
    got: queue.Queue = queue.Queue()
    c = mqtt.Client(client_id="", protocol=mqtt.MQTTv311)
    c.on_connect = lambda cl, u, flags, rc: got.put(rc)
    if (pw := as_password(creds)) is not None:
        c.username_pw_set(*pw)
    c.connect("127.0.0.1", s.port("mqtt"), keepalive=30)
    c.loop_start()
    try:
        rc = got.get(timeout=TIMEOUT)
    finally:
        c.disconnect()
        c.loop_stop()
    assert rc in (0, 4, 5), f"CONNACK {rc}"  # 4: bad user name or password, 5: not authorized
    return rc == 0


def amqp(s, creds) -> bool:
    pw = as_password(creds) or ("", "")
    params = pika.ConnectionParameters("127.0.0.1", s.port("amqp"), credentials=pika.PlainCredentials(*pw),
                                       connection_attempts=1, socket_timeout=TIMEOUT)
    try:
        conn = pika.BlockingConnection(params)
    except pika.exceptions.ProbableAuthenticationError:
        return False
    except pika.exceptions.AMQPConnectionError as e:  # 403 ACCESS_REFUSED in connection.close
        assert "403" in repr(e) or "ACCESS_REFUSED" in repr(e), repr(e)
        return False
    conn.close()
    return True


class _Errors(stomp.ConnectionListener):
    def __init__(self):
        self.errors: queue.Queue = queue.Queue()

    def on_error(self, frame):
        self.errors.put(frame)


def stomp_session(s, creds) -> tuple[stomp.Connection12, queue.Queue]:
    """A signed-in stomp.py connection and the `message` headers of the ERROR frames it
    gets."""
    errors: queue.Queue = queue.Queue()

    class Errors(stomp.ConnectionListener):
        def on_error(self, frame):
            errors.put(frame.headers.get("message", ""))

    conn = stomp.Connection12([("127.0.0.1", s.port("stomp"))], vhost="/")
    conn.set_listener("", Errors())
    conn.connect(*creds, wait=True)
    return conn, errors


def stomp_(s, creds) -> bool:
    conn = stomp.Connection12([("127.0.0.1", s.port("stomp"))], vhost="/", timeout=TIMEOUT)
    seen = _Errors()
    conn.set_listener("", seen)
    pw = as_password(creds)
    try:
        if pw is None:
            conn.connect(wait=True)
        else:
            conn.connect(pw[0], pw[1], wait=True)
    except stomp.exception.ConnectFailedException:
        frame = seen.errors.get(timeout=TIMEOUT)
        assert frame.headers.get("message"), frame.headers
        return False
    ok = conn.is_connected()
    conn.disconnect()
    return ok


def soap(s, creds, *, wsdl_auth) -> bool:
    """zeep with WS-Security UsernameToken. The WSDL is an HTTP GET, fetched as
    `wsdl_auth`; the calls then go without HTTP Basic, so only the envelope's token
    speaks."""
    session = requests.Session()
    session.auth = wsdl_auth
    wsse = UsernameToken(*as_password(creds)) if creds is not None else None
    client = zeep.Client(f"{s.url}/soap?wsdl", transport=Transport(session=session), wsse=wsse)
    session.auth = None
    svc = client.bind("Polyport", "PolyportSoap12")
    try:
        assert svc.GetUser(id="123").username == "john_doe"
        return True
    except zeep.exceptions.Fault as f:
        assert [q.localname for q in f.subcodes] == ["FailedAuthentication"], f
        return False
