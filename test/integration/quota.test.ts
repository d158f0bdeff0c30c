// Quotas over real Redis and real HTTP: budgets hold under concurrency across instances, rate limits
// answer like OpenAI, settlement replaces reservations, windows roll over on the injected clock.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { request as httpRequest } from 'node:http';
import OpenAI from 'openai';
import { startGateway, type Gateway } from '../helpers/gateway.js';
import { createRedisStore } from '../../src/store/redis-store.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';
import type { Store } from '../../src/store/store.js';
import { startFakeOpenAI, type FakeOpenAI } from '../../src/fake-openai/server.js';
import { UPSTREAM_KEY } from '../helpers/gateway.js';

const opened: { close(): Promise<void> }[] = [];
afterAll(async () => {
  for (const r of opened.reverse()) await r.close();
});

/** Two gateway instances on one Redis (own stores, as two processes would have), one fake upstream. */
async function twoInstances(env: Record<string, string> = {}, clock?: () => number) {
  const prefix = uniquePrefix();
  const fake = await startFakeOpenAI({ apiKey: UPSTREAM_KEY });
  const stores: Store[] = [await createRedisStore({ url: testRedisUrl(), prefix }), await createRedisStore({ url: testRedisUrl(), prefix })];
  const a = await startGateway({ store: stores[0], fake, env, clock });
  const b = await startGateway({ store: stores[1], fake, env, clock });
  opened.push(fake, ...stores, a, b);
  return { a, b, fake };
}

const chatBody = (extra: Record<string, unknown> = {}) => ({
  model: 'gpt-4o-mini',
  messages: [{ role: 'user', content: 'Tell me something' }],
  max_tokens: 20,
  ...extra,
});

function chat(gw: Gateway, key: string, extra: Record<string, unknown> = {}, headers: Record<string, string> = {}) {
  return fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...headers },
    body: JSON.stringify(chatBody(extra)),
  });
}

async function quotaOf(gw: Gateway, id: string) {
  const res = await gw.admin('GET', `/admin/keys/${id}`);
  return res.body.quota as Record<string, { limit: number | null; used: number; reserved: number; resetsAt: string | null }>;
}

/** The tokens one chatBody() request reserves, read from a key with a tokensPerDay limit. */
async function reservationSize(gw: Gateway) {
  const { id, key } = await gw.createKey({ name: 'probe', limits: { maxConcurrent: 1, tokensPerDay: 1_000_000 } });
  // Hold the request in flight (slow upstream) and read what it reserved.
  gw.fake.setLatency(300);
  const pending = chat(gw, key);
  await new Promise((r) => setTimeout(r, 150));
  const reserved = (await quotaOf(gw, id)).tokensPerDay!.reserved;
  gw.fake.setLatency(0);
  await pending;
  return reserved;
}

