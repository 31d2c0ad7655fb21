"""Assertions shared by the HTTP black-box tests."""

from __future__ import annotations

import httpx


def assert_problem(resp: httpx.Response, status: int) -> dict:
    """Asserts an RFC 9457 problem+json answer with `status` and returns its body."""
    assert resp.status_code == status, resp.text
    ctype = resp.headers.get("content-type", "")
    assert ctype.split(";")[0].strip() == "application/problem+json", ctype
    body = resp.json()
    assert body["status"] == status
    assert isinstance(body.get("type"), str) and body["type"]
    assert isinstance(body.get("title"), str) and body["title"]
    return body
