// The response cache over real Redis and real HTTP: exact, tenant-safe, stream-aware, single-flight.
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { request as httpRequest } from 'node:http';
import { startGateway, UPSTREAM_KEY, type Gateway } from '../helpers/gateway.js';
import { Redis } from 'ioredis';
import { createRedisStore } from '../../src/store/redis-store.js';
import { startFakeOpenAI } from '../../src/fake-openai/server.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';

const opened: { close(): Promise<void> }[] = [];
afterAll(async () => {
  for (const r of opened.reverse()) await r.close();
});

async function gateway(env: Record<string, string> = {}, clock?: () => number) {
  const gw = await startGateway({ clock, env: { CACHE_ENABLED: 'true', REDIS_URL: testRedisUrl(), REDIS_PREFIX: uniquePrefix(), ...env } });
  opened.push(gw);
  return gw;
}

const question = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'What is a toll gate?' }], max_tokens: 30 };

function post(gw: Gateway, key: string, body: unknown, headers: Record<string, string> = {}, path = '/v1/chat/completions') {
  return fetch(`${gw.url}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

/**
 * A request (the leader), then 100 ms later an identical one (a follower, which waits on it) whose
 * client leaves 200 ms after sending it.
 */
async function leaderAndLeavingFollower(gw: Gateway, key: string, body: unknown) {
  const leader = post(gw, key, body);
  await new Promise((r) => setTimeout(r, 100));
  const gone = new AbortController();
  const follower = fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: gone.signal,
  }).catch((e: unknown) => e);
  setTimeout(() => gone.abort(), 200);
  return { leader, follower };
}

const upstreamCalls = (gw: Gateway) => gw.fake.requests.filter((r) => r.method === 'POST').length;

async function sse(res: Response): Promise<string[]> {
  const text = await res.text();
  return text
    .split('\n\n')
    .filter((e) => e.startsWith('data: '))
    .map((e) => e.slice('data: '.length));
}

describe('exact, keyed on the canonical request', () => {
  let gw: Gateway;
  let key: string;
  beforeEach(async () => {
    gw ??= await gateway();
    ({ key } = await gw.createKey());
    gw.fake.reset();
  });

  it('serves an identical request from the cache: HIT, Age, same body, no upstream call', async () => {
    const miss = await post(gw, key, question);
    expect(miss.headers.get('x-tollgate-cache')).toBe('MISS');
    const missBody = await miss.text();
    await expect.poll(async () => (await post(gw, key, question)).headers.get('x-tollgate-cache')).toBe('HIT');
    const hit = await post(gw, key, question);
    expect(hit.status).toBe(200);
    expect(hit.headers.get('age')).toMatch(/^\d+$/);
    // The content type the miss had.
    expect(hit.headers.get('content-type')).toBe(miss.headers.get('content-type'));
    expect(await hit.text()).toBe(missBody);
    expect(upstreamCalls(gw)).toBe(1);
    const streamedHit = await post(gw, key, { ...question, stream: true });
    expect(streamedHit.headers.get('x-tollgate-cache')).toBe('HIT');
    expect(streamedHit.headers.get('content-type')).toBe('text/event-stream; charset=utf-8'); // as OpenAI's, and a streamed miss's
    await streamedHit.text();
  });

  it('ignores field order, stream, stream_options and user; respects every other field', async () => {
    await post(gw, key, question);
    const reordered = `{"max_tokens":30,"messages":[{"content":"What is a toll gate?","role":"user"}],"model":"gpt-4o-mini","user":"u-42"}`;
    await expect.poll(async () => (await post(gw, key, reordered)).headers.get('x-tollgate-cache')).toBe('HIT');
    for (const changed of [{ temperature: 0.3 }, { max_tokens: 31 }, { model: 'gpt-4o' }, { seed: 1 }, { n: 2 }]) {
      const res = await post(gw, key, { ...question, ...changed });
      expect(res.headers.get('x-tollgate-cache'), JSON.stringify(changed)).toBe('MISS');
    }
  });

  it("keeps a JSON schema's property order in the name: the model writes the properties in that order", async () => {
    // `required` the same list: only the properties' order differs.
    const schema = (properties: Record<string, unknown>) => ({ type: 'object', properties, required: ['answer', 'reasoning'], additionalProperties: false });
    const structured = (properties: Record<string, unknown>) => ({
      ...question,
      response_format: { type: 'json_schema', json_schema: { name: 'out', strict: true, schema: schema(properties) } },
    });
    const withTool = (properties: Record<string, unknown>) => ({ ...question, tools: [{ type: 'function', function: { name: 'f', parameters: schema(properties) } }] });
    const reasoningFirst = { reasoning: { type: 'string' }, answer: { type: 'string' } };
    const answerFirst = { answer: { type: 'string' }, reasoning: { type: 'string' } };
    for (const [make, path] of [[structured, '/v1/chat/completions'], [withTool, '/v1/chat/completions']] as const) {
      await post(gw, key, make(reasoningFirst), {}, path);
      await expect.poll(async () => (await post(gw, key, make(reasoningFirst), {}, path)).headers.get('x-tollgate-cache')).toBe('HIT');
      expect((await post(gw, key, make(answerFirst), {}, path)).headers.get('x-tollgate-cache')).toBe('MISS');
    }
    // Responses: text.format carries the schema.
    const format = (properties: Record<string, unknown>) => ({ model: 'gpt-4o-mini', input: 'Why?', store: false, text: { format: { type: 'json_schema', name: 'out', strict: true, schema: schema(properties) } } });
    await post(gw, key, format(reasoningFirst), {}, '/v1/responses');
    await expect.poll(async () => (await post(gw, key, format(reasoningFirst), {}, '/v1/responses')).headers.get('x-tollgate-cache')).toBe('HIT');
    expect((await post(gw, key, format(answerFirst), {}, '/v1/responses')).headers.get('x-tollgate-cache')).toBe('MISS');
    // Around the schema, key order still means nothing.
    const reordered = { ...question, response_format: { json_schema: { strict: true, schema: schema(reasoningFirst), name: 'out' }, type: 'json_schema' } };
    expect((await post(gw, key, reordered)).headers.get('x-tollgate-cache')).toBe('HIT');
  });

  it('tells apart 64-bit seeds that JSON.parse rounds to the same number', async () => {
    // 2^64 - 1 and 2^64 - 2 both parse to 18446744073709551616.
    const withSeed = (seed: string) => `${JSON.stringify(question).slice(0, -1)},"seed":${seed}}`;
    await post(gw, key, withSeed('18446744073709551615'));
    await expect.poll(async () => (await post(gw, key, withSeed('18446744073709551615'))).headers.get('x-tollgate-cache')).toBe('HIT');
    expect((await post(gw, key, withSeed('18446744073709551614'))).headers.get('x-tollgate-cache')).toBe('MISS');
    expect(gw.fake.requests.at(-1)!.rawBody).toContain('"seed":18446744073709551614');
  });

  it('does not answer a chat request with store: true from the cache (OpenAI is asked to keep each one)', async () => {
    const stored = { ...question, store: true, metadata: { run: 'cache-test' } };
    for (let i = 0; i < 2; i++) expect((await post(gw, key, stored)).headers.get('x-tollgate-cache')).toBe('BYPASS');
    expect(upstreamCalls(gw)).toBe(2);
    // store: false (or absent) is an ordinary cacheable request.
    await post(gw, key, { ...stored, store: false });
    await expect.poll(async () => (await post(gw, key, { ...stored, store: false })).headers.get('x-tollgate-cache')).toBe('HIT');
  });

  it('does not answer a chat request with web_search_options, or to a search model, from the cache (it reads the live web)', async () => {
    // A search model searches whether the request asks or not (it was cached without the field).
    for (const searching of [{ ...question, model: 'gpt-4o-mini', web_search_options: {} }, { ...question, model: 'gpt-4o-mini-search-preview' }]) {
      const before = upstreamCalls(gw);
      for (let i = 0; i < 2; i++) expect((await post(gw, key, searching)).headers.get('x-tollgate-cache')).toBe('BYPASS');
      expect(upstreamCalls(gw)).toBe(before + 2);
    }
  });

  it('does not make a stream of an entry for a legacy completion with best_of (OpenAI streams none: it goes upstream)', async () => {
    const bestOf = { model: 'gpt-3.5-turbo-instruct', prompt: 'Best of three:', max_tokens: 5, best_of: 3, n: 1 };
    await post(gw, key, bestOf, {}, '/v1/completions');
    await expect.poll(async () => (await post(gw, key, bestOf, {}, '/v1/completions')).headers.get('x-tollgate-cache')).toBe('HIT');
    const before = upstreamCalls(gw);
    const streamed = await post(gw, key, { ...bestOf, stream: true }, {}, '/v1/completions');
    await streamed.text();
    expect(streamed.headers.get('x-tollgate-cache')).toBe('MISS'); // was a HIT, a stream made up from the entry
    expect(upstreamCalls(gw)).toBe(before + 1);
  });

  it("does not serve a Responses entry stored (by an older gateway) from another user's request", async () => {
    const prefix = uniquePrefix();
    const store = await createRedisStore({ url: testRedisUrl(), prefix });
    const older = await startGateway({ store, env: { CACHE_ENABLED: 'true' } });
    opened.push(store, older);
    const { key: k } = await older.createKey();
    const ask = () => post(older, k, { model: 'gpt-4o-mini', input: 'Whose answer?', store: false }, {}, '/v1/responses');
    expect((await ask()).headers.get('x-tollgate-cache')).toBe('MISS');
    // Make the entry one an older gateway stored from alice's request (its name left user out).
    const redis = new Redis(testRedisUrl());
    try {
      const [entryKey] = await redis.keys(`${prefix}cache:*`);
      const entry = JSON.parse((await redis.get(entryKey!))!) as { body: string };
      entry.body = JSON.stringify({ ...(JSON.parse(entry.body) as object), user: 'alice@example.com' });
      await redis.set(entryKey!, JSON.stringify(entry), 'KEEPTTL');
    } finally {
      redis.disconnect();
    }
    const res = await ask();
    expect(res.headers.get('x-tollgate-cache')).toBe('MISS'); // was a HIT carrying alice's id
    expect(((await res.json()) as { user: string | null }).user).toBeNull();
  });

  it('keeps in the name what an endpoint does not take, so upstream judges it: stream for embeddings, user for moderations, stream_options without stream', async () => {
    const emb = { model: 'text-embedding-3-small', input: 'judged upstream' };
    const mod = { model: 'omni-moderation-latest', input: 'judged upstream' };
    const resp = { model: 'gpt-4o-mini', input: 'judged upstream', store: false };
    for (const [path, plain, odd] of [
      ['/v1/embeddings', emb, { ...emb, stream: true }],
      ['/v1/moderations', mod, { ...mod, user: 'u-1' }],
      ['/v1/responses', resp, { ...resp, stream_options: { include_obfuscation: false } }],
    ] as const) {
      await post(gw, key, plain, {}, path);
      await expect.poll(async () => (await post(gw, key, plain, {}, path)).headers.get('x-tollgate-cache')).toBe('HIT');
      // Was a HIT: a 200 from the entry where upstream may answer 400.
      expect((await post(gw, key, odd, {}, path)).headers.get('x-tollgate-cache'), path).toBe('MISS');
    }
  });

  it("keeps a Responses request's user in its name: the answer echoes it (another end user's id was served)", async () => {
    const ask = (user: string) => post(gw, key, { model: 'gpt-4o-mini', input: 'Who asked?', store: false, user }, {}, '/v1/responses');
    await ask('alice@example.com');
    await expect.poll(async () => (await ask('alice@example.com')).headers.get('x-tollgate-cache')).toBe('HIT');
    const bob = await ask('bob@example.com');
    expect(bob.headers.get('x-tollgate-cache')).toBe('MISS');
    expect(((await bob.json()) as { user?: string }).user).toBe('bob@example.com');
  });

  it('caches embeddings (the SDK default base64 form too) and the legacy engines path', async () => {
    const emb = { model: 'text-embedding-3-small', input: ['a', 'b'], encoding_format: 'base64' };
    await post(gw, key, emb, {}, '/v1/embeddings');
    await expect.poll(async () => (await post(gw, key, emb, {}, '/v1/embeddings')).headers.get('x-tollgate-cache')).toBe('HIT');
    expect((await post(gw, key, { ...emb, encoding_format: 'float' }, {}, '/v1/embeddings')).headers.get('x-tollgate-cache')).toBe('MISS');
    const legacy = { prompt: 'Once upon a time', max_tokens: 10, n: 1, stop: null, temperature: 0.5 };
    await post(gw, key, legacy, {}, '/v1/engines/text-davinci-002/completions');
    await expect
      .poll(async () => (await post(gw, key, legacy, {}, '/v1/engines/text-davinci-002/completions')).headers.get('x-tollgate-cache'))
      .toBe('HIT');
    // The same request through /v1/completions is the same cache entry.
    const same = await post(gw, key, { ...legacy, model: 'text-davinci-002' }, {}, '/v1/completions');
    expect(same.headers.get('x-tollgate-cache')).toBe('HIT');
  });
});

describe('streams and JSON share entries', () => {
  let gw: Gateway;
  let key: string;
  beforeEach(async () => {
    gw ??= await gateway();
    ({ key } = await gw.createKey());
    gw.fake.reset();
  });

  it('a streamed miss is captured and later served as JSON', async () => {
    const streamed = await sse(await post(gw, key, { ...question, stream: true }));
    expect(streamed.at(-1)).toBe('[DONE]');
    const text = streamed
      .slice(0, -1)
      .map((d) => JSON.parse(d) as { choices: { delta: { content?: string } }[] })
      .map((c) => c.choices[0]?.delta.content ?? '')
      .join('');
    await expect.poll(async () => (await post(gw, key, question)).headers.get('x-tollgate-cache')).toBe('HIT');
    const json = (await (await post(gw, key, question)).json()) as { object: string; choices: { message: { content: string } }[]; usage: unknown };
    expect(json.object).toBe('chat.completion');
    expect(json.choices[0]!.message.content).toBe(text);
    expect(json.usage).toBeTruthy();
    expect(upstreamCalls(gw)).toBe(1);
  });

  it('a JSON miss is served later as a valid stream through the SDK, with usage only when asked', async () => {
    const first = (await (await post(gw, key, question)).json()) as { choices: { message: { content: string } }[]; usage: { total_tokens: number } };
    const sdk = gw.sdk(key);
    await expect.poll(async () => (await post(gw, key, question)).headers.get('x-tollgate-cache')).toBe('HIT');
    let text = '';
    let sawUsage = false;
    for await (const chunk of await sdk.chat.completions.create({ ...question, stream: true } as never) as unknown as AsyncIterable<any>) {
      text += chunk.choices[0]?.delta?.content ?? '';
      if (chunk.usage) sawUsage = true;
    }
    expect(text).toBe(first.choices[0]!.message.content);
    expect(sawUsage).toBe(false);
    let usage: { total_tokens: number } | undefined;
    for await (const chunk of await sdk.chat.completions.create({ ...question, stream: true, stream_options: { include_usage: true } } as never) as unknown as AsyncIterable<any>) {
      if (chunk.usage) usage = chunk.usage;
    }
    expect(usage?.total_tokens).toBe(first.usage.total_tokens);
    expect(upstreamCalls(gw)).toBe(1);
  });

  it('never stores errors, aborted streams or entries over the size cap', async () => {
    gw.fake.failNext(1, 500);
    expect((await post(gw, key, { ...question, seed: 11 })).status).toBe(500);
    expect((await post(gw, key, { ...question, seed: 11 })).headers.get('x-tollgate-cache')).toBe('MISS');

    gw.fake.setStreamChunkDelay(20);
    await new Promise<void>((resolve) => {
      const req = httpRequest(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      });
      req.on('response', (res) => res.once('data', () => (req.destroy(), resolve())));
      req.on('error', () => undefined);
      req.end(JSON.stringify({ ...question, seed: 12, stream: true }));
    });
    gw.fake.setStreamChunkDelay(0);
    await new Promise((r) => setTimeout(r, 200));
    expect((await post(gw, key, { ...question, seed: 12 })).headers.get('x-tollgate-cache')).toBe('MISS');

    const small = await gateway({ CACHE_MAX_ENTRY_BYTES: '1024' });
    const { key: k2 } = await small.createKey();
    const big = { ...question, n: 4 }; // four choices: well over 1 KiB
    expect((await (await post(small, k2, big)).text()).length).toBeGreaterThan(1024);
    await new Promise((r) => setTimeout(r, 100));
    expect((await post(small, k2, big)).headers.get('x-tollgate-cache')).toBe('MISS');
    // A small answer on the same gateway is cached: the cap, not the gateway, refused the big one.
    await post(small, k2, { ...question, max_tokens: 3 });
    await expect.poll(async () => (await post(small, k2, { ...question, max_tokens: 3 })).headers.get('x-tollgate-cache')).toBe('HIT');
  });
});

describe('scope, controls and switches', () => {
  it('is private to the gateway key by default, shared with CACHE_SCOPE=global', async () => {
    const gw = await gateway();
    const a = await gw.createKey();
    const b = await gw.createKey();
    await post(gw, a.key, question);
    await expect.poll(async () => (await post(gw, a.key, question)).headers.get('x-tollgate-cache')).toBe('HIT');
    expect((await post(gw, b.key, question)).headers.get('x-tollgate-cache')).toBe('MISS');

    const shared = await gateway({ CACHE_SCOPE: 'global' });
    const c = await shared.createKey();
    const d = await shared.createKey();
    await post(shared, c.key, question);
    await expect.poll(async () => (await post(shared, d.key, question)).headers.get('x-tollgate-cache')).toBe('HIT');
  });

  it('honours Cache-Control no-cache, no-store and max-age', async () => {
    let now = Date.parse('2026-11-30T10:00:00Z');
    const gw = await gateway({}, () => now);
    const { key } = await gw.createKey();
    const body = { ...question, seed: 21 };

    const noStore = await post(gw, key, body, { 'cache-control': 'no-store' });
    expect(noStore.headers.get('x-tollgate-cache')).toBe('BYPASS');
    await new Promise((r) => setTimeout(r, 100));
    expect((await post(gw, key, body, { 'cache-control': 'no-store' })).headers.get('x-tollgate-cache')).toBe('BYPASS');
    expect(upstreamCalls(gw)).toBe(2); // and nothing was stored:
    const first = await post(gw, key, body);
    expect(first.headers.get('x-tollgate-cache')).toBe('MISS');
    await expect.poll(async () => (await post(gw, key, body)).headers.get('x-tollgate-cache')).toBe('HIT');

    const calls = upstreamCalls(gw);
    const noCache = await post(gw, key, body, { 'cache-control': 'no-cache' });
    expect(noCache.headers.get('x-tollgate-cache')).toBe('BYPASS');
    expect(upstreamCalls(gw)).toBe(calls + 1);

    now += 100_000;
    await new Promise((r) => setTimeout(r, 100));
    // The no-cache answer was stored at its time; 100 s later, max-age=60 refuses it, max-age=200 takes it.
    const stale = await post(gw, key, body, { 'cache-control': 'max-age=60' });
    expect(stale.headers.get('x-tollgate-cache')).toBe('MISS');
    const fresh = await post(gw, key, body, { 'cache-control': 'max-age=200' });
    expect(fresh.headers.get('x-tollgate-cache')).toBe('HIT');
    expect(Number(fresh.headers.get('age'))).toBeLessThanOrEqual(200);
  });

  it('can be switched off per key, and a key can keep entries for less time', async () => {
    const gw = await gateway();
    const off = await gw.createKey({ cache: { enabled: false } });
    await post(gw, off.key, question);
    expect((await post(gw, off.key, question)).headers.get('x-tollgate-cache')).toBe('BYPASS');

    const short = await gw.createKey({ cache: { ttlSeconds: 1 } });
    await post(gw, short.key, question);
    await expect.poll(async () => (await post(gw, short.key, question)).headers.get('x-tollgate-cache')).toBe('HIT');
    await new Promise((r) => setTimeout(r, 1200));
    expect((await post(gw, short.key, question)).headers.get('x-tollgate-cache')).toBe('MISS');
  });

  it('DELETE /admin/cache purges everything or one key', async () => {
    const gw = await gateway();
    const a = await gw.createKey();
    const b = await gw.createKey();
    for (const k of [a.key, b.key]) {
      await post(gw, k, question);
      await expect.poll(async () => (await post(gw, k, question)).headers.get('x-tollgate-cache')).toBe('HIT');
    }
    const one = await gw.admin('DELETE', `/admin/cache?keyId=${a.id}`);
    expect(one.body).toMatchObject({ keyId: a.id, deleted: 1 });
    expect((await post(gw, a.key, question)).headers.get('x-tollgate-cache')).toBe('MISS');
    expect((await post(gw, b.key, question)).headers.get('x-tollgate-cache')).toBe('HIT');
    const all = await gw.admin('DELETE', '/admin/cache');
    expect(all.body.deleted).toBeGreaterThanOrEqual(1);
    expect((await post(gw, b.key, question)).headers.get('x-tollgate-cache')).toBe('MISS');
    const unknown = await gw.admin('DELETE', '/admin/cache?keyId=key_nope');
    expect(unknown.status).toBe(404);
    expect(unknown.body.error).toMatchObject({ code: 'key_not_found', param: 'keyId' });
  });
});

describe('accounting', () => {
  it('a hit counts against rpm but costs no tokens or dollars, and is logged with what it saved', async () => {
    const gw = await gateway();
    const { id, key } = await gw.createKey({ limits: { rpm: 3, tokensPerDay: 100_000, usdPerDay: 5 } });
    await post(gw, key, question);
    const quota = async () => (await gw.admin('GET', `/admin/keys/${id}`)).body.quota;
    await expect.poll(async () => (await quota()).tokensPerDay.reserved).toBe(0);
    const spent = (await quota()).tokensPerDay.used;
    const hit = await post(gw, key, question);
    expect(hit.headers.get('x-tollgate-cache')).toBe('HIT');
    expect(hit.headers.get('x-ratelimit-remaining-requests')).toBe('1');
    expect((await post(gw, key, question)).status).toBe(200);
    const refused = await post(gw, key, question);
    expect(refused.status).toBe(429);
    // Neither a hit nor a miss: it was answered by neither the cache nor upstream.
    expect(refused.headers.get('x-tollgate-cache')).toBeNull();
    const bypassing = await post(gw, key, question, { 'cache-control': 'no-store' });
    expect(bypassing.status).toBe(429);
    expect(bypassing.headers.get('x-tollgate-cache')).toBeNull();
    const metrics = await (await fetch(`${gw.url}/metrics`)).text();
    expect(metrics).toMatch(/tollgate_requests_total\{[^}]*status="429",cache="none"\} 2/);
    expect(metrics).not.toMatch(/status="429",cache="(MISS|HIT|BYPASS)"/);
    await expect.poll(async () => (await quota()).tokensPerDay.reserved).toBe(0);
    expect((await quota()).tokensPerDay.used).toBe(spent);
    await gw.close();
    const hits = gw.logs.requests().filter((l) => l.cache === 'HIT');
    expect(hits.length).toBe(2);
    expect(gw.logs.requests().filter((l) => l.status === 429).map((l) => l.cache)).toEqual([null, null]);
    expect(hits[0]).toMatchObject({ costUsd: 0 });
    expect(hits[0]!.savedUsd as number).toBeGreaterThan(0);
  });
});

describe('store round trips before forwarding', () => {
  /** A gateway whose store notes the cache and quota calls each request makes. */
  async function counted(env: Record<string, string> = {}) {
    const store = await createRedisStore({ url: testRedisUrl(), prefix: uniquePrefix() });
    const calls: string[] = [];
    const watched = ['admit', 'admitAndLookup', 'cacheGet', 'cacheLookup', 'cacheAcquire', 'cacheWait'];
    const counting = new Proxy(store, {
      get(target, prop, receiver) {
        const value = Reflect.get(target, prop, receiver) as unknown;
        if (typeof value !== 'function') return value;
        return (...args: unknown[]) => {
          if (watched.includes(String(prop))) calls.push(String(prop));
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    });
    const gw = await startGateway({ store: counting, env: { CACHE_ENABLED: 'true', ...env } });
    opened.push(store, gw);
    const { key } = await gw.createKey();
    return { gw, key, calls };
  }

  it('a miss and a hit each make one call before forwarding or answering: admission joined with the lookup', async () => {
    const { gw, key, calls } = await counted();
    const body = { ...question, seed: 11 };
    expect((await post(gw, key, body)).headers.get('x-tollgate-cache')).toBe('MISS');
    expect(calls.splice(0)).toEqual(['admitAndLookup']);
    await expect.poll(async () => (await post(gw, key, body)).headers.get('x-tollgate-cache')).toBe('HIT');
    calls.length = 0;
    const hit = await post(gw, key, body);
    expect(hit.headers.get('x-tollgate-cache')).toBe('HIT');
    expect(calls).toEqual(['admitAndLookup']);
  });

  it('falls back to a lookup then an admission when they cannot be joined: a max-age, or the global scope', async () => {
    const { gw, key, calls } = await counted();
    const body = { ...question, seed: 12 };
    expect((await post(gw, key, body, { 'cache-control': 'max-age=60' })).headers.get('x-tollgate-cache')).toBe('MISS');
    expect(calls.splice(0)).toEqual(['cacheLookup', 'admit']);
    const shared = await counted({ CACHE_SCOPE: 'global' });
    expect((await post(shared.gw, shared.key, body)).headers.get('x-tollgate-cache')).toBe('MISS');
    expect(shared.calls).toEqual(['cacheLookup', 'admit']);
  });
});

describe('single-flight', () => {
  it('20 identical concurrent requests over two instances make one upstream call', async () => {
    const prefix = uniquePrefix();
    const fake = await startFakeOpenAI({ apiKey: UPSTREAM_KEY, latencyMs: 300 });
    const stores = [await createRedisStore({ url: testRedisUrl(), prefix }), await createRedisStore({ url: testRedisUrl(), prefix })];
    const a = await startGateway({ store: stores[0], fake, env: { CACHE_ENABLED: 'true' } });
    const b = await startGateway({ store: stores[1], fake, env: { CACHE_ENABLED: 'true' } });
    opened.push(fake, ...stores, a, b);
    const { key } = await a.createKey();
    await post(b, key, { ...question, seed: 99, max_tokens: 1 }); // key cached on b too
    fake.reset();
    fake.setLatency(300);
    const body = { ...question, seed: 7 };
    const responses = await Promise.all(Array.from({ length: 20 }, (_, i) => post(i % 2 ? a : b, key, body)));
    const texts = await Promise.all(responses.map((r) => r.text()));
    expect(responses.every((r) => r.status === 200)).toBe(true);
    expect(new Set(texts.map((t) => (JSON.parse(t) as { choices: unknown }).choices && JSON.stringify((JSON.parse(t) as { choices: unknown }).choices))).size).toBe(1);
    expect(upstreamCalls({ fake } as Gateway)).toBe(1);
    const statuses = responses.map((r) => r.headers.get('x-tollgate-cache'));
    expect(statuses.filter((s) => s === 'MISS')).toHaveLength(1);
    expect(statuses.filter((s) => s === 'HIT')).toHaveLength(19);
  });

  it('identical requests refreshing an entry too old for their max-age join across instances: one upstream call', async () => {
    let now = Date.now();
    const clock = () => now;
    const prefix = uniquePrefix();
    const fake = await startFakeOpenAI({ apiKey: UPSTREAM_KEY });
    const stores = [await createRedisStore({ url: testRedisUrl(), prefix }), await createRedisStore({ url: testRedisUrl(), prefix })];
    const a = await startGateway({ store: stores[0], fake, clock, env: { CACHE_ENABLED: 'true' } });
    const b = await startGateway({ store: stores[1], fake, clock, env: { CACHE_ENABLED: 'true' } });
    opened.push(fake, ...stores, a, b);
    const { key } = await a.createKey();
    await post(b, key, { ...question, seed: 99, max_tokens: 1 }); // key cached on b too
    const body = { ...question, seed: 8 };
    expect((await post(a, key, body)).headers.get('x-tollgate-cache')).toBe('MISS');
    now += 5_000; // the entry is now older than max-age=1 asks
    fake.reset();
    fake.setLatency(500);
    const maxAge = { 'cache-control': 'max-age=1' };
    const refreshing = post(a, key, body, maxAge);
    // b asks once a is upstream, so holds the lead (a fixed 150 ms was sometimes too short on a busy machine).
    await expect.poll(() => upstreamCalls({ fake } as Gateway), { timeout: 5000 }).toBe(1);
    const [refreshed, joined] = await Promise.all([refreshing, post(b, key, body, maxAge)]);
    // b's wait ended at once (an entry existed, though too old for it) and it went upstream too.
    expect([refreshed.headers.get('x-tollgate-cache'), joined.headers.get('x-tollgate-cache')]).toEqual(['MISS', 'HIT']);
    expect(upstreamCalls({ fake } as Gateway)).toBe(1);
  });

  it('a streamed request does not wait for an identical one in flight: its first token comes before that one ends', async () => {
    const gw = await gateway();
    const { key } = await gw.createKey();
    gw.fake.reset();
    gw.fake.setStreamChunkDelay(150); // about 1.5 s per stream
    const body = { ...question, seed: 31, stream: true };
    const first = await post(gw, key, body);
    const firstReader = first.body!.getReader();
    await firstReader.read(); // the first is under way, and leads its cache name
    let firstEnded = false;
    const firstDone = (async () => {
      while (!(await firstReader.read()).done);
      firstEnded = true;
    })();
    const second = await post(gw, key, body);
    expect(second.headers.get('x-tollgate-cache')).toBe('MISS');
    const secondReader = second.body!.getReader();
    expect((await secondReader.read()).done).toBe(false);
    expect(firstEnded).toBe(false);
    while (!(await secondReader.read()).done);
    await firstDone;
    gw.fake.setStreamChunkDelay(0);
    expect(upstreamCalls(gw)).toBe(2);
    // Once filled, the entry answers the next one, streamed or not.
    expect((await post(gw, key, body)).headers.get('x-tollgate-cache')).toBe('HIT');
  });

  it('waiters stop waiting after CACHE_SINGLE_FLIGHT_WAIT_MS and go upstream themselves', async () => {
    const gw = await gateway({ CACHE_SINGLE_FLIGHT_WAIT_MS: '150' });
    const { key } = await gw.createKey();
    gw.fake.reset();
    gw.fake.setLatency(600);
    const started = Date.now();
    const responses = await Promise.all(Array.from({ length: 3 }, () => post(gw, key, { ...question, seed: 5 })));
    gw.fake.setLatency(0);
    expect(responses.every((r) => r.status === 200)).toBe(true);
    // Each gave up on the slow leader and made its own call, rather than waiting it out.
    expect(upstreamCalls(gw)).toBe(3);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('waiters go upstream themselves when the one in flight fails', async () => {
    const gw = await gateway();
    const { key } = await gw.createKey();
    gw.fake.failNext(1, 500);
    gw.fake.setLatency(100);
    const responses = await Promise.all(Array.from({ length: 5 }, () => post(gw, key, { ...question, seed: 8 })));
    gw.fake.setLatency(0);
    expect(responses.filter((r) => r.status === 500)).toHaveLength(1);
    expect(responses.filter((r) => r.status === 200)).toHaveLength(4);
  });

  it('a waiter whose client left during the wait is recorded as a 499, not a HIT, when the one in flight succeeds', async () => {
    const gw = await gateway();
    const { key } = await gw.createKey();
    gw.fake.setLatency(500);
    try {
      const { leader, follower } = await leaderAndLeavingFollower(gw, key, { ...question, seed: 10 });
      expect((await leader).status).toBe(200);
      await follower;
      await expect.poll(() => gw.logs.requests().filter((l) => l.status === 499)).toHaveLength(1);
      expect(gw.logs.requests().filter((l) => l.cache === 'HIT')).toHaveLength(0);
      expect(gw.fake.requests.filter((r) => r.method === 'POST')).toHaveLength(1);
    } finally {
      gw.fake.setLatency(0);
    }
  });

  it('a waiter whose client left during the wait does not go upstream when the one in flight fails', async () => {
    const gw = await gateway();
    const { id, key } = await gw.createKey({ limits: { tokensPerDay: 100_000 } });
    gw.fake.failNext(1, 500);
    gw.fake.setLatency(600);
    try {
      const { leader, follower } = await leaderAndLeavingFollower(gw, key, { ...question, seed: 9 });
      expect((await leader).status).toBe(500);
      await follower;
      // Its request line is written once it is settled: a 499 that cost nothing, and upstream saw only the leader.
      await expect.poll(() => gw.logs.requests().filter((l) => l.status === 499)).toHaveLength(1);
      expect(gw.fake.requests.filter((r) => r.method === 'POST')).toHaveLength(1);
      // Neither a hit nor a miss: it was answered by neither.
      expect(gw.logs.requests().find((l) => l.status === 499)).toMatchObject({ errorCode: 'client_closed_request', cache: null });
      const quota = (await gw.admin('GET', `/admin/keys/${id}`)).body.quota;
      expect(quota.tokensPerDay).toMatchObject({ used: 0, reserved: 0 });
    } finally {
      gw.fake.setLatency(0);
    }
  });
});
