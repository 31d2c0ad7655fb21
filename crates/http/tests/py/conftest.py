"""Black-box tests of Polyport's HTTP face, driven with ordinary Python clients.

Each test gets a fresh `polyport serve` process (port 0, its own temporary data dir) and
talks to it over real sockets; the machinery and the fixtures (`spawn`, `blog`,
`base_url`, `client`) live in polyport_server.py, which the GraphQL suite
(crates/graphql/tests/py) shares. The binary is `target/debug/polyport` unless the
`POLYPORT_BIN` environment variable names another one; build it first with
`cargo build -p polyport`. Set up the clients with `scripts/setup-clients`, then run
`.venv/bin/pytest -q crates/http/tests/py`.
"""

from polyport_server import base_url, blog, client, spawn  # noqa: F401  (fixtures)
