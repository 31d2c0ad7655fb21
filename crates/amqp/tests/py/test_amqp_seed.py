"""Seed 000's AMQP snippets (pika publisher and subscriber: a `logs` fanout exchange, an
exclusive server-named queue, an auto-ack consumer), unchanged but for the address."""

from __future__ import annotations

import subprocess
import sys
import time

from amqp_clients import WAIT, port, servers  # noqa: F401

PUBLISHER = """
import pika

# Replace with your AMQP broker address
connection = pika.BlockingConnection(pika.ConnectionParameters('localhost', PORT))
channel = connection.channel()

exchange_name = 'logs'
message = 'Hello, AMQP!'

channel.exchange_declare(exchange=exchange_name, exchange_type='fanout')
channel.basic_publish(exchange=exchange_name, routing_key='', body=message)

print(f"Published to exchange '{exchange_name}': {message}")

connection.close()
"""

SUBSCRIBER = """
import pika

# Replace with your AMQP broker address
connection = pika.BlockingConnection(pika.ConnectionParameters('localhost', PORT))
channel = connection.channel()

exchange_name = 'logs'

result = channel.queue_declare(queue='', exclusive=True)
queue_name = result.method.queue

channel.exchange_declare(exchange=exchange_name, exchange_type='fanout')
channel.queue_bind(exchange=exchange_name, queue=queue_name)

print(f"Waiting for messages in queue '{queue_name}'")

def callback(ch, method, properties, body):
    print(f"Received: {body}")

channel.basic_consume(queue=queue_name, on_message_callback=callback, auto_ack=True)
channel.start_consuming()
"""


def script(tmp_path, name: str, text: str, amqp_port: int):
    path = tmp_path / name
    path.write_text(text.replace("PORT", str(amqp_port)))
    return path


def test_seed_000_publisher_reaches_every_subscriber(servers, tmp_path):
    s = servers.start()
    p = port(s, "amqp")
    sub_path = script(tmp_path, "sub.py", SUBSCRIBER, p)
    pub_path = script(tmp_path, "pub.py", PUBLISHER, p)
    subs = [
        subprocess.Popen([sys.executable, "-u", str(sub_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for sub in subs:
            assert sub.stdout.readline().startswith("Waiting for messages in queue 'amq.gen-")
        out = subprocess.run([sys.executable, str(pub_path)], capture_output=True, text=True, timeout=WAIT)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "Published to exchange 'logs': Hello, AMQP!"
        for sub in subs:
            deadline = time.monotonic() + WAIT
            line = sub.stdout.readline()
            assert time.monotonic() < deadline
            assert line.strip() == "Received: b'Hello, AMQP!'"
    finally:
        for sub in subs:
            sub.kill()
            sub.wait()
