// The error code a request is recorded with (log line, usage event, metrics) is what the client was
// told: the code of the OpenAI error body sent, or client_closed_request (499) when nobody was left
// to tell, never internal_error for an error that was not the gateway's.
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_TOKEN, startGateway, type Gateway } from '../helpers/gateway.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';
import { errorHandler } from '../../src/errors.js';

let gw: Gateway;
const KEY_NAME = `error-codes-${Math.random().toString(36).slice(2)}`;
let key: { id: string; key: string };

beforeAll(async () => {
  gw = await startGateway({ env: { REDIS_URL: testRedisUrl(), REDIS_PREFIX: uniquePrefix() } });
  key = await gw.createKey({ name: KEY_NAME });
});
afterAll(() => gw.close());

const chatLines = () => gw.logs.requests().filter((l) => l.keyId === key.id && l.path === '/v1/chat/completions');

/** The key's usage events (the raw ndjson export). */
async function eventsOf(keyId: string): Promise<Record<string, unknown>[]> {
  const res = await fetch(`${gw.url}/admin/usage/events?since=${Date.now() - 600_000}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  expect(res.status).toBe(200);
  return (await res.text())
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((e) => e.keyId === keyId);
}

/** tollgate_requests_total of the key (labelled with its name) for one status. */
async function requestsMetric(status: string): Promise<number> {
  const text = await (await fetch(`${gw.url}/metrics`)).text();
  const line = text
    .split('\n')
    .find((l) => l.startsWith('tollgate_requests_total{') && l.includes(`key="${KEY_NAME}"`) && l.includes(`status="${status}"`));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

/** Sends a chat request's headers and the first 9 of its 1000 bytes of body, then nothing more. */
async function startUpload(url: string, apiKey: string): Promise<Socket> {
  const socket = connect(Number(new URL(url).port), '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  socket.on('error', () => undefined);
  socket.write(
    `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${apiKey}\r\n` +
      'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model":',
  );
  return socket;
}

describe('a request body that does not arrive whole, or is not JSON', () => {
  it('a client hanging up during the upload is recorded as 499 client_closed_request in the log, the usage event and the metrics, not 400 internal_error', async () => {
    const before = chatLines().length;
    const [metric499, metric400] = [await requestsMetric('499'), await requestsMetric('400')];
    const socket = await startUpload(gw.url, key.key);
    // The gateway has the headers (the key is checked) and waits for the rest of the body.
    await sleep(200);
    socket.destroy();

    await expect.poll(() => chatLines().length).toBe(before + 1);
    const line = chatLines().at(-1)!;
    expect(line).toMatchObject({ status: 499, errorCode: 'client_closed_request', keyId: key.id });
    expect(gw.logs.lines.filter((l) => l.msg === 'unhandled error')).toEqual([]);
    await expect
      .poll(async () => (await eventsOf(key.id)).find((e) => e.requestId === line.reqId))
      .toMatchObject({ status: 499, errorCode: 'client_closed_request' });
    expect(await requestsMetric('499')).toBe(metric499 + 1);
    expect(await requestsMetric('400')).toBe(metric400);
  });

  it('an upload the gateway times out (CLIENT_REQUEST_TIMEOUT_MS) is recorded as the 408 request_timeout it was sent', async () => {
    const slow = await startGateway({ env: { REDIS_URL: testRedisUrl(), REDIS_PREFIX: uniquePrefix(), CLIENT_REQUEST_TIMEOUT_MS: '1000' } });
    try {
      const slowKey = await slow.createKey({ name: 'slow-uploader' });
      const socket = await startUpload(slow.url, slowKey.key);
      const received: Buffer[] = [];
      socket.on('data', (d: Buffer) => received.push(d));
      await new Promise((resolve) => socket.once('close', resolve));
      expect(Buffer.concat(received).toString('latin1')).toMatch(/^HTTP\/1\.1 408 /);
      await expect
        .poll(() => slow.logs.requests().find((l) => l.keyId === slowKey.id))
        .toMatchObject({ status: 408, errorCode: 'request_timeout' });
    } finally {
      await slow.close();
    }
  });

  it('a body that is not JSON is still the 400 invalid_json it is, recorded with that code', async () => {
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key.key}`, 'content-type': 'application/json' },
      body: '{"model":',
    });
    expect(res.status).toBe(400);
    const body = (await res.json()) as { error: { code: string } };
    expect(body.error).toMatchObject({ type: 'invalid_request_error', code: 'invalid_json' });
    const requestId = res.headers.get('x-request-id');
    await expect.poll(() => chatLines().find((l) => l.reqId === requestId)).toMatchObject({ status: 400, errorCode: 'invalid_json' });
    await expect
      .poll(async () => (await eventsOf(key.id)).find((e) => e.requestId === requestId))
      .toMatchObject({ status: 400, errorCode: body.error.code });
  });

  it('a compressed body is a 415 that says so, not a 400 for broken JSON', async () => {
    const { gzipSync } = await import('node:zlib');
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key.key}`, 'content-type': 'application/json', 'content-encoding': 'gzip' },
      body: gzipSync(JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] })),
    });
    expect(res.status).toBe(415);
    expect(((await res.json()) as { error: unknown }).error).toMatchObject({
      type: 'invalid_request_error',
      code: 'unsupported_content_encoding',
      message: "Content-Encoding 'gzip' is not supported: send the request body uncompressed.",
    });
    const plain = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key.key}`, 'content-type': 'application/json', 'content-encoding': 'identity' },
      body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] }),
    });
    expect(plain.status).toBe(200);
  });
});

