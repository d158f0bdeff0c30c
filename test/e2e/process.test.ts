// The real process: the demo quick start works, and SIGTERM lets in-flight streams finish.
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { startFakeOpenAI, type FakeOpenAI } from '../../src/fake-openai/server.js';
import { freePort } from '../helpers/redis-server.js';
import { testRedisUrl } from '../helpers/redis.js';
import { startGateway } from '../helpers/gateway.js';
import { onLinuxGlibc } from '../helpers/platform.js';

const ADMIN = 'process-test-admin-token';
let child: ChildProcess | undefined;
let fake: FakeOpenAI | undefined;

afterEach(async () => {
  if (child && child.exitCode === null) {
    child.kill('SIGKILL');
    await once(child, 'exit');
  }
  await fake?.close();
  child = fake = undefined;
});

function startServer(env: Record<string, string>, args: string[] = []) {
  const proc = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts', ...args], {
    env: { PATH: process.env.PATH, HOST: '127.0.0.1', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  proc.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  child = proc;
  return { proc, output: () => output };
}

async function waitUntilUp(base: string) {
  await expect
    .poll(async () => (await fetch(`${base}/healthz`).catch(() => undefined))?.status, { timeout: 15_000, interval: 100 })
    .toBe(200);
}

/** The gateway process against the fake upstream and the test Redis (a prefix of its own), up and answering. */
async function startAgainstFake(name: string, env: Record<string, string>) {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const prefix = `${name}${port}:`;
  const server = startServer({
    PORT: String(port),
    OPENAI_API_KEY: 'sk-up',
    OPENAI_BASE_URL: fake!.url,
    ADMIN_TOKEN: ADMIN,
    REDIS_URL: testRedisUrl(),
    REDIS_PREFIX: prefix,
    ...env,
  });
  await waitUntilUp(base);
  return { server, base, prefix };
}

describe('demo mode', () => {
  it('starts with no Redis and no OpenAI key, and prints a key and a curl line that work', async () => {
    const port = await freePort();
    const server = startServer({ PORT: String(port) }, ['--demo']);
    const base = `http://127.0.0.1:${port}`;
    await waitUntilUp(base);
    await expect.poll(() => server.output(), { timeout: 5000 }).toContain('curl ');
    const key = /gateway key:\s+(tg-\S+)/.exec(server.output())![1]!;
    expect(server.output()).toContain(`curl ${base}/v1/chat/completions`);
    const res = await chat(base, key, 'Hello!');
    expect(res.status).toBe(200);
    expect(((await res.json()) as { object: string }).object).toBe('chat.completion');
    expect(server.output()).toContain('in-memory store');
    // The demo key is made over HTTP: its log line is a request's like any other (an injected one
    // said the client had left).
    await expect.poll(() => server.output()).toMatch(/"status":201[^\n]*"path":"\/admin\/keys"/);
    const created = server.output().split('\n').find((l) => l.includes('"path":"/admin/keys"'))!;
    expect(created).not.toContain('clientAborted');
    // The start-up log says whether freed native memory is given back (src/native-memory.ts).
    // Logs are written in batches, so poll rather than read once.
    if (onLinuxGlibc) await expect.poll(() => server.output()).toContain('"memoryTrim":{"trimming":true,"intervalMs":1000}');
  });
});

describe('demo mode with an ADMIN_TOKEN of the operator', () => {
  it('never prints it: the banner says $ADMIN_TOKEN, and the token works', async () => {
    const port = await freePort();
    const secret = 'operator-admin-token-0123456789abcdef';
    const server = startServer({ PORT: String(port), ADMIN_TOKEN: secret }, ['--demo']);
    const base = `http://127.0.0.1:${port}`;
    await waitUntilUp(base);
    await expect.poll(() => server.output(), { timeout: 5000 }).toContain(`curl ${base}/admin/keys -H "Authorization: Bearer $ADMIN_TOKEN"`);
    expect(server.output()).toContain('admin token:  yours (ADMIN_TOKEN)');
    expect(server.output()).not.toContain(secret);
    expect((await fetch(`${base}/admin/keys`, { headers: { authorization: `Bearer ${secret}` } })).status).toBe(200);
  });
});

describe('demo mode with REDIS_URL', () => {
  it('makes no key in Redis (it would outlive the demo, on every instance sharing it) and prints how to make one', async () => {
    const port = await freePort();
    // A Redis that does not even answer: nothing is asked of it.
    const server = startServer({ PORT: String(port), REDIS_URL: `redis://127.0.0.1:${await freePort()}` }, ['--demo']);
    await waitUntilUp(`http://127.0.0.1:${port}`);
    await expect.poll(() => server.output(), { timeout: 15_000 }).toContain('It makes no demo key in Redis');
    expect(server.output()).toMatch(/curl -X POST http:\/\/127\.0\.0\.1:\d+\/admin\/keys -H "Authorization: Bearer demo-admin-[0-9a-f]{24}"/);
    expect(server.output()).not.toContain('undefined');
    expect(server.output()).not.toContain('gateway key:');
  });
});

describe('graceful shutdown', () => {
  it('on SIGTERM stops accepting, finishes the stream in flight, closes Redis and exits 0', async () => {
    fake = await startFakeOpenAI({ apiKey: 'sk-up', streamChunkDelayMs: 40 });
    const { server, base } = await startAgainstFake('shutdown', {
      SHUTDOWN_TIMEOUT_MS: '10000',
    });
    const created = await fetch(`${base}/admin/keys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'shutdown' }),
    });
    const { key } = (await created.json()) as { key: string };

    const res = await chat(base, key, 'a long story please', { stream: true });
    const reader = res.body!.getReader();
    let text = new TextDecoder().decode((await reader.read()).value);
    const exited = once(server.proc, 'exit');
    server.proc.kill('SIGTERM');

    // New connections are refused while the stream goes on.
    await expect.poll(async () => fetch(`${base}/healthz`).then(() => 'accepted', () => 'refused'), { timeout: 5000 }).toBe('refused');
    for (let r = await reader.read(); !r.done; r = await reader.read()) text += new TextDecoder().decode(r.value);
    expect(text.trim().endsWith('data: [DONE]')).toBe(true);

    const [code] = await exited;
    expect(code, server.output()).toBe(0);
    expect(server.output()).toContain('shut down cleanly');
  });
});

describe('graceful shutdown with connections that never sent a request', () => {
  it('closes them and exits 0 at once, rather than waiting for their clients until the deadline', async () => {
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    // Exit 1 would mean the deadline cut them (the test's own timeout is longer than this).
    const server = startServer({ PORT: String(port), OPENAI_API_KEY: 'sk-up', SHUTDOWN_TIMEOUT_MS: '10000' });
    await waitUntilUp(base);
    // A client pool's spare connection, a load balancer's pre-connect: open, silent.
    const { connect } = await import('node:net');
    const silent = connect(port, '127.0.0.1');
    silent.on('error', () => undefined);
    await once(silent, 'connect');
    const closedByServer = once(silent, 'close');
    const exited = once(server.proc, 'exit');
    server.proc.kill('SIGTERM');
    const [code] = await exited;
    expect(code, server.output()).toBe(0);
    expect(server.output()).toContain('shut down cleanly');
    await closedByServer;
  });
});

describe('graceful shutdown under load', () => {
  it('drops no accepted request and flushes their usage before exiting', async () => {
    fake = await startFakeOpenAI({ apiKey: 'sk-up', latencyMs: 400, streamChunkDelayMs: 30 });
    const { server, base, prefix } = await startAgainstFake('load', {
      SHUTDOWN_TIMEOUT_MS: '15000',
    });
    const created = await fetch(`${base}/admin/keys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'under-load', limits: { tokensPerDay: 10_000_000 } }),
    });
    const { id, key } = (await created.json()) as { id: string; key: string };

    const inFlight = Array.from({ length: 40 }, (_, i) =>
      chat(base, key, `load ${i}`, { stream: i % 4 === 0 }).then(async (res) => ({ status: res.status, body: await res.text() })),
    );
    // Every request has reached upstream, so every one was accepted before the signal.
    await expect.poll(() => fake!.requests.length, { timeout: 10_000 }).toBe(40);
    const exited = once(server.proc, 'exit');
    server.proc.kill('SIGTERM');
    const results = await Promise.all(inFlight);
    expect(results.map((r) => r.status)).toEqual(Array(40).fill(200));
    expect(results.filter((r, i) => i % 4 === 0).every((r) => r.body.trim().endsWith('data: [DONE]'))).toBe(true);
    const [code] = await exited;
    expect(code, server.output()).toBe(0);
    // stdout is written in batches (app.ts bufferedStdout): the last ones are flushed at exit, so
    // every request still has its log line.
    const requestLines = server
      .output()
      .split('\n')
      .filter((line) => line.includes('"msg":"request"') && line.includes('/v1/chat/completions'));
    expect(requestLines).toHaveLength(40);

    // Another gateway on the same Redis sees every request's usage and spend: nothing was lost.
    const reader = await startGateway({ env: { REDIS_URL: testRedisUrl(), REDIS_PREFIX: prefix } });
    try {
      const usage = await reader.admin('GET', '/admin/usage?groupBy=key');
      expect(usage.body.totals.requests).toBe(40);
      expect(usage.body.totals.totalTokens).toBe(fake.usageTotals().total_tokens);
      const quota = (await reader.admin('GET', `/admin/keys/${id}`)).body.quota;
      expect(quota.tokensPerDay).toMatchObject({ used: fake.usageTotals().total_tokens, reserved: 0 });
    } finally {
      await reader.close();
    }
  }, 60_000);
});

