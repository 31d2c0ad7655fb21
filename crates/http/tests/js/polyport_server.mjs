// Runs `polyport serve` for the Node.js black-box tests (crates/*/tests/js), the
// counterpart of crates/http/tests/py/polyport_server.py, plus the small waiting helpers
// every suite needs.
//
// Each test gets a fresh server: port 0 for every listener, its own temporary data dir,
// and the bound addresses read back from `{data_dir}/listeners.json`. The binary is
// $POLYPORT_BIN, else target/debug/polyport in the repository; nothing here builds it.
//
// Every wait has a deadline, so a missing feature or a lost message fails the test with
// a message naming what did not arrive instead of hanging the run.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
/** The repository's node_modules, where scripts/setup-clients installs the pinned clients. */
export const NODE_MODULES = join(REPO_ROOT, 'node_modules');
export const STARTUP_TIMEOUT_MS = 15_000;
export const SHUTDOWN_TIMEOUT_MS = 10_000;
/** How long a test waits for any single message, reply or process output. */
export const WAIT_MS = 10_000;

export function polyportBin() {
  return process.env.POLYPORT_BIN || join(REPO_ROOT, 'target', 'debug', 'polyport');
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Resolves with `promise`, or rejects with "`what`: not within N ms" once `ms` pass.
 * The timer never keeps the process alive.
 */
export function within(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
    timer.unref?.();
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Items pushed by a callback (a socket's messages, a client's events), taken one at a
 * time with a deadline. `fail(err)` makes every pending and later `next()` reject, so a
 * connection that dies surfaces at once rather than as a timeout.
 */
export class Feed {
  constructor(name) {
    this.name = name;
    this.items = [];
    this.waiters = [];
    this.error = null;
  }

  push(item) {
    const w = this.waiters.shift();
    if (w) w.resolve(item);
    else this.items.push(item);
  }

  fail(err) {
    this.error ??= err instanceof Error ? err : new Error(String(err));
    for (const w of this.waiters.splice(0)) w.reject(this.error);
  }

  next(ms = WAIT_MS) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    if (this.error) return Promise.reject(new Error(`${this.name}: ${this.error.message}`));
    let waiter;
    const p = new Promise((resolve, reject) => {
      waiter = { resolve, reject };
      this.waiters.push(waiter);
    });
    return within(p, `${this.name}: next item`, ms).catch((e) => {
      // a waiter that timed out must not swallow a later item
      this.waiters = this.waiters.filter((w) => w !== waiter);
      throw e;
    });
  }

  async take(n, ms = WAIT_MS) {
    const out = [];
    for (let i = 0; i < n; i++) out.push(await this.next(ms));
    return out;
  }

  /** Asserts that nothing arrives for `ms` (used to prove "no duplicates / no extras"). */
  async quiet(ms = 500) {
    await sleep(ms);
    assert.deepEqual(this.items, [], `${this.name}: unexpected extra items`);
  }
}

const cleanups = new WeakMap();

/**
 * Runs `fn` when test `t` ends, after everything deferred later (last in, first out):
 * clients opened during a test close before the server they talk to stops. Unlike bare
 * `t.after` hooks (first in, first out in Node 20, and a failing one skips the rest),
 * every step runs even if an earlier one fails; the first failure fails the test. Closing
 * every client matters: a socket left open keeps the test file's process alive.
 */
export function defer(t, fn) {
  let stack = cleanups.get(t);
  if (!stack) {
    stack = [];
    cleanups.set(t, stack);
    t.after(async () => {
      let first = null;
      while (stack.length) {
        try {
          await stack.pop()();
        } catch (e) {
          first ??= e;
        }
      }
      if (first) throw first;
    });
  }
  stack.push(fn);
}

function readListeners(path) {
  try {
    const doc = JSON.parse(readFileSync(path, 'utf8'));
    return doc && typeof doc === 'object' && doc.http ? doc : null;
  } catch {
    return null; // not written yet, or caught half-written
  }
}

/** A running `polyport serve` process. */
export class Server {
  constructor({ proc, dataDir, logPath, listeners, extra }) {
    this.proc = proc;
    this.dataDir = dataDir;
    this.logPath = logPath;
    this.extra = extra;
    this.http = listeners.http; // "127.0.0.1:PORT"
    this.grpc = listeners.grpc;
    this.mqtt = listeners.mqtt;
    this.amqp = listeners.amqp;
    this.stomp = listeners.stomp;
    this.exitCode = undefined;
    this.exited = new Promise((r) => proc.once('exit', (code, signal) => r(code ?? signal)));
    this.exited.then((c) => (this.exitCode = c));
  }

  get url() {
    return `http://${this.http}`;
  }

  get wsBase() {
    return `ws://${this.http}`;
  }

  get mqttPort() {
    return Number(this.mqtt.split(':').pop());
  }

  get mqttUrl() {
    return `mqtt://${this.mqtt}`;
  }

  get amqpUrl() {
    return `amqp://${this.amqp}`;
  }

  log() {
    try {
      return readFileSync(this.logPath, 'utf8');
    } catch {
      return '';
    }
  }

  /** SIGTERM, then wait; resolves with the exit code (null if it had to be killed). */
  async stop() {
    if (this.exitCode === undefined) this.proc.kill('SIGTERM');
    try {
      return await within(this.exited, 'polyport exit after SIGTERM', SHUTDOWN_TIMEOUT_MS);
    } catch {
      this.proc.kill('SIGKILL');
      await this.exited;
      return null;
    }
  }

  /**
   * Stops this server (asserting exit code 0) and starts a new one on the same data dir
   * and the same HTTP address, so clients that reconnect by themselves find it again.
   */
  async restart() {
    const code = await this.stop();
    assert.equal(code, 0, `polyport exited with ${code} on SIGTERM before the restart; log:\n${this.log().slice(-4000)}`);
    return startServer({ dataDir: this.dataDir, http: this.http, extra: this.extra });
  }
}

/**
 * Starts `polyport serve --data-dir DIR --http HTTP --grpc 127.0.0.1:0 --mqtt 127.0.0.1:0
 * ...extra` and waits for its listeners.json. The log is appended to, so a restart on the
 * same data dir keeps the earlier run's lines.
 */
export async function startServer({ dataDir, http = '127.0.0.1:0', extra = [] } = {}) {
  const exe = polyportBin();
  if (!existsSync(exe)) {
    throw new Error(`${exe} not found: run \`cargo build -p polyport\` or set POLYPORT_BIN`);
  }
  dataDir ??= mkdtempSync(join(tmpdir(), 'polyport-js-'));
  const listenersPath = join(dataDir, 'listeners.json');
  rmSync(listenersPath, { force: true });
  const logPath = join(dataDir, 'server.log');
  const logFd = openSync(logPath, 'a');
  const args = [
    'serve', '--data-dir', dataDir, '--http', http,
    ...(extra.includes('--grpc') ? [] : ['--grpc', '127.0.0.1:0']),
    ...(extra.includes('--mqtt') ? [] : ['--mqtt', '127.0.0.1:0']),
    ...(extra.includes('--amqp') ? [] : ['--amqp', '127.0.0.1:0']),
    ...(extra.includes('--stomp') ? [] : ['--stomp', '127.0.0.1:0']),
    ...extra,
  ];
  const proc = spawn(exe, args, {
    cwd: dataDir,
    stdio: ['ignore', logFd, logFd],
    env: {
      RUST_LOG: 'info',
      // Tests never let webhook deliveries leave this machine.
      POLYPORT_WEBHOOKS_ALLOW_PUBLIC: 'false',
      POLYPORT_WEBHOOKS_ALLOW_NETWORKS: '127.0.0.0/8',
      ...process.env,
    },
  });
  closeSync(logFd); // the child holds its own copy
  let exit = null;
  proc.once('exit', (code, signal) => (exit = code ?? signal));
  proc.once('error', (e) => (exit = e.message));
  const log = () => readFileSync(logPath, 'utf8');

  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const listeners = readListeners(listenersPath);
    if (listeners) return new Server({ proc, dataDir, logPath, listeners, extra });
    if (exit !== null) throw new Error(`polyport exited with ${exit} before writing ${listenersPath}:\n${log()}`);
    await sleep(20);
  }
  proc.kill('SIGKILL');
  throw new Error(`no ${listenersPath} after ${STARTUP_TIMEOUT_MS} ms:\n${log()}`);
}

