// What a request the gateway gave up on is charged, over real HTTP and real Redis: upstream read the
// prompt when the gateway's own timeout fired before its answer (first byte, or total), so it bills
// it as a hang-up, and so does the gateway (the prompt estimate, marked estimated); a 200 whose body
// the gateway stopped reading (idle or total timeout) was generated whole and is billed whole, so the
// gateway charges the reservation's worst case (prompt estimate + the request's max output, marked
// estimated); a request that never reached upstream (refused connection, a wait between attempts)
// is charged nothing.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ADMIN_TOKEN, startGateway, type Gateway, type GatewayOptions } from '../helpers/gateway.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';
import { createRedisStore } from '../../src/store/redis-store.js';
import { startFakeOpenAI } from '../../src/fake-openai/server.js';
import { estimatePromptTokens } from '../../src/openai/tokens.js';
import { exactCost, loadPriceTable } from '../../src/openai/prices.js';
import type { Endpoint } from '../../src/openai/endpoints.js';
import type { Store } from '../../src/store/store.js';

const opened: { close(): Promise<void> }[] = [];
afterAll(async () => {
  for (const r of opened.reverse()) await r.close();
});

/** A gateway on its own Redis prefix (the store closed after the gateway), usage events flushed quickly. */
async function gateway(env: Record<string, string>, fake?: GatewayOptions['fake']): Promise<Gateway> {
  const store: Store = await createRedisStore({ url: testRedisUrl(), prefix: uniquePrefix() });
  opened.push(store);
  const gw = await startGateway({ store, fake, env: { USAGE_FLUSH_MS: '50', ...env } });
  opened.push(gw);
  return gw;
}

const chat = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Tell me a long story about toll gates. '.repeat(40) }], max_tokens: 50 };
const embeddings = { model: 'text-embedding-3-small', input: 'A long text to embed, about toll gates. '.repeat(40) };

/** The prompt tokens the gateway estimates (and reserves) for a request. */
const estimate = (endpoint: Endpoint['name'], body: { model: string }) => estimatePromptTokens(endpoint, body, body.model);

