"""TLS on every listener: each face's TLS listener speaks its protocol to its usual
client over TLS (with h2 by ALPN on HTTPS and gRPC), a write through one reaches the
others, a client certificate from the client CA names the caller on every door, a
certificate swapped on disk is served after SIGHUP while open connections carry on, and
a client that botches its handshake troubles nobody else."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import paho.mqtt.client as mqtt
import pika
import pytest
import stomp
import websockets
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pki import Ca
from polyport_server import polyport_bin

WAIT = 10
GRPCURL = str(Path(sys.executable).parent / "grpcurl")
FACES = ("https", "grpcs", "mqtts", "amqps", "stomps")
USERS = """
[auth]
users = { root = { password = "root-pass", role = "admin" }, alice = "alice-pass" }
"""


def tls_args(*, only: tuple[str, ...] = FACES) -> list[str]:
    return [a for f in only for a in (f"--{f}", "127.0.0.1:0")]


def start(servers, ca: Ca, config: str = "", *extra: str, cn: str = "polyport.test"):
    pair = ca.issue("server", cn, server=True)
    cfg = f"""
[tls]
cert = "{pair.cert}"
key = "{pair.key}"
{config}
"""
    return servers.start(cfg, *tls_args(), *extra)


def context(ca: Ca, client: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    if client is not None:
        pair = ca.issue(client, client, server=False)
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
    return ctx


def served_subject(port: int, ca: Ca, alpn: list[str] | None = None) -> tuple[str, str | None]:
    """The common name of the certificate a listener serves, and the ALPN it chose."""
    ctx = context(ca)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            subject = dict(x[0] for x in tls.getpeercert()["subject"])
            return subject["commonName"], tls.selected_alpn_protocol()


def mqtts(s, ca: Ca, *, client: str | None = None, auth: tuple[str, str] | None = None,
          topic: str | None = None) -> tuple[mqtt.Client, queue.Queue, int]:
    got: queue.Queue = queue.Queue()
    acks: queue.Queue = queue.Queue()
    c = mqtt.Client(client_id=f"tls-{time.monotonic_ns()}", protocol=mqtt.MQTTv311)
    kw = {}
    if client is not None:
        pair = ca.issue(client, client, server=False)
        kw = {"certfile": str(pair.cert), "keyfile": str(pair.key)}
    c.tls_set(ca_certs=str(ca.path), **kw)
    if auth:
        c.username_pw_set(*auth)
    c.on_connect = lambda _c, _u, _f, rc: acks.put(rc)
    c.on_message = lambda _c, _u, m: got.put((m.topic, m.payload))
    c.connect("127.0.0.1", s.port("mqtts"), keepalive=30)
    c.loop_start()
    rc = acks.get(timeout=WAIT)
    if rc == 0 and topic:
        done: queue.Queue = queue.Queue()
        c.on_subscribe = lambda *a: done.put(True)
        c.subscribe(topic, qos=1)
        done.get(timeout=WAIT)
    return c, got, rc


def amqps(s, ca: Ca, credentials, client: str | None = None) -> pika.BlockingConnection:
    params = pika.ConnectionParameters(
        "127.0.0.1", s.port("amqps"), credentials=credentials, connection_attempts=1, socket_timeout=WAIT,
        ssl_options=pika.SSLOptions(context(ca, client), "127.0.0.1"))
    return pika.BlockingConnection(params)


class Listener(stomp.ConnectionListener):
    def __init__(self):
        self.messages: queue.Queue = queue.Queue()
        self.errors: queue.Queue = queue.Queue()

    def on_message(self, frame):
        self.messages.put((frame.headers.get("destination"), frame.body))

    def on_error(self, frame):
        self.errors.put((frame.headers.get("message"), frame.body))


def stomps(s, ca: Ca, client: str | None = None) -> tuple[stomp.Connection12, Listener]:
    port = s.port("stomps")
    conn = stomp.Connection12([("127.0.0.1", port)], vhost="/", timeout=WAIT)
    kw = {}
    if client is not None:
        pair = ca.issue(client, client, server=False)
        kw = {"cert_file": str(pair.cert), "key_file": str(pair.key)}
    conn.set_ssl(for_hosts=[("127.0.0.1", port)], ca_certs=str(ca.path), **kw)
    seen = Listener()
    conn.set_listener("", seen)
    return conn, seen


def grpc_health(s, ca: Ca) -> str:
    creds = grpc.ssl_channel_credentials(root_certificates=ca.path.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{s.port('grpcs')}", creds) as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=WAIT)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)


def test_every_face_speaks_its_protocol_over_tls_and_shares_one_model(servers, tmp_path):
    ca = Ca(tmp_path / "pki")
    s = start(servers, ca, "", "--demo", "blog")
    for face in FACES:
        assert served_subject(s.port(face), ca)[0] == "polyport.test", face
    # HTTPS and gRPC negotiate h2 by ALPN; HTTPS also speaks HTTP/1.1.
    assert served_subject(s.port("https"), ca, ["h2", "http/1.1"])[1] == "h2"
    assert served_subject(s.port("https"), ca, ["http/1.1"])[1] == "http/1.1"
    assert served_subject(s.port("grpcs"), ca, ["h2"])[1] == "h2"

    base = f"https://127.0.0.1:{s.port('https')}"
    with httpx.Client(base_url=base, verify=context(ca), timeout=WAIT) as http:
        r = http.get("/api/collections/users/records/123")
        assert r.status_code == 200 and r.json()["username"] == "john_doe", r.text
        assert r.http_version == "HTTP/1.1"

    assert grpc_health(s, ca) == "SERVING"
    out = subprocess.run([GRPCURL, "-cacert", str(ca.path), "-d", json.dumps({"collection": "users", "id": "123"}),
                          f"127.0.0.1:{s.port('grpcs')}", "polyport.v1.Records/Get"],
                         capture_output=True, text=True, timeout=WAIT * 3)
    assert out.returncode == 0 and "john_doe" in out.stdout, out.stderr

    # One publish over WSS reaches MQTTS, AMQPS and STOMP-over-TLS subscribers.
    m, mqtt_got, rc = mqtts(s, ca, topic="sensors/#")
    assert rc == 0
    amqp = amqps(s, ca, pika.PlainCredentials("guest", "guest"))
    ch = amqp.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", "sensors.#")
    st, seen = stomps(s, ca)
    st.connect(wait=True)
    st.subscribe("/topic/sensors.#", id="s1", ack="auto", headers={"receipt": "sub"})
    time.sleep(0.3)

    async def publish_over_wss() -> dict:
        async with websockets.connect(f"wss://127.0.0.1:{s.port('https')}/ws", ssl=context(ca)) as ws:
            await ws.send(json.dumps({"op": "publish", "id": "p", "topic": "sensors/hall", "data": {"t": 20}}))
            return json.loads(await asyncio.wait_for(ws.recv(), WAIT))

    reply = asyncio.run(publish_over_wss())
    assert reply["type"] == "ok", reply
    topic, body = mqtt_got.get(timeout=WAIT)
    assert topic == "sensors/hall" and json.loads(body) == {"t": 20}
    deadline = time.monotonic() + WAIT
    frame = None
    while frame is None and time.monotonic() < deadline:
        _, _, frame = ch.basic_get(q, auto_ack=True)
        if frame is None:
            time.sleep(0.05)
    assert frame is not None and json.loads(frame) == {"t": 20}
    dest, sbody = seen.messages.get(timeout=WAIT)
    assert dest == "/topic/sensors.hall" and json.loads(sbody) == {"t": 20}
    st.disconnect()
    amqp.close()
    m.loop_stop()


def test_a_client_certificate_names_the_caller_on_every_door(servers, tmp_path):
    ca = Ca(tmp_path / "pki")
    s = start(servers, ca, f'client_ca = "{ca.path}"\nclient_auth = "optional"\n{USERS}')
    base = f"https://127.0.0.1:{s.port('https')}"
    # Without a certificate or credentials: refused (anonymous callers are not let in).
    with httpx.Client(base_url=base, verify=context(ca), timeout=WAIT) as http:
        assert http.get("/api/auth/me").status_code == 401
    with httpx.Client(base_url=base, verify=context(ca, "alice"), timeout=WAIT) as http:
        me = http.get("/api/auth/me").json()
        assert (me["id"], me["role"], me["via"]["kind"]) == ("alice", "user", "certificate"), me
        # A certificate names a user but does not make one an admin.
        assert http.get("/api/auth/users").status_code == 403
    with httpx.Client(base_url=base, verify=context(ca, "root"), timeout=WAIT) as http:
        assert http.get("/api/auth/users").status_code == 200
        # Credentials sent win over the certificate.
        me = http.get("/api/auth/me", auth=("alice", "alice-pass")).json()
        assert (me["id"], me["via"]["kind"]) == ("alice", "password"), me

        # SOAP with neither a WS-Security token nor HTTP credentials: the certificate.
        soap = """<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:pp="urn:polyport:soap">
  <env:Body><pp:Publish><pp:topic>certs/soap</pp:topic><pp:data>hi</pp:data></pp:Publish></env:Body>
