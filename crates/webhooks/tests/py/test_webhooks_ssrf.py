"""The SSRF guard as an API user meets it: internal targets are refused at registration
with a 422 that names the field and the address.

The server here runs with public addresses ALLOWED and no allowlist — the production
default — and is only ever offered internal targets: no public URL is registered, and no
event is published, so nothing is delivered anywhere.
"""

from __future__ import annotations

import pytest
from webhook_receivers import Api, closed_port

PORT = closed_port()

# (url, what the refusal must name)
INTERNAL = [
    ("http://localhost:{port}/hook", "localhost"),  # a host name resolving to 127.0.0.1
    ("http://127.0.0.1:{port}/hook", "127.0.0.1"),
    ("http://127.1/hook", "127.0.0.1"),  # shorthand, decimal and hex spellings of loopback
    ("http://2130706433/hook", "127.0.0.1"),
    ("http://0x7f000001/hook", "127.0.0.1"),
    ("http://0.0.0.0:{port}/hook", "0.0.0.0"),
    ("http://10.0.0.1/hook", "10.0.0.1"),
    ("http://172.16.0.1/hook", "172.16.0.1"),
    ("http://192.168.1.1/hook", "192.168.1.1"),
    ("http://100.64.0.1/hook", "100.64.0.1"),  # CGNAT
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),  # cloud metadata
    ("http://[::1]:{port}/hook", "::1"),
    ("http://[::ffff:127.0.0.1]/hook", "127.0.0.1"),  # IPv4-mapped
    ("http://[::ffff:169.254.169.254]/hook", "169.254.169.254"),
    ("http://[fd00::1]/hook", "fd00::1"),  # unique local
    ("http://[fe80::1]/hook", "fe80::1"),  # link local
]


@pytest.fixture
def open_server(servers):
    """Public addresses allowed, no allowlist: internal ranges are all refused."""
    s = servers.start(env={"POLYPORT_WEBHOOKS_ALLOW_PUBLIC": "true", "POLYPORT_WEBHOOKS_ALLOW_NETWORKS": ""})
    api = Api(s.url)
    yield api
    # Whatever happened, nothing may stay registered on this server.
    leftovers = api.endpoints()
    for ep in leftovers:
        api.c.delete(f"/api/webhooks/endpoints/{ep['id']}")
    api.close()
    assert leftovers == [], f"internal URLs were accepted: {[e['url'] for e in leftovers]}"


def test_internal_targets_are_refused_at_registration(open_server):
    api = open_server
    accepted = []
    for template, named in INTERNAL:
        url = template.format(port=PORT)
        # Disabled and filtered to a topic nobody publishes: even a wrongly accepted URL
        # would never be called.
        r = api.c.post("/api/webhooks/endpoints", json={"url": url, "enabled": False, "topics": ["ssrf/never"]})
        if r.status_code != 422:
            accepted.append((url, r.status_code, r.text))
            if r.status_code == 201:
                api.c.delete(f"/api/webhooks/endpoints/{r.json()['id']}")
            continue
        p = r.json()
        assert r.headers["content-type"].startswith("application/problem+json")
        assert p["code"] == "validation_failed", p
        [err] = p["errors"]
        assert err["field"] == "url", p
        assert named in err["message"] and "refused" in err["message"], (url, err["message"])
    assert not accepted, f"internal URLs not refused with 422: {accepted}"
    assert api.endpoints() == []


def test_non_http_schemes_are_refused(open_server):
    for url in ["file:///etc/passwd", "gopher://127.0.0.1:70/", "ftp://10.0.0.1/x"]:
        r = open_server.c.post("/api/webhooks/endpoints", json={"url": url, "enabled": False})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "url", (url, r.text)


def test_an_allowed_endpoint_cannot_be_moved_to_an_internal_address(api, receivers):
    # This server allows 127.0.0.0/8 only (the test default).
    rx = receivers()
    ep = api.create_endpoint(rx.url, enabled=False, topics=["ssrf/never"])
    for url in ["http://10.0.0.1/hook", "http://169.254.169.254/latest/meta-data/", "http://[::1]/hook"]:
        r = api.c.patch(f"/api/webhooks/endpoints/{ep['id']}", json={"url": url})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "url", (url, r.text)
    assert api.endpoint(ep["id"])["url"] == rx.url
    assert rx.snapshot() == []
