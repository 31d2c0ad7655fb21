"""The identity × action × protocol matrix. One server, one table of who may do what
(`EXPECT`), one table of how each protocol does it (`DO`), every cell driven through a
client we did not write: httpx (REST, GraphQL over HTTP), grpcurl, websockets (/ws), gql
(GraphQL over WebSocket), zeep (SOAP 1.2), paho (MQTT 5), pika (AMQP 0-9-1) and stomp.py
(STOMP 1.2).

A cell passes when the server allows exactly what `EXPECT` says and refuses the rest in
the protocol's own words. Bad credentials: HTTP 401 problem `unauthenticated` with
WWW-Authenticate (GraphQL over HTTP too: the HTTP gate answers before GraphQL runs), a
/ws upgrade refused with 401, a graphql-ws `connection_init` refused by closing the socket,
gRPC UNAUTHENTICATED, SOAP `wsse:FailedAuthentication`, MQTT CONNACK 0x86, AMQP 403
ACCESS_REFUSED at login, a STOMP ERROR for CONNECT. Let in but not allowed: HTTP 403
problem `forbidden`, GraphQL errors with `extensions.code` `forbidden`, gRPC
PERMISSION_DENIED, a /ws `error` frame with code `forbidden`, a SOAP 1.2 Fault with
subcode `pp:forbidden`, MQTT PUBACK/SUBACK 0x87, AMQP channel close 403 ACCESS_REFUSED, a
STOMP ERROR frame. Refused writes and publishes must leave no trace (no record, change,
webhook endpoint or collection; nothing delivered to an admin watching `#` over MQTT), and
acknowledged ones must really have happened.

Protocols run side by side, each on its own connections (one per caller where the
protocol keeps one open), and every wrong cell is collected, so one run shows all of
them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import queue
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import paho.mqtt.client as mqtt
import pika
import pika.exceptions
import pytest
import requests
import stomp
import stomp.exception
import websockets.exceptions
import websockets.sync.client
import zeep
import zeep.exceptions
from gql import Client, gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from zeep.transports import Transport
from zeep.wsse.username import UsernameToken

import doors

TIMEOUT = 10
PROTO_DIR = Path(__file__).resolve().parents[4] / "proto"
SECRET = "0123456789abcdef0123456789abcdef-matrix-tests"
CONFIG = f"""
[auth]
users = {{ alice = "alice-pass", root = {{ password = "root-pass", role = "admin" }} }}
anonymous = true                # callers without credentials are let in, bound by rules and ACLs

[auth.jwt]
secret = "{SECRET}"

[[auth.acl]]
who = "*"                       # anyone signed in
publish = ["sensors/#"]
subscribe = ["sensors/#"]

