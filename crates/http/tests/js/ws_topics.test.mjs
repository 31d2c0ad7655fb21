// Raw topic sockets, `ws://HOST/ws/topics/{topic…}`, through the `ws` package: every text
// or binary message a client sends is published on the topic, and every event on the
// topic comes back as its raw payload (text frames for text, binary frames otherwise) to
// all members, the sender included; `?since=N` resumes after sequence N. This is what
// lets seed 000's plain WebSocket client chat through Polyport with nothing but a URL.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { mqttSubscriber, openSocket } from './clients.mjs';
import { publish, runSnippet, serverFor } from './polyport_server.mjs';

const TEST_TIMEOUT_MS = 45_000;

// Seed 000's client, exactly as the article writes it.
const SEED_000_WS_CLIENT = `const WebSocket = require('ws');

const ws = new WebSocket('ws://localhost:8765');

ws.on('open', () => {
  console.log('Connected to WebSocket server');
  ws.send('Hello from WebSocket Client!');
});

ws.on('message', (message) => {
  console.log(\`Received: \${message}\`);
});
`;

test('seed 000 ws client, unchanged but for the address, is echoed and reaches MQTT and another socket', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const server = await serverFor(t);
  const room = `${server.wsBase}/ws/topics/chat/lobby`;

  // The other members of the room, subscribed before the snippet speaks.
  const mqttMember = await mqttSubscriber(t, server, 'chat/lobby');
  const peer = await openSocket(t, room);

  const source = SEED_000_WS_CLIENT.replace("'ws://localhost:8765'", `'${room}'`);
  assert.notEqual(source, SEED_000_WS_CLIENT, 'the address was replaced');
  const snippet = runSnippet(t, 'seed-000-ws-client', source);

  assert.equal(await snippet.lines.next(), 'Connected to WebSocket server');
  // The server echoes to every member of the topic, the sender included.
  assert.equal(await snippet.lines.next(), 'Received: Hello from WebSocket Client!');

  const m = await mqttMember.feed.next();
  assert.equal(m.topic, 'chat/lobby');
  assert.equal(m.payload.toString('utf8'), 'Hello from WebSocket Client!');

  assert.deepEqual(await peer.feed.next(), { binary: false, data: 'Hello from WebSocket Client!' });
});

test('?since=0 replays the topic as text frames, in order', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const server = await serverFor(t);
  const first = await publish(server, 'chat/replay', 'first message');
  const second = await publish(server, 'chat/replay', 'second message');
  assert.ok(second > first, `sequences increase (${first}, ${second})`);
  await publish(server, 'chat/elsewhere', 'not for this room');

  const late = await openSocket(t, `${server.wsBase}/ws/topics/chat/replay?since=0`);
  assert.deepEqual(await late.feed.take(2), [
    { binary: false, data: 'first message' },
    { binary: false, data: 'second message' },
  ]);
  // Nothing replayed twice, and the other topic stays out.
  await late.feed.quiet(500);
});

test('a binary payload arrives as a binary frame with exactly its bytes', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const server = await serverFor(t);
  const bytes = Uint8Array.from([0, 1, 2, 255]);
  await publish(server, 'chat/binary', bytes, 'application/octet-stream');

  const sock = await openSocket(t, `${server.wsBase}/ws/topics/chat/binary?since=0`);
  const frame = await sock.feed.next();
  assert.equal(frame.binary, true, `want a binary frame, got text ${JSON.stringify(frame.data)}`);
  assert.deepEqual([...frame.data], [0, 1, 2, 255]);
});
