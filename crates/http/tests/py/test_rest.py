"""REST records as an HTTP client sees them: conditional requests, merge patch, and
RFC 9457 problem+json for every kind of bad request (on the `--demo blog` data)."""

from __future__ import annotations

import json

import httpx

from helpers import assert_problem

MAX_BODY = 4 << 20  # the server's default request body limit (4 MiB)


def test_etag_and_if_none_match_give_304_until_the_record_changes(client: httpx.Client):
    r = client.get("/api/collections/posts/records/1")
    assert r.status_code == 200
    etag = r.headers["etag"]
    assert etag == f'"{r.json()["version"]}"'

    r = client.get("/api/collections/posts/records/1", headers={"If-None-Match": etag})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == etag

    # A list of tags, one of them current, and a weak comparison both match.
    r = client.get("/api/collections/posts/records/1", headers={"If-None-Match": f'"999", W/{etag}'})
    assert r.status_code == 304

    r = client.patch("/api/collections/posts/records/1", json={"title": "Hello again"})
    assert r.status_code == 200
    new_etag = r.headers["etag"]
    assert new_etag != etag

    r = client.get("/api/collections/posts/records/1", headers={"If-None-Match": etag})
    assert r.status_code == 200
    assert r.headers["etag"] == new_etag
    assert r.json()["title"] == "Hello again"


def test_if_match_mismatch_is_412_problem_and_changes_nothing(client: httpx.Client):
    before = client.get("/api/collections/posts/records/2")
    etag = before.headers["etag"]

    for method, kwargs in [
        ("PATCH", {"json": {"title": "lost update"}}),
        ("PUT", {"json": {"title": "lost update", "author": "123"}}),
        ("DELETE", {}),
    ]:
        r = client.request(method, "/api/collections/posts/records/2", headers={"If-Match": '"99"'}, **kwargs)
        body = assert_problem(r, 412)
        assert body["code"] == "version_mismatch", body
        assert body.get("current_version") == before.json()["version"], body

    after = client.get("/api/collections/posts/records/2")
    assert after.json() == before.json()

    # The current ETag is accepted, and the version moves on.
    r = client.patch("/api/collections/posts/records/2", headers={"If-Match": etag}, json={"title": "kept"})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == before.json()["version"] + 1
    # The old ETag is now stale.
    r = client.patch("/api/collections/posts/records/2", headers={"If-Match": etag}, json={"title": "stale"})
    assert_problem(r, 412)


def test_merge_patch_null_removes_a_field_and_merges_objects(client: httpx.Client):
    merge = {"Content-Type": "application/merge-patch+json"}
    r = client.patch("/api/collections/posts/records/1", headers=merge, content=b'{"body": null}')
    assert r.status_code == 200, r.text
    assert "body" not in r.json()
    got = client.get("/api/collections/posts/records/1").json()
    assert "body" not in got
    assert got["title"] == "Hello, Polyport" and got["author"] == "123" and got["tags"] == ["intro"]

    # RFC 7396 on nested objects, in a schemaless collection created by the first write.
    r = client.post("/api/collections/notes/records", json={"id": "n1", "meta": {"a": 1, "b": 2}, "keep": True})
    assert r.status_code == 201, r.text
    r = client.patch("/api/collections/notes/records/n1", headers=merge, content=b'{"meta": {"a": null, "c": 3}}')
    assert r.status_code == 200, r.text
    assert r.json()["meta"] == {"b": 2, "c": 3}
    assert r.json()["keep"] is True


def test_unique_violation_is_409_naming_the_field(client: httpx.Client):
    r = client.post("/api/collections/users/records", json={"username": "john_doe"})
    body = assert_problem(r, 409)
    assert any(e["field"] == "username" and e["rule"] == "unique" for e in body["errors"]), body

    # The same through PUT onto another record.
    assert client.post("/api/collections/users/records", json={"id": "456", "username": "jane"}).status_code == 201
    r = client.put("/api/collections/users/records/456", json={"username": "john_doe"})
    body = assert_problem(r, 409)
    assert [e["field"] for e in body["errors"]] == ["username"]


def test_validation_errors_are_422_with_field_and_rule(client: httpx.Client):
    r = client.post("/api/collections/posts/records", json={"title": 5, "author": "123", "nope": 1})
    body = assert_problem(r, 422)
    got = {(e["field"], e["rule"]) for e in body["errors"]}
    assert got == {("title", "type"), ("nope", "unknown")}, body

    r = client.post("/api/collections/posts/records", json={"author": "123"})
    body = assert_problem(r, 422)
    assert [(e["field"], e["rule"]) for e in body["errors"]] == [("title", "required")], body

    # Relations are checked against the target collection.
    r = client.post("/api/collections/posts/records", json={"title": "t", "author": "nobody"})
    body = assert_problem(r, 422)
    assert [(e["field"], e["rule"]) for e in body["errors"]] == [("author", "relation")], body