[[auth.acl]]
who = "anonymous"
subscribe = ["sensors/#"]
"""
ROOT = ("root", "root-pass")
# Open to read for everyone let in; created by anyone signed in; changed only by admins.
NOTES = {
    "name": "notes",
    "fields": [{"name": "title", "type": "text"}],
    "rules": {"list": "true", "view": "true", "create": "@auth.id != null"},
}

# ---------------------------------------------------------------------------------------
# Who: credentials are filled in by the fixture (keys and JWTs are minted there).


@dataclass
class Who:
    name: str
    creds: tuple[str, str] | None = None  # (user, password), ("bearer", token) or None
    # The word every refusal of this caller must use: bad credentials are never let in.
    refusal: str = "forbidden"


IDENTITIES = (
    "nobody",          # no credentials at all (anonymous = true lets it in)
    "wrong-password",  # alice with a wrong password: refused at the door, whatever it asks
    "alice",           # a user from polyport.toml
    "root",            # an admin from polyport.toml
    "read-key",        # API key, role user, scopes ["read"]
    "sensor-key",      # API key, role user, scopes ["publish", "subscribe"]
    "admin-read-key",  # API key, role admin but scopes ["read"]: a scope narrows even an admin
    "jwt-dave",        # HS256 JWT, sub dave, no role claim: a user
    "jwt-boss",        # HS256 JWT, sub boss, role claim "admin": an admin
)

ACTIONS = (
    "read",               # GET notes/seed (view rule "true")
    "create",             # create a note (create rule "@auth.id != null")
    "update",             # change a note (no update rule: admins only)
    "publish",            # on sensors/… (ACL: anyone signed in)
    "publish-alerts",     # on alerts/… (no ACL entry: admins only)
    "subscribe",          # to sensors/# (ACL: anyone signed in, and anonymous)
    "subscribe-alerts",   # to alerts/# (no ACL entry: admins only)
    "subscribe-wide",     # to # (wider than any ACL entry: admins only)
    "subscribe-sys",      # to $SYS/# (admins only)
    "list-webhooks",      # the webhook endpoint registry (admins only)
    "create-webhook",     # register an endpoint (admins only)
    "create-collection",  # define a collection (admins only)
)

Y, N = True, False
# fmt: off
#                     read create update pub  pubA sub  subA  sub#  $SYS hooks mkhook mkcoll
_GRID = {
    "nobody":         (Y,   N,     N,     N,   N,   Y,   N,    N,    N,   N,    N,     N),
    "wrong-password": (N,   N,     N,     N,   N,   N,   N,    N,    N,   N,    N,     N),
    "alice":          (Y,   Y,     N,     Y,   N,   Y,   N,    N,    N,   N,    N,     N),
    "root":           (Y,   Y,     Y,     Y,   Y,   Y,   Y,    Y,    Y,   Y,    Y,     Y),
    "read-key":       (Y,   N,     N,     N,   N,   N,   N,    N,    N,   N,    N,     N),
    "sensor-key":     (N,   N,     N,     Y,   N,   Y,   N,    N,    N,   N,    N,     N),
    "admin-read-key": (Y,   N,     N,     N,   N,   N,   N,    N,    N,   N,    N,     N),
    "jwt-dave":       (Y,   Y,     N,     Y,   N,   Y,   N,    N,    N,   N,    N,     N),
    "jwt-boss":       (Y,   Y,     Y,     Y,   Y,   Y,   Y,    Y,    Y,   Y,    Y,     Y),
}
# fmt: on
EXPECT: dict[tuple[str, str], bool] = {
    (who, action): allowed for who, row in _GRID.items() for action, allowed in zip(ACTIONS, row, strict=True)
}
assert set(_GRID) == set(IDENTITIES)

# Cells a protocol cannot express at all, left out on purpose:
# - MQTT, AMQP and STOMP have no records to read or create (they carry record *changes*
#   as topics), nor webhook or collection administration; their admin act is `$SYS/#`.
# - GraphQL has no publish; its subscriptions exist only over WebSocket ("graphql-ws",
#   which here does only the subscribe rows; its queries are GraphQL over HTTP's).
# - SOAP has records and Publish, but no subscriptions and no administration.
# - Collections are defined over REST only.
# - AMQP 0-9-1 cannot connect without credentials: pika always sends PLAIN (guest/guest
#   unless told otherwise), so "nobody" has no AMQP cells.
ABSENT = {("amqp", "nobody")}


def tag(protocol: str, who: Who) -> str:
    """What a cell names its record, topic segment and endpoint by: unique per cell, valid
    as a record id, a topic segment and an AMQP routing-key word."""
    return f"{protocol}-{who.name}"


def updated(t: str) -> str:
    """The record an update cell changes (the fixture makes one per cell)."""
    return f"upd-{t}"


def collection_name(who: Who) -> str:
    return "made_by_" + who.name.replace("-", "_")


def hook_spec(t: str) -> dict:
    """An endpoint that never delivers (disabled, and no event has this type)."""
    return {"url": f"http://127.0.0.1:9/{t}", "event_types": ["never.happens"], "enabled": False, "description": t}


# ---------------------------------------------------------------------------------------
# HTTP: REST and GraphQL over HTTP.


class Http:
    def __init__(self, s):
        self.s = s
        self.clients: dict[str, httpx.Client] = {}

    def client(self, who: Who) -> httpx.Client:
        if who.name not in self.clients:
            self.clients[who.name] = httpx.Client(base_url=self.s.url, timeout=TIMEOUT, trust_env=False,
                                                  headers=doors.authorization(who.creds))
        return self.clients[who.name]

    def close(self):
        for c in self.clients.values():
            c.close()


def problem(r: httpx.Response, who: Who) -> bool:
    """True for a success; False for a refusal that is an RFC 9457 problem with the right
    status and code; AssertionError otherwise."""
    if r.status_code in (200, 201, 202, 204):
        return True
    want = {"unauthenticated": 401, "forbidden": 403}[who.refusal]
    assert r.status_code == want, f"HTTP {r.status_code} (want a success or {want}): {r.text[:300]}"
    assert r.headers.get("content-type", "").startswith("application/problem+json"), r.headers.get("content-type")
    body = r.json()
    assert body.get("code") == who.refusal and body.get("status") == want, body
    if want == 401:
        assert r.headers.get("www-authenticate"), "a 401 without WWW-Authenticate"
    return False


def rest_read(d: Http, who: Who) -> bool:
    r = d.client(who).get("/api/collections/notes/records/seed")
    if problem(r, who):
        assert r.json()["title"] == "seed note", r.text
        return True
    return False


def rest_create(d: Http, who: Who) -> bool:
    t = tag("rest", who)
    return problem(d.client(who).post("/api/collections/notes/records", json={"id": t, "title": t}), who)


def rest_update(d: Http, who: Who) -> bool:
    rid = updated(tag("rest", who))
    return problem(d.client(who).patch(f"/api/collections/notes/records/{rid}", json={"title": "updated"}), who)


def rest_publish(root: str):
    def do(d: Http, who: Who) -> bool:
        t = tag("rest", who)
        return problem(d.client(who).post(f"/api/topics/{root}/{t}", json={"cell": t}), who)
    return do


def rest_subscribe(f: str):
    """SSE: a 200 stream is a live subscription."""
    def do(d: Http, who: Who) -> bool:
        with d.client(who).stream("GET", "/api/events", params={"topic": f}) as r:
            if r.status_code == 200:
                assert r.headers["content-type"].startswith("text/event-stream"), r.headers
                return True
            r.read()
            return problem(r, who)
    return do


def rest_list_webhooks(d: Http, who: Who) -> bool:
    return problem(d.client(who).get("/api/webhooks/endpoints"), who)


def rest_create_webhook(d: Http, who: Who) -> bool:
    return problem(d.client(who).post("/api/webhooks/endpoints", json=hook_spec(tag("rest", who))), who)


def rest_create_collection(d: Http, who: Who) -> bool:
    return problem(d.client(who).post("/api/collections", json={"name": collection_name(who)}), who)


def graphql(d: Http, who: Who, query: str, field: str, variables: dict | None = None) -> bool:
    """Allowed: data[field] and no errors. Refused: every error's extensions.code is the
    refusal's (401 before anything runs for bad credentials; 200 or 403 for forbidden)."""
    r = d.client(who).post("/graphql", json={"query": query, "variables": variables or {}})
    body = r.json()
    if r.status_code == 200 and not body.get("errors"):
        assert body["data"][field] is not None, body
        return True
    want = {401} if who.refusal == "unauthenticated" else {200, 403}
    assert r.status_code in want, f"HTTP {r.status_code} (want {want}): {r.text[:300]}"
    if r.status_code == 401 and "errors" not in body:
        # Bad credentials are refused by the HTTP gate before GraphQL runs: README's
        # "GraphQL 401", answered as the RFC 9457 problem every HTTP route gives.
        return problem(r, who)
    codes = {e.get("extensions", {}).get("code") for e in body.get("errors") or [{}]}
    assert codes == {who.refusal}, f"GraphQL error codes {codes}, want {{{who.refusal!r}}}: {r.text[:300]}"
    return False


