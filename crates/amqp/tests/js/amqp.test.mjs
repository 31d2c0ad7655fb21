// AMQP as a Node.js user meets it, through amqplib: seed 000's JavaScript publisher and
// subscriber run as their own processes, unchanged but for the address, and an amqplib
// consumer receiving what an MQTT.js client publishes.

import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { test } from 'node:test';

import { mqttClient } from '../../../http/tests/js/clients.mjs';
import { NODE_MODULES, runSnippet, serverFor, within } from '../../../http/tests/js/polyport_server.mjs';

const require = createRequire(`${NODE_MODULES}/`);
const amqp = require('amqplib');

const TEST_TIMEOUT_MS = 45_000;

// Seed 000's amqplib publisher and subscriber, exactly as the article writes them.
const SEED_000_PUBLISHER = `const amqp = require('amqplib');

async function publishMessage() {
    // Replace with your AMQP broker URL
    const connection = await amqp.connect('amqp://localhost'); 
    const channel = await connection.createChannel();

    const exchangeName = 'logs';
    const message = 'Hello, AMQP!';

    await channel.assertExchange(exchangeName, 'fanout', { durable: false });
    channel.publish(exchangeName, '', Buffer.from(message));

    console.log(\`Published to exchange '\${exchangeName}': \${message}\`);

    await channel.close();
    await connection.close();
}

publishMessage();
`;

const SEED_000_SUBSCRIBER = `const amqp = require('amqplib');

async function subscribeToMessages() {
    // Replace with your AMQP broker URL
    const connection = await amqp.connect('amqp://localhost'); 
    const channel = await connection.createChannel();

    const exchangeName = 'logs';

    await channel.assertExchange(exchangeName, 'fanout', { durable: false });
    const q = await channel.assertQueue('', { exclusive: true });
    channel.bindQueue(q.queue, exchangeName, '');

    console.log(\`Waiting for messages in queue '\${q.queue}'\`);

    channel.consume(q.queue, (msg) => {
        console.log(\`Received: \${msg.content.toString()}\`);
    }, { noAck: true });
}

subscribeToMessages();
`;

test('seed 000 amqplib publisher and subscriber, unchanged but for the address', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const server = await serverFor(t);
  const address = (src) => src.replace("'amqp://localhost'", `'${server.amqpUrl}'`);
  const sub = runSnippet(t, 'seed-000-amqp-subscriber', address(SEED_000_SUBSCRIBER));
  assert.match(await sub.lines.next(), /^Waiting for messages in queue 'amq\.gen-/);
  // bindQueue is not awaited by the snippet: give the bind its round trip.
  await new Promise((r) => setTimeout(r, 300));
  const pub = runSnippet(t, 'seed-000-amqp-publisher', address(SEED_000_PUBLISHER));
  assert.equal(await pub.lines.next(), "Published to exchange 'logs': Hello, AMQP!");
  assert.equal(await within(pub.exited, 'the publisher exits'), 0, `stderr:\n${pub.stderr()}`);
  assert.equal(await sub.lines.next(), 'Received: Hello, AMQP!');
});

test('an amqplib consumer on amq.topic receives MQTT.js publishes', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const server = await serverFor(t);
  const conn = await amqp.connect(server.amqpUrl);
  const ch = await conn.createChannel();
  const q = await ch.assertQueue('', { exclusive: true });
  await ch.bindQueue(q.queue, 'amq.topic', 'sensors.*.temperature');
  const got = new Promise((resolve) => ch.consume(q.queue, (m) => resolve(m), { noAck: true }));
  const mqtt = await mqttClient(t, server);
  await within(mqtt.publishAsync('sensors/kitchen/temperature', '21.5', { qos: 1 }), 'PUBACK');
  const m = await within(got, 'the AMQP delivery');
  assert.equal(m.content.toString(), '21.5');
  assert.equal(m.fields.exchange, 'amq.topic');
  assert.equal(m.fields.routingKey, 'sensors.kitchen.temperature');
  await conn.close();
});
