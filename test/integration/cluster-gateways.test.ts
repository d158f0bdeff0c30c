// Three gateway instances on one Redis Cluster (own stores, one prefix, one fake upstream): budgets
// stay exact, single-flight holds, and a revocation on one instance reaches the others at once.
import { afterAll, describe, expect, inject, it } from 'vitest';
import { startGateway, UPSTREAM_KEY, type Gateway } from '../helpers/gateway.js';
import { clusterAddresses } from '../helpers/redis-cluster.js';
import { uniquePrefix } from '../helpers/redis.js';
import { createRedisStore } from '../../src/store/redis-store.js';
import { startFakeOpenAI, type FakeOpenAI } from '../../src/fake-openai/server.js';
import { loadConfig } from '../../src/config.js';

const opened: { close(): Promise<void> }[] = [];
afterAll(async () => {
  for (const r of opened.reverse()) await r.close();
});

/** Three instances, each with its own cluster-backed store (as three processes would have). */
async function threeInstances(env: Record<string, string> = {}, fakeOptions: { latencyMs?: number } = {}) {
  const prefix = uniquePrefix();
  const fake = await startFakeOpenAI({ apiKey: UPSTREAM_KEY, ...fakeOptions });
  opened.push(fake);
  const gateways: Gateway[] = [];
  for (let i = 0; i < 3; i++) {
    const store = await createRedisStore({ clusterNodes: clusterAddresses(inject('redisClusterNodes')), prefix });
    opened.push(store);
    const gw = await startGateway({ store, fake, env });
    opened.push(gw);
    gateways.push(gw);
  }
  return { gateways: gateways as [Gateway, Gateway, Gateway], fake };
}

const chatBody = (extra: Record<string, unknown> = {}) => ({
  model: 'gpt-4o-mini',
  messages: [{ role: 'user', content: 'Tell me something' }],
  max_tokens: 20,
  ...extra,
});

function chat(gw: Gateway, key: string, extra: Record<string, unknown> = {}) {
  return fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(chatBody(extra)),
  });
}

async function quotaOf(gw: Gateway, id: string) {
  const res = await gw.admin('GET', `/admin/keys/${id}`);
  return res.body.quota as Record<string, { limit: number | null; used: number; reserved: number }>;
}

/** The tokens one chatBody() request reserves, read while one is held in flight. */
async function reservationSize(gw: Gateway, fake: FakeOpenAI) {
  const { id, key } = await gw.createKey({ name: 'probe', limits: { tokensPerDay: 1_000_000 } });
  fake.setLatency(300);
  const pending = chat(gw, key);
  await new Promise((r) => setTimeout(r, 150));
  const reserved = (await quotaOf(gw, id)).tokensPerDay!.reserved;
  fake.setLatency(0);
  await pending;
  return reserved;
}

describe('three instances on a Redis Cluster', () => {
  it('tokensPerDay: 50 concurrent requests over three instances never spend more than the budget', async () => {
    const { gateways, fake } = await threeInstances();
    const perRequest = await reservationSize(gateways[0], fake);
    expect(perRequest).toBeGreaterThan(20);
    const budget = Math.floor(perRequest * 5.5);
    const { id, key } = await gateways[1].createKey({ name: 'tight', limits: { tokensPerDay: budget } });
    fake.setLatency(50); // keep them in flight together
    const before = fake.usageTotals().total_tokens;
    const statuses = await Promise.all(Array.from({ length: 50 }, (_, i) => chat(gateways[i % 3]!, key).then((r) => r.status)));
    fake.setLatency(0);
    expect(statuses.every((s) => s === 200 || s === 429)).toBe(true);
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThanOrEqual(5);
    await expect.poll(async () => (await quotaOf(gateways[2], id)).tokensPerDay!.reserved).toBe(0);
    const q = await quotaOf(gateways[0], id);
    expect(q.tokensPerDay!.used).toBeLessThanOrEqual(budget);
    expect(q.tokensPerDay!.used).toBe(fake.usageTotals().total_tokens - before);
  });

  it('single-flight: 20 identical concurrent requests over three instances make one upstream call', async () => {
    const { gateways, fake } = await threeInstances({ CACHE_ENABLED: 'true' });
    const { key } = await gateways[0].createKey();
    // The key is now known to every instance (and their auth caches warm).
    for (const gw of gateways) expect((await chat(gw, key, { seed: 99, max_tokens: 1 })).status).toBe(200);
    fake.reset();
    fake.setLatency(300);
    const responses = await Promise.all(Array.from({ length: 20 }, (_, i) => chat(gateways[i % 3]!, key, { seed: 7 })));
    const texts = await Promise.all(responses.map((r) => r.text()));
    fake.setLatency(0);
    expect(responses.map((r) => r.status)).toEqual(responses.map(() => 200));
    expect(new Set(texts.map((t) => JSON.stringify((JSON.parse(t) as { choices: unknown }).choices))).size).toBe(1);
    expect(fake.requests.filter((r) => r.method === 'POST')).toHaveLength(1);
    const cache = responses.map((r) => r.headers.get('x-tollgate-cache'));
    expect(cache.filter((s) => s === 'MISS')).toHaveLength(1);
    expect(cache.filter((s) => s === 'HIT')).toHaveLength(19);
  });

  it('a revocation on one instance is seen by the others within one second', async () => {
    // A long auth cache TTL: only the change feed can make the others notice in time.
    const { gateways } = await threeInstances({ AUTH_CACHE_TTL_MS: '60000' });
    const { id, key } = await gateways[0].createKey();
    for (const gw of gateways) expect((await chat(gw, key)).status).toBe(200); // now cached on each
    await gateways[1].admin('DELETE', `/admin/keys/${id}`);
    for (const gw of [gateways[0], gateways[2]]) {
      await expect.poll(async () => (await chat(gw, key)).status, { timeout: 1000, interval: 50 }).toBe(401);
    }
  });
});

