"""Queries as a gql user sees them: the seed query as written, record lookups, and list
connections (keyset pagination with endCursor, totalCount, filter and sort strings, the
page-size limit)."""

from __future__ import annotations

from graphql_clients import code_of, http_client, query, query_errors

SEED_QUERY = "query { user(id: 123) { username posts { title } } }"


def test_seed_query_works_as_written(blog):
    # With the schema fetched, gql also validates the query locally against the
    # introspection result, so this checks that the introspection is usable too.
    gql = http_client(blog, fetch_schema=True)
    data = query(gql, SEED_QUERY)
    assert gql.schema is not None and gql.schema.get_type("User") is not None
    assert data["user"]["username"] == "john_doe"
    assert sorted(p["title"] for p in data["user"]["posts"]) == ["Hello, Polyport", "Realtime everywhere"]


def test_record_lookup_by_id_relation_object_and_missing_record(blog):
    gql = http_client(blog)
    data = query(gql, '{ post(id: "1") { id title version author_id author { id username } tags } missing: post(id: 404) { id } }')
    assert data["post"] == {
        "id": "1",
        "title": "Hello, Polyport",
        "version": 1,
        "author_id": "123",
        "author": {"id": "123", "username": "john_doe"},
        "tags": ["intro"],
    }
    assert data["missing"] is None


def test_post_list_paginates_with_end_cursor_through_all_posts(blog, client):
    for i in range(3):
        r = client.post("/api/collections/posts/records", json={"title": f"page post {i}", "author": "123"})
        assert r.status_code == 201, r.text
    rest_ids = [p["id"] for p in client.get("/api/collections/posts/records", params={"limit": 100}).json()["items"]]
    assert len(rest_ids) == 5

    gql = http_client(blog)
    page_query = """
        query Page($after: String) {
          postList(first: 1, after: $after) {
            totalCount
            edges { cursor node { id title } }
            nodes { id }
            pageInfo { hasNextPage endCursor }
          }
        }"""
    seen, after = [], None
    for _ in range(10):  # 5 posts; bounded in case hasNextPage never turns false
        conn = query(gql, page_query, after=after)["postList"]
        assert conn["totalCount"] == 5
        assert len(conn["edges"]) == 1  # and no empty page at the end
        assert [e["node"]["id"] for e in conn["edges"]] == [n["id"] for n in conn["nodes"]]
        seen += [n["id"] for n in conn["nodes"]]
        if conn["edges"]:
            assert conn["pageInfo"]["endCursor"] == conn["edges"][-1]["cursor"]
        if not conn["pageInfo"]["hasNextPage"]:
            break
        after = conn["pageInfo"]["endCursor"]
        assert after
    else:
        raise AssertionError(f"still hasNextPage after 10 pages: {seen}")
    assert seen == rest_ids  # every post once, in the same order REST lists them
    assert len(set(seen)) == 5

    errors = query_errors(gql, page_query, after="not-a-cursor")
    assert code_of(errors[0]) == "invalid_cursor", errors


def test_post_list_filter_and_sort_strings(blog, client):
    for title in ("rust in practice", "Rust again", "go"):
        r = client.post("/api/collections/posts/records", json={"title": title, "author": "123"})
        assert r.status_code == 201, r.text
    gql = http_client(blog)

    data = query(gql, '{ postList(filter: "title ~ \\"real\\"") { totalCount nodes { title } } }')
    assert data["postList"] == {"totalCount": 1, "nodes": [{"title": "Realtime everywhere"}]}

    data = query(gql, "query($f: String, $s: String) { postList(filter: $f, sort: $s) { totalCount nodes { title } } }",
                 f='title ~ "rust"', s="-title")
    assert data["postList"]["totalCount"] == 2
    assert [n["title"] for n in data["postList"]["nodes"]] == ["rust in practice", "Rust again"]

    data = query(gql, '{ postList(sort: "title") { nodes { title } } }')
    titles = [n["title"] for n in data["postList"]["nodes"]]
    assert titles == sorted(titles) and len(titles) == 5

    data = query(gql, '{ postList(filter: "author = \\"123\\" && title = \\"go\\"") { nodes { title author { username } } } }')
    assert data["postList"]["nodes"] == [{"title": "go", "author": {"username": "john_doe"}}]

    errors = query_errors(gql, '{ postList(filter: "title ~ ") { totalCount } }')
    assert code_of(errors[0]) == "invalid_filter", errors
    errors = query_errors(gql, '{ postList(sort: "-") { totalCount } }')
    assert code_of(errors[0]) == "invalid_filter" and "sort" in errors[0]["message"], errors


def test_first_above_the_max_page_size_is_an_error_with_a_code(blog):
    gql = http_client(blog)
    assert len(query(gql, "{ postList(first: 1000) { nodes { id } } }")["postList"]["nodes"]) == 2
    for first in (1001, 100000, 0, -1):
        errors = query_errors(gql, "query($n: Int) { postList(first: $n) { nodes { id } } }", n=first)
        assert code_of(errors[0]) == "invalid_request", errors
        assert "first" in errors[0]["message"], errors
