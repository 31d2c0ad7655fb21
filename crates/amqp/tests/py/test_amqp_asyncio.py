"""asyncio clients: aio-pika (robust connection, confirms, `message.process()` acks, an
RPC round trip, a queue iterator) and pika's own AsyncioConnection adapter running seed
000's fanout flow."""

from __future__ import annotations

import asyncio

import aio_pika
import pamqp.commands
import pika
from pika.adapters.asyncio_connection import AsyncioConnection
from amqp_clients import WAIT, port, servers  # noqa: F401


def url(s) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port(s, 'amqp')}/"


def test_aio_pika_work_queue_with_acks_confirms_and_rpc(servers):
    s = servers.start()

    async def main():
        conn = await aio_pika.connect_robust(url(s))
        async with conn:
            ch = await conn.channel()  # publisher confirms are on by default
            await ch.set_qos(prefetch_count=5)
            tasks = await ch.declare_queue("tasks", durable=True)
            for i in range(20):
                confirm = await ch.default_exchange.publish(
                    aio_pika.Message(f"task {i}".encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                     headers={"attempt": 1}),
                    routing_key="tasks",
                )
                assert isinstance(confirm, pamqp.commands.Basic.Ack)  # confirmed, not nacked
            done = []
            async with tasks.iterator() as it:
                async for message in it:
                    async with message.process():  # acks on leaving the block
                        assert message.headers == {"attempt": 1}
                        done.append(message.body.decode())
                    if len(done) == 20:
                        break
            assert done == [f"task {i}" for i in range(20)]
            assert (await ch.declare_queue("tasks", passive=True)).declaration_result.message_count == 0

            # RPC: a server consumer answers on the caller's exclusive reply queue.
            rpc = await ch.declare_queue("rpc_square")

            async def serve(message: aio_pika.abc.AbstractIncomingMessage):
                async with message.process():
                    n = int(message.body)
                    await ch.default_exchange.publish(
                        aio_pika.Message(str(n * n).encode(), correlation_id=message.correlation_id),
                        routing_key=message.reply_to,
                    )

            await rpc.consume(serve)
            replies = await ch.declare_queue(exclusive=True)
            answer: asyncio.Future = asyncio.get_running_loop().create_future()

            async def on_reply(message: aio_pika.abc.AbstractIncomingMessage):
                async with message.process():
                    answer.set_result((message.correlation_id, message.body))

            await replies.consume(on_reply)
            await ch.default_exchange.publish(
                aio_pika.Message(b"12", correlation_id="c-1", reply_to=replies.name),
                routing_key="rpc_square",
            )
            assert await asyncio.wait_for(answer, WAIT) == ("c-1", b"144")

    asyncio.run(asyncio.wait_for(main(), 3 * WAIT))


def test_pika_asyncio_adapter_runs_the_seed_fanout(servers):
    s = servers.start()
    params = pika.ConnectionParameters("localhost", port(s, "amqp"))

    async def main():
        loop = asyncio.get_running_loop()
        received: asyncio.Future = loop.create_future()
        ready: asyncio.Future = loop.create_future()

        def open_(on_channel):
            def on_open(conn):
                conn.channel(on_open_callback=on_channel)

            def on_fail(_conn, err):
                if not ready.done():
                    ready.set_exception(RuntimeError(err))

            return AsyncioConnection(params, on_open_callback=on_open, on_open_error_callback=on_fail,
                                     custom_ioloop=loop)

        def subscriber(ch):
            def on_queue(frame):
                queue = frame.method.queue
                ch.queue_bind(queue, "logs", callback=lambda _f: (
                    ch.basic_consume(queue, lambda _c, _m, _p, body: received.set_result(body), auto_ack=True),
                    ready.set_result(queue),
                ))

            ch.exchange_declare("logs", "fanout", callback=lambda _f: ch.queue_declare("", exclusive=True,
                                                                                      callback=on_queue))

        sub = open_(subscriber)
        queue = await asyncio.wait_for(ready, WAIT)
        assert queue.startswith("amq.gen-")

        def publisher(ch):
            ch.exchange_declare("logs", "fanout",
                                callback=lambda _f: ch.basic_publish("logs", "", b"Hello, AMQP!"))

        pub = open_(publisher)
        assert await asyncio.wait_for(received, WAIT) == b"Hello, AMQP!"
        pub.close()
        sub.close()

    asyncio.run(main())
