"""The schema follows the collections at run time: a collection created (or changed) over
REST shows up in the SDL and in introspection without a restart, and can be queried and
mutated straight away."""

from __future__ import annotations

import re

from graphql_clients import http_client, query, wait_until

BOOKS = {
    "name": "books",
    "description": "Books on the shelf",
    "fields": [
        {"name": "title", "type": "text", "required": True},
        {"name": "pages", "type": "integer"},
        {"name": "price", "type": "number"},
        {"name": "published", "type": "bool", "default": False},
        {"name": "writer", "type": "relation", "collection": "users"},
    ],
}


def sdl(client) -> str:
    r = client.get("/graphql/schema.graphql")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def type_block(text: str, name: str) -> str | None:
    m = re.search(r"^type " + name + r" \{(.*?)^\}", text, re.S | re.M)
    return m.group(1) if m else None


def test_collection_created_over_rest_appears_without_restart(blog, client):
    pid = blog.proc.pid
    assert type_block(sdl(client), "Book") is None

    r = client.post("/api/collections", json=BOOKS)
    assert r.status_code == 201, r.text

    book_type = wait_until(lambda: type_block(sdl(client), "Book"), "type Book in the SDL")
    for field in ("id: ID!", "version: Long!", "title: String", "pages: Int", "price: Float",
                  "published: Boolean", "writer: User", "writer_id: ID"):
        assert field in book_type, (field, book_type)
    text = sdl(client)
    assert "bookList(" in text and "createBook(input: BookInput!): Book!" in text
    assert "books: [Book!]!" in type_block(text, "User")  # the reverse relation

    # introspection (what gql and GraphiQL use) agrees
    gql = http_client(blog)
    fields = query(gql, '{ __type(name: "Book") { description fields { name } } }')["__type"]
    assert fields["description"] == "Books on the shelf"
    assert {"title", "pages", "writer", "writer_id"} <= {f["name"] for f in fields["fields"]}

    # and it is usable at once
    created = query(
        gql,
        "mutation($in: BookInput!) { createBook(input: $in) { id title pages price published writer { username } } }",
        **{"in": {"title": "Dune", "pages": 412, "price": 9.5, "writer": "123"}},
    )["createBook"]
    assert created["title"] == "Dune" and created["pages"] == 412 and created["price"] == 9.5
    assert created["published"] is False  # the field's default
    assert created["writer"] == {"username": "john_doe"}

    updated = query(gql, 'mutation($id: ID!) { updateBook(id: $id, expectedVersion: 1, input: {published: true}) { version published } }',
                    id=created["id"])["updateBook"]
    assert updated == {"version": 2, "published": True}
    got = query(gql, '{ bookList(filter: "pages > 100") { totalCount nodes { title } } user(id: 123) { books { title } } }')
    assert got["bookList"] == {"totalCount": 1, "nodes": [{"title": "Dune"}]}
    assert got["user"]["books"] == [{"title": "Dune"}]
    assert client.get(f"/api/collections/books/records/{created['id']}").json()["published"] is True

    # a field added later appears too
    r = client.patch("/api/collections/books", json={"fields": BOOKS["fields"] + [{"name": "isbn", "type": "text"}]})
    assert r.status_code == 200, r.text
    wait_until(lambda: "isbn: String" in (type_block(sdl(client), "Book") or ""), "Book.isbn in the SDL")
    query(gql, 'mutation($id: ID!) { updateBook(id: $id, input: {isbn: "978-0441013593"}) { id } }', id=created["id"])
    assert query(gql, "query($id: ID!) { book(id: $id) { isbn } }", id=created["id"])["book"] == {"isbn": "978-0441013593"}

    assert blog.proc.poll() is None and blog.proc.pid == pid  # same process all along


def test_schemaless_collection_exposes_its_document_as_json(blog, client):
    r = client.post("/api/collections/notes/records", json={"id": "n1", "meta": {"lang": "en"}, "keep": True})
    assert r.status_code == 201, r.text
    wait_until(lambda: type_block(sdl(client), "Note"), "type Note in the SDL")
    gql = http_client(blog)
    assert query(gql, '{ note(id: "n1") { id data } }')["note"] == {"id": "n1", "data": {"meta": {"lang": "en"}, "keep": True}}
    created = query(gql, 'mutation { createNote(id: "n2", data: {text: "hi", n: 2}) { id version data } }')["createNote"]
    assert created == {"id": "n2", "version": 1, "data": {"text": "hi", "n": 2}}
    assert client.get("/api/collections/notes/records/n2").json()["text"] == "hi"
    got = query(gql, '{ noteList(filter: "meta.lang = \\"en\\"") { totalCount nodes { id } } }')["noteList"]
    assert got == {"totalCount": 1, "nodes": [{"id": "n1"}]}
