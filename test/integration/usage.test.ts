// Usage accounting end to end: one event per request, exact token sums against the fake upstream's own
// totals, the report API grouped every way, and the raw event export.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request as httpRequest } from 'node:http';
import { startGateway, type Gateway } from '../helpers/gateway.js';
import { usageEvent } from '../helpers/usage-events.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';
import { createMemoryStore } from '../../src/store/memory-store.js';

let gw: Gateway;
let a: { id: string; key: string };
let b: { id: string; key: string };
let limited: { id: string; key: string };
let expectedRequests = 0;

function post(key: string, body: unknown, path = '/v1/chat/completions') {
  expectedRequests++;
  return fetch(`${gw.url}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
}
const chat = (content: string, extra: Record<string, unknown> = {}) => ({
  model: 'gpt-4o-mini',
  messages: [{ role: 'user', content }],
  max_tokens: 40,
  ...extra,
});

interface Report {
  data: Record<string, unknown>[];
  totals: Record<string, number>;
}
const report = async (query: string) => (await gw.admin('GET', `/admin/usage?${query}`)).body as Report;

beforeAll(async () => {
  gw = await startGateway({ env: { CACHE_ENABLED: 'true', REDIS_URL: testRedisUrl(), REDIS_PREFIX: uniquePrefix() } });
  a = await gw.createKey({ name: 'app-a' });
  b = await gw.createKey({ name: 'app-b' });
  limited = await gw.createKey({ name: 'limited', limits: { rpm: 1 } });

  // A mixed run: non-streamed, streamed (with and without usage), a cache hit, embeddings, legacy
  // completions, an upstream failure, and rejections (bad key, bad body, rate limit, unknown model).
  expect((await post(a.key, chat('first question'))).status).toBe(200);
  expect((await post(a.key, chat('second question', { n: 2 }))).status).toBe(200);
  await (await post(b.key, chat('streamed one', { stream: true }))).text();
  await (await post(b.key, chat('streamed two', { stream: true, stream_options: { include_usage: true } }))).text();
  await until(async () => (await post(a.key, chat('first question'))).headers.get('x-tollgate-cache') === 'HIT');
  expect((await post(b.key, { model: 'text-embedding-3-small', input: ['x', 'y z'] }, '/v1/embeddings')).status).toBe(200);
  expect((await post(b.key, { model: 'gpt-3.5-turbo-instruct', prompt: 'Say hi', max_tokens: 5 }, '/v1/completions')).status).toBe(200);
  gw.fake.failNext(1, 500);
  expect((await post(a.key, chat('this one fails upstream'))).status).toBe(500);
  expect((await post('tg-wrong', chat('no key'))).status).toBe(401);
  expect((await post(a.key, { model: 'gpt-4o-mini' })).status).toBe(400);
  expect((await post(limited.key, chat('rate limited'))).status).toBe(200);
  expect((await post(limited.key, chat('rate limited again'))).status).toBe(429);
  expect((await post(a.key, chat('unknown model', { model: 'gpt-nonexistent' }))).status).toBe(404);
  await until(async () => (await report('groupBy=key')).totals.requests === expectedRequests);
});

/** expect.poll only works inside a test; this is its beforeAll twin. */
async function until(check: () => Promise<boolean>, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}
afterAll(() => gw.close());

describe('exact accounting', () => {
  it('records exactly the tokens upstream reported, and one request per request', async () => {
    const { totals } = await report('groupBy=key');
    const upstream = gw.fake.usageTotals();
    expect(totals.totalTokens).toBe(upstream.total_tokens);
    expect(totals.promptTokens).toBe(upstream.prompt_tokens);
    expect(totals.completionTokens).toBe(upstream.completion_tokens);
    expect(totals.requests).toBe(expectedRequests);
    expect(totals.cacheHits).toBeGreaterThanOrEqual(1);
    expect(totals.savedUsd).toBeGreaterThan(0);
    expect(totals.errors).toBe(5); // 500, 401, 400, 429, 404
    expect(totals.costUsd).toBeGreaterThan(0);
  });

  it('groups by key, model, day and hour, and filters', async () => {
    const byKey = await report('groupBy=key');
    const rowA = byKey.data.find((r) => r.key === a.id)!;
    expect(rowA).toMatchObject({ keyName: 'app-a' });
    expect(byKey.data.find((r) => r.key === null)).toMatchObject({ requests: 1, errors: 1 }); // the 401
    const keyTokens = byKey.data.reduce((s, r) => s + (r.totalTokens as number), 0);
    expect(keyTokens).toBe(byKey.totals.totalTokens);

    const byModel = await report('groupBy=model');
    expect(byModel.data.map((r) => r.model)).toEqual(
      expect.arrayContaining(['gpt-4o-mini', 'text-embedding-3-small', 'gpt-3.5-turbo-instruct']),
    );
    const byDay = await report('groupBy=day');
    expect(byDay.data).toHaveLength(1);
    expect(byDay.data[0]!.day).toBe(new Date().toISOString().slice(0, 10));
    const byHour = await report('groupBy=hour,key');
    expect(byHour.data.every((r) => typeof r.hour === 'string' && (r.hour as string).endsWith(':00:00.000Z'))).toBe(true);

    const onlyB = await report(`groupBy=model&keyId=${b.id}`);
    expect(onlyB.totals.requests).toBe(4);
    const onlyEmbeddings = await report('groupBy=key&model=text-embedding-3-small');
    expect(onlyEmbeddings.data).toHaveLength(1);
    expect(onlyEmbeddings.data[0]!.key).toBe(b.id);

    const past = await report('from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z');
    expect(past.totals.requests).toBe(0);
  });

  it('records no model for a model its key may not use or upstream does not know: a client cannot fill the report with names', async () => {
    const narrow = await gw.createKey({ name: 'narrow', models: ['gpt-4o-mini'] });
    for (const name of ['spam-1', 'spam-2', '</script>']) expect((await post(narrow.key, chat('x', { model: name }))).status).toBe(404);
    expectedRequests++;
    const retrieve = await fetch(`${gw.url}/v1/models/spam-3`, { headers: { authorization: `Bearer ${narrow.key}` } });
    expect(retrieve.status).toBe(404);
    await expect.poll(async () => (await report(`groupBy=model&keyId=${narrow.id}`)).totals.requests).toBe(4);
    // Was one row per name (each kept 90 days in the hour's aggregate hash).
    expect((await report(`groupBy=model&keyId=${narrow.id}`)).data).toEqual([expect.objectContaining({ model: null, requests: 4, errors: 4 })]);
    // The log line still says what was asked.
    const refused = gw.logs.requests().filter((l) => l.keyId === narrow.id);
    expect(refused.map((l) => [l.model, l.modelRefused])).toEqual([[null, 'spam-1'], [null, 'spam-2'], [null, '</script>'], [null, 'spam-3']]);
    // Nor any other refusal of a name the price table does not list (400 model_price_unknown here).
    const budgeted = await gw.createKey({ name: 'budgeted', limits: { usdPerDay: 5 } });
    for (const name of ['spam-a', 'spam-b']) expect((await post(budgeted.key, chat('x', { model: name }))).status).toBe(400);
    expect((await post(budgeted.key, chat('x'))).status).toBe(200);
    await expect.poll(async () => (await report(`groupBy=model&keyId=${budgeted.id}`)).totals.requests).toBe(3);
    expect((await report(`groupBy=model&keyId=${budgeted.id}`)).data.map((r) => r.model).sort()).toEqual(['gpt-4o-mini', null]);
    // A dated snapshot refused (429 here) counts as the table's model it is priced as, as metrics label it.
    const pinned = await gw.createKey({ name: 'pinned', limits: { rpm: 1 } });
    for (const status of [200, 429]) expect((await post(pinned.key, chat('x', { model: 'gpt-4o-mini-2024-07-18' }))).status).toBe(status);
    await expect.poll(async () => (await report(`groupBy=model&keyId=${pinned.id}`)).totals.requests).toBe(2);
    expect((await report(`groupBy=model&keyId=${pinned.id}`)).data.map((r) => r.model).sort()).toEqual(['gpt-4o-mini', 'gpt-4o-mini-2024-07-18']);
    // A key that may use every model: a name upstream answers 404 model_not_found for is no row either.
    expect((await report(`groupBy=model&keyId=${a.id}`)).data.map((r) => r.model)).not.toContain('gpt-nonexistent');
    expect(gw.logs.requests().find((l) => l.modelRefused === 'gpt-nonexistent')).toMatchObject({ keyId: a.id, status: 404, errorCode: 'model_not_found' });
  });

  it('answers bad report queries with 400', async () => {
    for (const q of ['groupBy=colour', 'from=yesterday', 'from=2026-12-01T00:00:00Z&to=2026-11-01T00:00:00Z', 'groupBy=day,hour']) {
      const res = await gw.admin('GET', `/admin/usage?${q}`);
      expect(res.status, q).toBe(400);
    }
  });

  // Date.parse read all of these as some time: 'foo 1' as 2001, '2026' as 2026 ms after 1970, a
  // zoneless time in the server's zone, Feb 30 as March 2nd.
  it('takes only strict ISO 8601 dates and zoned date-times, or epoch milliseconds, naming the parameter', async () => {
    const bad = [
      'foo%201', '-1', '1', '00', '2026', '99999999999', '20261201', '1764547200', '2026-02-30', '2025-02-29', '2026-13-01', '2026-12-00',
      '2026-12-01T10:00:00', '2026-12-01T10:00', '2026-12-01T24:00:00Z', '2026-12-01T10:60Z', '2026-12-01T10:00:60Z',
      '2026-12-01T10:00:00%2B25:00', '2026-12-01%2010:00:00Z', '2026-12-1', 'Tue%20Dec%2001%202026', '2026-12-01T10Z',
      '1.7e12', '%201764547200000', '',
    ];
    for (const value of bad) {
      for (const [path, param] of [['/admin/usage?from=', 'from'], ['/admin/usage?to=', 'to'], ['/admin/usage/events?since=', 'since']]) {
        const res = await gw.admin('GET', `${path}${value}`);
        expect(res.status, `${param}=${value}`).toBe(400);
        expect(res.body, `${param}=${value}`).toEqual({
          error: { message: expect.stringMatching(new RegExp(`^Invalid '${param}': expected an ISO 8601 date`)), type: 'invalid_request_error', param, code: 'invalid_value' },
        });
      }
    }
    const range = async (query: string) => {
      const res = await gw.admin('GET', `/admin/usage?${query}`);
      expect(res.status, query).toBe(200);
      return [res.body.from, res.body.to];
    };
    expect(await range('from=2024-02-29&to=2024-03-01')).toEqual(['2024-02-29T00:00:00.000Z', '2024-03-01T00:00:00.000Z']);
    expect(await range('from=2026-12-01T10:00Z&to=2026-12-01T12:30:15.5%2B01:00')).toEqual(['2026-12-01T10:00:00.000Z', '2026-12-01T11:30:15.500Z']);
    expect(await range('from=2026-11-30T23:00:00-05:00&to=2026-12-01T05:00:00.123456789Z')).toEqual(['2026-12-01T04:00:00.000Z', '2026-12-01T05:00:00.123Z']);
    expect(await range('from=1764547200000&to=1764550800000')).toEqual(['2025-12-01T00:00:00.000Z', '2025-12-01T01:00:00.000Z']);
    // A + typed into a URL arrives as a space: the message shows how to write it.
    const plus = await gw.admin('GET', '/admin/usage?from=2026-12-01T10:00+01:00');
    expect(plus.status).toBe(400);
    expect(plus.body.error.message).toContain('in a URL, + is written %2B');
    const long = await gw.admin('GET', '/admin/usage?from=2025-01-01&to=2026-12-01');
    expect(long.status).toBe(400);
    expect(long.body.error).toMatchObject({ param: 'from', message: 'The range may span at most 400 days: ask for a longer one in parts.' });
  });

  // Hour ids are YYYY-MM-DDTHH from 1970 on: a time outside that once got past the parser and came back as a 500.
  it('answers times before 1970 or after year 9999 with 400, naming the parameter and the range', async () => {
    const cases: [string, string][] = [
      ['from=1969-12-31&to=1970-01-02', 'from'],
      ['from=99999999999999999999&to=99999999999999999999', 'from'],
      ['from=8640000000000001&to=8640000000000001', 'from'],
      ['from=%2B010000-01-01T00:00:00Z&to=%2B010000-01-02T00:00:00Z', 'from'],
      ['from=2020-01-01T00:00:00Z&to=%2B010000-01-02T00:00:00Z', 'to'],
    ];
    for (const [q, param] of cases) {
      const res = await gw.admin('GET', `/admin/usage?${q}`);
      expect(res.status, q).toBe(400);
      expect(res.body, q).toEqual({
        error: { message: expect.stringMatching(/^Invalid '\w+': .*1970-01-01.*9999/), type: 'invalid_request_error', param, code: 'invalid_value' },
      });
      expect(res.body.error.message, q).toContain(`'${param}'`);
    }
  });

  it('accepts the first and the last hours of that range', async () => {
    const edges = [
      'from=1970-01-01T00:00:00Z&to=1970-01-02T00:00:00Z',
      'to=1970-01-02T00:00:00Z', // the default 'from', a week back, would be before 1970
      'from=0&to=0',
      'from=000000000000&to=000000000000',
      'from=9999-12-31T00:00:00Z&to=9999-12-31T23:59:59.999Z',
    ];
    for (const q of edges) {
      const res = await gw.admin('GET', `/admin/usage?${q}`);
      expect(res.status, q).toBe(200);
      expect(res.body.totals.requests, q).toBe(0);
    }
  });
});

describe('raw events', () => {
  it('exports one event per request as NDJSON, with every field', async () => {
    const res = await fetch(`${gw.url}/admin/usage/events?since=${Date.now() - 600_000}`, {
      headers: { authorization: 'Bearer test-admin-token-0123456789' },
    });
    expect(res.headers.get('content-type')).toContain('application/x-ndjson');
    const events = (await res.text())
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(events).toHaveLength(expectedRequests);
    const streamed = events.find((e) => e.stream === true)!;
    expect(streamed).toMatchObject({ keyId: b.id, keyName: 'app-b', endpoint: 'chat.completions', status: 200, cache: 'MISS' });
    expect(streamed.modelAnswered).toBe('gpt-4o-mini');
    expect(typeof streamed.ttfbMs).toBe('number');
    expect(streamed.ttfbMs as number).toBeLessThanOrEqual(streamed.latencyMs as number);
    const hit = events.find((e) => e.cache === 'HIT')!;
    expect(hit).toMatchObject({ totalTokens: 0, costMicros: 0, upstreamMs: null });
    expect(hit.savedMicros as number).toBeGreaterThan(0);
    expect(events.find((e) => e.status === 401)).toMatchObject({ keyId: null, errorCode: 'invalid_api_key' });
    expect(events.find((e) => e.status === 429)).toMatchObject({ keyId: limited.id, errorCode: 'rate_limit_exceeded' });
    expect(events.find((e) => e.status === 500)).toMatchObject({ errorCode: 'server_error' });
    for (const e of events) {
      for (const field of ['ts', 'requestId', 'latencyMs', 'overheadMs', 'estimated', 'cachedPromptTokens', 'reasoningTokens']) {
        expect(e, field).toHaveProperty(field);
      }
    }
    // Paging: a limit smaller than the run.
    const few = await fetch(`${gw.url}/admin/usage/events?since=${Date.now() - 600_000}&limit=3`, {
      headers: { authorization: 'Bearer test-admin-token-0123456789' },
    });
    expect((await few.text()).trim().split('\n')).toHaveLength(3);
  });

  it('lists the newest events first with order=desc, so a limit keeps the latest', async () => {
    const since = Date.now() - 600_000;
    const lines = async (query: string) => {
      const res = await fetch(`${gw.url}/admin/usage/events?since=${since}&${query}`, { headers: { authorization: 'Bearer test-admin-token-0123456789' } });
      expect(res.status, query).toBe(200);
      return (await res.text()).trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { id: string; requestId: string });
    };
    const asc = await lines('');
    expect(asc.length).toBeGreaterThan(5);
    expect(await lines('order=asc')).toEqual(asc);
    expect(await lines('order=desc')).toEqual([...asc].reverse());
    expect(await lines('order=desc&limit=3')).toEqual(asc.slice(-3).reverse());
    const csv = await fetch(`${gw.url}/admin/usage/events?since=${since}&order=desc&limit=2&format=csv`, { headers: { authorization: 'Bearer test-admin-token-0123456789' } });
    expect((await csv.text()).trim().split('\n').slice(1).map((l) => l.split(',')[0])).toEqual(asc.slice(-2).reverse().map((e) => e.id));
  });

  it('answers an unknown order with an OpenAI-shaped 400', async () => {
    for (const order of ['newest', 'DESC', '']) {
      const res = await gw.admin('GET', `/admin/usage/events?order=${order}`);
      expect(res.status, order).toBe(400);
      expect(res.body, order).toEqual({
        error: { message: expect.stringContaining("Invalid 'order'"), type: 'invalid_request_error', param: 'order', code: 'invalid_value' },
      });
    }
  });

  it('exports CSV with a header row', async () => {
    const res = await fetch(`${gw.url}/admin/usage/events?format=csv&since=${new Date(Date.now() - 600_000).toISOString()}`, {
      headers: { authorization: 'Bearer test-admin-token-0123456789' },
    });
    expect(res.headers.get('content-type')).toContain('text/csv');
    const lines = (await res.text()).trim().split('\n');
    expect(lines[0]).toMatch(/^id,time,requestId,keyId,keyName,endpoint,model/);
    expect(lines).toHaveLength(expectedRequests + 1);
  });

  it('has a CSV column for every field of an event, as NDJSON has', async () => {
    const since = Date.now() - 600_000;
    const get = (format: string) =>
      fetch(`${gw.url}/admin/usage/events?since=${since}&limit=1&format=${format}`, { headers: { authorization: 'Bearer test-admin-token-0123456789' } });
    const row = JSON.parse((await (await get('ndjson')).text()).trim()) as Record<string, unknown>;
    const [header, first] = (await (await get('csv')).text()).trim().split('\n');
    const columns = header!.split(',');
    expect([...columns].sort()).toEqual(Object.keys(row).sort());
    expect(columns).toContain('eventId');
    expect(new Set(columns).size).toBe(columns.length);
    // The cells are that event's, column by column (no cell of this event needs quoting).
    const cells = first!.split(',');
    expect(cells[columns.indexOf('eventId')]).toBe(row.eventId);
    expect(cells[columns.indexOf('ts')]).toBe(String(row.ts));
    expect(cells[columns.indexOf('id')]).toBe(row.id);
  });

  it('marks a stream the client abandoned as estimated', async () => {
    gw.fake.setStreamChunkDelay(20);
    await new Promise<void>((resolve) => {
      const req = httpRequest(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${a.key}`, 'content-type': 'application/json' },
      });
      req.on('response', (res) => res.once('data', () => (req.destroy(), resolve())));
      req.on('error', () => undefined);
      req.end(JSON.stringify(chat('abandon me', { stream: true })));
    });
    gw.fake.setStreamChunkDelay(0);
    await expect
      .poll(async () => {
        const res = await fetch(`${gw.url}/admin/usage/events?since=${Date.now() - 600_000}`, {
          headers: { authorization: 'Bearer test-admin-token-0123456789' },
        });
        const lines = (await res.text()).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
        return lines.find((e) => e.estimated === true);
      })
      .toMatchObject({ keyId: a.id, stream: true, estimated: true, errorCode: 'client_closed_request' });
  });

  it('answers a since before 1970 or after year 9999 with 400, not 500', async () => {
    for (const since of ['1969-01-01', '99999999999999999999', '8640000000000001', '%2B010000-01-01T00:00:00Z']) {
      const res = await gw.admin('GET', `/admin/usage/events?since=${since}`);
      expect(res.status, since).toBe(400);
      expect(res.body, since).toEqual({
        error: { message: expect.stringMatching(/^Invalid 'since': .*1970-01-01.*9999/), type: 'invalid_request_error', param: 'since', code: 'invalid_value' },
      });
    }
    for (const since of ['0', '9999-12-31T23:59:59.999Z']) {
      expect((await gw.admin('GET', `/admin/usage/events?since=${since}&limit=1`)).status, since).toBe(200);
    }
  });
});

