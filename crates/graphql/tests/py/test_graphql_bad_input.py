"""Bad input is answered with GraphQL `errors` (never a crash, a hang or a 5xx), and the
server stays healthy: malformed query text, a query deeper than the depth limit (16),
wrong argument types, unknown fields and collections. All of them go to one server
(`shared_blog`), which must answer a good query after each."""

from __future__ import annotations

import json

import pytest

from graphql_clients import http_client, query, query_errors

MAX_DEPTH = 16  # GraphqlConfig::default().max_depth


def nested(levels: int) -> str:
    """`{ user(id: 123) { posts { author { posts { … username … } } } } }` whose
    deepest selection is at depth `levels` (user = 1)."""
    inner = "username"
    for i in reversed(range(levels - 2)):
        inner = f"{'posts' if i % 2 == 0 else 'author'} {{ {inner} }}"
    return f"{{ user(id: 123) {{ {inner} }} }}"


def assert_healthy(client, gql) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200, r.text
    assert query(gql, "{ user(id: 123) { username } }") == {"user": {"username": "john_doe"}}


def graphql_errors(resp) -> list[dict]:
    assert resp.status_code < 500, resp.text
    ctype = resp.headers["content-type"].split(";")[0]
    assert ctype in ("application/json", "application/graphql-response+json"), resp.headers
    body = resp.json()
    assert body.get("data") is None, body
    errors = body["errors"]
    assert errors and all(isinstance(e["message"], str) and e["message"] for e in errors), body
    return errors


@pytest.mark.parametrize(
    "text",
    [
        "query { user(id: 123) { username posts { title }",  # unclosed
        "{ user(id: 123) { username } } }",  # one brace too many
        "querry { user(id: 123) { username } }",  # misspelt keyword
        "{ user(id: ) { username } }",  # missing value
        "{ user(id: 123) { ...on } }",  # broken fragment spread
        "",  # nothing at all
        "{ user(id: \"\u0000\") { username } }",  # a control character in a string
    ],
)
def test_malformed_query_text(shared_blog, shared_client, text):
    # gql parses before it sends, so malformed text goes over plain HTTP, as a
    # hand-written client would send it.
    errors = graphql_errors(shared_client.post("/graphql", json={"query": text}))
    assert errors[0].get("locations") or text == "", errors
    graphql_errors(shared_client.get("/graphql", params={"query": text or "{"}))
    assert_healthy(shared_client, http_client(shared_blog))


def test_query_deeper_than_the_depth_limit(shared_blog, shared_client):
    gql = http_client(shared_blog)
    at_limit = query(gql, nested(MAX_DEPTH))
    assert at_limit["user"]["posts"]  # the limit itself is allowed
    for levels in (MAX_DEPTH + 1, 40, 200):
        errors = query_errors(gql, nested(levels))
        # "Query is nested too deep."; far past the limit the parser's own recursion
        # limit answers first
        assert any(w in errors[0]["message"] for w in ("too deep", "recursion")), errors
    assert_healthy(shared_client, gql)


@pytest.mark.parametrize(
    "text, variables",
    [
        ('{ postList(first: "ten") { totalCount } }', {}),
        ("{ postList(first: 1.5) { totalCount } }", {}),
        ("{ post(id: true) { title } }", {}),
        ("{ post(id: [1, 2]) { title } }", {}),
        ("{ post { title } }", {}),  # required argument missing
        ("{ postList(filter: 3) { totalCount } }", {}),
        ("{ postList(first: 99999999999) { totalCount } }", {}),  # beyond Int's 32 bits
        ('mutation { createPost(input: {title: 5, author: "123"}) { id } }', {}),
        ('mutation { createPost(input: {title: "t", author: "123", tags: "x", bogus: 1}) { id } }', {}),
        ('mutation { updatePost(id: 1, expectedVersion: "one", input: {}) { id } }', {}),
        ("query($n: Int) { postList(first: $n) { totalCount } }", {"n": "ten"}),
        ("query($id: ID!) { post(id: $id) { title } }", {}),  # required variable missing
        ("query($in: PostInput!) { post(id: 1) { title } }", {"in": {"title": []}}),
    ],
)
def test_wrong_argument_types(shared_blog, shared_client, text, variables):
    gql = http_client(shared_blog)
    query_errors(gql, text, **variables)
    assert_healthy(shared_client, gql)


