// Liveness and readiness, with a store that answers and one that does not.
import { afterAll, describe, expect, it } from 'vitest';
import { startGateway, type Gateway } from '../helpers/gateway.js';
import { createRedisStore } from '../../src/store/redis-store.js';
import { freePort } from '../helpers/redis-server.js';
import { testRedisUrl } from '../helpers/redis.js';

const opened: Gateway[] = [];
afterAll(async () => {
  for (const gw of opened) await gw.close();
});

describe('health', () => {
  it('is live and ready with the memory store', async () => {
    const gw = await startGateway();
    opened.push(gw);
    expect(await (await fetch(`${gw.url}/healthz`)).json()).toEqual({ status: 'ok' });
    const ready = await fetch(`${gw.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ status: 'ready', store: 'memory', upstreamKeys: { total: 1, inRotation: 1 } });
  });

  it('is ready with a live Redis', async () => {
    const gw = await startGateway({ env: { REDIS_URL: testRedisUrl() } });
    opened.push(gw);
    expect(await (await fetch(`${gw.url}/readyz`)).json()).toEqual({ status: 'ready', store: 'redis', upstreamKeys: { total: 1, inRotation: 1 } });
  });

  it('stays live but reports not ready, naming the store, when Redis is unreachable', async () => {
    const gw = await startGateway({ env: { REDIS_URL: `redis://127.0.0.1:${await freePort()}`, REDIS_COMMAND_TIMEOUT_MS: '200' } });
    opened.push(gw);
    expect((await fetch(`${gw.url}/healthz`)).status).toBe(200);
    const ready = await fetch(`${gw.url}/readyz`);
    expect(ready.status).toBe(503);
    const body = (await ready.json()) as { failed: { error: string }[] };
    expect(body).toMatchObject({ status: 'not_ready', store: 'redis', failed: [{ component: 'store' }] });
    // Why: the refused connection, not only the command that timed out waiting for it.
    expect(body.failed[0]!.error).toMatch(/ECONNREFUSED/);
    // Requests do not hang either: authentication answers 503 at once.
    const res = await fetch(`${gw.url}/v1/models`, { headers: { authorization: 'Bearer tg-anything' } });
    expect(res.status).toBe(503);
    expect(await res.json()).toMatchObject({ error: { code: 'auth_unavailable' } });
  });
});

describe('a request that arrives while the gateway closes', () => {
  it('gets an OpenAI-shaped 503 shutting_down with Connection: close, and is logged like any other', async () => {
    const gw = await startGateway();
    const { key } = await gw.createKey();
    gw.fake.setLatency(500);
    const { connect } = await import('node:net');
    const socket = connect(Number(new URL(gw.url).port), '127.0.0.1');
    await new Promise((resolve) => socket.once('connect', resolve));
    let received = '';
    socket.on('data', (d: Buffer) => (received += d.toString('latin1')));
    const ended = new Promise((resolve) => socket.once('close', resolve));
    const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] });
    const request = (id: string) =>
      `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\nContent-Type: application/json\r\n` +
      `X-Request-Id: ${id}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
    socket.write(request('first-in-flight'));
    await expect.poll(() => gw.fake.requests.length).toBe(1); // in flight upstream: its connection is busy
    const closed = gw.close();
    await new Promise((resolve) => setImmediate(resolve));
    socket.write(request('second-during-close')); // pipelined: read once the first is answered
    await ended;
    await closed;
    const responses = received.split(/(?=HTTP\/1\.1 )/);
    expect(responses).toHaveLength(2);
    expect(responses[0]).toMatch(/^HTTP\/1\.1 200 /);
    expect(responses[1]).toMatch(/^HTTP\/1\.1 503 /);
    expect(responses[1]).toMatch(/\r\nconnection: close\r\n/i);
    expect(responses[1]).toMatch(/\r\nretry-after: 1\r\n/i);
    const json = JSON.parse(responses[1]!.slice(responses[1]!.indexOf('\r\n\r\n') + 4)) as { error: Record<string, unknown> };
    expect(json.error).toMatchObject({ type: 'server_error', code: 'shutting_down' });
    const line = gw.logs.requests().find((l) => l.requestId === 'second-during-close');
    expect(line).toMatchObject({ status: 503, errorCode: 'shutting_down' });
  });
});
