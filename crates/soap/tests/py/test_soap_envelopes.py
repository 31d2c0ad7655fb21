"""Raw envelopes over httpx: seed 002's SOAP 1.2 shape (a default namespace on the body
element), arbitrary prefixes, and every kind of bad input — each a Fault in the version
asked, with the spec's HTTP status, and nothing written."""

from __future__ import annotations

import pytest

from soap_clients import SOAP11, SOAP12, TNS, envelope, fault_of, parse, post


MANY_ATTRS = " ".join(f'a{i}="1"' for i in range(80))


def count_posts(http) -> int:
    return http.get("/api/collections/posts/records", params={"count": "true"}).json()["total"]


def test_seed_002_shaped_soap12_envelope_is_answered(http):
    doc = f"""<soap:Envelope xmlns:soap="{SOAP12}">
  <soap:Body>
    <GetUser xmlns="{TNS}">
      <id>123</id>
    </GetUser>
  </soap:Body>
</soap:Envelope>"""
    r = post(http, doc, "1.2")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/soap+xml")
    root = parse(r)
    assert root.tag == f"{{{SOAP12}}}Envelope"
    rec = root.find(f"{{{SOAP12}}}Body/{{{TNS}}}GetUserResponse/{{{TNS}}}record")
    assert rec.findtext(f"{{{TNS}}}username") == "john_doe"
    assert rec.findtext(f"{{{TNS}}}id") == "123"


def test_prefixes_are_arbitrary_and_actions_are_checked(http):
    body = f'<q:GetPost xmlns:q="{TNS}"><q:id>1</q:id></q:GetPost>'
    for action in ("", f"{TNS}#GetPost", "GetPost"):
        r = post(http, envelope(body, "1.1"), "1.1", action=action)
        assert r.status_code == 200, (action, r.text)
        assert r.headers["content-type"].startswith("text/xml")
        assert parse(r).find(f".//{{{TNS}}}title").text == "Hello, Polyport"
    r = post(http, envelope(body, "1.2"), "1.2", action=f"{TNS}#GetPost")
    assert r.status_code == 200, r.text


def sender(f: dict, version: str) -> bool:
    return f["class"] == ("Client" if version == "1.1" else "Sender") and f["version"] == version and f["status"] == (500 if version == "1.1" else 400)


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_bad_input_gets_a_fault_and_writes_nothing(http, version):
    before = count_posts(http)
    create = f'<CreatePost xmlns="{TNS}"><title>t</title><author>123</author></CreatePost>'
    xxe = f"""<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<s:Envelope xmlns:s="{SOAP11 if version == '1.1' else SOAP12}"><s:Body><CreatePost xmlns="{TNS}"><title>&x;</title><author>123</author></CreatePost></s:Body></s:Envelope>"""
    laughs = '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><l>&c;</l>'
    cases = [
        # (document, code in the detail, field named)
        (envelope(create, version).replace("</s:Body>", "</s:Bod>"), "malformed_xml", None),
        (xxe, "dtd_refused", None),
        (laughs, "dtd_refused", None),
        (envelope(create.replace("<title>t</title>", "<title>&ent;</title>"), version), "entity_refused", None),
        (envelope("<x>" * 40 + "</x>" * 40, version), "too_deep", None),
        (envelope(f'<GetPost xmlns="{TNS}" {MANY_ATTRS}><id>1</id></GetPost>', version), "too_many_attributes", None),
        (envelope(f'<DropTables xmlns="{TNS}"/>', version), "unknown_operation", None),
        (envelope('<CreatePost xmlns="urn:someone-else"><title>t</title></CreatePost>', version), "unknown_operation", None),
        (envelope(f'<ListPosts xmlns="{TNS}"><limit>ten</limit></ListPosts>', version), "invalid_value", "limit"),
        (envelope(create.replace("</CreatePost>", "<colour>red</colour></CreatePost>"), version), "invalid_request", "colour"),
        (envelope(f'<CreatePost xmlns="{TNS}"><author>123</author></CreatePost>', version), "validation_failed", "title"),
        (envelope(create + create, version), "bad_envelope", None),
        (envelope("", version), "bad_envelope", None),
        (f'<s:Envelope xmlns:s="{SOAP11 if version == "1.1" else SOAP12}"><s:Body>{create}</s:Body></s:Envelope>'.replace("Envelope", "Letter"), "not_an_envelope", None),
    ]
    for doc, code, field in cases:
        r = post(http, doc, version)
        f = fault_of(r)
        assert sender(f, version), (code, f)
        assert f["code"] == code, (doc[:120], f)
        if version == "1.2":
            assert f["subcode"] == code
        if field:
            assert f["fields"] == [field], f
    assert count_posts(http) == before, "no refused request wrote anything"