</env:Envelope>"""
        ct = {"content-type": "application/soap+xml; charset=utf-8"}
        r = http.post("/soap", content=soap, headers=ct)
        assert r.status_code == 200 and "PublishResponse" in r.text, r.text
    with httpx.Client(base_url=base, verify=context(ca), timeout=WAIT) as http:
        r = http.post("/soap", content=soap, headers=ct)
        assert r.status_code == 400 and "FailedAuthentication" in r.text, r.text

    c, _, rc = mqtts(s, ca)
    assert rc == 5, "MQTT without a certificate or credentials: not authorized"
    c.loop_stop()
    c, _, rc = mqtts(s, ca, client="carol")
    assert rc == 0, "MQTT with a certificate and no username"
    c.disconnect()
    c.loop_stop()

    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqps(s, ca, pika.credentials.ExternalCredentials())
    conn = amqps(s, ca, pika.credentials.ExternalCredentials(), client="carol")
    assert conn.is_open
    conn.close()

    st, seen = stomps(s, ca)
    with pytest.raises(stomp.exception.ConnectFailedException):
        st.connect(wait=True)
    message, body = seen.errors.get(timeout=WAIT)
    assert message == "Bad CONNECT" and "Access refused" in body, (message, body)
    st, _ = stomps(s, ca, client="carol")
    st.connect(wait=True)
    assert st.is_connected()
    st.disconnect()


def test_a_required_client_certificate_is_checked_in_the_handshake(servers, tmp_path):
    ca = Ca(tmp_path / "pki")
    s = start(servers, ca, f'client_ca = "{ca.path}"')
    base = f"https://127.0.0.1:{s.port('https')}"
    with pytest.raises(httpx.HTTPError):
        with httpx.Client(base_url=base, verify=context(ca), timeout=WAIT) as http:
            http.get("/api/auth/me")
    # A certificate from another CA is no better than none.
    other = Ca(tmp_path / "other")
    outsider = context(ca)
    pair = other.issue("mallory", "mallory", server=False)
    outsider.load_cert_chain(str(pair.cert), str(pair.key))
    with pytest.raises(httpx.HTTPError):
        with httpx.Client(base_url=base, verify=outsider, timeout=WAIT) as http:
            http.get("/api/auth/me")
    with httpx.Client(base_url=base, verify=context(ca, "dave"), timeout=WAIT) as http:
        # No identity source but the CA: an open server, so the name comes with every right.
        assert http.get("/api/auth/me").json()["id"] == "dave"
    c, _, rc = mqtts(s, ca, client="dave")
    assert rc == 0
    c.disconnect()
    c.loop_stop()
    # The plain-text listeners are unaffected.
    assert httpx.get(f"{s.url}/api/auth/me", timeout=WAIT).status_code == 200


def wait_for_log(s, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + WAIT
    while s.log().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{s.log()[-3000:]}"
        time.sleep(0.05)


@pytest.mark.skipif(os.environ.get("POLYPORT_TEST_STORE") == "cluster2", reason="two nodes: the test signals one process, whose faces but HTTP are on the other")
def test_sighup_serves_a_new_certificate_without_dropping_connections(servers, tmp_path):
    ca = Ca(tmp_path / "pki")
    s = start(servers, ca, cn="first")
    m, got, rc = mqtts(s, ca, topic="reload/#")
    assert rc == 0
    ca.issue("server", "second", server=True)
    s.proc.send_signal(signal.SIGHUP)
    wait_for_log(s, "TLS certificate reloaded: CN=second", len(FACES))
    for face in FACES:
        assert served_subject(s.port(face), ca)[0] == "second", face
    # The connection opened under the first certificate is still there.
    with httpx.Client(base_url=f"https://127.0.0.1:{s.port('https')}", verify=context(ca), timeout=WAIT) as http:
        assert http.post("/api/topics/reload/a", content=b"1", headers={"content-type": "text/plain"}).status_code == 202
    assert got.get(timeout=WAIT) == ("reload/a", b"1")

    # A broken key: the reload fails loudly, and the second certificate stays.
    (tmp_path / "pki" / "server.key").write_text("not a key")
    s.proc.send_signal(signal.SIGHUP)
    wait_for_log(s, "TLS reload failed, still serving the previous certificate", len(FACES))
    assert served_subject(s.port("mqtts"), ca)[0] == "second"
    m.publish("reload/b", b"2", qos=1).wait_for_publish(timeout=WAIT)
    assert got.get(timeout=WAIT) == ("reload/b", b"2")
    m.disconnect()
    m.loop_stop()


@pytest.mark.skipif(os.environ.get("POLYPORT_TEST_STORE") == "cluster2", reason="two nodes: the test reads one process's /metrics, whose TLS faces are on the other")
def test_a_botched_or_stalled_handshake_troubles_nobody_else(servers, tmp_path):
    ca = Ca(tmp_path / "pki")
    s = start(servers, ca, "[limits]\ntls_handshake_timeout_secs = 1")
    port = s.port("mqtts")
    # Plain MQTT to the TLS port: the handshake fails and the connection is closed.
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        raw.sendall(bytes([0x10, 0x10, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 4]) + b"abcd")
        raw.settimeout(WAIT)
        answer = b""
        while chunk := raw.recv(1024):  # a TLS alert at most, then the close
            answer += chunk
        assert not answer or answer[0] == 0x15, f"not a TLS alert: {answer!r}"
    stalled = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    started = time.monotonic()
    c, got, rc = mqtts(s, ca, topic="fine/#")
    assert rc == 0, "a TLS client beside a stalled one connects"
    c.publish("fine/x", b"ok", qos=1).wait_for_publish(timeout=WAIT)
    assert got.get(timeout=WAIT) == ("fine/x", b"ok")
    stalled.settimeout(WAIT)
    assert stalled.recv(1024) == b"", "the stalled handshake is closed"
    assert time.monotonic() - started < 5
    stalled.close()
    metrics = httpx.get(f"{s.url}/metrics", timeout=WAIT).text
    failures = [line for line in metrics.splitlines()
                if line.startswith("polyport_tls_handshake_failures_total") and 'listener="MQTT"' in line]
    assert failures and float(failures[0].rsplit(" ", 1)[1]) >= 2, metrics
    c.disconnect()
    c.loop_stop()


def test_tls_only_serves_no_plain_text_listener(servers, tmp_path):
    ca = Ca(tmp_path / "pki")
    s = start(servers, ca, "only = true")
    listeners = json.loads((s.data_dir / "listeners.json").read_text())
    assert set(listeners) == set(FACES), listeners
    with httpx.Client(base_url=f"https://{s.http}", verify=context(ca), timeout=WAIT) as http:
        assert http.get("/api/auth/me").status_code == 200


def test_bad_certificate_files_stop_start_up_with_the_file_named(tmp_path):
    ca = Ca(tmp_path / "pki")
    pair = ca.issue("server", "x", server=True)
    cases = [
        (tmp_path / "missing.crt", pair.key, "missing.crt"),
        (pair.key, pair.key, "holds no PEM certificate"),
        (pair.cert, ca.issue("other", "y", server=True).key, "do not make a certificate"),
    ]
    for cert, key, want in cases:
        out = subprocess.run(
            [str(polyport_bin()), "serve", "--data-dir", str(tmp_path / "data"), "--http", "127.0.0.1:0",
             "--tls-cert", str(cert), "--tls-key", str(key), *tls_args()],
            capture_output=True, text=True, timeout=30)
        assert out.returncode != 0 and want in out.stderr, out.stderr
