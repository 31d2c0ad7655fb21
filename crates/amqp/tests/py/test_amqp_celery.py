"""A real application framework on Polyport's AMQP: a Celery app (kombu over py-amqp)
whose worker runs tasks sent through Polyport, with late acks, and a worker killed
mid-task whose task is delivered again to the next worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from amqp_clients import WAIT, port, servers, wait_until  # noqa: F401

TASKS = '''
import os, time
from celery import Celery

app = Celery("polytasks", broker=os.environ["BROKER"])
app.conf.task_acks_late = True
app.conf.worker_prefetch_multiplier = 1
app.conf.broker_connection_retry_on_startup = False

@app.task
def add(x, y, out):
    with open(out, "a") as f:
        f.write(f"{x + y}\\n")

@app.task
def slow(marker, out):
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)
    with open(out, "a") as f:
        f.write("slow done\\n")
'''


def worker(tmp_path, env):
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool=solo", "-l", "info",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=tmp_path, env=env, stdout=open(tmp_path / "worker.log", "ab"), stderr=subprocess.STDOUT,
    )


def send(tmp_path, env, code: str) -> None:
    out = subprocess.run([sys.executable, "-c", f"import tasks\n{code}"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 0, out.stderr


def test_celery_tasks_run_and_a_killed_workers_task_is_redelivered(servers, tmp_path):
    s = servers.start()
    (tmp_path / "tasks.py").write_text(TASKS)
    env = dict(os.environ, BROKER=f"amqp://guest:guest@127.0.0.1:{port(s, 'amqp')}//")
    out, marker = tmp_path / "out", tmp_path / "marker"
    w = worker(tmp_path, env)
    try:
        send(tmp_path, env, f"tasks.add.delay(2, 3, {str(out)!r})")
        wait_until(lambda: out.exists() and out.read_text() == "5\n", "the add task to run")

        send(tmp_path, env, f"tasks.slow.delay({str(marker)!r}, {str(out)!r})")
        wait_until(marker.exists, "the slow task to start")
        w.send_signal(signal.SIGKILL)  # mid-task: acks-late leaves it unacknowledged
        w.wait(timeout=WAIT)
        time.sleep(0.5)
        w = worker(tmp_path, env)
        wait_until(lambda: "slow done" in out.read_text(), "the slow task to run again", timeout=30)
        assert out.read_text() == "5\nslow done\n", "ran to the end exactly once after the kill"
    finally:
        w.kill()
        w.wait()
