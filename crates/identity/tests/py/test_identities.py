"""One identity on every door. Users (from polyport.toml and stored), API keys, JWTs
minted by PyJWT and sign-in tokens are checked alike by every protocol; administration
is for admins on every protocol; keys and users are managed over REST and the CLI and
survive a restart; refused callers write nothing."""

from __future__ import annotations

import base64
import os
import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import doors
from polyport_server import polyport_bin, store_env

SECRET = "0123456789abcdef0123456789abcdef-for-tests"
ISSUER = "https://idp.test"
CONFIG = f"""
[auth]
users = {{ alice = "alice-pass", root = {{ password = "root-pass", role = "admin" }} }}
[auth.jwt]
secret = "{SECRET}"
issuer = "{ISSUER}"
"""
ROOT = ("root", "root-pass")
ALICE = ("alice", "alice-pass")


def hs256(sub: str, **claims) -> str:
    body = {"sub": sub, "iss": ISSUER, "exp": int(time.time()) + 300, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


def http(s, creds=ROOT) -> httpx.Client:
    return httpx.Client(base_url=s.url, timeout=10, headers=doors.authorization(creds))


def cli(s, *args: str, stdin: str | None = None, creds=ROOT) -> subprocess.CompletedProcess:
    user, password = creds
    return subprocess.run([str(polyport_bin()), *args, "--server", s.url, "--user", user, "--password", password],
                          input=stdin, capture_output=True, text=True, timeout=30)


def mint_key(s, **spec) -> str:
    with http(s) as c:
        r = c.post("/api/auth/keys", json={"name": "test", **spec})
    assert r.status_code == 201, r.text
    return r.json()["key"]


@pytest.fixture
def locked(servers):
    return servers.start(CONFIG, "--demo", "blog")


DOORS = {
    "REST": doors.rest,
    "/ws": doors.ws,
    "GraphQL over HTTP": doors.graphql_http,
    "GraphQL over WebSocket": doors.graphql_ws,
    "gRPC": doors.grpc,
    "MQTT": doors.mqtt_,
    "AMQP": doors.amqp,
    "STOMP": doors.stomp_,
}


def test_one_identity_on_every_door(locked):
    key = mint_key(locked)
    token = hs256("dave")
    let_in = {
        "config user's password": ALICE,
        "admin's password": ROOT,
        "API key as a password": ("anyone", key),
        "API key as a bearer token": ("bearer", key),
        "JWT as a password": ("dave", token),
        "JWT as a bearer token": ("bearer", token),
    }
    refused = {
        "wrong password": ("alice", "alice-pas"),
        "unknown user": ("mallory", "alice-pass"),
        "forged API key": ("bearer", key[:-2] + ("AA" if not key.endswith("AA") else "BB")),
        "JWT signed with another key": ("bearer", jwt.encode({"sub": "x", "iss": ISSUER, "exp": int(time.time()) + 60},
                                                             "another secret of at least thirty-two bytes", algorithm="HS256")),
        "no credentials": None,
    }
    failures = []
    for door_name, door in DOORS.items():
        for what, creds in let_in.items():
            if not door(locked, creds):
                failures.append(f"{door_name} refused {what}")
        for what, creds in refused.items():
            if door(locked, creds):
                failures.append(f"{door_name} let in {what}")
    for what, creds in {**let_in, **refused}.items():
        if creds is None or creds[0] == "bearer":
            continue  # WS-Security carries a username and a password
        if doors.soap(locked, creds, wsdl_auth=ROOT) != (what in let_in):
            failures.append(f"SOAP got {what} wrong")
    assert not failures, failures
    with http(locked) as c:
        titles = [p["title"] for p in c.get("/api/collections/posts/records").json()["items"]]
    assert len(titles) == 2, "no refused caller wrote anything"


def test_administration_is_for_admins_on_every_protocol(locked):
    alice = http(locked, ALICE)
    r = alice.post("/api/collections", json={"name": "secrets"})
    assert r.status_code == 403 and r.json()["code"] == "forbidden", r.text
    for path in ("/api/webhooks/endpoints", "/api/auth/users", "/api/auth/keys"):
        r = alice.get(path)
        assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json"), (path, r.text)
    assert alice.get("/api/auth/me").json() == {"id": "alice", "role": "user", "via": {"kind": "password"},
                                                "admin": False, "scopes": None, "claims": {}}
    r = alice.post("/graphql", json={"query": "{ webhookEndpoints { id } }"})
    assert r.json()["errors"][0]["extensions"]["code"] == "forbidden", r.text
    out = subprocess.run([doors.GRPCURL, "-plaintext", "-H", f"authorization: {doors.authorization(ALICE)['Authorization']}",
                          "-d", "{}", f"127.0.0.1:{locked.port('grpc')}", "polyport.v1.Webhooks/ListEndpoints"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "PermissionDenied" in out.stderr, out.stderr

    # $SYS is for admins: alice's SUBACK refuses it, root's grants it.
    for creds, granted in ((ALICE, [128]), (ROOT, [0])):
        subacks: list = []
        c = mqtt.Client(client_id="", protocol=mqtt.MQTTv311)
        c.username_pw_set(*creds)
        done = threading.Event()
        c.on_subscribe = lambda cl, u, mid, g: (subacks.extend(g), done.set())
        c.connect("127.0.0.1", locked.port("mqtt"))
        c.loop_start()
        c.subscribe("$SYS/#", qos=0)
        assert done.wait(10), "no SUBACK"
        c.disconnect()
        c.loop_stop()
        assert subacks == granted, (creds[0], subacks)

    root = http(locked)
    assert "secrets" not in [c["name"] for c in root.get("/api/collections").json()["items"]], \
        "the refused create wrote nothing"
    assert root.post("/api/collections", json={"name": "secrets"}).status_code == 201
    names = {u["name"]: (u["role"], u["source"]) for u in root.get("/api/auth/users").json()["items"]}
    assert names == {"alice": ("user", "config"), "root": ("admin", "config")}
    # A JWT whose role claim names an admin role administers too.
    boss = http(locked, ("bearer", hs256("boss", role="admin")))
    assert boss.post("/api/collections", json={"name": "boss_made"}).status_code == 201
    assert boss.get("/api/auth/me").json()["claims"]["role"] == "admin"


def at_once(check) -> bool:
    """`check()`; on two nodes (POLYPORT_TEST_STORE=cluster2) the node the check talks to
    takes an identity change made through the other up within milliseconds, so it is
    given a second."""
    if os.environ.get("POLYPORT_TEST_STORE") != "cluster2":
        return check()
    deadline = time.monotonic() + 1.0
    while not (ok := check()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return ok


def test_keys_and_users_through_the_cli_scopes_revocation_and_restart(servers, tmp_path):
    s = servers.start(CONFIG, "--demo", "blog", data_dir=tmp_path / "data")
    made = cli(s, "keys", "create", "--name", "sensor", "--scope", "publish")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("ppk_"), made.stdout
    listed = cli(s, "keys", "list")
    assert "sensor" in listed.stdout and key not in listed.stdout, "a key's secret is never shown again"
    scoped = http(s, ("bearer", key))
    assert scoped.post("/api/topics/sensors/t1", json={"c": 21}).status_code in (200, 201, 202)
    r = scoped.get("/api/collections/posts/records")
    assert r.status_code == 403 and "scopes" in r.json()["detail"], r.text
    assert at_once(lambda: doors.mqtt_(s, ("sensor", key)))

    added = cli(s, "users", "add", "carol", "--password-stdin", stdin="carol-pass-1\n")
    assert added.returncode == 0, added.stderr
    assert at_once(lambda: doors.amqp(s, ("carol", "carol-pass-1"))) and doors.stomp_(s, ("carol", "carol-pass-1"))
    dup = cli(s, "users", "add", "carol", "--password-stdin", stdin="other-pass-1\n")
    assert dup.returncode != 0 and "409" in dup.stderr, "a taken name is a conflict"
    assert doors.amqp(s, ("carol", "carol-pass-1")), "and the existing user is untouched"
    ghost = cli(s, "users", "set", "nobody", "--password-stdin", stdin="ghost-pass-1\n")
    assert ghost.returncode != 0 and "404" in ghost.stderr
    too_short = cli(s, "users", "add", "dan", "--password-stdin", stdin="short\n")
    assert too_short.returncode != 0 and "at least 8" in too_short.stderr
    by_user = cli(s, "users", "list", creds=ALICE)
    assert by_user.returncode != 0 and "403" in by_user.stderr, "only admins list users"

    # Everything stored survives a restart.
    s.stop()
    s = servers.start(CONFIG, data_dir=tmp_path / "data")
    assert doors.amqp(s, ("carol", "carol-pass-1"))
    assert http(s, ("bearer", key)).post("/api/topics/sensors/t2", json={}).status_code in (200, 201, 202)
    assert "carol" in cli(s, "users", "list").stdout

    changed = cli(s, "users", "set", "carol", "--password-stdin", stdin="carol-pass-2\n")
    assert changed.returncode == 0, changed.stderr
    assert at_once(lambda: not doors.mqtt_(s, ("carol", "carol-pass-1"))), "the old password stops working at once"
    assert at_once(lambda: doors.mqtt_(s, ("carol", "carol-pass-2")))
    assert cli(s, "users", "rm", "carol").returncode == 0
    assert not doors.rest(s, ("carol", "carol-pass-2"))

    key_id = key.split("_")[1]
    assert cli(s, "keys", "revoke", key_id).returncode == 0
    assert at_once(lambda: not doors.mqtt_(s, ("sensor", key))) and not doors.rest(s, ("bearer", key))

    short = mint_key(s, expires_in=1)
    assert doors.rest(s, ("bearer", short))
    time.sleep(2.2)
    r = httpx.get(f"{s.url}/api/collections", headers={"Authorization": f"Bearer {short}"})
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_an_admin_from_the_environment_and_safe_defaults(servers, tmp_path):
    data = tmp_path / "data"
    s = servers.start(None, "--demo", "blog", data_dir=data, env={"POLYPORT_ADMIN_PASSWORD": "first-admin-pw"})
    assert httpx.get(f"{s.url}/api/collections").status_code == 401, "once an identity exists, anonymous is refused"
    with http(s, ("admin", "first-admin-pw")) as c:
        assert c.get("/api/auth/me").json()["role"] == "admin"
    cli_env = {**os.environ, **store_env(data)}
    busy = subprocess.run([str(polyport_bin()), "admin", "create", "boss", "--password-stdin", "--data-dir", str(data)],
                          input="boss-password\n", capture_output=True, text=True, timeout=30, env=cli_env)
    assert busy.returncode != 0 and "polyport users add" in busy.stderr, busy.stderr
    s.stop()
    made = subprocess.run([str(polyport_bin()), "admin", "create", "boss", "--password-stdin", "--data-dir", str(data)],
                          input="boss-password\n", capture_output=True, text=True, timeout=60, env=cli_env)
    assert made.returncode == 0, made.stderr
    hashed = subprocess.run([str(polyport_bin()), "users", "hash"], input="hashed-pass\n",
                            capture_output=True, text=True, timeout=30)
    assert hashed.stdout.startswith("$argon2id$"), hashed.stdout
    config = f'[auth]\nusers = {{ hugo = {{ password_hash = "{hashed.stdout.strip()}" }} }}\n'
    s = servers.start(config, data_dir=data)
    assert doors.rest(s, ("boss", "boss-password")) and doors.rest(s, ("hugo", "hashed-pass"))
    assert not doors.rest(s, ("hugo", "hashed-pas"))


class _Jwks(BaseHTTPRequestHandler):
    body = b"{}"

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_jwts_from_a_jwks_url_and_a_pem_key_with_their_checks(servers, tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwk.update({"kid": "k1", "alg": "RS256", "use": "sig"})
    _Jwks.body = json.dumps({"keys": [jwk]}).encode()
    idp = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    threading.Thread(target=idp.serve_forever, daemon=True).start()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "es256.pem"
    pem.write_bytes(ec_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    config = f"""
[auth.jwt]
jwks_url = "http://127.0.0.1:{idp.server_port}/jwks.json"
public_key_files = ["{pem}"]
issuer = "{ISSUER}"
audience = "polyport"
"""
    try:
        s = servers.start(config, "--demo", "blog")
        assert httpx.get(f"{s.url}/readyz").status_code == 200, "the JWKS was fetched before serving"
        now = int(time.time())
        base = {"iss": ISSUER, "aud": "polyport", "exp": now + 120}
        rs = jwt.encode({**base, "sub": "rita"}, rsa_key, algorithm="RS256", headers={"kid": "k1"})
        es = jwt.encode({**base, "sub": "eve"}, ec_key, algorithm="ES256")
        assert doors.rest(s, ("bearer", rs)) and doors.mqtt_(s, ("rita", rs)) and doors.grpc(s, ("bearer", es))
        assert httpx.get(f"{s.url}/api/auth/me", headers={"Authorization": f"Bearer {es}"}).json()["id"] == "eve"
        bad = {
            "expired": jwt.encode({**base, "sub": "x", "exp": now - 600}, rsa_key, algorithm="RS256", headers={"kid": "k1"}),
            "wrong audience": jwt.encode({**base, "sub": "x", "aud": "other"}, ec_key, algorithm="ES256"),
            "wrong issuer": jwt.encode({**base, "sub": "x", "iss": "https://evil"}, ec_key, algorithm="ES256"),
            "not valid yet": jwt.encode({**base, "sub": "x", "nbf": now + 600}, ec_key, algorithm="ES256"),
            "unsigned": jwt.encode({**base, "sub": "x"}, None, algorithm="none"),
            # The RSA public key used as an HMAC secret: the classic confusion attack.
            "HS256 with the public key": _hs256_with(rsa_key, {**base, "sub": "x"}),
        }
        for what, token in bad.items():
            r = httpx.get(f"{s.url}/api/collections", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, (what, r.text)
        r = httpx.get(f"{s.url}/api/collections", headers={"Authorization": f"Bearer {bad['expired']}"})
        assert "expired" in r.json()["detail"]
    finally:
        idp.shutdown()


def test_a_jwks_url_not_fetched_yet_keeps_the_server_not_ready(servers):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: the fetch is refused at once
    port = dead.getsockname()[1]
    try:
        s = servers.start(f'[auth.jwt]\njwks_url = "http://127.0.0.1:{port}/jwks.json"\njwks_refresh_secs = 10\n')
        r = httpx.get(f"{s.url}/readyz")
        assert r.status_code == 503 and "jwks_url" in r.json()["reason"], r.text
        assert httpx.get(f"{s.url}/healthz").status_code == 200, "alive, only not ready"
        assert "cannot fetch the JWKS" in s.log()
    finally:
        dead.close()


def _hs256_with(rsa_key, claims) -> str:
    import hashlib
    import hmac

    pub = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")  # noqa: E731
    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(claims).encode())
    return (signing + b"." + b64(hmac.new(pub, signing, hashlib.sha256).digest())).decode()
