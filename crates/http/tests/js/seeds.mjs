// Seed snippets more than one suite runs, exactly as the articles write them, and how
// to run one against a test server (unchanged but for the address).

import assert from 'node:assert/strict';

import { runSnippet, within } from './polyport_server.mjs';

// Seed 000's MQTT.js publisher.
export const SEED_000_MQTT_PUBLISHER = `const mqtt = require('mqtt');

const client = mqtt.connect('mqtt://localhost:1883'); // Replace with your broker URL

client.on('connect', () => {
    const topic = 'temperature';
    const message = '25°C';

    client.publish(topic, message);
    console.log(\`Published to topic '\${topic}': \${message}\`);

    client.end();
});
`;

/**
 * Runs seed 000's MQTT.js publisher against `mqttUrl` as its own process (named `name`)
 * and waits for its line and its exit: its one message is then written.
 */
export async function runSeed000MqttPublisher(t, name, mqttUrl) {
  const source = SEED_000_MQTT_PUBLISHER.replace("'mqtt://localhost:1883'", `'${mqttUrl}'`);
  assert.notEqual(source, SEED_000_MQTT_PUBLISHER, 'the address was replaced');
  const snippet = runSnippet(t, name, source);
  assert.equal(await snippet.lines.next(), "Published to topic 'temperature': 25°C");
  // `client.end()` lets the script finish by itself once the PUBLISH is written.
  assert.equal(await within(snippet.exited, 'the publisher script exits'), 0, `stderr:\n${snippet.stderr()}`);
}