/**
 * A fresh server for test `t` (`await serverFor(t, '--demo', 'blog')`). At the end of the
 * test it is stopped with SIGTERM, which must give exit code 0 within 10 s; its data dir
 * is removed afterwards. Clients opened later (see `defer`) are closed before that.
 */
export async function serverFor(t, ...extra) {
  const holder = { server: await startServer({ extra }) };
  const dataDir = holder.server.dataDir;
  defer(t, async () => {
    const s = holder.server;
    const code = await s.stop();
    const log = s.log();
    rmSync(dataDir, { recursive: true, force: true });
    assert.equal(code, 0, `polyport on ${s.http} exited with ${code} after SIGTERM (want 0 within ${SHUTDOWN_TIMEOUT_MS} ms); log:\n${log.slice(-4000)}`);
  });
  // `restartInPlace()` restarts on the same data dir and address and swaps the server
  // that the hook above stops.
  const attach = (s) => {
    s.restartInPlace = async () => {
      holder.server = await holder.server.restart();
      return attach(holder.server);
    };
    return s;
  };
  const server = attach(holder.server);
  return server;
}

/** `fetch` against the server, failing with the response body on an unexpected status. */
export async function request(server, method, path, { body, headers = {}, expect } = {}) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    if (typeof body === 'string' || body instanceof Uint8Array) init.body = body;
    else {
      init.body = JSON.stringify(body);
      init.headers['content-type'] ??= 'application/json';
    }
  }
  const res = await within(fetch(`${server.url}${path}`, init), `${method} ${path}`);
  const text = await res.text();
  if (expect !== undefined) assert.equal(res.status, expect, `${method} ${path} → ${res.status}: ${text}`);
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