def test_versions_and_actions_must_agree(http):
    body = f'<GetPost xmlns="{TNS}"><id>1</id></GetPost>'
    # A 1.1 envelope sent as SOAP 1.2 (and the reverse): VersionMismatch.
    for sent, as_version in (("1.1", "1.2"), ("1.2", "1.1")):
        f = fault_of(post(http, envelope(body, sent), as_version))
        assert (f["class"], f["version"]) == ("VersionMismatch", as_version), f
    # SOAP 1.2's Upgrade header names the envelopes Polyport speaks.
    r = post(http, envelope(body, "1.1"), "1.2")
    supported = parse(r).findall(f"{{{SOAP12}}}Header/{{{SOAP12}}}Upgrade/{{{SOAP12}}}SupportedEnvelope")
    assert sorted(e.get("qname").split(":")[0] for e in supported) == ["v11", "v12"]
    other = f'<s:Envelope xmlns:s="urn:not-soap"><s:Body>{body}</s:Body></s:Envelope>'
    assert fault_of(post(http, other, "1.2"))["class"] == "VersionMismatch"
    # SOAP 1.1 without a SOAPAction header, or with one naming another operation.
    f = fault_of(post(http, envelope(body), "1.1", action=None))
    assert (f["class"], f["code"]) == ("Client", "missing_soap_action"), f
    f = fault_of(post(http, envelope(body), "1.1", action=f"{TNS}#DeletePost"))
    assert (f["class"], f["code"]) == ("Client", "action_mismatch"), f
    f = fault_of(post(http, envelope(body, "1.2"), "1.2", action="urn:x#DeletePost"))
    assert (f["class"], f["subcode"]) == ("Sender", "action_mismatch"), f
    # Not SOAP at all.
    r = http.post("/soap", content=envelope(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 415 and fault_of(r)["code"] == "unsupported_media_type"


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_must_understand_headers_we_do_not_process_are_faults(http, version):
    ns = SOAP11 if version == "1.1" else SOAP12
    body = f'<GetPost xmlns="{TNS}"><id>1</id></GetPost>'
    must = "1" if version == "1.1" else "true"
    header = f'<t:Transaction xmlns:t="urn:tx" s:mustUnderstand="{must}">5</t:Transaction>'
    r = post(http, envelope(body, version, header), version)
    f = fault_of(r)
    assert f["class"] == "MustUnderstand" and f["version"] == version, f
    if version == "1.2":
        nu = parse(r).find(f"{{{ns}}}Header/{{{ns}}}NotUnderstood")
        assert nu is not None and nu.get("qname").endswith(":Transaction")
    # The same block without mustUnderstand, or addressed to another role, is ignored.
    relaxed = header.replace(f' s:mustUnderstand="{must}"', "")
    assert post(http, envelope(body, version, relaxed), version).status_code == 200
    role = "actor" if version == "1.1" else "role"
    elsewhere = header.replace("<t:Transaction ", f'<t:Transaction s:{role}="urn:someone-else" ')
    assert post(http, envelope(body, version, elsewhere), version).status_code == 200


def test_oversized_requests_are_refused(http):
    big = envelope(f'<CreatePost xmlns="{TNS}"><title>{"x" * (5 << 20)}</title><author>123</author></CreatePost>')
    r = post(http, big, "1.1")
    assert r.status_code == 413 and fault_of(r)["code"] == "too_large"