describe('REDIS_* configuration', () => {
  const base = { OPENAI_API_KEY: 'sk-x' };
  const problems = (env: Record<string, string>) => {
    try {
      loadConfig({ ...base, ...env });
      return [];
    } catch (err) {
      return (err as { problems: string[] }).problems;
    }
  };

  it('reads a cluster from REDIS_CLUSTER_NODES and Sentinel from REDIS_SENTINELS + REDIS_SENTINEL_NAME', () => {
    expect(loadConfig({ ...base, REDIS_CLUSTER_NODES: '10.0.0.1:7000, redis-b:7001,[::1]:7002', REDIS_PASSWORD: 'pw' }).redis).toEqual({
      clusterNodes: [
        { host: '10.0.0.1', port: 7000 },
        { host: 'redis-b', port: 7001 },
        { host: '::1', port: 7002 },
      ],
      password: 'pw',
      prefix: 'tg:',
      commandTimeoutMs: 1000,
    });
    expect(loadConfig({ ...base, REDIS_SENTINELS: 's1:26379,s2:26379', REDIS_SENTINEL_NAME: 'mymaster' }).redis).toEqual({
      sentinels: [
        { host: 's1', port: 26379 },
        { host: 's2', port: 26379 },
      ],
      sentinelName: 'mymaster',
      prefix: 'tg:',
      commandTimeoutMs: 1000,
    });
    expect(loadConfig({ ...base, REDIS_URL: 'redis://127.0.0.1:6379' }).redis).toEqual({
      url: 'redis://127.0.0.1:6379',
      prefix: 'tg:',
      commandTimeoutMs: 1000,
    });
  });

  it('fails fast listing every Redis problem', () => {
    expect(problems({ REDIS_CLUSTER_NODES: 'h1:70000,nope,h2:7000' })).toEqual([
      'REDIS_CLUSTER_NODES: "h1:70000" is not host:port',
      'REDIS_CLUSTER_NODES: "nope" is not host:port',
    ]);
    expect(problems({ REDIS_URL: 'redis-cluster://a:1,b:2' })[0]).toMatch(/^REDIS_URL: must be redis:\/\//);
    expect(problems({ REDIS_URL: 'redis://a:1', REDIS_CLUSTER_NODES: 'b:2', REDIS_PASSWORD: 'x' })).toEqual([
      'REDIS_URL, REDIS_CLUSTER_NODES: set only one (one server, a cluster, or Sentinel)',
    ]);
    expect(problems({ REDIS_SENTINELS: 's1:26379' })).toEqual([
      'REDIS_SENTINEL_NAME: required with REDIS_SENTINELS (the master name the Sentinels monitor)',
    ]);
    expect(problems({ REDIS_URL: 'redis://a:1', REDIS_PASSWORD: 'x' })).toEqual([
      'REDIS_PASSWORD: only used with REDIS_CLUSTER_NODES or REDIS_SENTINELS (put credentials in REDIS_URL)',
    ]);
  });
});
