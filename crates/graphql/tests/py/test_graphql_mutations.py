"""Mutations as a gql user sees them: typed create inputs, merge-patch updates with
optimistic locking (`expectedVersion`), validation failures with `extensions.code` and
`extensions.fieldErrors`, deletes — and REST sees every change."""

from __future__ import annotations

from graphql_clients import code_of, http_client, query, query_errors

POST_FIELDS = "id version title body tags author_id author { username }"

CREATE = f"mutation($input: PostInput!) {{ createPost(input: $input) {{ {POST_FIELDS} }} }}"
UPDATE = f"""mutation($id: ID!, $v: Long, $input: PostPatch!) {{
  updatePost(id: $id, expectedVersion: $v, input: $input) {{ {POST_FIELDS} }}
}}"""
DELETE = "mutation($id: ID!, $v: Long) { deletePost(id: $id, expectedVersion: $v) { id version title } }"


def field_errors(err: dict) -> list[dict]:
    return (err.get("extensions") or {}).get("fieldErrors") or []


def test_create_post_with_a_typed_input(blog, client):
    gql = http_client(blog)
    post = query(gql, CREATE, input={"title": "From GraphQL", "body": "typed", "author": "123", "tags": ["a", "b"]})["createPost"]
    assert post["version"] == 1
    assert post == {
        "id": post["id"],
        "version": 1,
        "title": "From GraphQL",
        "body": "typed",
        "tags": ["a", "b"],
        "author_id": "123",
        "author": {"username": "john_doe"},
    }
    rest = client.get(f"/api/collections/posts/records/{post['id']}")
    assert rest.status_code == 200
    assert rest.json()["title"] == "From GraphQL" and rest.json()["author"] == "123"

    # a client-chosen id and an inline input whose ID is an Int literal (GraphQL coerces
    # it to an ID): stored as the id string, so the reverse relation finds it
    post = query(gql, 'mutation { createPost(input: {id: "p-7", title: "Seven", author: 123}) { id author_id } }')["createPost"]
    assert post == {"id": "p-7", "author_id": "123"}
    assert client.get("/api/collections/posts/records/p-7").json()["author"] == "123"
    titles = {p["title"] for p in query(gql, "{ user(id: 123) { posts { title } } }")["user"]["posts"]}
    assert {"From GraphQL", "Seven", "Hello, Polyport"} <= titles


def test_update_post_merges_and_checks_expected_version(blog, client):
    gql = http_client(blog)
    post = query(gql, UPDATE, id="1", v=1, input={"title": "Hello again"})["updatePost"]
    assert post["version"] == 2
    assert post["title"] == "Hello again"
    assert post["body"] == "One server, every API style."  # merge patch: untouched fields stay
    assert post["tags"] == ["intro"]

    errors = query_errors(gql, UPDATE, id="1", v=1, input={"title": "stale write"})
    assert code_of(errors[0]) == "version_mismatch", errors
    assert query(gql, '{ post(id: 1) { title version } }')["post"] == {"title": "Hello again", "version": 2}
    assert client.get("/api/collections/posts/records/1").headers["etag"] == '"2"'

    # without expectedVersion it always applies; null removes an optional field
    post = query(gql, UPDATE, id="1", input={"body": None})["updatePost"]
    assert post["version"] == 3 and post["body"] is None
    assert "body" not in client.get("/api/collections/posts/records/1").json()

    errors = query_errors(gql, UPDATE, id="nope", input={"title": "x"})
    assert code_of(errors[0]) == "record_not_found", errors
    errors = query_errors(gql, UPDATE, id="1", v=-1, input={"title": "x"})
    assert code_of(errors[0]) == "invalid_request" and "expectedVersion" in errors[0]["message"], errors


def test_validation_failures_carry_code_and_field_errors(blog, client):
    gql = http_client(blog)
    before = client.get("/api/collections/posts/records", params={"count": "true"}).json()["total"]

    # a relation to a user that does not exist
    errors = query_errors(gql, CREATE, input={"title": "orphan", "author": "999"})
    assert code_of(errors[0]) == "validation_failed", errors
    assert [f["field"] for f in field_errors(errors[0])] == ["author"], errors
    assert field_errors(errors[0])[0]["rule"] == "relation"

    # removing the required title with a merge patch
    errors = query_errors(gql, UPDATE, id="2", input={"title": None})
    assert code_of(errors[0]) == "validation_failed", errors
    assert [(f["field"], f["rule"]) for f in field_errors(errors[0])] == [("title", "required")], errors
    assert query(gql, "{ post(id: 2) { title version } }")["post"] == {"title": "Realtime everywhere", "version": 1}

    # a create without the required title: PostInput declares `title: String!`, so the
    # GraphQL layer itself rejects it, naming the field
    errors = query_errors(gql, CREATE, input={"author": "123"})
    assert "title" in errors[0]["message"], errors
    errors = query_errors(gql, 'mutation { createPost(input: {author: "123"}) { id } }')
    assert "title" in errors[0]["message"], errors

    # a duplicate unique username
    errors = query_errors(gql, 'mutation { createUser(input: {username: "john_doe"}) { id } }')
    assert code_of(errors[0]) == "unique_violation", errors

    assert client.get("/api/collections/posts/records", params={"count": "true"}).json()["total"] == before


def test_delete_post(blog, client):
    gql = http_client(blog)
    errors = query_errors(gql, DELETE, id="2", v=5)
    assert code_of(errors[0]) == "version_mismatch", errors
    assert client.get("/api/collections/posts/records/2").status_code == 200

    deleted = query(gql, DELETE, id="2", v=1)["deletePost"]
    assert deleted == {"id": "2", "version": 1, "title": "Realtime everywhere"}
    assert query(gql, "{ post(id: 2) { id } }")["post"] is None
    assert client.get("/api/collections/posts/records/2").status_code == 404
    assert [p["title"] for p in query(gql, "{ user(id: 123) { posts { title } } }")["user"]["posts"]] == ["Hello, Polyport"]

    errors = query_errors(gql, DELETE, id="2")
    assert code_of(errors[0]) == "record_not_found", errors
