// SOAP as a Node.js user meets it: the `soap` package's `soap.createClient(url)` reads
// the generated WSDL and calls the demo blog's operations over both bindings (seed 003's
// Node side), an independent second client beside the Python suite's zeep.

import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { test } from 'node:test';

import { openSse } from '../../../http/tests/js/clients.mjs';
import { NODE_MODULES, request, serverFor, within } from '../../../http/tests/js/polyport_server.mjs';

const require = createRequire(`${NODE_MODULES}/`);
const soap = require('soap');

const TEST_TIMEOUT_MS = 45_000;
const TNS = 'urn:polyport:soap';

/** `call(op, args)` on one of the WSDL's two ports. */
async function client(server, port) {
  const c = await within(soap.createClientAsync(`${server.url}/soap?wsdl`, { forceSoap12Headers: port === 'PolyportSoap12' }), 'the WSDL');
  c.setEndpoint(`${server.url}/soap`);
  const svc = c.Polyport[port];
  return (op, args) => within(new Promise((resolve, reject) => svc[op](args, (err, res) => (err ? reject(err) : resolve(res)))), op);
}

for (const port of ['PolyportSoap11', 'PolyportSoap12']) {
  test(`soap (Node) calls every operation over ${port}`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const server = await serverFor(t, '--demo', 'blog');
    const call = await client(server, port);

    const { record: user } = await call('GetUser', { id: '123' });
    assert.equal(user.username, 'john_doe');

    const { record: post } = await call('CreatePost', { title: 'From Node', author: '123', tags: ['x', 'y'] });
    assert.deepEqual([post.title, post.tags, post.version], ['From Node', ['x', 'y'], 1]);
    const rest = await request(server, 'GET', `/api/collections/posts/records/${post.id}`, { expect: 200 });
    assert.equal(rest.json.title, 'From Node', 'the SOAP write is the REST record');

    const page = await call('ListPosts', { filter: 'title ~ "node"', count: true });
    assert.equal(page.total, 1);
    assert.equal(page.records[0].id, post.id);

    const { record: updated } = await call('UpdatePost', { id: post.id, expected_version: 1, body: 'edited' });
    assert.deepEqual([updated.version, updated.body], [2, 'edited']);
    const stale = await call('UpdatePost', { id: post.id, expected_version: 1, body: 'lost' }).then(() => null, (e) => e);
    assert.ok(stale, 'a stale expected_version is a fault');
    const fault = stale.root.Envelope.Body.Fault;
    const detail = port === 'PolyportSoap11' ? fault.detail : fault.Detail;
    assert.equal(detail.fault.code, 'version_mismatch');

    const { record: deleted } = await call('DeletePost', { id: post.id });
    assert.equal(deleted.version, 2);
    await request(server, 'GET', `/api/collections/posts/records/${post.id}`, { expect: 404 });

    const { es, feed } = await openSse(t, server, 'topic=sensors/%23');
    const sent = await call('Publish', { topic: 'sensors/node', data: '42' });
    const ev = await within(feed.next(), 'the SOAP publish on SSE');
    assert.equal(Number(ev.id), Number(sent.sequence));
    assert.equal(ev.event.data, '42');
    es.close();
  });
}

test('soap (Node) sees the WSDL regenerated for a new collection', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const server = await serverFor(t);
  await request(server, 'POST', '/api/collections', {
    body: { name: 'devices', fields: [{ name: 'label', type: 'text', required: true }, { name: 'watts', type: 'number' }] },
    expect: 201,
  });
  const call = await client(server, 'PolyportSoap11');
  const { record } = await call('CreateDevice', { label: 'lamp', watts: 9.5 });
  assert.deepEqual([record.label, record.watts], ['lamp', 9.5]);
  const wsdl = await request(server, 'GET', '/soap.wsdl', { expect: 200 });
  assert.match(wsdl.text, new RegExp(`soapAction="${TNS}#ListDevices"`));
});
