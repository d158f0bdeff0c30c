// Quotas over real Redis and real HTTP: budgets hold under concurrency across instances, rate limits
// answer like OpenAI, settlement replaces reservations, windows roll over on the injected clock.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { request as httpRequest } from 'node:http';
import OpenAI from 'openai';
import { startGateway, type Gateway } from '../helpers/gateway.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';
import { chat, chatBody, quotaOf, twoInstances } from '../helpers/instances.js';

const opened: { close(): Promise<void> }[] = [];
afterAll(async () => {
  for (const r of opened.reverse()) await r.close();
});

const errorOf = async (res: Response) => ((await res.json()) as { error: Record<string, unknown> }).error;

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
    const { a, b, fake } = await twoInstances(opened);
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
    const { a, b, fake } = await twoInstances(opened);
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
    const { a, b, fake } = await twoInstances(opened);
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

  it('budget held by requests in flight: 429 rate_limit_exceeded with retry-after 1, and the SDK gets through once they end', async () => {
    const { key } = await gw.createKey({ limits: { tokensPerDay: 1000 } });
    // Each reserves its prompt plus 400 tokens; two hold 800+ of the 1000, using a few dozen.
    gw.fake.setLatency(800);
    try {
      const inFlight = [chat(gw, key, { max_tokens: 400 }), chat(gw, key, { max_tokens: 400 })];
      await new Promise((r) => setTimeout(r, 200));
      const held = await chat(gw, key, { max_tokens: 400 });
      expect(held.status).toBe(429);
      expect(held.headers.get('retry-after')).toBe('1');
      expect(held.headers.get('retry-after-ms')).toBe('1000');
      expect(held.headers.get('x-should-retry')).toBeNull();
      const error = await errorOf(held);
      expect(error).toMatchObject({ type: 'tokens', code: 'rate_limit_exceeded' });
      expect(error.message).toMatch(/covers it, but requests in flight hold it until they end\. Please try again in 1s\.$/);

      // Sent while the two are still in flight: refused, then retried by the SDK after 1 s, by
      // when they have settled for what they used.
      const sdk = gw.sdk(key, { maxRetries: 2 });
      const done = await sdk.chat.completions.create(chatBody({ max_tokens: 400 }) as never);
      expect(done.choices).toHaveLength(1);
      expect((await Promise.all(inFlight)).map((r) => r.status)).toEqual([200, 200]);
    } finally {
      gw.fake.setLatency(0);
    }
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

  it('records a stream abandoned before its first event as the client closing, billed its prompt', async () => {
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
    // upstreamStatus: the gateway had upstream's answer (its headers), so the stream was being
    // relayed, and its headers had gone to the client: the 200 it was, as a hang-up mid-stream is.
    expect(line).toMatchObject({ status: 200, errorCode: 'client_closed_request', stream: true, upstreamStatus: 200 });
    expect(gw.logs.lines.filter((l) => l.msg === 'unhandled error')).toEqual([]);
    // Upstream read the prompt and bills it, as for a non-streamed hang-up: leaving before the first
    // token is no way around the budget.
    expect(line).toMatchObject({ estimated: true, completionTokens: 0 });
    expect(line.promptTokens as number).toBeGreaterThan(0);
    await expect.poll(async () => (await quotaOf(gw, id)).tokensPerDay).toMatchObject({ reserved: 0, used: line.promptTokens });
  });
});

