"""The README's walkthrough and GraphQL example, run as written (only `localhost:8080`
becomes the test server's address) with the real `curl`, so what a new user pastes works.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

README = Path(__file__).resolve().parents[4] / "README.md"
WAIT = 15


def sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)


def commands(block: str) -> list[str]:
    """The block's commands, one per entry, with `\\` continuations joined."""
    out, cur = [], ""
    for line in block.splitlines():
        if not line.strip() or (not cur and line.lstrip().startswith("#")):
            continue
        cur += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            out.append(cur.strip())
            cur = ""
    return out


def walkthrough() -> list[str]:
    (block,) = [b for b in sh_blocks() if "serve --demo blog" in b and "/api/poll" in b]
    return commands(block)


def at(cmd: str, server) -> str:
    return cmd.replace("localhost:8080", server.http)


def run(cmd: str, server) -> str:
    out = subprocess.run(["bash", "-c", at(cmd, server)], capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 0, f"{cmd}\nexit {out.returncode}: {out.stderr}"
    assert out.stdout, f"{cmd} printed nothing"
    return out.stdout


def test_the_walkthrough_runs_as_written(blog):
    cmds = walkthrough()
    serve, *rest = cmds
    assert serve.startswith("cargo run") and "serve --demo blog" in serve  # the `blog` fixture
    streaming = [c for c in rest if " -N" in c or "wait=" in c]
    oneshot = [c for c in rest if c not in streaming]
    assert len(streaming) == 3 and len(oneshot) == 4, cmds
    get_user, list_posts, create_post, publish = oneshot

    assert json.loads(run(get_user, blog))["username"] == "john_doe"
    page = json.loads(run(list_posts, blog))
    assert page["items"] and all("real" in p["title"].lower() for p in page["items"]), page
    assert all(p["expand"]["author"]["username"] == "john_doe" for p in page["items"])
    head = run(create_post, blog)
    assert head.startswith("HTTP/1.1 201") and re.search(r'(?im)^etag: "1"', head), head

    # "watch changes live (leave running, write again in another terminal)"
    watchers = [
        subprocess.Popen(["bash", "-c", at(c, blog)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in streaming
    ]
    try:
        time.sleep(1.0)
        run(create_post, blog)
        receipt = json.loads(run(publish, blog))
        assert isinstance(receipt["sequence"], int), receipt
        sse, ndjson, long_poll = watchers
        polled, _ = long_poll.communicate(timeout=WAIT)
        events = json.loads(polled)["events"]
        assert [e["data"] for e in events] == ["25°C"], events
        time.sleep(1.0)
    finally:
        for w in watchers:
            w.terminate()
    sse_out = sse.communicate(timeout=WAIT)[0]
    assert "posts.created" in sse_out and '"title":"Hi"' in sse_out, sse_out
    nd_lines = [json.loads(l) for l in ndjson.communicate(timeout=WAIT)[0].splitlines() if l.strip()]
    assert any(e["type"] == "posts.created" for e in nd_lines), nd_lines


def test_the_graphql_example_runs_as_written(blog):
    (block,) = [b for b in sh_blocks() if "localhost:8080/graphql" in b]
    (cmd,) = commands(block)
    user = json.loads(run(cmd, blog))["data"]["user"]
    assert user["username"] == "john_doe"
    assert sorted(p["title"] for p in user["posts"]) == ["Hello, Polyport", "Realtime everywhere"]