def graphql_read(d: Http, who: Who) -> bool:
    return graphql(d, who, '{ note(id: "seed") { title } }', "note")


def graphql_create(d: Http, who: Who) -> bool:
    t = tag("graphql", who)
    return graphql(d, who, f'mutation {{ createNote(input: {{id: "{t}", title: "{t}"}}) {{ id }} }}', "createNote")


def graphql_update(d: Http, who: Who) -> bool:
    rid = updated(tag("graphql", who))
    return graphql(d, who, f'mutation {{ updateNote(id: "{rid}", input: {{title: "updated"}}) {{ id }} }}',
                   "updateNote")


def graphql_list_webhooks(d: Http, who: Who) -> bool:
    return graphql(d, who, "{ webhookEndpoints { id } }", "webhookEndpoints")


def graphql_create_webhook(d: Http, who: Who) -> bool:
    return graphql(d, who, "mutation($e: JSON!) { createWebhookEndpoint(input: $e) { id } }",
                   "createWebhookEndpoint", {"e": hook_spec(tag("graphql", who))})


# ---------------------------------------------------------------------------------------
# gRPC through grpcurl, with the shipped protos (no reflection round trips).


class Grpc:
    def __init__(self, s):
        self.addr = f"127.0.0.1:{s.port('grpc')}"

    def cmd(self, who: Who, method: str, data: dict) -> list[str]:
        cmd = [doors.GRPCURL, "-plaintext", "-import-path", str(PROTO_DIR)]
        for p in ("records", "topics", "webhooks"):
            cmd += ["-proto", f"polyport/v1/{p}.proto"]
        for k, v in doors.authorization(who.creds).items():
            cmd += ["-H", f"{k.lower()}: {v}"]
        return cmd + ["-d", json.dumps(data), self.addr, method]

    def close(self):
        pass


def grpc_status(stderr: str, who: Who) -> bool:
    want = {"unauthenticated": "Unauthenticated", "forbidden": "PermissionDenied"}[who.refusal]
    assert f"Code: {want}" in stderr, f"want gRPC {want}, got: {stderr.strip()[:300]}"
    return False


def grpc_unary(method: str, data):
    def do(d: Grpc, who: Who) -> bool:
        out = subprocess.run(d.cmd(who, method, data(who) if callable(data) else data),
                             capture_output=True, text=True, timeout=TIMEOUT * 3)
        return out.returncode == 0 or grpc_status(out.stderr, who)
    return do