describe('request sizes and defaults', () => {
  let gw: Gateway;
  beforeAll(async () => {
    gw = await startGateway({ env: { REDIS_URL: testRedisUrl(), REDIS_PREFIX: uniquePrefix() } });
    opened.push(gw);
  });
  afterEach(() => gw.fake.setLatency(0));

  const post = (key: string, path: string, body: unknown) =>
    fetch(`${gw.url}${path}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
  const instruct = 'gpt-3.5-turbo-instruct';
  const paths = ['/v1/completions', `/v1/engines/${instruct}/completions`];

  it('refuses a batch of more than 2048 prompts with a 400 naming prompt, on both completions paths, never a 500', async () => {
    const { key } = await gw.createKey({ name: 'huge-batch' });
    const before = gw.fake.requests.length;
    for (const path of paths) {
      // max_tokens x n is within the schema's bounds; x 40,000 prompts it overflowed the cost arithmetic.
      const res = await post(key, path, { model: instruct, prompt: Array(40_000).fill(''), n: 128, max_tokens: 2 ** 31 - 1 });
      expect(res.status).toBe(400);
      expect(await errorOf(res)).toMatchObject({
        type: 'invalid_request_error',
        param: 'prompt',
        code: 'array_above_max_length',
        message: "Invalid 'prompt': array too long. Expected an array with maximum length 2048, but got an array with length 40000 instead.",
      });
    }
    expect(gw.fake.requests.length).toBe(before);
    expect(gw.logs.lines.filter((l) => (l.level as number) >= 50)).toEqual([]);
  });

  it('refuses a request whose worst case passes any sane bound with a 400, whatever its key limits', async () => {
    const { key } = await gw.createKey({ name: 'limited', limits: { tokensPerDay: 1_000_000 } });
    const { key: unlimited } = await gw.createKey({ name: 'unlimited' });
    const before = gw.fake.requests.length;
    // 2048 prompts x 128 choices x 2^31-1 tokens: every factor allowed, the product 5.6e14 tokens.
    for (const path of paths) {
      const res = await post(key, path, { model: instruct, prompt: Array(2048).fill('a'), n: 128, max_tokens: 2 ** 31 - 1 });
      expect(res.status).toBe(400);
      const error = await errorOf(res);
      expect(error).toMatchObject({ type: 'invalid_request_error', param: 'max_tokens', code: 'request_too_large' });
      expect(error.message).toMatch(/^This request may use up to \d+ tokens .*more than the 10000000000 the gateway reserves for one request/);
    }
    // Chat: 128 choices of 2^31-1 tokens, for a key with no limit at all.
    const chatRes = await chat(gw, unlimited, { n: 128, max_tokens: 2 ** 31 - 1 });
    expect(chatRes.status).toBe(400);
    expect(await errorOf(chatRes)).toMatchObject({ param: 'max_tokens', code: 'request_too_large' });
    const newer = await chat(gw, unlimited, { n: 128, max_tokens: undefined, max_completion_tokens: 2 ** 31 - 1 });
    expect(await errorOf(newer)).toMatchObject({ param: 'max_completion_tokens', code: 'request_too_large' });
    expect(gw.fake.requests.length).toBe(before);
  });

  it('refuses more than 2048 embedding inputs with a 400 naming input, and takes 2048', async () => {
    const { key } = await gw.createKey({ name: 'embed-batch' });
    const over = await post(key, '/v1/embeddings', { model: 'text-embedding-3-small', input: Array(2049).fill('hello') });
    expect(over.status).toBe(400);
    expect(await errorOf(over)).toMatchObject({ param: 'input', code: 'array_above_max_length' });
    const tokenBatch = await post(key, '/v1/embeddings', { model: 'text-embedding-3-small', input: Array(2049).fill([1, 2]) });
    expect(tokenBatch.status).toBe(400);
    const full = await post(key, '/v1/embeddings', { model: 'text-embedding-3-small', input: Array(2048).fill('hello') });
    expect(full.status).toBe(200);
    // One array of numbers is a single input (token ids), not a batch: its length is not bounded here.
    const ids = await post(key, '/v1/embeddings', { model: 'text-embedding-3-small', input: Array(3000).fill(1) });
    expect(ids.status).toBe(200);
  });

  it("legacy completions without max_tokens (or with null) reserve OpenAI's default of 16 per choice", async () => {
    const { id, key } = await gw.createKey({ name: 'legacy-default', limits: { tokensPerDay: 10_000 } });
    // With DEFAULT_MAX_OUTPUT_TOKENS (4096) per choice this reserved ~12,300 tokens: a 429 for nothing.
    gw.fake.setLatency(300);
    const pending = post(key, '/v1/completions', { model: instruct, prompt: 'Say this is a test', n: 3 });
    // Read while upstream holds the request (polled: the admission may not have run yet).
    let reserved = 0;
    await expect.poll(async () => (reserved = (await quotaOf(gw, id)).tokensPerDay!.reserved)).toBeGreaterThan(0);
    const res = await pending;
    gw.fake.setLatency(0);
    expect(res.status).toBe(200);
    const { usage } = (await res.json()) as { usage: { prompt_tokens: number; completion_tokens: number } };
    expect(usage.completion_tokens).toBe(3 * 16);
    expect(reserved).toBe(usage.prompt_tokens + 3 * 16);

    // openai-python 0.x sends unset arguments as null.
    const engines = await post(key, `/v1/engines/${instruct}/completions`, { prompt: ['a', 'b', 'c'], max_tokens: null, stop: null });
    expect(engines.status).toBe(200);
    // Chat keeps DEFAULT_MAX_OUTPUT_TOKENS: 3 x 4096 do not fit what is left.
    const chatRes = await chat(gw, key, { n: 3, max_tokens: null });
    expect(chatRes.status).toBe(429);
  });

  it('legacy completions are sized by max_tokens: a max_completion_tokens (a chat parameter) neither shrinks nor breaks the reservation', async () => {
    const { key } = await gw.createKey({ name: 'legacy-mct', limits: { tpm: 100 } });
    for (const path of paths) {
      // Sized by max_completion_tokens this reserved 2 tokens, and 500 went through a 100-token tpm.
      const big = await post(key, path, { model: instruct, prompt: 'x', max_completion_tokens: 1, max_tokens: 500 });
      expect(big.status).toBe(429);
      expect(await errorOf(big)).toMatchObject({ code: 'rate_limit_exceeded' });
      // Values chat would refuse are upstream's to judge here: they were a 500 (a RangeError pricing -5 tokens).
      for (const odd of [-5, 1.5, 'lots']) {
        const res = await post(key, path, { model: instruct, prompt: 'x', max_completion_tokens: odd, max_tokens: 3 });
        expect(res.status).toBe(200);
      }
    }
    // Chat still takes max_completion_tokens over max_tokens.
    const chatRes = await post(key, '/v1/chat/completions', { ...chatBody(), max_completion_tokens: 500, max_tokens: 1 });
    expect(chatRes.status).toBe(429);
  });

  it('a budget refusal says whether the request is larger than what is left or than the whole budget', async () => {
    const { key } = await gw.createKey({ name: 'budget-words', limits: { tokensPerDay: 100 } });
    const whole = await chat(gw, key, { max_tokens: 200 });
    expect(whole.status).toBe(429);
    expect(whole.headers.get('x-should-retry')).toBe('false');
    const wholeError = await errorOf(whole);
    expect(wholeError).toMatchObject({ type: 'insufficient_quota', code: 'insufficient_quota' });
    expect(wholeError.message).toMatch(/^This request may use up to \d+ tokens, more than this gateway key's whole daily token budget of 100 tokens/);
    expect(wholeError.message).not.toMatch(/has used/);

    expect((await chat(gw, key, { max_tokens: 30 })).status).toBe(200);
    const left = await chat(gw, key, { max_tokens: 80 });
    expect(left.status).toBe(429);
    expect((await errorOf(left)).message).toMatch(
      /^This request may use up to \d+ tokens, more than is left of this gateway key's daily token budget of 100 tokens\. It resets at \d{4}-/,
    );

    const { key: usdKey } = await gw.createKey({ name: 'usd-words', limits: { usdPerDay: 0.001 } });
    // gpt-4o output is $10/M: 2000 tokens may cost $0.02, twenty times the whole budget.
    const dear = await chat(gw, usdKey, { model: 'gpt-4o', max_tokens: 2000 });
    expect(dear.status).toBe(429);
    expect((await errorOf(dear)).message).toMatch(/^This request may cost up to \$0\.02\d*, more than this gateway key's whole daily spending budget of \$0\.001/);
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

  it("refuses service_tier 'priority' (dearer than the standard prices it knows) for a key with a USD budget, and only that", async () => {
    const dollars = await gw.createKey({ limits: { usdPerDay: 1 } });
    const res = await chat(gw, dollars.key, { service_tier: 'priority' });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ error: { code: 'service_tier_not_priced', param: 'service_tier', type: 'invalid_request_error' } });
    expect(gw.fake.requests).toHaveLength(0);
    for (const tier of ['auto', 'default', 'flex']) expect((await chat(gw, dollars.key, { service_tier: tier })).status, tier).toBe(200);
    const tokens = await gw.createKey({ limits: { tokensPerDay: 100_000 } });
    expect((await chat(gw, tokens.key, { service_tier: 'priority' })).status).toBe(200);
  });

  it('records cheap requests at their exact cost, not each rounded up to a micro-dollar', async () => {
    // text-embedding-3-small: $0.02 per 1M tokens, 0.02 micro-dollars a token. Rounded up per
    // request, 100 tiny embeddings were recorded as 100 micro-dollars, and a $0.00005 budget
    // refused the second half of them.
    const { id, key } = await gw.createKey({ limits: { usdPerDay: 0.00005 } });
    const client = gw.sdk(key);
    let tokens = 0;
    for (let i = 0; i < 100; i++) {
      const res = await client.embeddings.create({ model: 'text-embedding-3-small', input: `w${i}` });
      tokens += res.usage.total_tokens;
    }
    const exactMicros = tokens * 0.02;
    // The spend recorded is the exact spend rounded down (the fraction waits for the next request).
    await expect.poll(async () => (await quotaOf(gw, id)).usdPerDay!.used).toBeCloseTo(Math.floor(exactMicros) / 1e6, 9);
    await expect.poll(async () => (await gw.admin('GET', `/admin/usage?groupBy=key&keyId=${id}`)).body.totals.costUsd).toBeCloseTo(
      Math.floor(exactMicros) / 1e6,
      9,
    );
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
