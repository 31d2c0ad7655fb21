// STOMP as a Node.js user meets it, through @stomp/stompjs: over TCP (@stomp/tcp-wrapper)
// and over WebSocket (`/stomp`, subprotocol v12.stomp), on the same destinations as
// MQTT.js.

import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { test } from 'node:test';

import { mqttClient } from '../../../http/tests/js/clients.mjs';
import { NODE_MODULES, defer, serverFor, within } from '../../../http/tests/js/polyport_server.mjs';

const require = createRequire(`${NODE_MODULES}/`);
const { Client } = require('@stomp/stompjs');
const { TCPWrapper } = require('@stomp/tcp-wrapper');
const WebSocket = require('ws');

const TEST_TIMEOUT_MS = 45_000;

/** An activated stompjs client, connected; deactivated when the test ends. */
async function stompClient(t, factory) {
  const client = new Client({
    webSocketFactory: factory,
    connectHeaders: { login: 'guest', passcode: 'guest', host: '/' },
    reconnectDelay: 0,
    heartbeatIncoming: 0,
    heartbeatOutgoing: 0,
  });
  const connected = new Promise((resolve, reject) => {
    client.onConnect = resolve;
    client.onStompError = (f) => reject(new Error(f.headers.message));
    client.onWebSocketError = (e) => reject(new Error(`socket error ${e?.message ?? e}`));
  });
  client.activate();
  defer(t, () => client.deactivate());
  const frame = await within(connected, 'CONNECTED');
  return { client, frame };
}

/** Resolves with the next `n` messages of a subscription. */
function collect(client, destination, n, headers = {}) {
  const got = [];
  return new Promise((resolve) => {
    client.subscribe(destination, (m) => {
      got.push(m);
      if (m.headers.ack) m.ack();
      if (got.length === n) resolve(got);
    }, headers);
  });
}

test('stompjs over TCP: queues with client acks and topics shared with MQTT.js', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const server = await serverFor(t);
  const [host, port] = server.stomp.split(':');
  const { client, frame } = await stompClient(t, () => new TCPWrapper(host, Number(port)));
  assert.equal(frame.headers.version, '1.2');
  const jobs = collect(client, '/queue/node-jobs', 2, { ack: 'client-individual' });
  client.publish({ destination: '/queue/node-jobs', body: 'one' });
  client.publish({ destination: '/queue/node-jobs', body: 'two', headers: { 'x-trace': 't1' } });
  const got = await within(jobs, 'two queue messages');
  assert.deepEqual(got.map((m) => m.body), ['one', 'two']);
  assert.equal(got[1].headers['x-trace'], 't1');

  const readings = collect(client, '/topic/sensors.*', 1);
  await new Promise((r) => setTimeout(r, 200)); // the SUBSCRIBE's round trip
  const mqtt = await mqttClient(t, server);
  await within(mqtt.publishAsync('sensors/kitchen', '21.5', { qos: 1 }), 'PUBACK');
  const [m] = await within(readings, 'the MQTT publish over STOMP');
  assert.equal(m.body, '21.5');
  assert.equal(m.headers.destination, '/topic/sensors.kitchen');
});

test('stompjs over WebSocket: two clients talk through a topic, receipts arrive', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const server = await serverFor(t);
  const url = `ws://${server.http}/stomp`;
  const ws = () => new WebSocket(url, ['v12.stomp', 'v11.stomp']);
  const alice = await stompClient(t, ws);
  const bob = await stompClient(t, ws);
  const toBob = collect(bob.client, '/topic/chat.room1', 1);
  await new Promise((r) => setTimeout(r, 200));
  const receipt = new Promise((resolve) => alice.client.watchForReceipt('sent-1', resolve));
  alice.client.publish({ destination: '/topic/chat.room1', body: 'hi bob', headers: { receipt: 'sent-1' } });
  await within(receipt, 'the RECEIPT');
  const [m] = await within(toBob, "alice's message");
  assert.equal(m.body, 'hi bob');
  // Binary bodies keep their bytes (content-length, NULs inside).
  const bin = collect(bob.client, '/queue/bin', 1);
  alice.client.publish({ destination: '/queue/bin', binaryBody: new Uint8Array([0, 1, 2, 0, 255]) });
  const [b] = await within(bin, 'the binary message');
  assert.deepEqual([...b.binaryBody], [0, 1, 2, 0, 255]);
});