describe('budgets hold under concurrency across two instances', () => {
  it('tokensPerDay: 50 concurrent requests never spend more than the budget', async () => {
    const { a, b, fake } = await twoInstances();
    const perRequest = await reservationSize(a);
    expect(perRequest).toBeGreaterThan(20);
    const budget = Math.floor(perRequest * 5.5);
    const { id, key } = await a.createKey({ name: 'tight', limits: { tokensPerDay: budget } });
    fake.setLatency(50); // keep them in flight together
    const before = fake.usageTotals().total_tokens;
    const statuses = await Promise.all(Array.from({ length: 50 }, (_, i) => chat(i % 2 ? a : b, key).then((r) => r.status)));
    fake.setLatency(0);
    const ok = statuses.filter((s) => s === 200).length;
    expect(statuses.every((s) => s === 200 || s === 429)).toBe(true);
    expect(ok).toBeGreaterThanOrEqual(5);
    await expect.poll(async () => (await quotaOf(a, id)).tokensPerDay!.reserved).toBe(0);
    const q = await quotaOf(b, id);
    expect(q.tokensPerDay!.used).toBeLessThanOrEqual(budget);
    // What was recorded is exactly what upstream reported for the requests that went through.
    expect(q.tokensPerDay!.used).toBe(fake.usageTotals().total_tokens - before);
  });

  it('tokensPerDay: batched legacy completions (a prompt per array item) never spend more than the budget', async () => {
    const { a, b, fake } = await twoInstances();
    const prompts = Array.from({ length: 20 }, (_, i) => `Say something about the number ${i}`);
    const body = { model: 'gpt-3.5-turbo-instruct', prompt: prompts, max_tokens: 10 };
    // Each of the 20 prompts may generate 10 tokens: the reservation must hold 200, not 10.
    const { id, key } = await a.createKey({ name: 'batched', limits: { tokensPerDay: 2000 } });
    fake.setLatency(50);
    const before = fake.usageTotals().total_tokens;
    const statuses = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        fetch(`${(i % 2 ? a : b).url}/v1/completions`, {
          method: 'POST',
          headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
          body: JSON.stringify(body),
        }).then((r) => r.status),
      ),
    );
    fake.setLatency(0);
    expect(statuses.every((s) => s === 200 || s === 429)).toBe(true);
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThanOrEqual(1);
    await expect.poll(async () => (await quotaOf(a, id)).tokensPerDay!.reserved).toBe(0);
    const q = await quotaOf(b, id);
    expect(q.tokensPerDay!.used).toBe(fake.usageTotals().total_tokens - before);
    expect(q.tokensPerDay!.used).toBeLessThanOrEqual(2000);
  });

  it('usdPerDay: 50 concurrent requests never spend more than the budget', async () => {
    const { a, b, fake } = await twoInstances();
    // gpt-4o: $2.50 in / $10 out per 1M. max_tokens 2000 makes one request reserve about $0.02.
    const { id, key } = await a.createKey({ name: 'usd', limits: { usdPerDay: 0.11 } });
    fake.setLatency(50);
    const statuses = await Promise.all(
      Array.from({ length: 50 }, (_, i) => chat(i % 2 ? a : b, key, { model: 'gpt-4o', max_tokens: 2000 }).then((r) => r.status)),
    );
    fake.setLatency(0);
    const ok = statuses.filter((s) => s === 200).length;
    expect(ok).toBeGreaterThanOrEqual(5);
    await expect.poll(async () => (await quotaOf(a, id)).usdPerDay!.reserved).toBe(0);
    expect((await quotaOf(a, id)).usdPerDay!.used).toBeLessThanOrEqual(0.11);
  });
});