/** `POST /api/topics/{topic}`; returns the event's sequence. */
export async function publish(server, topic, body, contentType = 'text/plain') {
  const r = await request(server, 'POST', `/api/topics/${topic}`, {
    body,
    headers: { 'content-type': contentType },
    expect: 202,
  });
  assert.equal(typeof r.json?.sequence, 'number', `publish reply without a sequence: ${r.text}`);
  return r.json.sequence;
}

/**
 * Runs `source` as a CommonJS script (`name.cjs` in a temp dir) with its own `node`
 * process; `require()` finds the repository's node_modules through NODE_PATH. Returns
 * `{ lines, exited, kill }`: `lines` is a Feed of stdout lines; stderr is kept for the
 * failure messages. The process is killed at the end of test `t` if still running.
 */
export function runSnippet(t, name, source) {
  const dir = mkdtempSync(join(tmpdir(), 'polyport-snippet-'));
  const file = join(dir, `${name}.cjs`);
  writeFileSync(file, source);
  const child = spawn(process.execPath, [file], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NODE_PATH: NODE_MODULES },
  });
  const lines = new Feed(`${name} stdout`);
  let stderr = '';
  let partial = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk) => {
    const parts = (partial + chunk).split('\n');
    partial = parts.pop();
    for (const l of parts) lines.push(l);
  });
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (c) => (stderr += c));
  const exited = new Promise((r) =>
    child.once('exit', (code, signal) => {
      if (partial) lines.push(partial);
      lines.fail(new Error(`process exited (${code ?? signal}); stderr:\n${stderr}`));
      r(code ?? signal);
    }),
  );
  defer(t, async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  });
  return { child, lines, exited, stderr: () => stderr };
}
