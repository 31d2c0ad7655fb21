// Cluster mode as a Node.js user meets it: two `polyport serve` nodes on one PostgreSQL
// schema and one NATS deployment. Seed 000's MQTT.js publisher, unchanged but for the
// address, publishes through node A; node B's EventSource, MQTT.js and amqplib clients
// get it. A record created over REST on A reaches B's EventSource with the sequence A's
// own subscribers see.
//
// Needs the PostgreSQL and NATS this machine runs (scripts/services starts them). The
// schema is dropped after; the bucket name is fixed, and each run's nodes replace the
// last run's log stream (a new schema is a new log) while its heartbeats expire.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { test } from 'node:test';

import { mqttSubscriber, openSse } from '../../../http/tests/js/clients.mjs';
import { NODE_MODULES, defer, request, serverFor, within } from '../../../http/tests/js/polyport_server.mjs';
import { runSeed000MqttPublisher } from '../../../http/tests/js/seeds.mjs';

const require = createRequire(`${NODE_MODULES}/`);
const amqp = require('amqplib');

const TEST_TIMEOUT_MS = 60_000;
const PG = process.env.POLYPORT_TEST_POSTGRES_URL || 'postgres://postgres@127.0.0.1/test';
const NATS = process.env.POLYPORT_TEST_NATS_URL || 'nats://127.0.0.1:4222';

/** Two nodes of one fresh deployment, stopped and their schema dropped after `t`. */
async function twoNodes(t) {
  const schema = `js_${randomBytes(8).toString('hex')}`;
  defer(t, () => {
    const r = spawnSync('psql', [PG, '-qc', `DROP SCHEMA IF EXISTS "${schema}" CASCADE`], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
  });
  const node = ['--store', PG, '--store-schema', schema, '--bus', NATS, '--bucket', 'polyport-js-cluster-test'];
  const a = await serverFor(t, ...node);
  const b = await serverFor(t, ...node);
  return [a, b];
}

test('seed 000 MQTT.js publisher through node A reaches EventSource, MQTT.js and amqplib on node B', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const [a, b] = await twoNodes(t);
  const mqttSub = await mqttSubscriber(t, b, 'temperature');
  const sse = await openSse(t, b, 'topic=temperature');
  const conn = await amqp.connect(b.amqpUrl);
  defer(t, () => conn.close());
  const ch = await conn.createChannel();
  const q = await ch.assertQueue('', { exclusive: true });
  await ch.bindQueue(q.queue, 'amq.topic', 'temperature');
  const got = new Promise((resolve) => ch.consume(q.queue, (m) => resolve(m), { noAck: true }));

  await runSeed000MqttPublisher(t, 'seed-000-mqtt-publisher-cluster', a.mqttUrl);

  const m = await mqttSub.feed.next();
  assert.equal(m.payload.toString('utf8'), '25°C');
  const { event } = await sse.feed.next();
  assert.equal(event.data, '25°C', `CloudEvent: ${JSON.stringify(event)}`);
  const delivery = await within(got, 'the AMQP delivery on node B');
  assert.equal(delivery.content.toString(), '25°C');
  assert.equal(delivery.fields.routingKey, 'temperature');
});

test('a record created on node A reaches both nodes\' EventSource with one sequence', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const [a, b] = await twoNodes(t);
  const onA = await openSse(t, a, 'topic=collections/%23');
  const onB = await openSse(t, b, 'topic=collections/%23');
  const created = await request(a, 'POST', '/api/collections/posts/records', { body: { title: 'hello cluster' }, expect: 201 });
  const [ea, eb] = [await onA.feed.next(), await onB.feed.next()];
  for (const e of [ea, eb]) {
    assert.ok(JSON.stringify(e.event).includes(created.json.id), `the created record's event: ${JSON.stringify(e.event)}`);
  }
  assert.equal(eb.id, ea.id, 'the same sequence (SSE id) on both nodes');
});
