// Server-Sent Events through the `eventsource` package (v4, the WHATWG EventSource for
// Node): each SSE `id:` is the event's sequence, the data a CloudEvent whose `data` is
// the published payload, and a client that comes back with Last-Event-ID gets exactly
// what it missed — whether it sends the header itself or reconnects on its own after
// the server restarted.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { openSse } from './clients.mjs';
import { publish, serverFor } from './polyport_server.mjs';

const TEST_TIMEOUT_MS = 45_000;
const NEWS = 'topic=news/%23';

/** Publishes `{"n": n}` on `topic` for each n; returns the sequences. */
async function publishNews(server, topic, ns) {
  const seqs = [];
  for (const n of ns) seqs.push(await publish(server, topic, JSON.stringify({ n }), 'application/json'));
  return seqs;
}

/** Takes `seqs.length` events and asserts they are exactly those, in order. */
async function expectEvents(feed, seqs, ns) {
  const got = await feed.take(seqs.length);
  assert.deepEqual(
    got.map(({ id, event }) => ({ id, sequence: event.sequence, n: event.data?.n })),
    seqs.map((s, i) => ({ id: String(s), sequence: s, n: ns[i] })),
  );
  return got;
}

test('SSE delivers REST publishes as CloudEvents and resumes from Last-Event-ID', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const server = await serverFor(t);
  const first = await openSse(t, server, NEWS);

  const seen = await publishNews(server, 'news/world', [1, 2, 3]);
  const got = await expectEvents(first.feed, seen, [1, 2, 3]);
  const ev = got[0].event;
  assert.equal(ev.specversion, '1.0');
  assert.equal(ev.type, 'polyport.message');
  assert.equal(ev.datacontenttype, 'application/json');
  assert.equal(ev.subject, 'news/world');

  // The reader goes away; what is published meanwhile must not be lost.
  first.es.close();
  const missed = await publishNews(server, 'news/sport/football', [4, 5, 6]);
  await publish(server, 'weather/today', 'not news'); // outside the filter

  const lastId = got.at(-1).id;
  const again = await openSse(t, server, NEWS, { headers: { 'Last-Event-ID': lastId } });
  await expectEvents(again.feed, missed, [4, 5, 6]);
  // Then live events, with nothing replayed twice in between.
  const live = await publishNews(server, 'news/world', [7]);
  await expectEvents(again.feed, live, [7]);
});

test('EventSource reconnects by itself after a server restart and gets exactly what it missed', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  let server = await serverFor(t);

  // Every request the client makes is recorded. Reconnects wait for `online`, so the
  // client is provably offline while the missed events are published: it can only get
  // them by resuming from the Last-Event-ID it sends, not live.
  const requests = [];
  let goOnline;
  const online = new Promise((r) => (goOnline = r));
  const client = await openSse(t, server, NEWS, {
    failOnError: false, // losing the connection is the point of this test
    onRequest: (headers) => {
      requests.push(headers);
      return requests.length > 1 ? online : undefined;
    },
  });

  const seen = await publishNews(server, 'news/world', [1, 2]);
  const got = await expectEvents(client.feed, seen, [1, 2]);

  server = await server.restartInPlace(); // same data dir, same HTTP address
  const missed = await publishNews(server, 'news/world', [3, 4]);
  goOnline();

  await expectEvents(client.feed, missed, [3, 4]);
  assert.equal(requests.length, 2, 'one reconnect');
  assert.equal(requests[1]['Last-Event-ID'], got.at(-1).id, 'the reconnect carried the last seen id');
  const live = await publishNews(server, 'news/world', [5]);
  await expectEvents(client.feed, live, [5]);
});
