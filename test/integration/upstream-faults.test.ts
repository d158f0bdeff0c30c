// Upstream faults over real HTTP to the fake: each timeout, retries (and when not to), and several server keys.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Pool } from 'undici';
import OpenAI from 'openai';
import { startGateway, type Gateway } from '../helpers/gateway.js';
import { startFakeOpenAI, type FakeOpenAI } from '../../src/fake-openai/server.js';
import { loadConfig } from '../../src/config.js';
import { createUpstreamClient } from '../../src/upstream/client.js';
import { keyId } from '../../src/upstream/key-pool.js';

const chat = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 20 };

function post(gw: Gateway, key: string, body: unknown = chat, signal?: AbortSignal) {
  return fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal,
  });
}

/** Reads an SSE response to its end, event by event. */
async function sseEvents(res: Response): Promise<string[]> {
  const decoder = new TextDecoder();
  const events: string[] = [];
  let buffer = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    let end: number;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      events.push(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
    }
  }
  return events;
}

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t = performance.now();
  const out = await fn();
  return [out, performance.now() - t];
}

const authOf = (fake: FakeOpenAI) => fake.requests.map((r) => r.headers.authorization);

describe('timeouts and retries (one key)', () => {
  let gw: Gateway;
  let key: string;
  beforeAll(async () => {
    gw = await startGateway({
      env: {
        UPSTREAM_HEADERS_TIMEOUT_MS: '400',
        UPSTREAM_IDLE_TIMEOUT_MS: '400',
        UPSTREAM_TOTAL_TIMEOUT_MS: '5000',
        UPSTREAM_MAX_RETRIES: '2',
        UPSTREAM_RETRY_BASE_DELAY_MS: '20',
        UPSTREAM_RETRY_MAX_DELAY_MS: '100',
      },
    });
    ({ key } = await gw.createKey({ name: 'faults' }));
  });
  afterAll(() => gw.close());
  afterEach(() => gw.fake.reset());

  it('a Responses stream cut by the idle timeout ends with a typed error event, as OpenAI ends one', async () => {
    gw.fake.setStreamChunkDelay(1000);
    const res = await fetch(`${gw.url}/v1/responses`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o-mini', input: 'a long answer please', stream: true }),
    });
    expect(res.status).toBe(200);
    const events = await sseEvents(res);
    expect(events[0]).toMatch(/^event: response\.created\n/);
    const last = events.at(-1)!;
    expect(last).toMatch(/^event: error\ndata: /);
    const data = JSON.parse(last.split('\ndata: ')[1]!) as Record<string, unknown>;
    const previous = JSON.parse(events.at(-2)!.split('\ndata: ')[1]!) as { sequence_number: number };
    expect(data).toEqual({ type: 'error', code: 'upstream_stream_error', message: 'The upstream stream was interrupted.', param: null, sequence_number: previous.sequence_number + 1 });
  });

  it('first-byte (headers) timeout: 504 upstream_timeout, not retried (upstream may be working on it)', async () => {
    gw.fake.hangNext(1);
    const res = await post(gw, key);
    expect(res.status).toBe(504);
    expect(await res.json()).toMatchObject({ error: { type: 'server_error', code: 'upstream_timeout' } });
    expect(gw.fake.requests).toHaveLength(1);
    // Nor by the client's SDK: it retried twice (three prompts upstream read, each charged).
    expect(res.headers.get('x-should-retry')).toBe('false');
    gw.fake.reset();
    gw.fake.hangNext(3);
    const sdk = gw.sdk(key, { maxRetries: 2 });
    await expect(sdk.chat.completions.create({ ...chat, messages: [{ role: 'user', content: 'hi' }] })).rejects.toMatchObject({ status: 504 });
    expect(gw.fake.requests).toHaveLength(1);
  });

  it('first-byte timeout of a GET (the model list): 504, which the client may retry (nothing was billed)', async () => {
    gw.fake.hangNext(1);
    const res = await fetch(`${gw.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
    expect(res.status).toBe(504);
    expect(await res.json()).toMatchObject({ error: { code: 'upstream_timeout', message: 'The upstream API did not answer in time. Please retry.' } });
    expect(res.headers.get('x-should-retry')).toBeNull();
  });

  it('idle timeout mid-stream: the stream ends with the in-band error event, and is not retried', async () => {
    gw.fake.setStreamChunkDelay(1000);
    const res = await post(gw, key, { ...chat, stream: true });
    expect(res.status).toBe(200);
    const events = await sseEvents(res);
    expect(events.length).toBeGreaterThanOrEqual(2);
    expect(events[0]).toContain('chat.completion.chunk');
    expect(events.at(-1)).toContain('"upstream_stream_error"');
    expect(events).not.toContain('data: [DONE]');
    expect(gw.fake.requests).toHaveLength(1);
  });

  it('idle timeout before the first event: the prompt is charged (upstream read it and bills the hang-up), marked estimated', async () => {
    const { id, key: own } = await gw.createKey({ name: 'idle-before-first', limits: { tokensPerDay: 100_000 } });
    gw.fake.setFirstEventDelay(1500);
    try {
      const res = await post(gw, own, { ...chat, stream: true });
      await sseEvents(res);
    } finally {
      gw.fake.setFirstEventDelay(0);
    }
    await expect.poll(() => gw.logs.requests().filter((l) => l.keyId === id).length).toBe(1);
    const line = gw.logs.requests().find((l) => l.keyId === id)!;
    expect(line).toMatchObject({ estimated: true, completionTokens: 0 });
    expect(line.promptTokens as number).toBeGreaterThan(0);
  });

  it('503 then 200: the client gets the 200, upstream saw 2 requests', async () => {
    gw.fake.failNext(1, 503);
    const res = await post(gw, key);
    expect(res.status).toBe(200);
    expect(((await res.json()) as { object: string }).object).toBe('chat.completion');
    expect(gw.fake.requests).toHaveLength(2);
  });

  it('retries 429, 500, 502 and 504 too, up to UPSTREAM_MAX_RETRIES, then answers the last error', async () => {
    gw.fake.failNext(1, 500);
    gw.fake.failNext(1, 502);
    expect((await post(gw, key)).status).toBe(200);
    expect(gw.fake.requests).toHaveLength(3);
    gw.fake.reset();
    gw.fake.failNext(3, 504);
    const res = await post(gw, key);
    expect(res.status).toBe(504);
    expect(gw.fake.requests).toHaveLength(3); // 1 + 2 retries
  });

  it("honours upstream's retry-after on a 429", async () => {
    gw.fake.failNext(1, 429, undefined, { 'retry-after': '1' });
    const [res, ms] = await timed(() => post(gw, key));
    expect(res.status).toBe(200);
    expect(ms).toBeGreaterThanOrEqual(900);
    expect(ms).toBeLessThan(4000);
    expect(gw.fake.requests).toHaveLength(2);
  });

  it('honours retry-after-ms', async () => {
    gw.fake.failNext(1, 503, undefined, { 'retry-after-ms': '300' });
    const [res, ms] = await timed(() => post(gw, key));
    expect(res.status).toBe(200);
    expect(ms).toBeGreaterThanOrEqual(250);
    expect(gw.fake.requests).toHaveLength(2);
  });

  it('a retry-after above the cap is not waited for: the 429 comes back at once, retry-after included', async () => {
    const body = { error: { message: 'Rate limit reached', type: 'requests', param: null, code: 'rate_limit_exceeded' } };
    gw.fake.failNext(1, 429, body, { 'retry-after': '60' });
    const [res, ms] = await timed(() => post(gw, key));
    expect(res.status).toBe(429);
    expect(res.headers.get('retry-after')).toBe('60');
    expect(await res.json()).toEqual(body);
    expect(ms).toBeLessThan(1000);
    expect(gw.fake.requests).toHaveLength(1);
  });

  it('x-should-retry: false is believed, and passed on so the client does not retry either', async () => {
    gw.fake.failNext(1, 503, undefined, { 'x-should-retry': 'false' });
    const res = await post(gw, key);
    expect(res.status).toBe(503);
    expect(res.headers.get('x-should-retry')).toBe('false');
    expect(gw.fake.requests).toHaveLength(1);
  });

  it('the openai SDK makes one attempt at an upstream error marked x-should-retry: false', async () => {
    const body = { error: { message: 'You exceeded your current quota.', type: 'insufficient_quota', param: null, code: 'insufficient_quota' } };
    gw.fake.failNext(1, 429, body, { 'x-should-retry': 'false' });
    let attempts = 0;
    const client = gw.sdk(key, { maxRetries: 2, fetch: (url, init) => (attempts++, fetch(url, init)) });
    const err = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    expect(attempts).toBe(1);
    expect(gw.fake.requests).toHaveLength(1);
  });

  it('an error the gateway retried itself is passed on with x-should-retry: false: the SDK does not multiply the attempts', async () => {
    gw.fake.failNext(3, 500);
    let attempts = 0;
    const client = gw.sdk(key, { maxRetries: 2, fetch: (url, init) => (attempts++, fetch(url, init)) });
    const err = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.InternalServerError);
    expect(attempts).toBe(1); // was 3, and upstream saw 9
    expect(gw.fake.requests).toHaveLength(3);
    // Connections failing every time: the 502 after the gateway's retries says so too.
    gw.fake.dropNext(3);
    const unreachable = await post(gw, key);
    expect(unreachable.status).toBe(502);
    expect(unreachable.headers.get('x-should-retry')).toBe('false');
  });

  it('a 429 whose long retry-after the gateway declines after a retry leaves the wait to the client', async () => {
    gw.fake.failNext(1, 500);
    gw.fake.failNext(1, 429, undefined, { 'retry-after': '60' });
    const res = await post(gw, key);
    expect(res.status).toBe(429);
    expect(res.headers.get('retry-after')).toBe('60');
    expect(res.headers.get('x-should-retry')).toBeNull(); // was false: the SDK never waited the 60 s
    expect(gw.fake.requests).toHaveLength(2);
    // The same after every retry was used: the wait is still the client's to take.
    gw.fake.reset();
    gw.fake.failNext(2, 500);
    gw.fake.failNext(1, 429, undefined, { 'retry-after': '60' });
    const last = await post(gw, key);
    expect(last.status).toBe(429);
    expect(last.headers.get('x-should-retry')).toBeNull();
    expect(gw.fake.requests).toHaveLength(3);
  });

  it('a 429 with a body too large to read for its code still reaches the client whole', async () => {
    const body = { error: { message: `Rate limit reached. ${'x'.repeat(100_000)}`, type: 'requests', param: null, code: 'rate_limit_exceeded' } };
    gw.fake.failNext(1, 429, body, { 'retry-after': '60' });
    const res = await post(gw, key);
    expect(res.status).toBe(429); // was a 502 once the 64 KB read limit was passed
    expect(res.headers.get('retry-after')).toBe('60');
    expect(await res.json()).toEqual(body);
  });

  it("upstream's insufficient_quota is not retried, and is passed on with x-should-retry: false", async () => {
    const body = { error: { message: 'You exceeded your current quota.', type: 'insufficient_quota', param: null, code: 'insufficient_quota' } };
    gw.fake.failNext(1, 429, body);
    const res = await post(gw, key);
    expect(res.status).toBe(429);
    expect(res.headers.get('x-should-retry')).toBe('false');
    expect(await res.json()).toEqual(body);
    expect(gw.fake.requests).toHaveLength(1); // was 3: retried as a rate limit that passes
  });

  it('an error answered at the first attempt leaves retrying to the client, as OpenAI does', async () => {
    const once = await startGateway({ env: { UPSTREAM_MAX_RETRIES: '0' } });
    try {
      const { key: k } = await once.createKey();
      once.fake.failNext(1, 500);
      const res = await post(once, k);
      expect(res.status).toBe(500);
      expect(res.headers.get('x-should-retry')).toBeNull();
    } finally {
      await once.close();
    }
  });

  it('a dropped connection is retried', async () => {
    gw.fake.dropNext(1);
    const res = await post(gw, key);
    expect(res.status).toBe(200);
    expect(gw.fake.requests).toHaveLength(2);
  });

  it('a connection dropped every time ends as 502 after the retries', async () => {
    gw.fake.dropNext(3);
    const res = await post(gw, key);
    expect(res.status).toBe(502);
    expect(await res.json()).toMatchObject({ error: { code: 'upstream_unreachable' } });
    expect(gw.fake.requests).toHaveLength(3);
  });

  it.each([400, 403, 404])('%i is not retried', async (status) => {
    gw.fake.failNext(1, status);
    expect((await post(gw, key)).status).toBe(status);
    expect(gw.fake.requests).toHaveLength(1);
  });

  it('an error that is not JSON (a proxy\'s HTML page, an empty body) reaches the client as an OpenAI error', async () => {
    const cases: [number, string, Record<string, string>, string][] = [
      [404, '<html><body>Not Found</body></html>', { 'content-type': 'text/html' }, 'invalid_request_error'],
      [400, 'bad request', {}, 'invalid_request_error'],
      [403, '', { 'content-type': 'application/octet-stream' }, 'invalid_request_error'],
    ];
    for (const [status, body, headers, type] of cases) {
      gw.fake.failNext(1, status, body, headers);
      for (const stream of [false, true]) {
        if (stream) gw.fake.failNext(1, status, body, headers);
        const res = await post(gw, key, { ...chat, stream });
        expect(res.status).toBe(status);
        expect(res.headers.get('content-type')).toMatch(/^application\/json/);
        const text = await res.text();
        expect(JSON.parse(text), text).toEqual({
          error: { message: expect.stringContaining(`answered ${status} with a body that is not JSON`), type, param: null, code: 'upstream_error' },
        });
        if (body) expect(text).not.toContain(body);
      }
    }
    // A JSON error still passes as it came (OpenAI's own, with its code).
    const openAIError = { error: { message: 'The model does not exist', type: 'invalid_request_error', param: null, code: 'model_not_found' } };
    gw.fake.failNext(1, 404, openAIError);
    expect(await (await post(gw, key)).json()).toEqual(openAIError);
  });

  it('a 401 for the server key is not retried, and becomes the gateway\'s own 502', async () => {
    gw.fake.failNext(1, 401, { error: { message: 'Incorrect API key provided: sk-up****6789.', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } });
    const res = await post(gw, key);
    expect(res.status).toBe(502);
    const text = await res.text();
    expect(JSON.parse(text)).toMatchObject({ error: { type: 'server_error', code: 'upstream_auth_failed' } });
    expect(text).not.toContain('sk-up');
    expect(gw.fake.requests).toHaveLength(1);
  });

  it('a request whose client left during the backoff is not retried', async () => {
    gw.fake.failNext(1, 503, undefined, { 'retry-after': '1' });
    const controller = new AbortController();
    const pending = post(gw, key, chat, controller.signal).catch((err: Error) => err);
    await expect.poll(() => gw.fake.requests.length).toBe(1);
    controller.abort();
    expect(await pending).toBeInstanceOf(Error);
    await new Promise((r) => setTimeout(r, 1300));
    expect(gw.fake.requests).toHaveLength(1);
  });

  it('a retried success is accounted once: the recorded usage equals what upstream billed', async () => {
    const own = await gw.createKey({ name: 'accounting' });
    gw.fake.failNext(1, 503);
    gw.fake.dropNext(1);
    const res = await post(gw, own.key);
    expect(res.status).toBe(200);
    const json = (await res.json()) as { usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number } };
    expect(gw.fake.requests).toHaveLength(3);
    const billed = gw.fake.usageTotals();
    expect(billed.requests).toBe(1);
    expect(billed.total_tokens).toBe(json.usage.total_tokens);
    await expect
      .poll(async () => (await gw.admin('GET', `/admin/usage?groupBy=key&keyId=${own.id}`)).body?.totals?.requests)
      .toBe(1);
    const { totals } = (await gw.admin('GET', `/admin/usage?groupBy=key&keyId=${own.id}`)).body as { totals: Record<string, number> };
    expect(totals).toMatchObject({
      requests: 1,
      errors: 0,
      promptTokens: json.usage.prompt_tokens,
      completionTokens: json.usage.completion_tokens,
      totalTokens: json.usage.total_tokens,
    });
  });
});

describe('total timeout', () => {
  let gw: Gateway;
  let key: string;
  beforeAll(async () => {
    gw = await startGateway({
      env: {
        UPSTREAM_HEADERS_TIMEOUT_MS: '10000',
        UPSTREAM_IDLE_TIMEOUT_MS: '10000',
        UPSTREAM_TOTAL_TIMEOUT_MS: '700',
        UPSTREAM_MAX_RETRIES: '5',
        UPSTREAM_RETRY_BASE_DELAY_MS: '20',
      },
    });
    ({ key } = await gw.createKey({ name: 'total' }));
  });
  afterAll(() => gw.close());
  afterEach(() => gw.fake.reset());

  it('before the first byte: 504', async () => {
    gw.fake.setLatency(2000);
    const [res, ms] = await timed(() => post(gw, key));
    expect(res.status).toBe(504);
    expect(await res.json()).toMatchObject({ error: { type: 'server_error', code: 'upstream_timeout' } });
    expect(ms).toBeLessThan(1800);
    expect(gw.fake.requests).toHaveLength(1);
  });

  it('after the stream began: the in-band error event ends it', async () => {
    gw.fake.setStreamChunkDelay(150);
    const res = await post(gw, key, { ...chat, stream: true });
    expect(res.status).toBe(200);
    const events = await sseEvents(res);
    expect(events.at(-1)).toContain('"upstream_stream_error"');
    expect(events).not.toContain('data: [DONE]');
    expect(gw.fake.requests).toHaveLength(1);
  });

  it('covers every attempt: a wait that would outlast it is not taken, the error comes back', async () => {
    gw.fake.failNext(5, 503, undefined, { 'retry-after-ms': '400' });
    const [res, ms] = await timed(() => post(gw, key));
    expect(res.status).toBe(503);
    expect(ms).toBeLessThan(1500);
    expect(gw.fake.requests).toHaveLength(2); // 400 ms fits once in 700, not twice
    // Retried here, and stopped short of UPSTREAM_MAX_RETRIES only by the total timeout: the SDK
    // retrying too would multiply the calls again.
    expect(res.headers.get('x-should-retry')).toBe('false');
  });
});

describe('connection failures', () => {
  it('connection refused: retried, then 502', async () => {
    // A port that was free a moment ago: nothing listens there.
    const probe = await startFakeOpenAI();
    const url = probe.url;
    await probe.close();
    const gw = await startGateway({
      fake: probe,
      // At debug: past the first (a throttled warning), a request's retries are logged at debug.
      env: { OPENAI_BASE_URL: url, UPSTREAM_MAX_RETRIES: '2', UPSTREAM_RETRY_BASE_DELAY_MS: '10', LOG_LEVEL: 'debug' },
    });
    try {
      const { key } = await gw.createKey();
      const res = await post(gw, key);
      expect(res.status).toBe(502);
      expect(await res.json()).toMatchObject({ error: { type: 'server_error', code: 'upstream_unreachable' } });
      expect(gw.logs.lines.filter((l) => l.msg === 'upstream connection failed; retrying')).toHaveLength(2);
      // The 502's throttled warning names what failed (a refused connection), not only the code sent.
      const warned = gw.logs.lines.find((l) => l.level === 40 && (l as { code?: unknown }).code === 'upstream_unreachable');
      expect(String((warned as { err?: unknown } | undefined)?.err)).toMatch(/ECONNREFUSED|connect/i);
    } finally {
      await gw.close();
    }
  });

  // 100::/64 is the IPv6 discard prefix: where it is routed nowhere, a connect never completes.
  // Some sandboxes answer or refuse it instead; then this case cannot be produced and is skipped.
  const blackhole = 'http://[100::1]:81';
  let blackholeTimesOut = false;
  beforeAll(async () => {
    const pool = new Pool(blackhole, { connect: { timeout: 200 } });
    const keepAlive = setInterval(() => {}, 1000);
    try {
      await pool.request({ method: 'GET', path: '/' });
    } catch (err) {
      blackholeTimesOut = (err as { code?: string }).code === 'UND_ERR_CONNECT_TIMEOUT';
    } finally {
      clearInterval(keepAlive);
      await pool.destroy();
    }
  });

  it('connect timeout: retried, then 504', async (ctx) => {
    if (!blackholeTimesOut) ctx.skip();
    const probe = await startFakeOpenAI();
    const gw = await startGateway({
      fake: probe,
      env: {
        OPENAI_BASE_URL: `${blackhole}/v1`,
        UPSTREAM_CONNECT_TIMEOUT_MS: '200',
        UPSTREAM_MAX_RETRIES: '1',
        UPSTREAM_RETRY_BASE_DELAY_MS: '10',
      },
    });
    try {
      const { key } = await gw.createKey();
      const res = await post(gw, key);
      expect(res.status).toBe(504);
      expect(await res.json()).toMatchObject({ error: { type: 'server_error', code: 'upstream_timeout' } });
      expect(gw.logs.lines.filter((l) => l.msg === 'upstream connection failed; retrying')).toHaveLength(1);
    } finally {
      await gw.close();
      await probe.close();
    }
  });
});

describe('several server keys', () => {
  const KEY_A = 'sk-pool-key-a-0123456789';
  const KEY_B = 'sk-pool-key-b-0123456789';
  let fake: FakeOpenAI;
  const open: Gateway[] = [];
  // Without apiKey the fake accepts any key and records which one came.
  beforeAll(async () => {
    fake = await startFakeOpenAI();
  });
  afterEach(async () => {
    fake.reset();
    await Promise.all(open.splice(0).map((g) => g.close()));
  });
  afterAll(() => fake.close());

  /** A fresh gateway (fresh key pool) over the shared fake; its upstream client is ours, to read the pool. */
  async function pooled(env: Record<string, string> = {}) {
    const full = {
      OPENAI_API_KEY: KEY_A,
      OPENAI_API_KEYS: `${KEY_A}, ${KEY_B}`, // A named twice: used once
      OPENAI_BASE_URL: fake.url,
      UPSTREAM_MAX_RETRIES: '2',
      UPSTREAM_RETRY_BASE_DELAY_MS: '10',
      ...env,
    };
    const upstream = createUpstreamClient(loadConfig(full).upstream);
    const gw = await startGateway({ fake, upstream, env: full });
    open.push(gw);
    const { key } = await gw.createKey();
    return { gw, key, keyPool: upstream.keyPool };
  }

  /** A gateway with both keys and no retries, whose key pool logs through the gateway's logger. */
  async function loggingPool() {
    const gw = await startGateway({
      fake,
      env: { OPENAI_API_KEY: KEY_A, OPENAI_API_KEYS: `${KEY_A},${KEY_B}`, OPENAI_BASE_URL: fake.url, UPSTREAM_MAX_RETRIES: '0' },
    });
    open.push(gw);
    const { key } = await gw.createKey();
    return { gw, key };
  }

  it('de-duplicates OPENAI_API_KEY and OPENAI_API_KEYS', () => {
    const c = loadConfig({ OPENAI_API_KEY: KEY_A, OPENAI_API_KEYS: ` ${KEY_B},${KEY_A},, ` });
    expect(c.upstream.apiKeys).toEqual([KEY_A, KEY_B]);
    expect(c.upstream.apiKey).toBe(KEY_A);
    expect(loadConfig({ OPENAI_API_KEYS: KEY_B }).upstream.apiKeys).toEqual([KEY_B]);
  });

  it('alternates requests between the keys', async () => {
    const { gw, key, keyPool } = await pooled();
    for (let i = 0; i < 4; i++) expect((await post(gw, key)).status).toBe(200);
    expect(authOf(fake)).toEqual([`Bearer ${KEY_A}`, `Bearer ${KEY_B}`, `Bearer ${KEY_A}`, `Bearer ${KEY_B}`]);
    expect(keyPool.status()).toEqual([
      { index: 0, id: keyId(KEY_A), healthy: true, coolingUntil: null, reason: null },
      { index: 1, id: keyId(KEY_B), healthy: true, coolingUntil: null, reason: null },
    ]);
  });

  it('a key answering 429 is skipped for its cooldown; the request succeeds at once with the other key', async () => {
    const { gw, key, keyPool } = await pooled();
    fake.failNext(1, 429, undefined, { 'retry-after': '10' });
    const [res, ms] = await timed(() => post(gw, key));
    expect(res.status).toBe(200);
    expect(ms).toBeLessThan(1000); // the other key needs no wait
    for (let i = 0; i < 3; i++) expect((await post(gw, key)).status).toBe(200);
    expect(authOf(fake)).toEqual([`Bearer ${KEY_A}`, ...Array(4).fill(`Bearer ${KEY_B}`)]);
    const [a, b] = keyPool.status();
    expect(a).toMatchObject({ healthy: false, reason: 'rate_limited' });
    expect(a!.coolingUntil! - Date.now()).toBeGreaterThan(8000);
    expect(a!.coolingUntil! - Date.now()).toBeLessThanOrEqual(10_000);
    expect(b).toMatchObject({ healthy: true });
  });

  it('a 429 without retry-after cools the key for UPSTREAM_KEY_COOLDOWN_MS, then it is back', async () => {
    const { gw, key, keyPool } = await pooled({ UPSTREAM_KEY_COOLDOWN_MS: '500' });
    fake.failNext(1, 429);
    expect((await post(gw, key)).status).toBe(200);
    expect(keyPool.status()[0]).toMatchObject({ healthy: false, reason: 'rate_limited' });
    await new Promise((r) => setTimeout(r, 600));
    expect(keyPool.status()[0]).toMatchObject({ healthy: true });
  });

  it('a key answering 401 is taken out for long and logged at error level, without the key', async () => {
    const { gw, key } = await loggingPool();
    fake.failNext(1, 401);
    // Moving to the other key after a 401 is not a retry of the same call: it happens even with retries off.
    expect((await post(gw, key)).status).toBe(200);
    for (let i = 0; i < 3; i++) expect((await post(gw, key)).status).toBe(200);
    expect(authOf(fake)).toEqual([`Bearer ${KEY_A}`, ...Array(4).fill(`Bearer ${KEY_B}`)]);
    const line = gw.logs.lines.find((l) => String(l.msg).includes('(401)'));
    expect(line).toMatchObject({ level: 50, keyIndex: 0, keyId: keyId(KEY_A) });
    expect(gw.logs.text).not.toContain(KEY_A);
    expect(gw.logs.text).not.toContain(KEY_B);
  });

  it('a key whose quota is spent (429 insufficient_quota) is taken out for long, logged at error level; the request moves on', async () => {
    const { gw, key } = await loggingPool();
    fake.failNext(1, 429, { error: { message: 'You exceeded your current quota.', type: 'insufficient_quota', param: null, code: 'insufficient_quota' } });
    // As after a 401: another key may work, this one will not for long (was a 30 s cooldown).
    expect((await post(gw, key)).status).toBe(200);
    for (let i = 0; i < 3; i++) expect((await post(gw, key)).status).toBe(200);
    expect(authOf(fake)).toEqual([`Bearer ${KEY_A}`, ...Array(4).fill(`Bearer ${KEY_B}`)]);
    expect(gw.logs.lines.find((l) => String(l.msg).includes('insufficient_quota'))).toMatchObject({ level: 50, keyIndex: 0, keyId: keyId(KEY_A) });
  });

  it('every key 429 with a retry-after longer than the gateway waits: the client may wait, no x-should-retry', async () => {
    const { gw, key } = await pooled({ UPSTREAM_MAX_RETRIES: '0' });
    fake.failNext(2, 429, undefined, { 'retry-after': '30' });
    const res = await post(gw, key);
    expect(res.status).toBe(429);
    expect(res.headers.get('retry-after')).toBe('30');
    expect(res.headers.get('x-should-retry')).toBeNull(); // moving to the other key was no retry of the gateway's
    expect(fake.requests).toHaveLength(2);
  });

  it('a key going out of rotation and coming back is logged once each, not per request', async () => {
    const gw = await startGateway({
      fake,
      env: { OPENAI_API_KEY: KEY_A, OPENAI_API_KEYS: `${KEY_A},${KEY_B}`, OPENAI_BASE_URL: fake.url, UPSTREAM_MAX_RETRIES: '0', UPSTREAM_KEY_COOLDOWN_MS: '300' },
    });
    open.push(gw);
    const { key } = await gw.createKey();
    fake.failNext(1, 429);
    for (let i = 0; i < 3; i++) expect((await post(gw, key)).status).toBe(200);
    const out = () => gw.logs.lines.filter((l) => l.msg === 'upstream key rate limited; out of rotation');
    const back = () => gw.logs.lines.filter((l) => l.msg === 'upstream key back in rotation');
    expect(out()).toHaveLength(1);
    expect(back()).toHaveLength(0);
    await expect.poll(async () => ((await (await fetch(`${gw.url}/readyz`)).json()) as any).upstreamKeys?.inRotation, { timeout: 5000, interval: 50 }).toBe(2);
    for (let i = 0; i < 4; i++) expect((await post(gw, key)).status).toBe(200);
    expect(back()).toHaveLength(1);
    expect(back()[0]).toMatchObject({ level: 30, keyIndex: 0, keyId: keyId(KEY_A), after: 'rate_limited' });
    expect(out()).toHaveLength(1);
    expect(gw.logs.text).not.toContain(KEY_A);
  });

  it('a 401 key stays out of rotation for UPSTREAM_KEY_INVALID_COOLDOWN_MS', async () => {
    const { gw, key, keyPool } = await pooled({ UPSTREAM_KEY_INVALID_COOLDOWN_MS: '600000' });
    fake.failNext(1, 401);
    expect((await post(gw, key)).status).toBe(200);
    const [a] = keyPool.status();
    expect(a).toMatchObject({ healthy: false, reason: 'invalid' });
    expect(a!.coolingUntil! - Date.now()).toBeGreaterThan(590_000);
  });

  it('every key 401: a 502 is answered, each key tried once', async () => {
    const { gw, key } = await pooled();
    fake.failNext(2, 401);
    expect((await post(gw, key)).status).toBe(502);
    expect(authOf(fake)).toEqual([`Bearer ${KEY_A}`, `Bearer ${KEY_B}`]);
  });

  it('every key cooling down: still served, by the key back soonest', async () => {
    const { gw, key, keyPool } = await pooled({ UPSTREAM_MAX_RETRIES: '0' });
    fake.failNext(1, 429, undefined, { 'retry-after': '30' }); // A: out for 30 s
    fake.failNext(1, 429, undefined, { 'retry-after': '10' }); // B: out for 10 s
    const first = await post(gw, key);
    expect(first.status).toBe(429); // both refused and no retries left: upstream's answer
    expect(keyPool.status().every((s) => !s.healthy)).toBe(true);
    const [res, ms] = await timed(() => post(gw, key));
    expect(res.status).toBe(200);
    expect(ms).toBeLessThan(1000);
    expect(authOf(fake)).toEqual([`Bearer ${KEY_A}`, `Bearer ${KEY_B}`, `Bearer ${KEY_B}`]);
  });

  it('every key cooling down within one request: waits the retry-after, then the soonest key', async () => {
    const { gw, key } = await pooled();
    fake.failNext(1, 429, undefined, { 'retry-after': '5' });
    fake.failNext(1, 429, undefined, { 'retry-after': '1' });
    const [res, ms] = await timed(() => post(gw, key));
    expect(res.status).toBe(200);
    expect(ms).toBeGreaterThanOrEqual(900);
    expect(ms).toBeLessThan(4000);
    expect(authOf(fake)).toEqual([`Bearer ${KEY_A}`, `Bearer ${KEY_B}`, `Bearer ${KEY_B}`]);
  });

  it('a retry after a 5xx moves on to the next key', async () => {
    const { gw, key } = await pooled();
    fake.failNext(1, 500);
    expect((await post(gw, key)).status).toBe(200);
    expect(authOf(fake)).toEqual([`Bearer ${KEY_A}`, `Bearer ${KEY_B}`]);
  });
});

describe('the log while upstream fails every request', () => {
  const FLOOD = 20;
  let gw: Gateway;
  let key: string;
  beforeAll(async () => {
    gw = await startGateway({
      env: { LOG_LEVEL: 'debug', UPSTREAM_MAX_RETRIES: '2', UPSTREAM_RETRY_BASE_DELAY_MS: '1', UPSTREAM_RETRY_MAX_DELAY_MS: '5' },
    });
    ({ key } = await gw.createKey({ name: 'upstream-flood' }));
  });
  afterAll(() => gw.close());
  afterEach(() => gw.fake.reset());

  /** The lines written while `run` ran. */
  async function linesOf(run: () => Promise<void>) {
    const from = gw.logs.lines.length;
    await run();
    return gw.logs.lines.slice(from);
  }

  for (const status of [500, 429]) {
    it(`${status} to every attempt: each retry is a debug line of its request, warned about once`, async () => {
      gw.fake.failNext(FLOOD * 3, status);
      const lines = await linesOf(async () => {
        for (let i = 0; i < FLOOD; i++) expect((await post(gw, key)).status).toBe(status);
      });
      const requests = lines.filter((l) => l.msg === 'request' && l.path === '/v1/chat/completions');
      expect(requests).toHaveLength(FLOOD);
      const reqIds = new Set(requests.map((l) => l.reqId));
      const retries = lines.filter((l) => l.msg === 'upstream answered an error; retrying');
      expect(retries).toHaveLength(FLOOD * 2); // two retries per request
      // Each tied to its request, so a request's attempts can be read together.
      for (const line of retries) expect(reqIds.has(line.reqId), JSON.stringify(line)).toBe(true);
      // At most one warning for the kind of failure; the rest at debug, not a warning per request.
      expect(retries.filter((l) => (l.level as number) >= 40)).toHaveLength(1);
      expect(retries.filter((l) => l.level === 20)).toHaveLength(FLOOD * 2 - 1);
      // The key's state changes once: out of rotation on the first 429, not again for each one after.
      expect(lines.filter((l) => String(l.msg).includes('out of rotation'))).toHaveLength(status === 429 ? 1 : 0);
      // Everything else is the request lines.
      const others = lines.filter((l) => l.msg !== 'request' && !retries.includes(l));
      expect(others.length, JSON.stringify(others.map((l) => l.msg))).toBeLessThanOrEqual(1);
    });
  }

  it('401 for the only server key: logged at error once, not again while the key is out of rotation', async () => {
    gw.fake.failNext(FLOOD, 401);
    const lines = await linesOf(async () => {
      for (let i = 0; i < FLOOD; i++) expect((await post(gw, key)).status).toBe(502);
    });
    expect(lines.filter((l) => l.msg === 'request' && l.errorCode === 'upstream_auth_failed')).toHaveLength(FLOOD);
    const rejected = lines.filter((l) => String(l.msg).includes('(401)'));
    expect(rejected).toHaveLength(1);
    expect(rejected[0]).toMatchObject({ level: 50, keyIndex: 0 });
    // The 502 upstream_auth_failed itself: one throttled warning, not one per request.
    expect(lines.filter((l) => l.code === 'upstream_auth_failed')).toHaveLength(1);
    expect(lines.filter((l) => l.msg !== 'request').length).toBeLessThanOrEqual(2);
  });
});