/** One chat completion through the process at `base`, with its gateway key. */
function chat(base: string, key: string, content: string, extra: Record<string, unknown> = {}) {
  return fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content }], ...extra }),
  });
}

/** A key created through the admin API of the process at `base`. */
async function createKey(base: string, name: string) {
  const created = await fetch(`${base}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name, limits: { tokensPerDay: 10_000_000 } }),
  });
  return (await created.json()) as { id: string; key: string };
}

/** The usage events and the key's day quota that another gateway on the same Redis sees. */
async function recorded(prefix: string, keyId: string) {
  const reader = await startGateway({ env: { REDIS_URL: testRedisUrl(), REDIS_PREFIX: prefix } });
  try {
    const res = await fetch(`${reader.url}/admin/usage/events?since=${Date.now() - 600_000}`, {
      headers: { authorization: 'Bearer test-admin-token-0123456789' },
    });
    const text = (await res.text()).trim();
    const events = text === '' ? [] : text.split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const quota = (await reader.admin('GET', `/admin/keys/${keyId}`)).body.quota;
    return { events, used: quota.tokensPerDay.used as number, reserved: quota.tokensPerDay.reserved as number };
  } finally {
    await reader.close();
  }
}

describe('shutdown deadline', () => {
  it('cuts a stream still open at SHUTDOWN_TIMEOUT_MS, yet charges and records it (estimated), then exits non-zero', async () => {
    // A slow stream: far longer than the deadline.
    fake = await startFakeOpenAI({ apiKey: 'sk-up', streamChunkDelayMs: 1000 });
    const { server, base, prefix } = await startAgainstFake('deadline', {
      SHUTDOWN_TIMEOUT_MS: '300',
    });
    const { id, key } = await createKey(base, 'deadline');
    const res = await chat(base, key, 'a long story please', { stream: true });
    const reader = res.body!.getReader();
    await reader.read();
    const exited = once(server.proc, 'exit');
    server.proc.kill('SIGTERM');
    // The stream is cut at the deadline, not finished.
    let text = '';
    try {
      for (let r = await reader.read(); !r.done; r = await reader.read()) text += new TextDecoder().decode(r.value);
    } catch {
      // cut: expected
    }
    expect(text.trim().endsWith('data: [DONE]')).toBe(false);
    const [code] = await exited;
    expect(code, server.output()).toBe(1);
    expect(server.output()).toContain('connections still open were cut (their usage recorded as estimated)');

    const { events, used, reserved } = await recorded(prefix, id);
    const chatEvents = events.filter((e) => e.endpoint === 'chat.completions');
    expect(chatEvents, server.output()).toHaveLength(1);
    // The gateway cut it, not the client: recorded as such, in the usage event and the log line.
    expect(chatEvents[0]).toMatchObject({ keyId: id, stream: true, estimated: true, errorCode: 'cut_at_shutdown' });
    const line = server
      .output()
      .split('\n')
      .filter((l) => l.startsWith('{') && l.includes('"msg":"request"') && l.includes('/v1/chat/completions'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)[0];
    expect(line).toMatchObject({ errorCode: 'cut_at_shutdown' });
    expect(line!.clientAborted).toBeUndefined();
    expect(chatEvents[0]!.totalTokens as number).toBeGreaterThan(0);
    expect(used).toBeGreaterThan(0);
    expect(reserved).toBe(0);
  }, 60_000);

  it('a non-streamed request still waiting on upstream at the deadline is recorded as cut there (503 cut_at_shutdown), not as its client leaving', async () => {
    fake = await startFakeOpenAI({ apiKey: 'sk-up', latencyMs: 5000 });
    const { server, base, prefix } = await startAgainstFake('deadline-json', { SHUTDOWN_TIMEOUT_MS: '300' });
    const { id, key } = await createKey(base, 'deadline-json');
    const answered = chat(base, key, 'a slow answer please').catch(() => undefined);
    await expect.poll(() => fake!.requests.length).toBe(1);
    const exited = once(server.proc, 'exit');
    server.proc.kill('SIGTERM');
    expect((await exited)[0], server.output()).toBe(1);
    await answered;
    const { events, reserved } = await recorded(prefix, id);
    const chatEvents = events.filter((e) => e.endpoint === 'chat.completions');
    expect(chatEvents, server.output()).toHaveLength(1);
    // Was 499 client_closed_request: the client never left.
    expect(chatEvents[0]).toMatchObject({ status: 503, errorCode: 'cut_at_shutdown', estimated: true });
    expect(reserved).toBe(0);
  }, 60_000);

  it('past the deadline with no connection open (only a hung alert webhook), logs the undelivered alert in full and cuts nothing', async () => {
    // A webhook receiver that never answers.
    const { createServer } = await import('node:http');
    const held: import('node:http').ServerResponse[] = [];
    const bodies: string[] = [];
    const receiver = createServer((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        bodies.push(body);
        held.push(res);
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
    const hookPort = (receiver.address() as { port: number }).port;
    try {
      fake = await startFakeOpenAI({ apiKey: 'sk-up' });
      const port = await freePort();
      const base = `http://127.0.0.1:${port}`;
      const server = startServer({
        PORT: String(port),
        OPENAI_API_KEY: 'sk-up',
        OPENAI_BASE_URL: fake.url,
        ADMIN_TOKEN: ADMIN,
        SHUTDOWN_TIMEOUT_MS: '300',
        ALERT_WEBHOOK_URL: `http://127.0.0.1:${hookPort}/hooks/secret-hook-path-0123456789`,
      });
      await waitUntilUp(base);
      const admin = (method: string, path: string, body?: unknown) =>
        fetch(base + path, {
          method,
          headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
          ...(body !== undefined && { body: JSON.stringify(body) }),
        });
      const { id, key } = await createKey(base, 'hung-webhook');
      const res = await chat(base, key, 'hi');
      expect(res.status).toBe(200);
      await res.text();
      const usedNow = async () => {
        const { quota } = (await (await admin('GET', `/admin/keys/${id}`)).json()) as { quota: { tokensPerDay: { used: number; reserved: number } } };
        return quota.tokensPerDay;
      };
      await expect.poll(async () => (await usedNow()).reserved).toBe(0);
      // A limit lowered to the usage: its alerts go out at once, and the receiver holds the first.
      expect((await admin('PATCH', `/admin/keys/${id}`, { limits: { tokensPerDay: (await usedNow()).used } })).status).toBe(200);
      await expect.poll(() => bodies.length, { timeout: 5000 }).toBe(1);

      const exited = once(server.proc, 'exit');
      server.proc.kill('SIGTERM');
      const [code] = await exited;
      const out = server.output();
      // The deadline passed (the alerts waited longer than it), so non-zero; but nothing was cut.
      expect(code, out).toBe(1);
      expect(out).not.toContain('connections still open were cut');
      expect(out).toContain('no connection was cut');
      // The receiver still holds the first event: every event not delivered is logged in full, one line each.
      expect(held.length).toBeGreaterThan(0);
      const dropped = out
        .split('\n')
        .filter((l) => l.includes('alert dropped: closed before it was delivered'))
        .map((l) => JSON.parse(l) as { level: number; event: { id: string; key: { id: string } } });
      expect(dropped.length, out).toBe(3);
      for (const line of dropped) expect(line).toMatchObject({ level: 50, event: { key: { id } } });
      expect(dropped[0]!.event).toEqual(JSON.parse(bodies[0]!));
      expect(out).not.toContain('secret-hook-path');
    } finally {
      receiver.closeAllConnections();
      await new Promise((resolve) => receiver.close(resolve));
    }
  }, 60_000);

  it('with SHUTDOWN_TIMEOUT_MS=0 still writes the usage buffered for finished requests', async () => {
    fake = await startFakeOpenAI({ apiKey: 'sk-up' });
    const { server, base, prefix } = await startAgainstFake('deadline0-', {
      SHUTDOWN_TIMEOUT_MS: '0',
      // The batch is still in memory at the signal.
      USAGE_FLUSH_MS: '10000',
    });
    const { id, key } = await createKey(base, 'deadline0');
    const res = await chat(base, key, 'hi');
    expect(res.status).toBe(200);
    await res.text();
    // Let its 'close' handler queue the usage event.
    await new Promise((r) => setTimeout(r, 200));
    const exited = once(server.proc, 'exit');
    server.proc.kill('SIGTERM');
    await exited;

    const { events, used } = await recorded(prefix, id);
    const chatEvents = events.filter((e) => e.endpoint === 'chat.completions');
    expect(chatEvents, server.output()).toHaveLength(1);
    expect(chatEvents[0]).toMatchObject({ keyId: id, estimated: false, totalTokens: fake.usageTotals().total_tokens });
    expect(used).toBe(fake.usageTotals().total_tokens);
  }, 60_000);
});