describe('pipelined requests (HTTP/1.1) whose client hangs up', () => {
  it('are each recorded as 499 client_closed_request and abandoned upstream, not only the first: the shutdown then waits for none', { timeout: 30_000 }, async () => {
    const piped = await startGateway({ env: { REDIS_URL: testRedisUrl(), REDIS_PREFIX: uniquePrefix() } });
    try {
      const pipedKey = await piped.createKey({ name: 'pipelining' });
      piped.fake.setLatency(1500);
      const socket = connect(Number(new URL(piped.url).port), '127.0.0.1');
      await new Promise((resolve) => socket.once('connect', resolve));
      socket.on('error', () => undefined);
      const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 20 });
      const request = (id: string) =>
        `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${pipedKey.key}\r\nContent-Type: application/json\r\n` +
        `X-Request-Id: ${id}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
      // Each waits behind the first for the connection, though all went upstream at once.
      const ids = Array.from({ length: 12 }, (_, i) => `piped-${String(i).padStart(2, '0')}`);
      const warnings: Error[] = [];
      const onWarning = (w: Error) => warnings.push(w);
      process.on('warning', onWarning);
      socket.write(ids.map(request).join(''));
      await expect.poll(() => piped.fake.requests.length).toBe(ids.length);
      socket.destroy();

      // Only piped-00 was recorded: the others were never told their client had left, went on
      // upstream (billed) and had no log line or usage event.
      const lines = () => piped.logs.requests().filter((l) => l.keyId === pipedKey.id);
      await expect.poll(() => lines().map((l) => l.requestId).sort()).toEqual(ids);
      for (const line of lines()) expect(line).toMatchObject({ status: 499, errorCode: 'client_closed_request' });
      await sleep(1700);
      expect(piped.fake.usageTotals().requests).toBe(0); // no answer was generated to the end
      process.off('warning', onWarning);
      expect(warnings.map((w) => w.name)).toEqual([]); // a listener per queued response: MaxListenersExceededWarning
      // The close waits for every request's accounting: it waited for piped-2's for good (server.ts
      // cuts that wait at SHUTDOWN_TIMEOUT_MS, and exits 1).
      expect(await Promise.race([piped.close().then(() => 'closed'), sleep(5_000).then(() => 'still waiting')])).toBe('closed');
    } finally {
      void piped.close();
    }
  });
});

describe('errorHandler', () => {
  let app: FastifyInstance;
  let url: string;
  const recorded = new Map<string, string | undefined>();

  beforeAll(async () => {
    app = Fastify();
    app.decorateRequest('trace', null as never);
    app.setErrorHandler(errorHandler);
    app.addHook('onRequest', async (request, reply) => {
      request.trace = { arrivedAt: Date.now() };
      reply.header('x-request-id', request.id);
      reply.raw.once('close', () => recorded.set(request.id, request.trace.errorCode));
    });
    // A client error Fastify (or a plugin) raises with a 4xx status and no code the gateway knows.
    app.get('/client-error/:status', async (request) => {
      throw Object.assign(new Error('That request cannot be served.'), { statusCode: Number((request.params as { status: string }).status) });
    });
    app.get('/bug', async () => {
      throw new Error('a bug');
    });
    url = await app.listen({ port: 0, host: '127.0.0.1' });
  });
  afterAll(() => app.close());

  it('records a generic 4xx with the code of the body it sends, never internal_error', async () => {
    for (const [status, code] of [
      [400, 'bad_request'],
      [414, 'uri_too_long'],
      [409, 'conflict'],
    ] as const) {
      const res = await fetch(`${url}/client-error/${status}`);
      expect(res.status).toBe(status);
      const body = (await res.json()) as { error: Record<string, unknown> };
      expect(body).toEqual({ error: { message: 'That request cannot be served.', type: 'invalid_request_error', param: null, code } });
      await expect.poll(() => recorded.get(res.headers.get('x-request-id')!)).toBe(code);
    }
  });

  it('still records a real bug as a 500 internal_error', async () => {
    const res = await fetch(`${url}/bug`);
    expect(res.status).toBe(500);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('internal_error');
    await expect.poll(() => recorded.get(res.headers.get('x-request-id')!)).toBe('internal_error');
  });
});
