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
    expect(await ready.json()).toMatchObject({ status: 'not_ready', store: 'redis', failed: [{ component: 'store' }] });
    // Requests do not hang either: authentication answers 503 at once.
    const res = await fetch(`${gw.url}/v1/models`, { headers: { authorization: 'Bearer tg-anything' } });
    expect(res.status).toBe(503);
    expect(await res.json()).toMatchObject({ error: { code: 'auth_unavailable' } });
  });
});