describe('report ranges', () => {
  const HOUR = 3_600_000;
  const at = (iso: string) => Date.parse(iso);
  const event = (ts: number, requestId: string) =>
    usageEvent({ ts, requestId, cache: 'MISS', promptTokens: 1, totalTokens: 1, costMicros: 1 });
  const KEEP = { retentionMs: 400 * 24 * HOUR, maxEvents: 1000 };

  /** A gateway on a memory store holding events at the given times, its clock stopped at `now`. */
  async function gatewayWith(times: string[], now: string, env: Record<string, string> = {}) {
    const store = createMemoryStore({ clock: () => at(now) });
    await store.recordUsage(times.map((t, i) => event(at(t), `r${i}`)), KEEP);
    return startGateway({ store, clock: () => at(now), env });
  }
  const usage = async (g: Gateway, query: Record<string, string>) => {
    const res = await g.admin('GET', `/admin/usage?${new URLSearchParams(query)}`);
    expect(res.status, JSON.stringify(query)).toBe(200);
    return res.body as Report & { from: string; to: string; timeZone: string };
  };

  it("counts the hour that starts at 'to' in the next range, not in both: back-to-back months add up", async () => {
    const g = await gatewayWith(
      ['2026-11-01T00:00:00Z', '2026-11-30T23:59:59.999Z', '2026-12-01T00:00:00Z', '2026-12-01T00:30:00Z', '2026-12-31T23:30:00Z', '2027-01-01T00:00:00Z'],
      '2027-01-05T12:00:00Z',
    );
    try {
      const nov = await usage(g, { from: '2026-11-01T00:00:00Z', to: '2026-12-01T00:00:00Z' });
      const dec = await usage(g, { from: '2026-12-01T00:00:00Z', to: '2027-01-01T00:00:00Z' });
      const both = await usage(g, { from: '2026-11-01T00:00:00Z', to: '2027-01-01T00:00:00Z' });
      expect(nov.totals.requests).toBe(2);
      expect(dec.totals.requests).toBe(3);
      expect(both.totals.requests).toBe(5);
      // Grouped by hour: the last hour listed is the one before 'to'.
      const hours = await usage(g, { from: '2026-11-30T00:00:00Z', to: '2026-12-01T00:00:00Z', groupBy: 'hour' });
      expect(hours.data.map((r) => r.hour)).toEqual(['2026-11-30T23:00:00.000Z']);
      // An empty range counts nothing, whatever hour it is in.
      expect((await usage(g, { from: '2026-12-01T00:30:00Z', to: '2026-12-01T00:30:00Z' })).totals.requests).toBe(0);
    } finally {
      await g.close();
    }
  });

  it('counts an hour in the range its start is in, so ranges that split an hour never share it', async () => {
    const g = await gatewayWith(['2026-12-01T10:10:00Z', '2026-12-01T10:50:00Z', '2026-12-01T11:10:00Z'], '2026-12-02T00:00:00Z');
    try {
      const first = await usage(g, { from: '2026-12-01T09:30:00Z', to: '2026-12-01T10:30:00Z' });
      const second = await usage(g, { from: '2026-12-01T10:30:00Z', to: '2026-12-01T11:30:00Z' });
      expect([first.totals.requests, second.totals.requests]).toEqual([2, 1]);
    } finally {
      await g.close();
    }
  });

  it('by default reports the week back from the start of its hour, up to now', async () => {
    const g = await gatewayWith(['2026-12-01T10:10:00Z', '2026-12-01T09:59:59Z', '2026-12-08T10:19:00Z'], '2026-12-08T10:20:00Z');
    try {
      const week = await usage(g, {});
      expect([week.from, week.to]).toEqual(['2026-12-01T10:00:00.000Z', '2026-12-08T10:20:00.000Z']);
      expect(week.totals.requests).toBe(2);
    } finally {
      await g.close();
    }
  });

  it('groups by local day in a half-hour zone: an hour belongs to the day its start is in, and stays in one report', async () => {
    // Asia/Kolkata is UTC+05:30: local midnight is hh:30 UTC, in the middle of an hour bucket.
    const g = await gatewayWith(
      [
        '2026-11-30T18:10:00Z', // 23:40 on Nov 30 there
        '2026-11-30T18:50:00Z', // 00:20 on Dec 1 there, but in the hour that starts at 23:30 on Nov 30
        '2026-11-30T19:10:00Z', // 00:40 on Dec 1
        '2026-12-01T18:20:00Z', // 23:50 on Dec 1
        '2026-12-01T18:40:00Z', // 00:10 on Dec 2, in the hour that starts at 23:30 on Dec 1
      ],
      '2026-12-05T00:00:00Z',
      { QUOTA_TIME_ZONE: 'Asia/Kolkata' },
    );
    try {
      const day = (from: string, to: string) => usage(g, { from, to, groupBy: 'day' });
      const nov30 = await day('2026-11-30T00:00:00+05:30', '2026-12-01T00:00:00+05:30');
      const dec1 = await day('2026-12-01T00:00:00+05:30', '2026-12-02T00:00:00+05:30');
      expect(dec1.data.map((r) => [r.day, r.requests])).toEqual([['2026-12-01', 3]]);
      expect(nov30.data.map((r) => [r.day, r.requests])).toEqual([['2026-11-30', 2]]);
      const both = await day('2026-11-30T00:00:00+05:30', '2026-12-02T00:00:00+05:30');
      expect(both.timeZone).toBe('Asia/Kolkata');
      expect(both.data.map((r) => [r.day, r.requests])).toEqual([
        ['2026-11-30', 2],
        ['2026-12-01', 3],
      ]);
    } finally {
      await g.close();
    }
  });
});