describe('what clients see', () => {
  let gw: Gateway;
  beforeAll(async () => {
    gw = await startGateway({ env: { REDIS_URL: testRedisUrl(), REDIS_PREFIX: uniquePrefix() } });
    opened.push(gw);
  });
  afterEach(() => gw.fake.setStreamChunkDelay(0));

  it('rpm: 429 rate_limit_exceeded with retry-after, and OpenAI rate-limit headers on every response', async () => {
    const { key } = await gw.createKey({ limits: { rpm: 3, tpm: 100_000 } });
    const first = await chat(gw, key);
    expect(first.headers.get('x-ratelimit-limit-requests')).toBe('3');
    expect(first.headers.get('x-ratelimit-remaining-requests')).toBe('2');
    expect(first.headers.get('x-ratelimit-reset-requests')).toMatch(/^[\d.]+m?s$|^\d+m\d+s$/);
    expect(first.headers.get('x-ratelimit-limit-tokens')).toBe('100000');
    expect(Number(first.headers.get('x-ratelimit-remaining-tokens'))).toBeLessThan(100_000);
    expect(first.headers.get('x-ratelimit-reset-tokens')).toBeTruthy();
    await chat(gw, key);
    await chat(gw, key);
    const refused = await chat(gw, key);
    expect(refused.status).toBe(429);
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(Number(refused.headers.get('retry-after'))).toBeLessThanOrEqual(60);
    expect(refused.headers.get('x-ratelimit-remaining-requests')).toBe('0');
    expect(await refused.json()).toMatchObject({ error: { code: 'rate_limit_exceeded', type: 'requests' } });
  });

  it('tpm: 429 rate_limit_exceeded; a request larger than the limit is told not to retry', async () => {
    const { key } = await gw.createKey({ limits: { tpm: 100 } });
    expect((await chat(gw, key, { max_tokens: 60 })).status).toBe(200);
    const refused = await chat(gw, key, { max_tokens: 60 });
    expect(refused.status).toBe(429);
    expect(await refused.json()).toMatchObject({ error: { code: 'rate_limit_exceeded', type: 'tokens' } });
    expect(refused.headers.get('retry-after')).toBeTruthy();
    const tooLarge = await chat(gw, key, { max_tokens: 500 });
    expect(tooLarge.status).toBe(429);
    expect(tooLarge.headers.get('x-should-retry')).toBe('false');
  });

  it('maxConcurrent: a third stream in flight is refused, and admitted once one ends', async () => {
    const { key } = await gw.createKey({ limits: { maxConcurrent: 2 } });
    gw.fake.setStreamChunkDelay(40);
    const open = [chat(gw, key, { stream: true }), chat(gw, key, { stream: true })];
    const responses = await Promise.all(open);
    const third = await chat(gw, key);
    expect(third.status).toBe(429);
    expect(await third.json()).toMatchObject({ error: { code: 'rate_limit_exceeded' } });
    expect(third.headers.get('retry-after')).toBeTruthy();
    for (const r of responses) await r.text(); // streams finish
    await expect.poll(async () => (await chat(gw, key)).status).toBe(200);
  });

  it('budget exhausted: 429 insufficient_quota, x-should-retry false, and the SDK does not retry', async () => {
    const { key } = await gw.createKey({ limits: { tokensPerDay: 60 } });
    expect((await chat(gw, key, { max_tokens: 10 })).status).toBe(200);
    const refused = await chat(gw, key, { max_tokens: 50 });
    expect(refused.status).toBe(429);
    expect(refused.headers.get('x-should-retry')).toBe('false');
    expect(await refused.json()).toMatchObject({ error: { type: 'insufficient_quota', code: 'insufficient_quota' } });

    const seen = gw.logs.requests().length;
    const sdk = gw.sdk(key, { maxRetries: 3 });
    const err = await sdk.chat.completions.create(chatBody({ max_tokens: 50 }) as never).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    expect((err as { code?: string }).code).toBe('insufficient_quota');
    await expect.poll(() => gw.logs.requests().length).toBe(seen + 1); // one attempt, no retries
  });

  it('shows used, reserved and reset times per limit', async () => {
    const { id, key } = await gw.createKey({ limits: { rpm: 10, tokensPerDay: 10_000, usdPerMonth: 1, maxConcurrent: 5 } });
    const res = await chat(gw, key);
    const body = (await res.json()) as { usage: { total_tokens: number } };
    await expect.poll(async () => (await quotaOf(gw, id)).tokensPerDay!.used).toBe(body.usage.total_tokens);
    const q = await quotaOf(gw, id);
    expect(q.rpm).toMatchObject({ limit: 10, used: 1 });
    expect(q.tokensPerDay).toMatchObject({ limit: 10_000, reserved: 0 });
    expect(q.usdPerMonth!.limit).toBe(1);
    expect(q.usdPerMonth!.used).toBeGreaterThan(0);
    expect(q.maxConcurrent).toMatchObject({ limit: 5, used: 0 });
    expect(q.tpm!.limit).toBeNull();
    expect(Date.parse(q.tokensPerDay!.resetsAt!)).toBeGreaterThan(Date.now());
    expect(new Date(q.tokensPerDay!.resetsAt!).toISOString()).toMatch(/T00:00:00\.000Z$/);
  });

  it('releases the whole reservation when upstream fails', async () => {
    const { id, key } = await gw.createKey({ limits: { tokensPerDay: 10_000 } });
    gw.fake.failNext(1, 500);
    expect((await chat(gw, key)).status).toBe(500);
    await expect.poll(async () => (await quotaOf(gw, id)).tokensPerDay).toMatchObject({ used: 0, reserved: 0 });
  });

  it('charges a non-streamed request whose client hangs up for its prompt, marked estimated', async () => {
    const { id, key } = await gw.createKey({ limits: { tokensPerDay: 100_000 } });
    gw.fake.setLatency(400);
    await new Promise<void>((resolve) => {
      const req = httpRequest(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      });
      req.on('error', () => undefined);
      req.end(JSON.stringify(chatBody()));
      setTimeout(() => (req.destroy(), resolve()), 150); // hangs up while upstream is still working
    });
    await expect.poll(() => gw.logs.requests().filter((l) => l.keyId === id).length).toBe(1);
    gw.fake.setLatency(0);
    const abandoned = gw.logs.requests().find((l) => l.keyId === id)!;
    expect(abandoned).toMatchObject({ estimated: true, completionTokens: 0, status: 499, errorCode: 'client_closed_request' });
    expect(abandoned.promptTokens as number).toBeGreaterThan(0);
    await expect.poll(async () => (await quotaOf(gw, id)).tokensPerDay).toMatchObject({ reserved: 0, used: abandoned.promptTokens });
  });

  it('charges a stream the client abandons for what was generated, marked estimated', async () => {
    const { id, key } = await gw.createKey({ limits: { tokensPerDay: 100_000 } });
    gw.fake.setStreamChunkDelay(30);
    await new Promise<void>((resolve, reject) => {
      const req = httpRequest(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      });
      req.on('response', (res) => {
        let events = 0;
        res.on('data', () => {
          if (++events === 4) {
            req.destroy();
            resolve();
          }
        });
      });
      req.on('error', () => undefined);
      req.end(JSON.stringify(chatBody({ stream: true, max_tokens: 500 })));
      setTimeout(() => reject(new Error('no data')), 5000);
    });
    await expect.poll(async () => (await quotaOf(gw, id)).tokensPerDay!.reserved).toBe(0);
    const used = (await quotaOf(gw, id)).tokensPerDay!.used;
    expect(used).toBeGreaterThan(0);
    expect(used).toBeLessThan(100); // far below the 500+ reserved
    const line = gw.logs.requests().find((l) => l.keyId === id)!;
    expect(line).toMatchObject({ estimated: true, streamIncomplete: true });
  });

  it('records a stream abandoned before its first event as the client closing (499), billed its prompt', async () => {
    // Fastify sends a stream's headers with its first byte; until then a hang-up makes it destroy
    // the stream and report a premature close as the route's error.
    const { id, key } = await gw.createKey({ limits: { tokensPerDay: 100_000 } });
    gw.fake.setFirstEventDelay(2000);
    try {
      const before = gw.fake.requests.length;
      const req = httpRequest(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      });
      req.on('error', () => undefined);
      req.end(JSON.stringify(chatBody({ stream: true, max_tokens: 500 })));
      // Upstream has answered with its headers: the gateway is relaying a stream with nothing in it yet.
      await expect.poll(() => gw.fake.requests.length > before && gw.fake.activeStreams() === 1).toBe(true);
      await new Promise((r) => setTimeout(r, 100));
      req.destroy();
      await expect.poll(() => gw.logs.requests().filter((l) => l.keyId === id).length).toBe(1);
    } finally {
      gw.fake.setFirstEventDelay(0);
    }
    const line = gw.logs.requests().find((l) => l.keyId === id)!;
    // upstreamStatus: the gateway had upstream's answer (its headers), so the stream was being relayed.
    expect(line).toMatchObject({ status: 499, errorCode: 'client_closed_request', stream: true, upstreamStatus: 200 });
    expect(gw.logs.lines.filter((l) => l.msg === 'unhandled error')).toEqual([]);
    // Upstream read the prompt and bills it, as for a non-streamed hang-up: leaving before the first
    // token is no way around the budget.
    expect(line).toMatchObject({ estimated: true, completionTokens: 0 });
    expect(line.promptTokens as number).toBeGreaterThan(0);
    await expect.poll(async () => (await quotaOf(gw, id)).tokensPerDay).toMatchObject({ reserved: 0, used: line.promptTokens });
  });
});

