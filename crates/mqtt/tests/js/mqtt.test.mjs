// MQTT as a Node.js user meets it, through MQTT.js v5: seed 000's publisher snippet run
// as its own process, an MQTT 5 QoS 1 round trip with user properties, and a record
// written over REST arriving at an MQTT subscriber.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { mqttClient, mqttSubscriber, openSse } from '../../../http/tests/js/clients.mjs';
import { request, serverFor, within } from '../../../http/tests/js/polyport_server.mjs';
import { runSeed000MqttPublisher } from '../../../http/tests/js/seeds.mjs';

const TEST_TIMEOUT_MS = 45_000;

test('seed 000 MQTT.js publisher, unchanged but for the address, reaches MQTT and SSE subscribers', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const server = await serverFor(t);
  const mqttSub = await mqttSubscriber(t, server, 'temperature');
  const sse = await openSse(t, server, 'topic=temperature');

  await runSeed000MqttPublisher(t, 'seed-000-mqtt-publisher', server.mqttUrl);

  const m = await mqttSub.feed.next();
  assert.equal(m.topic, 'temperature');
  assert.equal(m.payload.toString('utf8'), '25°C');

  const { event } = await sse.feed.next();
  assert.equal(event.specversion, '1.0');
  assert.equal(event.data, '25°C', `CloudEvent: ${JSON.stringify(event)}`);
});

test('MQTT 5 QoS 1 round trip keeps user properties and is logged durably', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const server = await serverFor(t);
  const sub = await mqttSubscriber(t, server, 'sensors/+/v5', { qos: 1, protocolVersion: 5 });
  const pub = await mqttClient(t, server, { protocolVersion: 5 });

  const userProperties = { origin: 'node-test', run: '42' };
  // publishAsync resolves once PUBACK arrives, which Polyport sends only after the event
  // is on disk.
  await within(
    pub.publishAsync('sensors/room1/v5', 'hello v5', { qos: 1, properties: { userProperties, contentType: 'text/plain' } }),
    'PUBACK',
  );

  const m = await sub.feed.next();
  assert.equal(m.topic, 'sensors/room1/v5');
  assert.equal(m.payload.toString('utf8'), 'hello v5');
  assert.equal(m.packet.qos, 1);
  // MQTT.js hands user properties over as a null-prototype object.
  assert.deepEqual({ ...m.packet.properties?.userProperties }, userProperties, `properties: ${JSON.stringify(m.packet.properties)}`);
  assert.equal(m.packet.properties?.contentType, 'text/plain');

  // Acknowledged QoS 1 means durable: a replay of the log from 0 has it, with a sequence.
  const r = await request(server, 'GET', '/api/poll?topic=sensors/%23&since=0&wait=2', { expect: 200 });
  const logged = r.json.events.filter((e) => e.data === 'hello v5');
  assert.equal(logged.length, 1, `poll: ${r.text}`);
  assert.equal(typeof logged[0].sequence, 'number');
});

test('a record created over REST reaches an MQTT.js subscriber of collections/posts/#', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const server = await serverFor(t);
  const sub = await mqttSubscriber(t, server, 'collections/posts/#', { qos: 1 });

  const created = await request(server, 'POST', '/api/collections/posts/records', { body: { title: 'to mqtt.js' }, expect: 201 });
  const id = created.json.id;
  assert.ok(id, `created: ${created.text}`);

  const m = await sub.feed.next();
  assert.equal(m.topic, `collections/posts/${id}`);
  assert.equal(m.packet.qos, 1);
  const body = JSON.parse(m.payload.toString('utf8'));
  assert.equal(body.type, 'posts.created');
  assert.equal(body.record.id, id);
  assert.equal(body.record.title, 'to mqtt.js');
});
