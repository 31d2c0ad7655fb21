// Third-party clients wired to a Feed, shared by the Node.js suites: the `eventsource`
// package (SSE), `ws` on a raw topic socket, and MQTT.js. Each opener resolves only once
// the server has answered the subscription (SSE: the response, which Polyport sends once
// the subscription is live; MQTT: SUBACK; raw socket: the WebSocket handshake), and
// `defer`s closing the client, which so happens before the server is stopped.

import { EventSource } from 'eventsource';
import mqtt from 'mqtt';
import WebSocket from 'ws';

import { defer, Feed, WAIT_MS, within } from './polyport_server.mjs';

/**
 * `GET /api/events?{query}` through `eventsource`. Items are `{ id, event }` with the SSE
 * `id:` (the sequence, '' for ephemeral events) and the parsed CloudEvent. `headers` are
 * added to every request the client makes, as the package's README shows (custom
 * `fetch`), but never override the Last-Event-ID the client itself sends on a reconnect.
 * `onRequest(headers)` sees the headers of each request and may return a promise that
 * holds it (a test uses that to keep the client "offline" for a while).
 * With `failOnError` (the default) an `error` event fails the feed; turn it off for
 * tests that expect the client to lose and regain the connection.
 */
export async function openSse(t, server, query, { headers = {}, onRequest, failOnError = true } = {}) {
  const feed = new Feed(`SSE ?${query}`);
  const es = new EventSource(`${server.url}/api/events?${query}`, {
    fetch: async (input, init) => {
      const merged = { ...headers, ...init.headers };
      await onRequest?.(merged);
      return fetch(input, { ...init, headers: merged });
    },
  });
  defer(t, () => es.close());
  es.addEventListener('message', (m) => {
    try {
      feed.push({ id: m.lastEventId, event: JSON.parse(m.data) });
    } catch (e) {
      feed.fail(new Error(`SSE data is not JSON: ${m.data}`));
    }
  });
  // Polyport reports a subscription that ends in error as `event: error` with a JSON body.
  es.addEventListener('error', (e) => {
    if (e.data) feed.fail(new Error(`server error event: ${e.data}`));
    else if (failOnError) feed.fail(new Error(`connection error ${e.code ?? ''} ${e.message ?? ''}`));
  });
  await within(
    new Promise((resolve, reject) => {
      es.addEventListener('open', resolve, { once: true });
      es.addEventListener('error', (e) => reject(new Error(`SSE ?${query}: ${e.code ?? ''} ${e.message ?? 'connection failed'}`)), { once: true });
    }),
    `SSE ?${query}: open`,
  );
  return { es, feed };
}

/**
 * A `ws` WebSocket on `url`. Items are `{ binary, data }` where `data` is a string for text
 * frames and a Buffer for binary ones.
 */
export async function openSocket(t, url) {
  const feed = new Feed(`WebSocket ${url}`);
  const ws = new WebSocket(url);
  defer(t, () => ws.terminate());
  ws.on('message', (data, isBinary) => feed.push({ binary: isBinary, data: isBinary ? data : data.toString('utf8') }));
  ws.on('close', (code, reason) => feed.fail(new Error(`closed (${code} ${reason})`)));
  await within(
    new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', (e) => reject(new Error(`WebSocket ${url}: ${e.message}`)));
    }),
    `WebSocket ${url}: open`,
  );
  return { ws, feed };
}

/** A connected MQTT.js client (no automatic reconnects, so a failure stays visible). */
export async function mqttClient(t, server, options = {}) {
  const client = mqtt.connect(server.mqttUrl, { reconnectPeriod: 0, connectTimeout: WAIT_MS, ...options });
  defer(t, () => client.endAsync(true)); // before the wait, so a failed connect is closed too
  await within(
    new Promise((resolve, reject) => {
      client.once('connect', resolve);
      client.once('error', reject);
      client.once('close', () => reject(new Error('connection closed before CONNACK')));
    }),
    `MQTT connect to ${server.mqttUrl}`,
  );
  return client;
}

/**
 * An MQTT.js client subscribed to `filter` (SUBACK received and granted). Items are
 * `{ topic, payload: Buffer, packet }`.
 */
export async function mqttSubscriber(t, server, filter, { qos = 0, ...options } = {}) {
  const client = await mqttClient(t, server, options);
  const feed = new Feed(`MQTT ${filter}`);
  client.on('message', (topic, payload, packet) => feed.push({ topic, payload, packet }));
  client.on('close', () => feed.fail(new Error('MQTT connection closed')));
  const granted = await within(client.subscribeAsync(filter, { qos }), `MQTT SUBACK for ${filter}`);
  if (granted.length !== 1 || granted[0].qos !== qos) {
    throw new Error(`MQTT subscribe ${filter} at QoS ${qos} was granted ${JSON.stringify(granted)}`);
  }
  return { client, feed };
}