@pytest.mark.parametrize(
    "text",
    [
        "{ user(id: 123) { password } }",  # unknown field
        "{ user(id: 123) { username posts { nope } } }",  # unknown nested field
        "{ widget(id: 1) { id } }",  # unknown collection
        "{ widgetList { nodes { id } } }",
        "mutation { createWidget(input: {}) { id } }",
        "subscription { nothing }",
        "{ user(id: 123, nope: 1) { username } }",  # unknown argument
        "{ user(id: 123) { username(x: 1) } }",
        "{ user(id: 123) { posts } }",  # object field without a selection
        "{ user(id: 123) { username { x } } }",  # selection on a scalar
    ],
)
def test_unknown_fields_and_collections(shared_blog, shared_client, text):
    gql = http_client(shared_blog)
    errors = query_errors(gql, text)
    assert any(w in errors[0]["message"].lower() for w in ("unknown", "must have a selection", "must not have a selection", "required")) \
        or errors[0].get("locations"), errors
    assert_healthy(shared_client, gql)


def test_many_bad_requests_in_a_row_leave_the_server_healthy(shared_blog, shared_client):
    bad = [
        {"query": "{"},
        {"query": nested(60)},
        {"query": "{ post(id: true) { id } }"},
        {"query": "{ nope }"},
        {"query": "{ postList(first: 100000) { totalCount } }"},
    ]
    for _ in range(20):
        for body in bad:
            r = shared_client.post("/graphql", json=body)
            assert r.status_code < 500 and r.json()["errors"], r.text
    assert_healthy(shared_client, http_client(shared_blog))


def test_writes_need_a_post_with_a_json_body(shared_client):
    """What a page on another site can send without CORS preflight — a GET (a link, an
    `<img>`) or a `text/plain` POST (a form) — cannot run a mutation."""
    mutation = 'mutation { createPost(input: {title: "csrf", author: "123"}) { id } }'
    r = shared_client.get("/graphql", params={"query": mutation})
    assert r.status_code == 405 and r.headers["allow"] == "POST", r.text
    assert r.json()["errors"][0]["extensions"]["code"] == "method_not_allowed"
    r = shared_client.post("/graphql", content=json.dumps({"query": mutation}), headers={"content-type": "text/plain"})
    assert r.status_code == 415, r.text
    r = shared_client.post("/graphql", content=json.dumps({"query": mutation}), headers={"content-type": ""})
    assert r.status_code == 415, r.text
    listed = shared_client.get("/api/collections/posts/records", params={"filter": 'title = "csrf"'}).json()
    assert listed["items"] == [], "nothing was written"


@pytest.mark.parametrize(
    "accept, want",
    [
        (None, "application/json"),
        ("application/json", "application/json"),
        ("*/*", "application/json"),
        ("application/graphql-response+json", "application/graphql-response+json"),
        ("application/graphql-response+json, application/json;q=0.9", "application/graphql-response+json"),
        ("application/json, application/graphql-response+json;q=0.5", "application/json"),
    ],
)
def test_the_response_media_type_follows_accept(shared_client, accept, want):
    headers = {"content-type": "application/json"}
    if accept:
        headers["accept"] = accept
    r = shared_client.post("/graphql", json={"query": "{ __typename }"}, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].split(";")[0] == want, (r.status_code, r.headers)
    # A request that never executes: 200 with data null for JSON, 400 without data otherwise.
    r = shared_client.post("/graphql", json={"query": "{ nope }"}, headers=headers)
    if want == "application/json":
        assert r.status_code == 200 and "data" in r.json() and r.json()["data"] is None
    else:
        assert r.status_code == 400 and "data" not in r.json()


def test_a_websocket_without_a_graphql_subprotocol_is_refused(shared_blog, shared_client):
    """An upgrade offering no GraphQL subprotocol (`graphql-transport-ws` or `graphql-ws`)
    is a 400 before any socket opens; one offering it among others gets it."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = f"ws://{shared_blog.http}/graphql"
    with pytest.raises(InvalidStatus) as e:
        connect(url, subprotocols=["chat"], open_timeout=5)
    assert e.value.response.status_code == 400
    with connect(url, subprotocols=["chat", "graphql-transport-ws"], open_timeout=5) as ws:
        assert ws.subprotocol == "graphql-transport-ws"
        ws.send(json.dumps({"type": "connection_init"}))
        assert json.loads(ws.recv(timeout=5))["type"] == "connection_ack"
    assert_healthy(shared_client, http_client(shared_blog))
