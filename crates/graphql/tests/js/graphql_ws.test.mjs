// GraphQL subscriptions through `graphql-ws` (the graphql-transport-ws protocol), with
// `ws` as the WebSocket implementation, as a Node.js service would use it.
//
// graphql-transport-ws has no "subscription is live" message, so each subscription
// passes `since:` the current head of the log (the sequence of a publish made just
// before): whatever is written afterwards is then delivered whether it arrives by replay
// or live, and the test cannot race the server.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

import { defer, publish, request, serverFor, within } from '../../../http/tests/js/polyport_server.mjs';

const TEST_TIMEOUT_MS = 45_000;

/** A graphql-ws client on ws://HOST/graphql that never retries (failures stay visible). */
function graphqlClient(t, server) {
  const client = createClient({ url: `${server.wsBase}/graphql`, webSocketImpl: WebSocket, retryAttempts: 0, lazy: true });
  defer(t, () => client.dispose());
  return client;
}

/** Subscribes and returns a function that awaits the next result (with a deadline). */
function subscribe(t, client, payload) {
  const iterator = client.iterate(payload);
  defer(t, () => iterator.return?.());
  return async (what) => {
    const { value, done } = await within(iterator.next(), what);
    assert.equal(done, false, `${what}: the subscription completed`);
    assert.equal(value.errors, undefined, `${what}: ${JSON.stringify(value.errors)}`);
    return value.data;
  };
}

test('recordChanged delivers a record created over REST', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const server = await serverFor(t);
  const head = await publish(server, 'probe/head', 'where the log is now');
  const next = subscribe(t, graphqlClient(t, server), {
    query: `subscription($since: Long) {
      recordChanged(collection: "posts", since: $since) { type operation sequence collection id record }
    }`,
    variables: { since: head },
  });

  const created = await request(server, 'POST', '/api/collections/posts/records', { body: { title: 'over graphql-ws' }, expect: 201 });
  const { recordChanged: change } = await next('recordChanged for the new post');
  assert.equal(change.type, 'posts.created');
  assert.equal(change.operation, 'created');
  assert.equal(change.collection, 'posts');
  assert.equal(change.id, created.json.id);
  assert.equal(change.record.title, 'over graphql-ws');
  assert.ok(Number.isInteger(change.sequence) && change.sequence > head, `sequence ${change.sequence} after ${head}`);
});

test('events(topic:) delivers REST publishes with their payload and sequence', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const server = await serverFor(t);
  const head = await publish(server, 'probe/head', 'where the log is now');
  const next = subscribe(t, graphqlClient(t, server), {
    query: `subscription($since: Long) {
      events(topic: "sensors/#", since: $since) { sequence type subject datacontenttype data }
    }`,
    variables: { since: head },
  });

  const seq = await publish(server, 'sensors/temperature', '25°C');
  const { events: ev } = await next('event on sensors/temperature');
  assert.deepEqual(ev, { sequence: seq, type: 'polyport.message', subject: 'sensors/temperature', datacontenttype: 'text/plain', data: '25°C' });
});