function post(gw: Gateway, key: string, path: string, body: unknown, signal?: AbortSignal) {
  return fetch(`${gw.url}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal,
  });
}

type UsageEvent = {
  status: number;
  errorCode: string | null;
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
  costMicros: number;
  estimated: boolean;
};

/** The key's one usage event, once it is listed, and its day's quota after settlement. */
async function accountingOf(gw: Gateway, keyId: string) {
  const events = async () => {
    const res = await fetch(`${gw.url}/admin/usage/events?since=2000-01-01T00:00:00Z`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    const all = (await res.text()).split('\n').filter(Boolean).map((l) => JSON.parse(l) as UsageEvent & { keyId: string });
    return all.filter((e) => e.keyId === keyId);
  };
  await expect.poll(async () => (await events()).length, { timeout: 5000 }).toBe(1);
  const quotas = async () =>
    (await gw.admin('GET', `/admin/keys/${keyId}`)).body.quota as Record<'tokensPerDay' | 'usdPerDay', { used: number; reserved: number }>;
  const quota = async () => (await quotas()).tokensPerDay;
  await expect.poll(async () => (await quota()).reserved, { timeout: 5000 }).toBe(0); // settled
  await expect.poll(async () => (await quotas()).usdPerDay.reserved, { timeout: 5000 }).toBe(0);
  const all = await quotas();
  return { event: (await events())[0]!, quota: all.tokensPerDay, usd: all.usdPerDay };
}

/** Charged the prompt estimate and nothing else, marked estimated. */
async function expectPromptCharged(gw: Gateway, keyId: string, prompt: number, status: number, errorCode: string) {
  const { event, quota } = await accountingOf(gw, keyId);
  expect(event).toMatchObject({ status, errorCode, promptTokens: prompt, completionTokens: 0, totalTokens: prompt, estimated: true });
  expect(quota.used).toBe(prompt);
}

/**
 * Charged the reservation's worst case (the prompt estimate and the most output the request
 * allowed), marked estimated; the usage event, the token quota and the dollar quota all agree.
 */
async function expectWorstCaseCharged(gw: Gateway, keyId: string, model: string, prompt: number, maxOutput: number, status: number, errorCode: string) {
  const { event, quota, usd } = await accountingOf(gw, keyId);
  const total = prompt + maxOutput;
  expect(event).toMatchObject({ status, errorCode, promptTokens: prompt, completionTokens: maxOutput, totalTokens: total, estimated: true });
  expect(quota.used).toBe(total);
  const { micros, fraction } = exactCost(loadPriceTable().priceFor(model)!, { promptTokens: prompt, completionTokens: maxOutput });
  expect(micros).toBeGreaterThan(0);
  // The recorded cost is exact; its fraction of a micro-dollar is carried to the key's next request.
  expect(fraction > 0 ? [micros, micros + 1] : [micros]).toContain(event.costMicros);
  expect(Math.round(usd.used * 1_000_000)).toBe(event.costMicros);
}

/** Charged nothing: the reservation released in full. */
async function expectNothingCharged(gw: Gateway, keyId: string, status: number, errorCode: string) {
  const { event, quota } = await accountingOf(gw, keyId);
  expect(event).toMatchObject({ status, errorCode, promptTokens: 0, completionTokens: 0, totalTokens: 0, estimated: false });
  expect(quota.used).toBe(0);
}

const limits = { tokensPerDay: 1_000_000 };

describe('first-byte (headers) timeout: upstream read the request, the prompt is charged', () => {
  let gw: Gateway;
  beforeAll(async () => {
    gw = await gateway({
      UPSTREAM_HEADERS_TIMEOUT_MS: '400',
      UPSTREAM_IDLE_TIMEOUT_MS: '400',
      UPSTREAM_TOTAL_TIMEOUT_MS: '5000',
      UPSTREAM_MAX_RETRIES: '2',
      UPSTREAM_RETRY_BASE_DELAY_MS: '20',
      UPSTREAM_RETRY_MAX_DELAY_MS: '50',
    });
  });
  afterEach(() => gw.fake.reset());

  it('buffered chat: 504, charged the prompt estimate, estimated', async () => {
    const { id, key } = await gw.createKey({ name: 'chat-headers-timeout', limits });
    gw.fake.setLatency(1500);
    const res = await post(gw, key, '/v1/chat/completions', chat);
    expect(res.status).toBe(504);
    expect(await res.json()).toMatchObject({ error: { code: 'upstream_timeout' } });
    expect(gw.fake.requests).toHaveLength(1);
    await expectPromptCharged(gw, id, estimate('chat.completions', chat), 504, 'upstream_timeout');
  });

  it('embeddings: 504, charged the prompt estimate, estimated', async () => {
    const { id, key } = await gw.createKey({ name: 'embeddings-headers-timeout', limits });
    gw.fake.hangNext(1);
    const res = await post(gw, key, '/v1/embeddings', embeddings);
    expect(res.status).toBe(504);
    await expectPromptCharged(gw, id, estimate('embeddings', embeddings), 504, 'upstream_timeout');
  });

  it('a stream timing out before its first byte: 504, charged the prompt estimate, estimated', async () => {
    const { id, key } = await gw.createKey({ name: 'stream-headers-timeout', limits });
    gw.fake.setLatency(1500);
    const body = { ...chat, stream: true };
    const res = await post(gw, key, '/v1/chat/completions', body);
    expect(res.status).toBe(504);
    await res.text();
    await expectPromptCharged(gw, id, estimate('chat.completions', body), 504, 'upstream_timeout');
  });

  it('a 503 retried, then a timeout: the prompt is charged once (the 503 is not billed)', async () => {
    const { id, key } = await gw.createKey({ name: 'retried-then-timeout', limits });
    gw.fake.failNext(1, 503);
    gw.fake.hangNext(1);
    const res = await post(gw, key, '/v1/chat/completions', chat);
    expect(res.status).toBe(504);
    expect(gw.fake.requests).toHaveLength(2);
    await expectPromptCharged(gw, id, estimate('chat.completions', chat), 504, 'upstream_timeout');
  });

  it('the client leaving during the wait before a retry: nothing in flight upstream, nothing charged', async () => {
    const { id, key } = await gw.createKey({ name: 'gone-in-backoff', limits });
    gw.fake.failNext(1, 503, undefined, { 'retry-after': '1' });
    const controller = new AbortController();
    const pending = post(gw, key, '/v1/chat/completions', chat, controller.signal).catch((err: Error) => err);
    await expect.poll(() => gw.fake.requests.length).toBe(1);
    await new Promise((r) => setTimeout(r, 100)); // the 503 is answered; the gateway waits to retry
    controller.abort();
    expect(await pending).toBeInstanceOf(Error);
    await expectNothingCharged(gw, id, 499, 'client_closed_request');
    expect(gw.fake.requests).toHaveLength(1);
  });

  it('the client leaving while upstream works on the request: still charged its prompt', async () => {
    const { id, key } = await gw.createKey({ name: 'gone-while-sent', limits });
    gw.fake.setLatency(300);
    const controller = new AbortController();
    const pending = post(gw, key, '/v1/chat/completions', chat, controller.signal).catch((err: Error) => err);
    await expect.poll(() => gw.fake.requests.length).toBe(1);
    controller.abort();
    expect(await pending).toBeInstanceOf(Error);
    await expectPromptCharged(gw, id, estimate('chat.completions', chat), 499, 'client_closed_request');
  });
});

describe('total timeout before the first byte', () => {
  it('504, charged the prompt estimate, estimated', async () => {
    const gw = await gateway({ UPSTREAM_HEADERS_TIMEOUT_MS: '10000', UPSTREAM_IDLE_TIMEOUT_MS: '10000', UPSTREAM_TOTAL_TIMEOUT_MS: '500' });
    const { id, key } = await gw.createKey({ name: 'total-timeout', limits });
    gw.fake.setLatency(2000);
    const res = await post(gw, key, '/v1/chat/completions', chat);
    expect(res.status).toBe(504);
    await expectPromptCharged(gw, id, estimate('chat.completions', chat), 504, 'upstream_timeout');
  });
});

/** An upstream that answers 200 with a JSON content-length, sends part of the body, then stalls. */
/** Answers 200 and the start of a body, then stalls, or (`drop`) loses the connection. */
async function stallingUpstream({ drop = false } = {}): Promise<{ url: string; requests: () => number; close(): Promise<void> }> {
  let requests = 0;
  const server: Server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      requests++;
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '4096' });
      res.write('{"id":"chatcmpl-stalled","object":"chat.completion",', () => {
        if (drop) setTimeout(() => res.socket?.destroy(), 50);
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/v1`,
    requests: () => requests,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const responsesBody = { model: 'gpt-4o-mini', input: 'Write a long poem about toll gates. '.repeat(30), max_output_tokens: 77 };

describe('a buffered body cut by the gateway: upstream answered 200 (generated, and bills, the whole completion), the worst case is charged', () => {
  it.each([
    ['idle timeout', 'chat', { UPSTREAM_IDLE_TIMEOUT_MS: '400', UPSTREAM_TOTAL_TIMEOUT_MS: '10000' }],
    ['total timeout', 'chat', { UPSTREAM_IDLE_TIMEOUT_MS: '10000', UPSTREAM_TOTAL_TIMEOUT_MS: '500' }],
    ['idle timeout', 'responses', { UPSTREAM_IDLE_TIMEOUT_MS: '400', UPSTREAM_TOTAL_TIMEOUT_MS: '10000' }],
  ] as const)('%s while reading a %s body: 504, charged prompt estimate + max output, estimated; event, quota and cost agree', async (_name, kind, env) => {
    const upstream = await stallingUpstream();
    opened.push(upstream);
    const fake = await startFakeOpenAI();
    opened.push(fake);
    const gw = await gateway({ OPENAI_BASE_URL: upstream.url, ...env }, fake);
    const { id, key } = await gw.createKey({ name: 'body-timeout', limits });
    const [path, body, prompt, maxOutput] =
      kind === 'chat'
        ? ['/v1/chat/completions', chat, estimate('chat.completions', chat), chat.max_tokens]
        : ['/v1/responses', responsesBody, estimate('responses', responsesBody), responsesBody.max_output_tokens];
    const res = await post(gw, key, path, body);
    expect(res.status).toBe(504);
    expect(await res.json()).toMatchObject({ error: { code: 'upstream_timeout' } });
    expect(upstream.requests()).toBe(1);
    await expectWorstCaseCharged(gw, id, body.model, prompt, maxOutput, 504, 'upstream_timeout');
  });
});

describe('a buffered body upstream lost mid-way after its 200: generated and billed, so the worst case is charged', () => {
  it('the connection drops while the body is read: 502, charged prompt estimate + max output, estimated', async () => {
    const upstream = await stallingUpstream({ drop: true });
    opened.push(upstream);
    const fake = await startFakeOpenAI();
    opened.push(fake);
    const gw = await gateway({ OPENAI_BASE_URL: upstream.url, UPSTREAM_MAX_RETRIES: '2' }, fake);
    const { id, key } = await gw.createKey({ name: 'body-dropped', limits });
    const res = await post(gw, key, '/v1/chat/completions', chat);
    const error = ((await res.json()) as { error: { code: string } }).error;
    expect(res.status).toBe(502);
    expect(upstream.requests()).toBe(1); // a response had started: never retried
    await expectWorstCaseCharged(gw, id, chat.model, estimate('chat.completions', chat), chat.max_tokens, 502, error.code);
  });
});

describe('a request that never reached upstream is charged nothing', () => {
  it('connection refused (retried, then 502): the reservation is released in full', async () => {
    // A port that was free a moment ago: nothing listens there.
    const probe = await startFakeOpenAI();
    const url = probe.url;
    await probe.close();
    const gw = await gateway({ OPENAI_BASE_URL: url, UPSTREAM_MAX_RETRIES: '2', UPSTREAM_RETRY_BASE_DELAY_MS: '10' }, probe);
    const { id, key } = await gw.createKey({ name: 'refused', limits });
    const res = await post(gw, key, '/v1/chat/completions', chat);
    expect(res.status).toBe(502);
    expect(await res.json()).toMatchObject({ error: { code: 'upstream_unreachable' } });
    await expectNothingCharged(gw, id, 502, 'upstream_unreachable');
  });
});

/**
 * A request that went to upstream and failed (or was abandoned) spent its wait on upstream: the
 * usage event (and so the log line and the upstream/overhead histograms) records it as upstreamMs,
 * leaving overheadMs the gateway's own time. Only relations are checked, never absolute timings.
 */
describe('the wait on a failed or abandoned upstream call is upstream time, not gateway overhead', () => {
  const expectUpstreamTimed = async (gw: Gateway, keyId: string, status: number, errorCode: string) => {
    const { event } = await accountingOf(gw, keyId);
    const timed = event as unknown as UsageEvent & { latencyMs: number; upstreamMs: number | null; overheadMs: number };
    expect(timed).toMatchObject({ status, errorCode });
    expect(timed.upstreamMs).not.toBeNull();
    expect(timed.upstreamMs!).toBeGreaterThan(0);
    expect(timed.overheadMs).toBeLessThan(timed.upstreamMs!);
    expect(timed.upstreamMs!).toBeLessThanOrEqual(timed.latencyMs);
  };

  it('504 upstream_timeout (first-byte timeout)', async () => {
    const gw = await gateway({ UPSTREAM_HEADERS_TIMEOUT_MS: '400', UPSTREAM_TOTAL_TIMEOUT_MS: '5000' });
    const { id, key } = await gw.createKey({ name: 'timed-headers-timeout', limits });
    gw.fake.hangNext(1);
    const res = await post(gw, key, '/v1/chat/completions', chat);
    expect(res.status).toBe(504);
    await expectUpstreamTimed(gw, id, 504, 'upstream_timeout');
  });

  it('502 upstream_unreachable after retries (their backoff counted, as for retried 5xx)', async () => {
    const probe = await startFakeOpenAI();
    const url = probe.url;
    await probe.close();
    const gw = await gateway(
      { OPENAI_BASE_URL: url, UPSTREAM_MAX_RETRIES: '2', UPSTREAM_RETRY_BASE_DELAY_MS: '200', UPSTREAM_RETRY_MAX_DELAY_MS: '400' },
      probe,
    );
    const { id, key } = await gw.createKey({ name: 'timed-refused', limits });
    const res = await post(gw, key, '/v1/chat/completions', chat);
    expect(res.status).toBe(502);
    await expectUpstreamTimed(gw, id, 502, 'upstream_unreachable');
  });

  it('504 upstream_timeout while reading a 200 body (idle timeout)', async () => {
    const upstream = await stallingUpstream();
    opened.push(upstream);
    const fake = await startFakeOpenAI();
    opened.push(fake);
    const gw = await gateway({ OPENAI_BASE_URL: upstream.url, UPSTREAM_IDLE_TIMEOUT_MS: '400', UPSTREAM_TOTAL_TIMEOUT_MS: '10000' }, fake);
    const { id, key } = await gw.createKey({ name: 'timed-body-timeout', limits });
    const res = await post(gw, key, '/v1/chat/completions', chat);
    expect(res.status).toBe(504);
    // Upstream generated (and bills) that answer: the client's SDK is told not to ask again.
    expect(res.headers.get('x-should-retry')).toBe('false');
    await expectUpstreamTimed(gw, id, 504, 'upstream_timeout');
  });

  it('499: the client left while upstream worked on the request', async () => {
    const gw = await gateway({ UPSTREAM_HEADERS_TIMEOUT_MS: '10000', UPSTREAM_TOTAL_TIMEOUT_MS: '10000' });
    const { id, key } = await gw.createKey({ name: 'timed-gone', limits });
    gw.fake.setLatency(3000);
    const controller = new AbortController();
    const pending = post(gw, key, '/v1/chat/completions', chat, controller.signal).catch((err: Error) => err);
    await expect.poll(() => gw.fake.requests.length).toBe(1);
    await new Promise((r) => setTimeout(r, 300)); // upstream is working on it
    controller.abort();
    expect(await pending).toBeInstanceOf(Error);
    await expectUpstreamTimed(gw, id, 499, 'client_closed_request');
  });
});