describe('prices', () => {
  let gw: Gateway;
  beforeAll(async () => {
    gw = await startGateway({ env: { UNPRICED_INPUT_USD_PER_MILLION: '1000', UNPRICED_OUTPUT_USD_PER_MILLION: '1000' } });
    opened.push(gw);
  });

  it('refuses a model with no price for a key with a USD budget', async () => {
    const { key } = await gw.createKey({ limits: { usdPerDay: 1 } });
    const res = await chat(gw, key, { model: 'ft:gpt-4o-mini-2024-07-18:acme::tg1' });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ error: { code: 'model_price_unknown', param: 'model' } });
    expect(gw.fake.requests).toHaveLength(0);
  });

  it('charges a model with no price at the configured default price for other keys', async () => {
    // A fine-tuned model: the real-world case of a model no price table lists.
    const model = 'ft:gpt-4o-mini-2024-07-18:acme::tg1';
    const { id, key } = await gw.createKey({ limits: { tokensPerDay: 1_000_000 } });
    const res = await chat(gw, key, { model });
    expect(res.status).toBe(200);
    const { usage } = (await res.json()) as { usage: { total_tokens: number } };
    // $1000 per 1M tokens in and out = $0.001 per token.
    await expect.poll(async () => (await quotaOf(gw, id)).usdPerDay!.used).toBeCloseTo(usage.total_tokens * 0.001, 9);
  });
});