def test_non_json_body_is_415(client: httpx.Client):
    r = client.post(
        "/api/collections/posts/records",
        content=b"title=hello&author=123",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    body = assert_problem(r, 415)
    assert body["code"] == "unsupported_media_type"
    r = client.patch("/api/collections/posts/records/1", content=b'{"title": "x"}', headers={"Content-Type": "text/plain"})
    assert_problem(r, 415)
    # Nothing was written.
    assert client.get("/api/collections/posts/records/1").json()["title"] == "Hello, Polyport"


def test_oversized_body_is_413_and_the_limit_is_4_mib(client: httpx.Client):
    def post(size: int) -> httpx.Response:
        prefix, suffix = b'{"author": "123", "title": "', b'"}'
        filler = b"a" * (size - len(prefix) - len(suffix))
        return client.post(
            "/api/collections/posts/records",
            content=prefix + filler + suffix,
            headers={"Content-Type": "application/json"},
        )

    body = assert_problem(post(MAX_BODY + 1), 413)
    assert body["code"] == "payload_too_large"
    assert_problem(post(8 * MAX_BODY), 413)

    # Without Content-Length (chunked) the limit holds as well.
    def chunks():
        yield b'{"author": "123", "title": "'
        for _ in range(5):
            yield b"a" * (1 << 20)
        yield b'"}'

    r = client.post("/api/collections/posts/records", content=chunks(), headers={"Content-Type": "application/json"})
    assert_problem(r, 413)

    # Exactly at the limit is fine.
    r = post(MAX_BODY)
    assert r.status_code == 201, r.text[:500]

    # Topic publishing has the same limit.
    assert_problem(client.post("/api/topics/big/blob", content=b"x" * (MAX_BODY + 1)), 413)


def test_bad_filter_is_400_with_the_position_of_the_mistake(client: httpx.Client):
    flt = 'title = "x" && views >> 3'
    r = client.get("/api/collections/posts/records", params={"filter": flt})
    body = assert_problem(r, 400)
    assert body["code"] == "invalid_filter"
    assert body["position"] == flt.index(">>") + 1, body
    assert flt[body["position"]] == ">"

    r = client.get("/api/collections/posts/records", params={"filter": '(author = "123"'})
    body = assert_problem(r, 400)
    assert body["position"] == len('(author = "123"'), body

    # A good filter answers normally.
    r = client.get("/api/collections/posts/records", params={"filter": 'author = "123" && title ~ "real"'})
    assert r.status_code == 200
    assert [p["id"] for p in r.json()["items"]] == ["2"]


def test_unknown_record_and_endpoint_are_404_problems(client: httpx.Client):
    body = assert_problem(client.get("/api/collections/posts/records/nope"), 404)
    assert body["code"] == "record_not_found"
    assert_problem(client.get("/api/nothing-here"), 404)


def test_textual_payloads_are_strings_in_every_envelope(client: httpx.Client):
    # `curl -d '25°C' …` sends application/x-www-form-urlencoded.
    cases = {
        "application/x-www-form-urlencoded": "25°C",
        "application/xml": "<t>25</t>",
        "application/soap+xml; charset=utf-8": "<Envelope/>",
        "text/csv": "a,b\n1,2",
    }
    for ctype, text in cases.items():
        r = client.post("/api/topics/sensors/temperature", content=text.encode(), headers={"content-type": ctype})
        assert r.status_code == 202, r.text
    binary = client.post("/api/topics/sensors/temperature", content=b"\xff\x00", headers={"content-type": "application/octet-stream"})
    assert binary.status_code == 202
    events = client.get("/api/poll", params={"topic": "sensors/temperature", "since": 0, "wait": 0}).json()["events"]
    assert [e.get("data") for e in events[:4]] == list(cases.values())
    assert all("data_base64" not in e for e in events[:4])
    assert events[4]["data_base64"] == "/wA=" and "data" not in events[4]


def test_the_root_is_a_map_of_every_face(blog):
    listeners = json.loads((blog.data_dir / "listeners.json").read_text())
    with httpx.Client(base_url=blog.url, timeout=10) as c:
        doc = c.get("/", headers={"accept": "application/json"}).json()
        by_name = {l["name"]: l["address"] for l in doc["listeners"]}
        assert by_name == {k: listeners[k] for k in ("http", "grpc", "mqtt", "amqp", "stomp")}
        paths = {e["path"] for e in doc["endpoints"]}
        assert {"GET /openapi.json", "GET /ws", "GET /ws/topics/{topic…}", "POST /graphql", "GET /mqtt",
                "GET /api/events?topic=…", "GET /metrics"} <= paths, paths
        page = c.get("/", headers={"accept": "text/html,application/xhtml+xml"})
        assert page.headers["content-type"].startswith("text/html")
        for needle in ('href="/openapi.json"', listeners["grpc"], listeners["mqtt"], "/graphql"):
            assert needle in page.text, needle