def grpc_subscribe(f: str):
    """Topics/Subscribe from the start of the log: allowed once the first event arrives
    (the fixture put one on every filter), refused when the call ends with a status."""
    def do(d: Grpc, who: Who) -> bool:
        proc = subprocess.Popen(d.cmd(who, "polyport.v1.Topics/Subscribe", {"filters": [f], "since": "0"}),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        timer = threading.Timer(TIMEOUT, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                if line.rstrip() == "}":  # the end of the first message grpcurl prints
                    return True
            proc.wait()
            assert timer.is_alive(), f"no event and no status within {TIMEOUT}s"
            return grpc_status(proc.stderr.read(), who)
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
    return do


def _payload(who: Who) -> str:
    return base64.b64encode(who.name.encode()).decode()


# ---------------------------------------------------------------------------------------
# /ws: one socket per caller, requests matched to replies by id.


class Ws:
    def __init__(self, s):
        self.s = s
        self.socks: dict[str, websockets.sync.client.ClientConnection] = {}
        self.opened = contextlib.ExitStack()
        self.n = 0

    def sock(self, who: Who):
        if who.name in self.socks:
            return self.socks[who.name]
        try:
            sock = self.opened.enter_context(websockets.sync.client.connect(
                f"ws://{self.s.http}/ws", proxy=None, open_timeout=TIMEOUT, close_timeout=2,
                additional_headers=doors.authorization(who.creds)))
        except websockets.exceptions.InvalidStatus as e:
            assert e.response.status_code == 401 and who.refusal == "unauthenticated", \
                f"/ws upgrade refused with {e.response.status_code}"
            return None
        self.socks[who.name] = sock
        return sock

    def call(self, who: Who, request: dict) -> dict | bool:
        """The `ok` reply, or False for an `error` frame (or a refused upgrade)."""
        sock = self.sock(who)
        if sock is None:
            return False
        self.n += 1
        rid = f"r{self.n}"
        sock.send(json.dumps({"id": rid, **request}))
        deadline = time.monotonic() + TIMEOUT
        while True:
            msg = json.loads(sock.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") != rid or msg.get("type") not in ("ok", "error"):
                continue  # events of earlier subscriptions
            if msg["type"] == "ok":
                return msg
            assert msg.get("code") == who.refusal and msg.get("message"), f"/ws error frame {msg}"
            return False

    def close(self):
        self.opened.close()


def ws_op(make):
    def do(d: Ws, who: Who) -> bool:
        return bool(d.call(who, make(tag("ws", who))))
    return do


def ws_subscribe(f: str):
    """`ok` comes once the subscription is live; it is then dropped, so the socket is not
    left filling with events nobody reads."""
    def do(d: Ws, who: Who) -> bool:
        ok = d.call(who, {"op": "subscribe", "topic": f})
        if ok:
            assert d.call(who, {"op": "unsubscribe", "subscription": ok["subscription"]})
        return bool(ok)
    return do


# ---------------------------------------------------------------------------------------
# GraphQL over WebSocket (graphql-transport-ws): subscriptions, credentials in
# connection_init.


def close_frame(e: BaseException | None):
    """The close frame the server sent, from the websockets error under gql's."""
    while e is not None:
        if isinstance(e, websockets.exceptions.ConnectionClosed):
            return e.rcvd
        e = e.__cause__ or e.__context__
    return None


class GraphqlWs:
    def __init__(self, s):
        self.s = s

    def close(self):
        pass


def graphql_ws_subscribe(f: str):
    def do(d: GraphqlWs, who: Who) -> bool:
        async def run() -> bool:
            transport = WebsocketsTransport(url=f"ws://{d.s.http}/graphql", init_payload=doors.authorization(who.creds),
                                            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
                                            connect_timeout=TIMEOUT, ack_timeout=TIMEOUT, close_timeout=1)
            query = gql("subscription($t: String!) { events(topic: $t, since: 0) { id } }")
            try:
                async with Client(transport=transport, execute_timeout=TIMEOUT) as session:
                    try:
                        query.variable_values = {"t": f}
                        async for _ in session.subscribe(query):
                            return True
                    except TransportQueryError as e:
                        codes = {(x.get("extensions") or {}).get("code") for x in e.errors or [{}]}
                        assert who.refusal == "forbidden" and codes == {"forbidden"}, f"GraphQL errors {e.errors}"
                        return False
                    raise AssertionError("the subscription ended without an event or an error")
            except AssertionError:
                raise
            except Exception as e:  # a refused connection_init closes the socket
                assert who.refusal == "unauthenticated", f"connection failed for a valid identity: {e!r}"
                close = close_frame(e)
                assert close is not None, f"no close frame: {e!r}"
                # graphql-transport-ws: a refused connection_init is 4403 Forbidden.
                assert close.code == 4403 and "not authenticated" in close.reason, close
                return False
        return asyncio.run(asyncio.wait_for(run(), TIMEOUT * 2))
    return do


# ---------------------------------------------------------------------------------------
# SOAP 1.2 through zeep, signed in with WS-Security UsernameToken.


class Soap:
    def __init__(self, s):
        session = requests.Session()
        session.trust_env = False
        self.client = zeep.Client(f"{s.url}/soap?wsdl", transport=Transport(session=session, timeout=TIMEOUT))
        self.svc = self.client.bind("Polyport", "PolyportSoap12")

    def call(self, who: Who, op: str, **kwargs):
        """The answer, or False for a Fault in SOAP's words."""
        self.client.wsse = UsernameToken(*doors.as_password(who.creds)) if who.creds is not None else None
        try:
            return getattr(self.svc, op)(**kwargs)
        except zeep.exceptions.Fault as f:
            want = {"unauthenticated": "FailedAuthentication", "forbidden": "forbidden"}[who.refusal]
            subcodes = [q.localname for q in f.subcodes or []]
            assert subcodes == [want], f"SOAP Fault {f.code} {subcodes} ({f.message}), want subcode {want}"
            return False

    def close(self):
        pass


def soap_read(d: Soap, who: Who) -> bool:
    got = d.call(who, "GetNote", id="seed")
    if got is False:
        return False
    assert got.title == "seed note", got
    return True


def soap_create(d: Soap, who: Who) -> bool:
    t = tag("soap", who)
    return d.call(who, "CreateNote", id=t, title=t) is not False


def soap_update(d: Soap, who: Who) -> bool:
    return d.call(who, "UpdateNote", id=updated(tag("soap", who)), title="updated") is not False


def soap_publish(root: str):
    def do(d: Soap, who: Who) -> bool:
        t = tag("soap", who)
        return d.call(who, "Publish", topic=f"{root}/{t}", data=t) is not False
    return do


# ---------------------------------------------------------------------------------------
# MQTT 5 through paho.


class Paho(mqtt.Client):
    """paho 1.6 parses MQTT 5 PUBACK reason codes but does not hand them on: keep them."""

    def __init__(self, client_id: str):
        super().__init__(client_id=client_id, protocol=mqtt.MQTTv5)
        self.puback: dict[int, int] = {}
        self.suback: dict[int, list[int]] = {}
        self.acked = threading.Condition()
        self.connack: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.on_connect = lambda c, u, flags, rc, props=None: self.connack.put(int(rc.value))
        self.on_subscribe = self._subscribed
        self.on_message = lambda c, u, m: self.messages.put(m.topic)

    def _handle_pubackcomp(self, cmd):
        packet = self._in_packet["packet"]
        if cmd == "PUBACK" and len(packet) >= 2:
            mid = struct.unpack("!H", packet[:2])[0]
            with self.acked:
                self.puback[mid] = packet[2] if len(packet) > 2 else 0
                self.acked.notify_all()
        return super()._handle_pubackcomp(cmd)

    def _subscribed(self, c, u, mid, codes, props=None):
        with self.acked:
            self.suback[mid] = [int(x.value) for x in codes]
            self.acked.notify_all()

    def wait(self, table: dict, mid: int):
        with self.acked:
            assert self.acked.wait_for(lambda: mid in table, TIMEOUT), "no PUBACK/SUBACK"
            return table.pop(mid)

    def stop(self):
        self.disconnect()
        self.loop_stop()


def mqtt_connect(s, creds, client_id: str) -> tuple[Paho, int]:
    c = Paho(client_id)
    if (pw := doors.as_password(creds)) is not None:
        c.username_pw_set(*pw)
    c.connect("127.0.0.1", s.port("mqtt"), keepalive=30)
    deadline = time.monotonic() + TIMEOUT
    while c.connack.empty() and time.monotonic() < deadline:
        c.loop(timeout=0.1)  # by hand until CONNACK: a refused client never starts reconnecting
    if c.connack.empty():
        c.stop()
        raise AssertionError("no CONNACK")
    rc = c.connack.get()
    if rc == 0:
        c.loop_start()
    return c, rc


class Mqtt:
    def __init__(self, s):
        self.s = s
        self.clients: dict[str, Paho] = {}

    def client(self, who: Who) -> Paho | None:
        if who.name in self.clients:
            return self.clients[who.name]
        c, rc = mqtt_connect(self.s, who.creds, f"matrix-{who.name}")
        if rc != 0:
            c.stop()
            assert who.refusal == "unauthenticated" and rc == 0x86, f"CONNACK 0x{rc:02x}"  # bad user name or password
            return None
        self.clients[who.name] = c
        return c

    def close(self):
        for c in self.clients.values():
            c.stop()


def reason(code: int, what: str) -> bool:
    assert code < 0x80 or code == 0x87, f"{what} reason 0x{code:02x} (want success or 0x87 Not authorized)"
    return code < 0x80


def mqtt_publish(root: str):
    def do(d: Mqtt, who: Who) -> bool:
        if (c := d.client(who)) is None:
            return False
        info = c.publish(f"{root}/{tag('mqtt', who)}", who.name.encode(), qos=1)
        return reason(c.wait(c.puback, info.mid), "PUBACK")
    return do


def mqtt_subscribe(f: str):
    def do(d: Mqtt, who: Who) -> bool:
        if (c := d.client(who)) is None:
            return False
        _, mid = c.subscribe(f, qos=1)
        (code,) = c.wait(c.suback, mid)
        allowed = reason(code, "SUBACK")
        if allowed:
            c.unsubscribe(f)
        return allowed
    return do


# ---------------------------------------------------------------------------------------
# AMQP 0-9-1 through pika: amq.topic, routing key a.b ↔ topic a/b.


class Amqp:
    def __init__(self, s):
        self.s = s
        self.conns: dict[str, pika.BlockingConnection] = {}

    def conn(self, who: Who) -> pika.BlockingConnection | None:
        if who.name in self.conns:
            return self.conns[who.name]
        params = pika.ConnectionParameters("127.0.0.1", self.s.port("amqp"), connection_attempts=1,
                                           credentials=pika.PlainCredentials(*doors.as_password(who.creds)),
                                           socket_timeout=TIMEOUT, blocked_connection_timeout=TIMEOUT)
        try:
            conn = pika.BlockingConnection(params)
        except pika.exceptions.AMQPConnectionError as e:
            assert who.refusal == "unauthenticated", f"connection refused for a valid identity: {e!r}"
            assert "403" in repr(e) or "ACCESS_REFUSED" in repr(e), repr(e)
            return None
        self.conns[who.name] = conn
        return conn

    def channel_op(self, who: Who, op) -> bool:
        if (conn := self.conn(who)) is None:
            return False
        ch = conn.channel()
        try:
            op(ch)
        except pika.exceptions.ChannelClosedByBroker as e:
            assert e.reply_code == 403 and e.reply_text.startswith("ACCESS_REFUSED"), (e.reply_code, e.reply_text)
            return False
        ch.close()
        return True

    def close(self):
        for c in self.conns.values():
            c.close()


def amqp_publish(root: str):
    """With publisher confirms, so a refusal (channel close 403) cannot overtake the ack."""
    def do(d: Amqp, who: Who) -> bool:
        def op(ch):
            ch.confirm_delivery()
            ch.basic_publish("amq.topic", f"{root}.{tag('amqp', who)}", who.name.encode())
        return d.channel_op(who, op)
    return do


def amqp_subscribe(key: str):
    def do(d: Amqp, who: Who) -> bool:
        def op(ch):
            q = ch.queue_declare("", exclusive=True).method.queue
            ch.queue_bind(q, "amq.topic", key)
        return d.channel_op(who, op)
    return do


# ---------------------------------------------------------------------------------------
# STOMP 1.2 through stomp.py: every frame asks for a RECEIPT; a refusal is an ERROR frame,
# after which the server closes that connection.


class _Frames(stomp.ConnectionListener):
    def __init__(self):
        self.frames: queue.Queue = queue.Queue()

    def on_receipt(self, frame):
        self.frames.put(("RECEIPT", frame))

    def on_error(self, frame):
        self.frames.put(("ERROR", frame))


class Stomp:
    def __init__(self, s):
        self.s = s
        self.conns: dict[str, tuple[stomp.Connection12, _Frames]] = {}
        self.n = 0

    def conn(self, who: Who):
        if who.name in self.conns:
            return self.conns[who.name]
        conn = stomp.Connection12([("127.0.0.1", self.s.port("stomp"))], vhost="/", timeout=TIMEOUT)
        frames = _Frames()
        conn.set_listener("", frames)
        pw = doors.as_password(who.creds)
        try:
            conn.connect(*(pw or ()), wait=True)
        except stomp.exception.ConnectFailedException:
            kind, frame = frames.frames.get(timeout=TIMEOUT)
            assert kind == "ERROR" and frame.headers.get("message"), (kind, frame.headers)
            assert who.refusal == "unauthenticated", f"CONNECT refused for a valid identity: {frame.headers}"
            return None
        self.conns[who.name] = (conn, frames)
        return conn, frames

    def frame(self, who: Who, send, tries: int = 3) -> bool:
        try:
            if (got := self.conn(who)) is None:
                return False
            conn, frames = got
            self.n += 1
            rid = f"r{self.n}"
            send(conn, rid)
        except OSError:
            # stomp.py's receiver thread of a connection the server closed may close its
            # socket late, after the number was reused by this one (EBADF, on CONNECT or
            # on the frame): a client race, not the server's answer. A fresh connection
            # asks again.
            if tries <= 1:
                raise
            self.conns.pop(who.name, None)
            return self.frame(who, send, tries - 1)
        kind, frame = frames.frames.get(timeout=TIMEOUT)
        if kind == "RECEIPT":
            assert frame.headers.get("receipt-id") == rid, frame.headers
            return True
        body = frame.body.decode() if isinstance(frame.body, bytes) else str(frame.body)
        assert frame.headers.get("message") and body.startswith("forbidden"), \
            f"ERROR frame {frame.headers.get('message')!r}: {body!r}"
        del self.conns[who.name]  # the server closes the connection after an ERROR
        quietly_disconnect(conn)
        return False

    def close(self):
        for conn, _ in self.conns.values():
            quietly_disconnect(conn)


def quietly_disconnect(conn: stomp.Connection12):
    try:
        conn.disconnect()
    except (stomp.exception.NotConnectedException, OSError):
        pass  # the server closed it first (and stomp.py's receiver may have closed the socket)


def stomp_publish(root: str):
    def do(d: Stomp, who: Who) -> bool:
        return d.frame(who, lambda c, rid: c.send(f"/topic/{root}.{tag('stomp', who)}", who.name,
                                                  headers={"receipt": rid}))
    return do


def stomp_subscribe(key: str):
    def do(d: Stomp, who: Who) -> bool:
        return d.frame(who, lambda c, rid: c.subscribe(f"/topic/{key}", id=rid, headers={"receipt": rid}))
    return do


# ---------------------------------------------------------------------------------------
# The protocol table.

DOORS = {"rest": Http, "graphql": Http, "graphql-ws": GraphqlWs, "grpc": Grpc, "ws": Ws, "soap": Soap,
         "mqtt": Mqtt, "amqp": Amqp, "stomp": Stomp}
DO = {
    ("rest", "read"): rest_read,
    ("rest", "create"): rest_create,
    ("rest", "update"): rest_update,
    ("rest", "publish"): rest_publish("sensors"),
    ("rest", "publish-alerts"): rest_publish("alerts"),
    ("rest", "subscribe"): rest_subscribe("sensors/#"),
    ("rest", "subscribe-alerts"): rest_subscribe("alerts/#"),
    ("rest", "subscribe-wide"): rest_subscribe("#"),
    ("rest", "subscribe-sys"): rest_subscribe("$SYS/#"),
    ("rest", "list-webhooks"): rest_list_webhooks,
    ("rest", "create-webhook"): rest_create_webhook,
    ("rest", "create-collection"): rest_create_collection,

    ("graphql", "read"): graphql_read,
    ("graphql", "create"): graphql_create,
    ("graphql", "update"): graphql_update,
    ("graphql", "list-webhooks"): graphql_list_webhooks,
    ("graphql", "create-webhook"): graphql_create_webhook,

    ("graphql-ws", "subscribe"): graphql_ws_subscribe("sensors/#"),
    ("graphql-ws", "subscribe-alerts"): graphql_ws_subscribe("alerts/#"),
    ("graphql-ws", "subscribe-wide"): graphql_ws_subscribe("#"),
    ("graphql-ws", "subscribe-sys"): graphql_ws_subscribe("$SYS/#"),

    ("grpc", "read"): grpc_unary("polyport.v1.Records/Get", {"collection": "notes", "id": "seed"}),
    ("grpc", "create"): grpc_unary("polyport.v1.Records/Create", lambda who: {
        "collection": "notes", "id": tag("grpc", who), "data": {"title": tag("grpc", who)}}),
    ("grpc", "update"): grpc_unary("polyport.v1.Records/Update", lambda who: {
        "collection": "notes", "id": updated(tag("grpc", who)), "data": {"title": "updated"}}),
    ("grpc", "publish"): grpc_unary("polyport.v1.Topics/Publish", lambda who: {
        "topic": f"sensors/{tag('grpc', who)}", "payload": _payload(who)}),
    ("grpc", "publish-alerts"): grpc_unary("polyport.v1.Topics/Publish", lambda who: {
        "topic": f"alerts/{tag('grpc', who)}", "payload": _payload(who)}),
    ("grpc", "subscribe"): grpc_subscribe("sensors/#"),
    ("grpc", "subscribe-alerts"): grpc_subscribe("alerts/#"),
    ("grpc", "subscribe-wide"): grpc_subscribe("#"),
    ("grpc", "subscribe-sys"): grpc_subscribe("$SYS/#"),
    ("grpc", "list-webhooks"): grpc_unary("polyport.v1.Webhooks/ListEndpoints", {}),
    ("grpc", "create-webhook"): grpc_unary("polyport.v1.Webhooks/CreateEndpoint", lambda who: {
        "endpoint": hook_spec(tag("grpc", who))}),

    ("ws", "read"): ws_op(lambda t: {"op": "get", "collection": "notes", "record_id": "seed"}),
    ("ws", "create"): ws_op(lambda t: {"op": "create", "collection": "notes", "record": {"id": t, "title": t}}),
    ("ws", "update"): ws_op(lambda t: {"op": "update", "collection": "notes", "record_id": updated(t),
                                       "record": {"title": "updated"}}),
    ("ws", "publish"): ws_op(lambda t: {"op": "publish", "topic": f"sensors/{t}", "data": {"cell": t}}),
    ("ws", "publish-alerts"): ws_op(lambda t: {"op": "publish", "topic": f"alerts/{t}", "data": {"cell": t}}),
    ("ws", "subscribe"): ws_subscribe("sensors/#"),
    ("ws", "subscribe-alerts"): ws_subscribe("alerts/#"),
    ("ws", "subscribe-wide"): ws_subscribe("#"),
    ("ws", "subscribe-sys"): ws_subscribe("$SYS/#"),
    ("ws", "list-webhooks"): ws_op(lambda t: {"op": "webhook_list"}),
    ("ws", "create-webhook"): ws_op(lambda t: {"op": "webhook_create", "endpoint": hook_spec(t)}),

    ("soap", "read"): soap_read,
    ("soap", "create"): soap_create,
    ("soap", "update"): soap_update,
    ("soap", "publish"): soap_publish("sensors"),
    ("soap", "publish-alerts"): soap_publish("alerts"),

    ("mqtt", "publish"): mqtt_publish("sensors"),
    ("mqtt", "publish-alerts"): mqtt_publish("alerts"),
    ("mqtt", "subscribe"): mqtt_subscribe("sensors/#"),
    ("mqtt", "subscribe-alerts"): mqtt_subscribe("alerts/#"),
    ("mqtt", "subscribe-wide"): mqtt_subscribe("#"),
    ("mqtt", "subscribe-sys"): mqtt_subscribe("$SYS/#"),

    ("amqp", "publish"): amqp_publish("sensors"),
    ("amqp", "publish-alerts"): amqp_publish("alerts"),
    ("amqp", "subscribe"): amqp_subscribe("sensors.#"),
    ("amqp", "subscribe-alerts"): amqp_subscribe("alerts.#"),
    ("amqp", "subscribe-wide"): amqp_subscribe("#"),
    ("amqp", "subscribe-sys"): amqp_subscribe("$SYS.#"),

    ("stomp", "publish"): stomp_publish("sensors"),
    ("stomp", "publish-alerts"): stomp_publish("alerts"),
    ("stomp", "subscribe"): stomp_subscribe("sensors.#"),
    ("stomp", "subscribe-alerts"): stomp_subscribe("alerts.#"),
    ("stomp", "subscribe-wide"): stomp_subscribe("#"),
    ("stomp", "subscribe-sys"): stomp_subscribe("$SYS.#"),
}
assert {p for p, _ in DO} == set(DOORS) and {a for _, a in DO} == set(ACTIONS)


# ---------------------------------------------------------------------------------------
# The run.


def hs256(sub: str, **claims) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600, **claims}, SECRET, algorithm="HS256")


@pytest.fixture
def matrix(servers):
    """The server, with the notes collection and its seed record, an event on every
    filter the subscribe cells ask for, and every identity's credentials."""
    s = servers.start(CONFIG)
    with httpx.Client(base_url=s.url, timeout=TIMEOUT, trust_env=False, headers=doors.authorization(ROOT)) as root:
        assert root.post("/api/collections", json=NOTES).status_code == 201  # also an event on $SYS/audit/admin
        assert root.post("/api/collections/notes/records", json={"id": "seed", "title": "seed note"}).status_code == 201
        for p in {p for p, a in DO if a == "update"}:
            for n in IDENTITIES:
                r = root.post("/api/collections/notes/records",
                              json={"id": updated(tag(p, Who(n))), "title": "original"})
                assert r.status_code == 201, r.text
        for topic in ("sensors/setup", "alerts/setup"):
            assert root.post(f"/api/topics/{topic}", json={"setup": True}).status_code == 202

        def key(**spec) -> tuple[str, str]:
            r = root.post("/api/auth/keys", json=spec)
            assert r.status_code == 201, r.text
            return ("bearer", r.json()["key"])

        creds = {
            "nobody": None,
            "wrong-password": ("alice", "not-alices-password"),
            "alice": ("alice", "alice-pass"),
            "root": ROOT,
            "read-key": key(name="reader", scopes=["read"]),
            "sensor-key": key(name="sensor", scopes=["publish", "subscribe"]),
            "admin-read-key": key(name="narrowed", role="admin", scopes=["read"]),
            "jwt-dave": ("dave", hs256("dave")),
            "jwt-boss": ("bearer", hs256("boss", role="admin")),
        }
        assert root.get("/api/auth/me", headers=doors.authorization(creds["jwt-boss"])).json()["admin"] is True
    who = {n: Who(n, creds[n], "unauthenticated" if n == "wrong-password" else "forbidden") for n in IDENTITIES}
    return s, who


def run_protocol(s, protocol: str, who: dict[str, Who]) -> tuple[list[tuple[str, str, str, bool | str]], float]:
    """Every cell of one protocol, in order, on the connections of one door; each result
    is True/False or the text of the assertion or error that stopped the cell. Also how
    long it took."""
    results = []
    started = time.monotonic()
    door = DOORS[protocol](s)
    try:
        for ident in IDENTITIES:
            if (protocol, ident) in ABSENT:
                continue
            for action in ACTIONS:
                if (protocol, action) not in DO:
                    continue
                t0 = time.monotonic()
                try:
                    got: bool | str = DO[(protocol, action)](door, who[ident])
                except Exception as e:  # noqa: BLE001 (any failure is this cell's finding)
                    got = f"{type(e).__name__}: {e}"
                if time.monotonic() - t0 > 2:
                    print(f"slow cell: {protocol} {action} as {ident}: {time.monotonic() - t0:.1f}s")
                results.append((protocol, ident, action, got))
    finally:
        door.close()
    return results, time.monotonic() - started


def test_identity_action_protocol_matrix(matrix):
    s, who = matrix
    started = time.monotonic()
    watcher, rc = mqtt_connect(s, ROOT, "matrix-admin-watcher")
    assert rc == 0
    _, mid = watcher.subscribe("#", qos=1)
    assert watcher.wait(watcher.suback, mid) == [1]

    with ThreadPoolExecutor(max_workers=len(DOORS)) as pool:
        runs = {p: pool.submit(run_protocol, s, p, who) for p in DOORS}
        results = [cell for r in runs.values() for cell in r.result()[0]]
        took = {p: r.result()[1] for p, r in runs.items()}

    wrong = []
    for protocol, ident, action, got in results:
        want = EXPECT[(ident, action)]
        if isinstance(got, str):
            wrong.append(f"{protocol:10} {action:17} as {ident:14}: {got}")
        elif got != want:
            wrong.append(f"{protocol:10} {action:17} as {ident:14}: {'allowed' if got else 'refused'}, "
                         f"want {'allowed' if want else 'refused'}")

    # No trace of a refusal, and every acknowledged publish or write really happened.
    published = {f"{'alerts' if a == 'publish-alerts' else 'sensors'}/{tag(p, who[i])}": (p, i, a, g)
                 for p, i, a, g in results if a in ("publish", "publish-alerts")}
    want_seen = {t for t, (*_, g) in published.items() if g is True}
    seen: set[str] = set()
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and not want_seen <= seen:
        try:
            seen.add(watcher.messages.get(timeout=0.2))
        except queue.Empty:
            pass
    time.sleep(0.3)  # a refused publish that leaked would be no later than the last allowed one
    while not watcher.messages.empty():
        seen.add(watcher.messages.get())
    watcher.stop()
    for topic, (p, i, a, g) in published.items():
        if g is True and topic not in seen:
            wrong.append(f"{p:10} {a:17} as {i:14}: acknowledged, but the admin watching '#' never got {topic}")
        if g is not True and topic in seen:
            wrong.append(f"{p:10} {a:17} as {i:14}: refused, but {topic} reached the admin watching '#'")

    with httpx.Client(base_url=s.url, timeout=TIMEOUT, trust_env=False, headers=doors.authorization(ROOT)) as root:
        notes = root.get("/api/collections/notes/records", params={"limit": 1000}).json()["items"]
        records = {r["id"] for r in notes}
        changed = {r["id"] for r in notes if r["title"] == "updated"}
        hooks = {h.get("description") for h in root.get("/api/webhooks/endpoints").json()["items"]}
        collections = {c["name"] for c in root.get("/api/collections").json()["items"]}
    traces = {"create": (records, lambda p, w: tag(p, w), "record"),
              "create-webhook": (hooks, lambda p, w: tag(p, w), "webhook endpoint"),
              "create-collection": (collections, lambda p, w: collection_name(w), "collection"),
              "update": (changed, lambda p, w: updated(tag(p, w)), "change to record")}
    for p, i, a, g in results:
        if a not in traces:
            continue
        present, name, what = traces[a]
        there = name(p, who[i]) in present
        if g is True and not there:
            wrong.append(f"{p:10} {a:17} as {i:14}: acknowledged, but no {what} {name(p, who[i])!r}")
        if g is not True and there:
            wrong.append(f"{p:10} {a:17} as {i:14}: refused, but the {what} {name(p, who[i])!r} was written")

    elapsed = time.monotonic() - started
    print(f"\n{len(results)} cells ({len(IDENTITIES)} identities × {len(ACTIONS)} actions × "
          f"{len(DOORS)} protocols, where expressible) in {elapsed:.1f}s; by protocol: "
          + ", ".join(f"{p} {t:.1f}s" for p, t in took.items()))
    assert not wrong, f"{len(wrong)} of {len(results)} cells wrong:\n" + "\n".join(sorted(wrong))
