"""zeep loads the generated WSDL and calls every operation on the demo blog, over the
SOAP 1.1 and the SOAP 1.2 binding, in seed 003's `Client(wsdl=…).service.X(…)` style."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import zeep
from lxml import etree
from zeep.wsse.username import UsernameToken

from soap_clients import TNS, zeep_service


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_zeep_calls_every_operation(blog, version):
    svc = zeep_service(blog, version)

    user = svc.GetUser(id="123")
    assert (user.id, user.username, user.version) == ("123", "john_doe", 1)

    post = svc.CreatePost(title="From zeep", author="123", tags=["soap", "xml"], body="<b>&</b>")
    assert (post.title, post.author, post.tags, post.body, post.version) == ("From zeep", "123", ["soap", "xml"], "<b>&</b>", 1)
    assert post.created_at.tzinfo is not None  # typed as xsd:dateTime, so zeep parses it

    got = svc.GetPost(id=post.id)
    assert (got.id, got.title, got.tags) == (post.id, "From zeep", ["soap", "xml"])

    # List: the filter language, sort, limit, count and cursor paging.
    page = svc.ListPosts(filter='author = "123"', sort="-created_at", limit=2, count=True)
    assert page.total == 3 and [r.id for r in page.records][0] == post.id
    assert len(page.records) == 2 and page.next_cursor
    rest = svc.ListPosts(filter='author = "123"', sort="-created_at", limit=2, cursor=page.next_cursor)
    assert [r.id for r in rest.records] == ["1"] and rest.next_cursor is None
    assert [r.title for r in svc.ListPosts(filter='title ~ "zeep"').records] == ["From zeep"]

    updated = svc.UpdatePost(id=post.id, expected_version=1, body="edited")
    assert (updated.version, updated.body, updated.title) == (2, "edited", "From zeep")
    with pytest.raises(zeep.exceptions.Fault) as stale:
        svc.UpdatePost(id=post.id, expected_version=1, body="lost update")
    assert "version mismatch" in stale.value.message
    assert svc.GetPost(id=post.id).body == "edited", "a refused update writes nothing"

    deleted = svc.DeletePost(id=post.id, expected_version=2)
    assert (deleted.id, deleted.version) == (post.id, 2)
    with pytest.raises(zeep.exceptions.Fault) as gone:
        svc.GetPost(id=post.id)
    assert "does not exist" in gone.value.message

    sent = svc.Publish(topic="sensors/temperature", data="21.5", content_type="text/plain")
    assert sent.topic == "sensors/temperature" and sent.sequence > 0 and sent.id


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_faults_name_their_cause_in_each_version(blog, version):
    svc = zeep_service(blog, version)
    cases = {
        "unique_violation": lambda: svc.CreateUser(username="john_doe"),
        "record_not_found": lambda: svc.GetUser(id="nobody"),
        "validation_failed": lambda: svc.CreatePost(title="no such author", author="999"),
        "invalid_filter": lambda: svc.ListPosts(filter="title ==="),
    }
    for code, call in cases.items():
        with pytest.raises(zeep.exceptions.Fault) as f:
            call()
        detail = f.value.detail
        got = detail.find(f"{{{TNS}}}fault").findtext(f"{{{TNS}}}code")
        assert got == code, etree.tostring(detail)
        if version == "1.1":
            assert f.value.code == "soap:Client"
        else:
            assert f.value.code == "env:Sender"
            assert [s.localname for s in f.value.subcodes] == [code]
    with pytest.raises(zeep.exceptions.Fault) as f:
        svc.CreatePost(title="no such author", author="999")
    fields = [e.findtext(f"{{{TNS}}}name") for e in f.value.detail.iter(f"{{{TNS}}}field")]
    assert fields == ["author"], "the detail names the failing field"


def test_the_wsdl_follows_the_collections(blog):
    with httpx.Client(base_url=blog.url, timeout=10) as http:
        r = http.post("/api/collections", json={"name": "sensors", "fields": [
            {"name": "label", "type": "text", "required": True},
            {"name": "reading", "type": "number"},
            {"name": "count", "type": "integer"},
            {"name": "active", "type": "bool"},
            {"name": "seen", "type": "datetime"},
            {"name": "meta", "type": "json"},
        ]})
        assert r.status_code == 201, r.text
        r = http.post("/api/collections", json={"name": "notes"})
        assert r.status_code == 201, r.text
        assert http.get("/soap.wsdl").text == http.get("/soap?wsdl").text
    svc = zeep_service(blog)  # a fresh client reads the regenerated WSDL
    s = svc.CreateSensor(label="probe", reading=21.5, count=3, active=True, meta='{"room": [1, 2]}')
    assert (s.label, s.reading, s.count, s.active, s.meta) == ("probe", 21.5, 3, True, '{"room":[1,2]}')
    # Schemaless collections carry their document as JSON text.
    n = svc.CreateNote(id="n1", document='{"text": "hi", "n": [1]}')
    assert (n.id, n.document) == ("n1", '{"text":"hi","n":[1]}')
    n2 = svc.UpdateNote(id="n1", document='{"n": null, "more": true}')
    assert n2.document == '{"text":"hi","more":true}' and n2.version == 2


def test_ws_security_username_token_authenticates(servers):
    s = servers.start('[auth]\nusers = { alice = "s3cret" }\nanonymous = false\n', "--demo", "blog")
    basic = ("alice", "s3cret")  # the WSDL is an HTTP GET: HTTP Basic, like every other route
    ok = zeep_service(s, "1.2", http_auth=basic, wsse=UsernameToken("alice", "s3cret"))
    assert ok.GetUser(id="123").username == "john_doe"
    # The envelope's token wins over the transport's: a wrong one is refused even though
    # the HTTP request carries good Basic credentials.
    svc = zeep_service(s, "1.2", http_auth=basic, wsse=UsernameToken("alice", "wrong"))
    with pytest.raises(zeep.exceptions.Fault) as f:
        svc.CreatePost(title="sneaky", author="123")
    assert f.value.code == "env:Sender"
    assert [q.localname for q in f.value.subcodes] == ["FailedAuthentication"]
    # Without a token, HTTP Basic on the POST signs the caller in (transport security).
    assert zeep_service(s, "1.2", http_auth=basic).GetUser(id="123").username == "john_doe"
    # With neither, the call is a Fault, not an HTTP 401.
    envelope = ('<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body>'
                '<p:CreatePost xmlns:p="urn:polyport:soap"><p:title>sneaky</p:title>'
                '<p:author>123</p:author></p:CreatePost></e:Body></e:Envelope>')
    r = httpx.post(f"{s.url}/soap", content=envelope,
                   headers={"content-type": "application/soap+xml; charset=utf-8"})
    assert r.status_code == 400 and "FailedAuthentication" in r.text, r.text
    with httpx.Client(base_url=s.url, auth=basic) as http:
        titles = [p["title"] for p in http.get("/api/collections/posts/records").json()["items"]]
    assert "sneaky" not in titles


def test_the_readme_examples_run_as_written(blog):
    """The README's zeep snippet and seed-002-shaped curl call, only the address changed."""
    readme = (Path(__file__).resolve().parents[4] / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "from zeep import" in b]
    out = subprocess.run([sys.executable, "-c", snippet.replace("localhost:8080", blog.http)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "john_doe"
    with httpx.Client(base_url=blog.url) as http:
        titles = [p["title"] for p in http.get("/api/collections/posts/records").json()["items"]]
    assert "Hello" in titles
    (curl,) = [b for b in re.findall(r"```sh\n(.*?)```", readme, flags=re.S) if "/soap" in b]
    out = subprocess.run(["bash", "-c", curl.replace("localhost:8080", blog.http)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    root = etree.fromstring(out.stdout.encode())
    assert root.findtext(f".//{{{TNS}}}username") == "john_doe"