describe('start-up failures', () => {
  it('a malformed REDIS_URL is reported as configuration, without its password', async () => {
    const server = startServer({
      PORT: String(await freePort()),
      OPENAI_API_KEY: 'sk-up',
      REDIS_URL: 'redis://user:supersecretpw@127.0.0.1:notaport',
    });
    const [code] = await once(server.proc, 'exit');
    expect(code).toBe(1);
    expect(server.output()).toContain('Invalid configuration');
    expect(server.output()).toContain('REDIS_URL');
    expect(server.output()).not.toContain('supersecretpw');
    expect(server.output()).not.toContain('TypeError');
  });

  it('a port in use: one line, no stack, no secret, exit 1', async () => {
    const { createServer } = await import('node:net');
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as { port: number }).port;
    try {
      const server = startServer({ PORT: String(port), OPENAI_API_KEY: 'sk-up-secret-value', ADMIN_TOKEN: ADMIN });
      const [code] = await once(server.proc, 'exit');
      expect(code, server.output()).toBe(1);
      const out = server.output();
      expect(out).toContain(`Start-up failed: port ${port} on 127.0.0.1 is already in use`);
      expect(out).not.toMatch(/^\s+at /m);
      expect(out).not.toContain('sk-up-secret-value');
      expect(out).not.toContain(ADMIN);
    } finally {
      await new Promise((resolve) => blocker.close(resolve));
    }
  });

  it('a missing PRICES_FILE: one line naming the file, exit 1', async () => {
    const server = startServer({ PORT: String(await freePort()), OPENAI_API_KEY: 'sk-up', PRICES_FILE: '/nonexistent/prices.json' });
    const [code] = await once(server.proc, 'exit');
    expect(code, server.output()).toBe(1);
    expect(server.output()).toContain('Start-up failed: Cannot read price file /nonexistent/prices.json');
    expect(server.output()).not.toMatch(/^\s+at /m);
  });
});
