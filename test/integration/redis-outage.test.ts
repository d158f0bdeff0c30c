// Redis dies mid-traffic (SIGKILL) and comes back on the same port: each feature follows its stated
// outage policy, no request hangs, /readyz names the modes, and nothing is lost once Redis returns.
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { ADMIN_TOKEN, startGateway, type Gateway } from '../helpers/gateway.js';
import { freePort, startRedisServer } from '../helpers/redis-server.js';
import { Redis } from 'ioredis';
import { createRedisStore } from '../../src/store/redis-store.js';
import { hourId } from '../../src/store/usage-math.js';
import type { UsageEvent } from '../../src/usage/event.js';

/** A redis-server that keeps its data across a SIGKILL, as a production Redis would. */
const startPersistentRedis = (port: number, dir: string) => startRedisServer(port, { persistDir: dir });

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const OUTAGE_ENV = {
  REDIS_COMMAND_TIMEOUT_MS: '200',
  STORE_PROBE_INTERVAL_MS: '200',
  // No fresh auth cache: every request asks Redis, so the outage grace is what lets keys through.
  AUTH_CACHE_TTL_MS: '0',
  // The guard against guessed keys must not be what answers the unknown key during the outage.
  AUTH_FAILURES_PER_MINUTE: '0',
};

/**
 * Hang guard, not a benchmark: without command timeouts a request would wait on a dead Redis for
 * ever. With them the slowest request pays one (200 ms here), and "fails fast" is checked against
 * that timeout where it matters; this bound is loose because a loaded CI machine once stretched
 * such a request past a second.
 */
const MAX_MS = 5000;

interface Timed {
  status: number;
  ms: number;
  headers: Headers;
  body: any;
}

function client(gw: Gateway) {
  let requests = 0;
  async function call(key: string, init: { path?: string; method?: string; body?: unknown } = {}): Promise<Timed> {
    requests++;
    const started = performance.now();
    const res = await fetch(`${gw.url}${init.path ?? '/v1/chat/completions'}`, {
      method: init.method ?? 'POST',
      headers: { authorization: `Bearer ${key}`, ...(init.body !== undefined && { 'content-type': 'application/json' }) },
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
    });
    const text = await res.text();
    const ms = performance.now() - started;
    return { status: res.status, ms, headers: res.headers, body: text ? JSON.parse(text) : undefined };
  }
  return {
    chat: (key: string, content: string) =>
      call(key, { body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content }], max_tokens: 20 } }),
    models: (key: string) => call(key, { path: '/v1/models', method: 'GET' }),
    call,
    /** Every /v1 request made: each is one usage event. */
    get requests() {
      return requests;
    },
  };
}

async function readyz(gw: Gateway) {
  const res = await fetch(`${gw.url}/readyz`);
  return { status: res.status, body: (await res.json()) as any };
}

async function usageTotals(gw: Gateway) {
  const res = await gw.admin('GET', '/admin/usage?groupBy=key');
  return res.status === 200 ? (res.body.totals as { requests: number; totalTokens: number }) : undefined;
}

async function tokensUsedToday(gw: Gateway, keyId: string) {
  const res = await gw.admin('GET', `/admin/keys/${keyId}`);
  return res.status === 200 ? (res.body.quota.tokensPerDay.used as number) : undefined;
}

/**
 * Lets the writes of the requests so far land before Redis is killed. A write in flight at the
 * instant of the crash has an unknown outcome (Redis may have applied it and died before replying);
 * it is kept and written again, so its usage event could be counted twice (at least once, never lost).
 */
async function settled(gw: Gateway, requests: number) {
  await expect.poll(async () => (await usageTotals(gw))?.requests, { timeout: 10_000, interval: 50 }).toBe(requests);
}

async function outageSetup(env: Record<string, string>) {
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-outage-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  let redis = await startPersistentRedis(port, dir);
  cleanups.push(() => redis.stop());
  const gw = await startGateway({ env: { REDIS_URL: redis.url, ...OUTAGE_ENV, ...env } });
  cleanups.push(() => gw.close());
  await expect.poll(async () => (await readyz(gw)).status).toBe(200);
  return {
    gw,
    kill: () => redis.stop(),
    restart: async () => {
      redis = await startPersistentRedis(port, dir);
    },
  };
}

/**
 * A redis-server that can be frozen (SIGSTOP) and thawed (SIGCONT): its connections stay open but
 * nothing answers, so the gateway sees command timeouts rather than refused connections.
 */
async function startFreezableRedis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGKILL');
      }),
  );
  const url = `redis://127.0.0.1:${port}`;
  const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  probe.on('error', () => {});
  await expect
    .poll(async () => {
      try {
        if (probe.status !== 'ready') await probe.connect();
        return await probe.ping();
      } catch {
        return 'down';
      }
    })
    .toBe('PONG');
  probe.disconnect();
  return { url, freeze: () => child.kill('SIGSTOP'), thaw: () => child.kill('SIGCONT') };
}

describe('Redis outage', () => {
  it('QUOTA_FAIL_MODE=closed: known keys stay authenticated, admission answers 503 fast, nothing is lost', async () => {
    const { gw, kill, restart } = await outageSetup({ QUOTA_FAIL_MODE: 'closed' });
    const key = await gw.createKey({ name: 'outage-closed' });
    const c = client(gw);

    for (let i = 0; i < 3; i++) expect((await c.chat(key.key, `before ${i}`)).status).toBe(200);
    expect((await c.models(key.key)).status).toBe(200);
    await settled(gw, c.requests);

    await kill();

    const during: Timed[] = [];
    // The first request notices the outage (it may pay one command timeout); then every call fails fast.
    for (let i = 0; i < 4; i++) {
      const res = await c.chat(key.key, `during ${i}`);
      during.push(res);
      expect(res.status).toBe(503);
      expect(res.body.error).toMatchObject({ code: 'quota_unavailable', type: 'server_error' });
      expect(res.headers.get('retry-after')).toBe('1');
    }
    // Auth grace: the key seen before the outage still authenticates (GET /v1/models has no quota).
    const models = await c.models(key.key);
    during.push(models);
    expect(models.status).toBe(200);
    // An unknown key is refused: the store cannot vouch for it.
    const unknown = await c.chat('tg-never-seen-before-0123456789', 'who am i');
    during.push(unknown);
    expect(unknown.status).toBe(503);
    expect(unknown.body.error.code).toBe('auth_unavailable');
    for (const res of during) expect(res.ms).toBeLessThan(MAX_MS);
    // Once degraded, requests do not wait for Redis at all: each takes less than one command timeout.
    for (const res of during.slice(1)) expect(res.ms).toBeLessThan(200);

    // The requests' usage events reach the buffer with their batch (USAGE_FLUSH_MS).
    await expect.poll(async () => (await readyz(gw)).body.modes?.buffered.usageEvents).toBeGreaterThan(0);
    const degraded = await readyz(gw);
    expect(degraded.status).toBe(503);
    expect(degraded.body).toMatchObject({
      status: 'degraded',
      store: 'redis',
      failed: [{ component: 'store' }],
      modes: { auth: 'grace', quota: 'closed', cache: 'bypass', usage: 'buffering' },
    });
    const metrics = await (await fetch(`${gw.url}/metrics`)).text();
    expect(metrics).toMatch(/tollgate_degraded\{feature="quota"\} 1/);
    expect(metrics).toMatch(/tollgate_degraded_requests_total\{outcome="quota_refused_unavailable"\} [1-9]/);

    await restart();
    await expect.poll(async () => (await readyz(gw)).body, { timeout: 10_000, interval: 100 }).toEqual({ status: 'ready', store: 'redis', upstreamKeys: { total: 1, inRotation: 1 } });
    for (let i = 0; i < 2; i++) expect((await c.chat(key.key, `after ${i}`)).status).toBe(200);

    // Every request of the run has its usage event, those of the outage included.
    await expect.poll(async () => (await usageTotals(gw))?.requests, { timeout: 10_000, interval: 100 }).toBe(c.requests);
    await expect.poll(() => tokensUsedToday(gw, key.id), { timeout: 10_000, interval: 100 }).toBe(gw.fake.usageTotals().total_tokens);
    expect((await readyz(gw)).body).toEqual({ status: 'ready', store: 'redis', upstreamKeys: { total: 1, inRotation: 1 } });
    expect((await c.models(key.key)).status).toBe(200);
    expect(gw.logs.lines.some((l) => l.msg === 'usage event not stored' || String(l.msg).includes('not stored'))).toBe(false);
  });

  it('QUOTA_FAIL_MODE=closed, Redis stalled: an admission refused with 503 but run by Redis later is released', async () => {
    const redis = await startFreezableRedis();
    // The key stays in the auth cache: the admission is the command the stall catches.
    const gw = await startGateway({ env: { REDIS_URL: redis.url, ...OUTAGE_ENV, AUTH_CACHE_TTL_MS: '60000' } });
    cleanups.push(() => gw.close());
    await expect.poll(async () => (await readyz(gw)).status).toBe(200);
    const key = await gw.createKey({ name: 'stalled', limits: { maxConcurrent: 1, tokensPerDay: 100_000 } });
    const c = client(gw);
    expect((await c.models(key.key)).status).toBe(200); // known: authenticated from the grace

    await redis.freeze();
    // The admission times out (503), but its script waits in the frozen Redis and runs on thaw.
    expect((await c.chat(key.key, 'during the stall')).status).toBe(503);
    // Refused by the guard from now on: never sent, so no release is queued for it.
    expect((await c.chat(key.key, 'still during the stall')).status).toBe(503);
    expect((await readyz(gw)).body.modes.buffered.settlements).toBe(1);
    await redis.thaw();
    await expect.poll(async () => (await readyz(gw)).status, { timeout: 10_000 }).toBe(200);

    // Released at once, not held for LEASE_TTL_MS (60 s): the key may run its one request again.
    const quota = async () => (await gw.admin('GET', `/admin/keys/${key.id}`)).body.quota;
    await expect.poll(quota, { timeout: 10_000 }).toMatchObject({ maxConcurrent: { used: 0 }, tokensPerDay: { reserved: 0, used: 0 } });
    expect((await c.chat(key.key, 'after the stall')).status).toBe(200);
  });

  // A large single-flight wait: a request that waited on a lock nobody releases would run into the
  // test's timeout, and the lock would still be in Redis at the end of the poll below.
  it.each([
    { scope: 'key', failMode: 'closed', during: 503 }, // admit.lua: the lookup joined with the admission
    { scope: 'global', failMode: 'open', during: 200 }, // lookup.lua: the lookup on its own
  ])(
    'CACHE_SCOPE=$scope, QUOTA_FAIL_MODE=$failMode, Redis stalled: a cache lock a timed-out lookup took when Redis ran it later is released',
    async ({ scope, failMode, during }) => {
      const redis = await startFreezableRedis();
      const env = { ...OUTAGE_ENV, AUTH_CACHE_TTL_MS: '60000', CACHE_ENABLED: 'true', CACHE_SCOPE: scope, QUOTA_FAIL_MODE: failMode };
      const gw = await startGateway({ env: { REDIS_URL: redis.url, ...env, CACHE_SINGLE_FLIGHT_WAIT_MS: '600000' } });
      cleanups.push(() => gw.close());
      const inspect = new Redis(redis.url);
      cleanups.push(() => void inspect.disconnect());
      await expect.poll(async () => (await readyz(gw)).status).toBe(200);
      const key = await gw.createKey({ name: 'stalled-cache' });
      const c = client(gw);
      expect((await c.models(key.key)).status).toBe(200); // known: authenticated from the grace

      await redis.freeze();
      // The lookup times out, but its script waits in the frozen Redis and takes the lock on thaw.
      expect((await c.chat(key.key, 'same prompt')).status).toBe(during);
      await redis.thaw();
      await expect.poll(async () => (await readyz(gw)).status, { timeout: 10_000 }).toBe(200);

      // Released once Redis answers, not held for CACHE_SINGLE_FLIGHT_WAIT_MS.
      await expect.poll(() => inspect.keys('*cachelock*'), { timeout: 10_000 }).toEqual([]);
      // The identical request is a plain miss: it leads, goes upstream itself and fills.
      const upstreamBefore = gw.fake.requests.length;
      const again = await c.chat(key.key, 'same prompt');
      expect(again.status).toBe(200);
      expect(again.headers.get('x-tollgate-cache')).toBe('MISS');
      expect(gw.fake.requests.length).toBe(upstreamBefore + 1);
      await expect.poll(async () => (await c.chat(key.key, 'same prompt')).headers.get('x-tollgate-cache')).toBe('HIT');
    },
  );

  it('QUOTA_FAIL_MODE=open: admits up to the local cap then 429, bypasses the cache, settles everything after', async () => {
    const { gw, kill, restart } = await outageSetup({ QUOTA_FAIL_MODE: 'open', QUOTA_FAIL_OPEN_RPM: '3', CACHE_ENABLED: 'true' });
    const key = await gw.createKey({ name: 'outage-open' });
    const c = client(gw);

    expect((await c.chat(key.key, 'cached prompt')).status).toBe(200);
    await expect.poll(async () => (await c.chat(key.key, 'cached prompt')).headers.get('x-tollgate-cache')).toBe('HIT');
    await settled(gw, c.requests);

    await kill();

    const upstreamBefore = gw.fake.usageTotals().requests;
    const during: Timed[] = [];
    // The cached prompt again: the cache is bypassed, so it goes upstream (and counts against the local cap).
    const again = await c.chat(key.key, 'cached prompt');
    during.push(again);
    expect(again.status).toBe(200);
    expect(['MISS', 'BYPASS']).toContain(again.headers.get('x-tollgate-cache'));
    expect(again.headers.get('x-tollgate-degraded')).toBe('quota-open');
    expect(gw.fake.usageTotals().requests).toBe(upstreamBefore + 1);
    for (let i = 0; i < 2; i++) {
      const res = await c.chat(key.key, `open ${i}`);
      during.push(res);
      expect(res.status).toBe(200);
    }
    // The local cap (3 per key per minute on this instance) is reached.
    const capped = await c.chat(key.key, 'one too many');
    during.push(capped);
    expect(capped.status).toBe(429);
    expect(capped.body.error.code).toBe('rate_limit_exceeded');
    expect(Number(capped.headers.get('retry-after'))).toBeGreaterThan(0);
    for (const res of during) expect(res.ms).toBeLessThan(MAX_MS);

    const degraded = await readyz(gw);
    expect(degraded.status).toBe(503);
    expect(degraded.body).toMatchObject({ status: 'degraded', modes: { quota: 'open', cache: 'bypass', usage: 'buffering', auth: 'grace' } });
    expect(degraded.body.modes.buffered.settlements).toBeGreaterThanOrEqual(3);
    expect(gw.logs.lines.some((l) => String(l.msg).includes('QUOTA_FAIL_MODE=open'))).toBe(true);
    const metrics = await (await fetch(`${gw.url}/metrics`)).text();
    expect(metrics).toMatch(/tollgate_degraded_requests_total\{outcome="quota_admitted_open"\} 3/);

    await restart();
    await expect.poll(async () => (await readyz(gw)).body, { timeout: 10_000, interval: 100 }).toEqual({ status: 'ready', store: 'redis', upstreamKeys: { total: 1, inRotation: 1 } });
    await expect.poll(async () => (await usageTotals(gw))?.requests, { timeout: 10_000, interval: 100 }).toBe(c.requests);
    // The settlements queued during the outage were written: the day's tokens are exactly what upstream billed.
    await expect.poll(() => tokensUsedToday(gw, key.id), { timeout: 10_000, interval: 100 }).toBe(gw.fake.usageTotals().total_tokens);
    // Shared limits again: the local count no longer applies.
    expect((await c.chat(key.key, 'back to normal')).status).toBe(200);
  });

  it('recovers by itself when Redis comes back empty (no persistence): buffered events land in the new Redis', async () => {
    const port = await freePort();
    let redis = await startRedisServer(port);
    cleanups.push(() => redis.stop());
    const gw = await startGateway({ env: { REDIS_URL: redis.url, ...OUTAGE_ENV } });
    cleanups.push(() => gw.close());
    const key = await gw.createKey({ name: 'outage-empty' });
    const c = client(gw);
    expect((await c.models(key.key)).status).toBe(200);
    await settled(gw, c.requests);

    await redis.stop();
    const during = [await c.models(key.key), await c.models(key.key)];
    for (const res of during) {
      expect(res.status).toBe(200); // auth grace
      expect(res.ms).toBeLessThan(MAX_MS);
    }
    await expect.poll(async () => (await readyz(gw)).body.modes?.buffered.usageEvents).toBe(2);

    redis = await startRedisServer(port);
    await expect.poll(async () => (await readyz(gw)).status, { timeout: 10_000, interval: 100 }).toBe(200);
    // The new Redis has only what was buffered (the outage's events), none of the rest.
    await expect.poll(async () => (await usageTotals(gw))?.requests, { timeout: 10_000, interval: 100 }).toBe(2);
    // The key died with the old data: the grace does not outlive a store that answers again.
    expect((await c.models(key.key)).status).toBe(401);
  });
  describe.each(['closed', 'open'] as const)('the log under a flood of requests while Redis is down (QUOTA_FAIL_MODE=%s)', (mode) => {
    it('is one line per request plus a handful of throttled warnings, none with a stack', async () => {
      const { gw, kill } = await outageSetup({ QUOTA_FAIL_MODE: mode, QUOTA_FAIL_OPEN_RPM: '1000', CACHE_ENABLED: 'true' });
      const key = await gw.createKey({ name: `outage-flood-${mode}` });
      const c = client(gw);
      // Seen once before the outage: the key authenticates from the outage grace during it.
      expect((await c.chat(key.key, 'before')).status).toBe(200);
      await settled(gw, c.requests);

      await kill();
      const from = gw.logs.lines.length;
      const FLOOD = 50;
      const statuses: number[] = [];
      for (let i = 0; i < FLOOD; i++) {
        // Three in five with the known key (admitted or refused by the quota's outage policy, the
        // cache bypassed), the rest with keys the store cannot vouch for (503 auth_unavailable).
        const res = i % 5 < 3 ? await c.chat(key.key, `flood ${i}`) : await c.chat(`tg-unknown-during-outage-${i}`, 'who am i');
        statuses.push(res.status);
      }
      // Prometheus scraping: the budget gauges cannot be read.
      for (let i = 0; i < 3; i++) expect((await fetch(`${gw.url}/metrics`)).status).toBe(200);
      // Stored responses: their owners can be neither recorded (open: served) nor looked up.
      for (let i = 0; i < 5; i++) {
        await c.call(key.key, { path: '/v1/responses', body: { model: 'gpt-4o-mini', input: `flood ${i}` } });
        expect((await c.call(key.key, { path: `/v1/responses/resp_flood${i}`, method: 'GET' })).status).toBe(503);
      }
      // Closed: every request is a 503 (quota or auth unavailable); open: the known key's are served.
      expect(statuses.filter((s) => s === 503)).toHaveLength(mode === 'closed' ? FLOOD : 20);
      expect(statuses.filter((s) => s === 200)).toHaveLength(mode === 'closed' ? 0 : 30);

      const lines = gw.logs.lines.slice(from);
      const requests = lines.filter((l) => l.msg === 'request' && l.path === '/v1/chat/completions');
      expect(requests).toHaveLength(FLOOD);
      // The request lines say what each client got.
      expect(requests.filter((l) => l.errorCode === 'auth_unavailable')).toHaveLength(20);
      if (mode === 'closed') expect(requests.filter((l) => l.errorCode === 'quota_unavailable')).toHaveLength(30);
      // Beyond them: the outage's own lines (health, connection, usage buffering) and at most one
      // warning per distinct problem, not one or two more per request.
      const others = lines.filter((l) => l.msg !== 'request');
      expect(others.length, JSON.stringify(others.map((l) => l.msg))).toBeLessThanOrEqual(10);
      const messages = others.map((l) => String(l.msg));
      expect(new Set(messages).size, JSON.stringify(messages)).toBe(messages.length);
      for (const line of others) expect(JSON.stringify(line)).not.toMatch(/stack|\\n    at /);
      // The refused connection is logged by its message and code, not as an error object with a stack.
      const connection = lines.filter((l) => l.msg === 'redis connection error');
      for (const line of connection) {
        expect(typeof line.err).toBe('string');
        expect(line).not.toHaveProperty('err.stack');
      }
    });
  });

  describe.each([
    ['killed (connections refused)', 'kill'],
    ['frozen with SIGSTOP (command timeouts)', 'freeze'],
  ] as const)('the admin API while Redis is %s', (_, how) => {
    it('answers 503 store_unavailable in OpenAI shape at once, logged at warn without a stack, and recovers', async () => {
      let down: () => Promise<unknown> | unknown;
      let up: () => Promise<unknown> | unknown;
      let gw: Gateway;
      if (how === 'kill') {
        const setup = await outageSetup({});
        ({ gw } = setup);
        [down, up] = [setup.kill, setup.restart];
      } else {
        const redis = await startFreezableRedis();
        gw = await startGateway({ env: { REDIS_URL: redis.url, ...OUTAGE_ENV } });
        cleanups.push(() => gw.close());
        await expect.poll(async () => (await readyz(gw)).status).toBe(200);
        [down, up] = [redis.freeze, redis.thaw];
      }
      const key = await gw.createKey({ name: `admin-outage-${how}` });
      // Seen once before the outage: the key authenticates from the outage grace during it.
      expect((await client(gw).models(key.key)).status).toBe(200);

      await down();
      const timed = async (method: string, path: string, body?: unknown) => {
        const started = performance.now();
        const res = await fetch(`${gw.url}${path}`, {
          method,
          headers: { authorization: `Bearer ${ADMIN_TOKEN}`, ...(body !== undefined && { 'content-type': 'application/json' }) },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        const text = await res.text();
        return { status: res.status, headers: res.headers, text, ms: performance.now() - started };
      };
      const STORE_UNAVAILABLE = {
        error: { message: expect.any(String), type: 'server_error', param: null, code: 'store_unavailable' },
      };
      // The first call finds the outage (a refused connection, or one command timeout); the rest fail fast.
      const calls: [string, string, unknown?][] = [
        ['GET', '/admin/keys'],
        ['POST', '/admin/keys', { name: 'made-during-outage' }],
        ['GET', '/admin/usage'],
        ['GET', '/admin/keys'],
        ['GET', `/admin/keys/${key.id}`],
        ['GET', '/admin/usage/events?format=csv'],
      ];
      for (const [method, path, body] of calls) {
        const res = await timed(method, path, body);
        const context = `${method} ${path}`;
        expect(res.status, context).toBe(503);
        expect(res.headers.get('content-type'), context).toMatch(/^application\/json/);
        expect(JSON.parse(res.text), context).toEqual(STORE_UNAVAILABLE);
        expect(res.headers.get('retry-after'), context).toBe('1');
        expect(res.ms, context).toBeLessThan(MAX_MS); // no hang: the first finds the outage, the rest fail fast
      }

      // A response lookup the store cannot answer is a 503 too; an id no response can have is a 404.
      const lookup = await fetch(`${gw.url}/v1/responses/resp_during_outage`, { headers: { authorization: `Bearer ${key.key}` } });
      expect(lookup.status).toBe(503);
      expect(((await lookup.json()) as { error: { code: string } }).error.code).toBe('store_unavailable');
      const empty = await fetch(`${gw.url}/v1/responses/`, { headers: { authorization: `Bearer ${key.key}` } });
      expect(empty.status).toBe(404);

      // Each request's own line says 503; beyond them, one throttled warning for the code.
      const requestLines = gw.logs.requests().filter((l) => String(l.path).startsWith('/admin') && l.status === 503);
      expect(requestLines.length).toBeGreaterThanOrEqual(calls.length);
      const adminLines = gw.logs.lines.filter((l) => l.code === 'store_unavailable');
      expect(adminLines).toHaveLength(1);
      for (const line of adminLines) {
        expect(line.level).toBe(40);
        expect(JSON.stringify(line)).not.toContain('stack');
      }
      expect(gw.logs.lines.filter((l) => l.msg === 'unhandled error' || ((l.level as number) >= 50 && l.reqId !== undefined))).toEqual([]);
      expect(gw.logs.requests().filter((l) => String(l.path).startsWith('/admin') && l.status === 500)).toEqual([]);

      await up();
      await expect.poll(async () => (await timed('GET', '/admin/keys')).status, { timeout: 10_000, interval: 100 }).toBe(200);
      const created = await timed('POST', '/admin/keys', { name: 'made-after-outage' });
      expect(created.status).toBe(201);
      expect((await timed('GET', '/admin/usage')).status).toBe(200);
      const keys = JSON.parse((await timed('GET', '/admin/keys')).text) as { data: { name: string }[] };
      expect(keys.data.map((k) => k.name)).toContain('made-after-outage');
    });
  });
});

// A usage write whose reply a stall swallowed: record.lua ran on Redis, the gateway saw a timeout
// and replays the batch. The replay must not count it again, and must still list its events.
describe('Usage recording across a Redis stall', () => {
  const ts = () => Date.now();
  function usageEvent(n: number): UsageEvent {
    return {
      ts: ts(), eventId: randomUUID(), requestId: `stall-${n}`, keyId: 'key_stall', keyName: 'stall', endpoint: 'chat.completions',
      model: 'gpt-4o-mini', modelAnswered: 'gpt-4o-mini', status: 200, stream: false, cache: 'MISS', promptTokens: 3,
      cachedPromptTokens: 0, completionTokens: 2, reasoningTokens: 0, totalTokens: 5, costMicros: 7, savedTokens: 0,
      savedMicros: 0, estimated: false, latencyMs: 1, ttfbMs: 1, upstreamMs: 1, overheadMs: 0, errorCode: null,
    };
  }

  it('store: a batch whose first write timed out but ran is listed by its replay, and counted once', async () => {
    const redis = await startFreezableRedis();
    const store = await createRedisStore({ url: redis.url, prefix: 'stall:', commandTimeoutMs: 200 });
    cleanups.push(() => store.close());
    const keep = { retentionMs: 86_400_000, maxEvents: 1000 };
    const hour = hourId(ts());
    const totals = async () => (await store.usageRows(hour, hourId(ts()))).reduce((n, r) => n + r.requests, 0);
    await store.recordUsage([usageEvent(0)], keep);

    const batch = [usageEvent(1), usageEvent(2), usageEvent(3)];
    await redis.freeze();
    // The scripts wait in the frozen Redis, the client gives up: the outcome is unknown.
    await expect(store.recordUsage(batch, keep)).rejects.toThrow();
    await redis.thaw();
    await expect.poll(totals, { timeout: 5000 }).toBe(4); // the first write did land
    await store.recordUsage(batch, keep); // the replay
    await store.recordUsage(batch, keep); // and another: nothing changes
    expect(await totals()).toBe(4);
    const listed = await store.usageEvents({ sinceMs: 0, limit: 100 });
    expect(listed.map((e) => e.event.requestId)).toEqual(['stall-0', 'stall-1', 'stall-2', 'stall-3']);
  });

  it('gateway: /admin/usage/events lists every event the aggregates count after a stall', async () => {
    const redis = await startFreezableRedis();
    // The key stays in the auth cache, so GET /v1/models touches Redis only through its usage event:
    // the usage batch is the command the stall catches.
    const gw = await startGateway({ env: { REDIS_URL: redis.url, ...OUTAGE_ENV, AUTH_CACHE_TTL_MS: '60000', USAGE_FLUSH_MS: '500' } });
    cleanups.push(() => gw.close());
    await expect.poll(async () => (await readyz(gw)).status).toBe(200);
    const since = Date.now() - 60_000;
    const key = await gw.createKey({ name: 'stalled-usage' });
    const c = client(gw);
    expect((await c.models(key.key)).status).toBe(200);
    await settled(gw, c.requests);

    for (let i = 0; i < 3; i++) expect((await c.models(key.key)).status).toBe(200);
    await redis.freeze(); // before the batch leaves (USAGE_FLUSH_MS)
    // Waits for the batch's write to time out without asking /readyz, whose PING would be the
    // command that finds the stall (and the batch would then be kept without ever being sent).
    const degraded = () => gw.logs.lines.some((l) => String(l.msg).startsWith('store unavailable: degraded mode'));
    await expect.poll(degraded, { timeout: 5000 }).toBe(true);
    expect((await readyz(gw)).body.modes.buffered.usageEvents).toBe(3);
    await redis.thaw();
    await expect.poll(async () => (await readyz(gw)).status, { timeout: 10_000 }).toBe(200);

    await settled(gw, c.requests);
    const listed = async () => {
      const res = await fetch(`${gw.url}/admin/usage/events?since=${since}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      return (await res.text()).split('\n').filter(Boolean).length;
    };
    await expect.poll(listed, { timeout: 5000 }).toBe(c.requests);
    expect(await usageTotals(gw)).toMatchObject({ requests: c.requests });
  });
});

describe('when Redis answers again', () => {
  it('a key that worked through the outage (its grace) is not refused while the gateway waits for its next probe', async () => {
    const redis = await startFreezableRedis();
    // The subscriber is dropped after two PINGs unanswered: 2 x 200 ms here.
    const store = await createRedisStore({ url: redis.url, prefix: `tg-${randomUUID()}:`, commandTimeoutMs: 200, subscriberCheckIntervalMs: 200 });
    cleanups.push(() => store.close());
    let subscriptions = 0;
    store.onKeyChange(({ id }) => id === '*' && subscriptions++);
    // A probe a minute apart: only the change feed's return can end the degraded mode in this test.
    const gw = await startGateway({ store, env: { ...OUTAGE_ENV, STORE_PROBE_INTERVAL_MS: '60000' } });
    cleanups.push(() => gw.close());
    const key = await gw.createKey({ name: 'through-the-outage' });
    const c = client(gw);
    expect((await c.models(key.key)).status).toBe(200);

    redis.freeze();
    cleanups.push(() => void redis.thaw());
    expect((await c.models(key.key)).status).toBe(200); // from the grace, after one command timeout
    expect((await readyz(gw)).body.status).toBe('degraded');
    const before = subscriptions;
    await sleep(1000); // the subscriber is dropped, and tries again
    redis.thaw();
    // Subscribed again: '*' (changes may have been missed) drops every cached key and the grace.
    await expect.poll(() => subscriptions, { timeout: 5000 }).toBeGreaterThan(before);
    await sleep(300);
    // Was 503 auth_unavailable until the next probe, here a minute later.
    const after = await c.models(key.key);
    expect(after.status).toBe(200);
    expect((await readyz(gw)).body.status).toBe('ready');
  });
});

describe("the change feed's subscriber check", () => {
  it('keeps the subscription through single slow answers: a Redis that stalls now and then is not a dead one', async () => {
    const server = await startRedisServer();
    cleanups.push(() => server.stop());
    const probe = new Redis(server.url);
    const pid = Number(/process_id:(\d+)/.exec(await probe.info('server'))![1]);
    probe.disconnect();
    // Checked every 300 ms, each PING bounded by 500 ms: the time scale of production's 5 s and 1 s, shrunk.
    const store = await createRedisStore({ url: server.url, prefix: `tg-${randomUUID()}:`, commandTimeoutMs: 500, subscriberCheckIntervalMs: 300 });
    cleanups.push(() => store.close());
    const heard: string[] = [];
    store.onKeyChange((change) => heard.push(change.id));
    await store.ping();
    await sleep(300); // subscribed: its '*' heard
    const before = heard.length;
    // Stalls of 700 ms: a PING sent early in one times out, the one sent after it is answered.
    const until = Date.now() + 6000;
    try {
      while (Date.now() < until) {
        process.kill(pid, 'SIGSTOP');
        await sleep(700);
        process.kill(pid, 'SIGCONT');
        await sleep(100);
      }
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    // Had it been dropped, it would be subscribed again by now, saying so ('*': every instance
    // forgets its keys).
    await sleep(1500);
    expect(heard.slice(before)).toEqual([]);
  }, 30_000);
});
