// The usage half of the Store contract (hourly aggregates, the event stream, markOnce), run against
// the memory and Redis stores with the same expectations; then what only each store promises.
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createMemoryStore } from '../../src/store/memory-store.js';
import { redisKeys } from '../../src/store/redis-keys.js';
import type { Store, UsageRow } from '../../src/store/store.js';
import { hourId, MAX_USAGE_ROW_HOURS, USAGE_METRICS } from '../../src/store/usage-math.js';
import { LIST_CHUNK_EVENTS } from '../../src/store/redis-store.js';
import type { UsageEvent } from '../../src/usage/event.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';
import { clusterStore, redisStore, track } from '../helpers/stores.js';
import { usageEvent } from '../helpers/usage-events.js';


const HOUR = 3_600_000;
const DAY = 24 * HOUR;
/** The start of the hour most tests write to. */
const H = Date.parse('2026-11-18T12:00:00.000Z');
const KEEP = { retentionMs: 30 * DAY, maxEvents: 10_000 };

function makeEvent(o: Partial<UsageEvent> = {}): UsageEvent {
  return usageEvent({
    ts: H + 1000,
    modelAnswered: 'gpt-4o-mini-2024-07-18',
    cache: 'MISS',
    latencyMs: 12.5,
    ttfbMs: 10,
    upstreamMs: 9.25,
    overheadMs: -0.25,
    ...o,
  });
}

/** A row with every metric 0 but those given. */
function row(hour: string, keyId: string, model: string, metrics: Partial<UsageRow>): UsageRow {
  const r = { hour, keyId, model } as UsageRow;
  for (const m of USAGE_METRICS) r[m] = 0;
  return { ...r, ...metrics };
}

/** A store, its notion of "now" (what usageEvents' sinceMs compares with) and a way to let time pass. */
interface Harness {
  store: Store;
  now(): number;
  /** Memory: moves the injected clock. Redis: really waits. */
  advance(ms: number): Promise<void>;
}

describe.each([
  {
    kind: 'memory',
    make: async (): Promise<Harness> => {
      let t = Date.parse('2026-11-18T12:30:00.000Z');
      const store = track(createMemoryStore({ clock: () => t }));
      return {
        store,
        now: () => t,
        advance: async (ms) => {
          t += ms;
        },
      };
    },
  },
  {
    kind: 'redis',
    make: async (): Promise<Harness> => ({ store: await redisStore(), now: () => Date.now(), advance: (ms) => sleep(ms) }),
  },
  {
    kind: 'cluster',
    make: async (): Promise<Harness> => ({ store: await clusterStore(), now: () => Date.now(), advance: (ms) => sleep(ms) }),
  },
])('Store usage contract: $kind', ({ make }) => {
  it('counts an event once, however often it is written (a replay after an outage)', async () => {
    const { store } = await make();
    const event = makeEvent({ totalTokens: 40, promptTokens: 30, completionTokens: 10, costMicros: 7 });
    await store.recordUsage([event], KEEP);
    await store.recordUsage([event], KEEP);
    await store.recordUsage([{ ...event }], KEEP);
    const rows = await store.usageRows('2026-11-18T12', '2026-11-18T12');
    expect(rows.reduce((n, r) => n + r.requests, 0)).toBe(1);
    expect(rows.reduce((n, r) => n + r.totalTokens, 0)).toBe(40);
    expect(await store.usageEvents({ sinceMs: 0, limit: 100 })).toHaveLength(1);
    // Another request with the same client-given request id is another event.
    await store.recordUsage([{ ...event, eventId: randomUUID() }], KEEP);
    expect((await store.usageRows('2026-11-18T12', '2026-11-18T12')).reduce((n, r) => n + r.requests, 0)).toBe(2);
  });

  it('takes a batch spanning hours like its events one by one, in order, and a replayed batch once', async () => {
    const { store } = await make();
    const batch = [
      makeEvent({ promptTokens: 5, completionTokens: 2, totalTokens: 7, costMicros: 11 }),
      makeEvent({ ts: H - 1, promptTokens: 1, totalTokens: 1, costMicros: 3 }),
      makeEvent({ model: 'gpt-4o', cache: 'HIT', savedTokens: 9, savedMicros: 4 }),
      makeEvent({ status: 500, promptTokens: 2, totalTokens: 2, costMicros: 1, errorCode: 'server_error' }),
    ];
    await store.recordUsage(batch, KEEP);
    await store.recordUsage(batch, KEEP); // a replay after an outage: counted already
    await store.recordUsage([...batch], KEEP);
    await store.recordUsage([], KEEP);
    expect(await store.usageRows('2026-11-18T11', '2026-11-18T12')).toEqual([
      row('2026-11-18T11', 'key_a', 'gpt-4o-mini', { requests: 1, cacheMisses: 1, cacheLookups: 1, promptTokens: 1, totalTokens: 1, costMicros: 3 }),
      row('2026-11-18T12', 'key_a', 'gpt-4o', { requests: 1, cacheHits: 1, cacheLookups: 1, savedTokens: 9, savedMicros: 4 }),
      row('2026-11-18T12', 'key_a', 'gpt-4o-mini', { requests: 2, errors: 1, cacheMisses: 2, cacheLookups: 2, promptTokens: 7, completionTokens: 2, totalTokens: 9, costMicros: 12 }),
    ]);
    const listed = await store.usageEvents({ sinceMs: 0, limit: 100 });
    expect(listed.map((e) => e.event.eventId)).toEqual(batch.map((e) => e.eventId));
    // Another batch is counted, even with the same events' hours.
    await store.recordUsage([makeEvent({ costMicros: 100 })], KEEP);
    const h12 = await store.usageRows('2026-11-18T12', '2026-11-18T12');
    expect(h12.find((r) => r.model === 'gpt-4o-mini')?.costMicros).toBe(112);
    // One bad event and the whole batch writes nothing.
    await expect(store.recordUsage([makeEvent({ costMicros: 5 }), makeEvent({ totalTokens: -1 })], KEEP)).rejects.toThrow(RangeError);
    expect(await store.usageEvents({ sinceMs: 0, limit: 100 })).toHaveLength(5);
    expect((await store.usageRows('2026-11-18T12', '2026-11-18T12')).find((r) => r.model === 'gpt-4o-mini')?.costMicros).toBe(112);
  });

  it('aggregates events per hour x key x model, summing every metric exactly', async () => {
    const { store } = await make();
    const odd = 'ft:gpt|odd%7Cname%';
    const events = [
      // Hour 12, key_a x gpt-4o-mini: two misses, a hit, a rate-limited request.
      makeEvent({ ts: H, promptTokens: 100, cachedPromptTokens: 20, completionTokens: 50, reasoningTokens: 10, totalTokens: 150, costMicros: 1234 }),
      makeEvent({ ts: H + HOUR - 1, promptTokens: 7, completionTokens: 3, totalTokens: 10, costMicros: 5, stream: true, estimated: true }),
      makeEvent({ cache: 'HIT', savedTokens: 150, savedMicros: 1234, upstreamMs: null }),
      makeEvent({ status: 429, cache: null, errorCode: 'rate_limit_exceeded', upstreamMs: null }),
      // Refused before a key or a model was known.
      makeEvent({ keyId: null, keyName: null, model: null, modelAnswered: null, endpoint: null, status: 401, cache: null, errorCode: 'invalid_api_key' }),
      makeEvent({ keyId: null, keyName: null, model: null, modelAnswered: null, status: 401, cache: null }),
      // `|` and `%` in a model name and a key id; an upstream failure that still billed tokens.
      makeEvent({ keyId: 'key|b%25', model: odd, promptTokens: 9, totalTokens: 9, costMicros: 1 }),
      makeEvent({ keyId: 'key|b%25', model: odd, status: 500, promptTokens: 4, totalTokens: 4, costMicros: 2, errorCode: 'server_error' }),
      makeEvent({ keyId: 'key|b%25', model: 'gpt-4o-mini', status: 400 }),
      // Hour 11; hours 10 and 13 fall outside the range read.
      makeEvent({ ts: H - 1, model: 'gpt-4o', promptTokens: 1, completionTokens: 2, totalTokens: 3, costMicros: 30 }),
      makeEvent({ ts: H - HOUR - 1, costMicros: 999 }),
      makeEvent({ ts: H + HOUR, costMicros: 999 }),
    ];
    for (const e of events) await store.recordUsage([e], KEEP);

    const h11 = '2026-11-18T11';
    const h12 = '2026-11-18T12';
    const expected = [
      row(h11, 'key_a', 'gpt-4o', { requests: 1, cacheMisses: 1, cacheLookups: 1, promptTokens: 1, completionTokens: 2, totalTokens: 3, costMicros: 30 }),
      row(h12, '', '', { requests: 2, errors: 2 }),
      row(h12, 'key_a', 'gpt-4o-mini', {
        requests: 4,
        errors: 1,
        cacheHits: 1,
        cacheMisses: 2,
        cacheLookups: 3,
        promptTokens: 107,
        cachedPromptTokens: 20,
        completionTokens: 53,
        reasoningTokens: 10,
        totalTokens: 160,
        costMicros: 1239,
        savedTokens: 150,
        savedMicros: 1234,
      }),
      row(h12, 'key|b%25', 'ft:gpt|odd%7Cname%', { requests: 2, errors: 1, cacheMisses: 2, cacheLookups: 2, promptTokens: 13, totalTokens: 13, costMicros: 3 }),
      row(h12, 'key|b%25', 'gpt-4o-mini', { requests: 1, errors: 1, cacheMisses: 1, cacheLookups: 1 }),
    ];
    expect(await store.usageRows(h11, h12)).toEqual(expected);
    expect(await store.usageRows(h12, h12)).toEqual(expected.slice(1));
    expect(await store.usageRows('2026-11-18T10', '2026-11-18T10')).toEqual([row('2026-11-18T10', 'key_a', 'gpt-4o-mini', { requests: 1, cacheMisses: 1, cacheLookups: 1, costMicros: 999 })]);
    expect(await store.usageRows('2026-11-18T09', '2026-11-18T13')).toHaveLength(7);
    // An empty range, and one the wrong way round.
    expect(await store.usageRows('2026-11-19T00', '2026-11-25T23')).toEqual([]);
    expect(await store.usageRows(h12, h11)).toEqual([]);
  });

  it('refuses malformed hour ids and ranges too long to read', async () => {
    const { store } = await make();
    for (const bad of ['2026-11-18 12', '2026-11-18T12:00', '2026-02-30T00', '2026-11-18T24', '26-11-18T12', '']) {
      await expect(store.usageRows(bad, '2026-11-18T12')).rejects.toThrow(RangeError);
      await expect(store.usageRows('2026-11-18T12', bad)).rejects.toThrow(RangeError);
    }
    await expect(store.usageRows('1970-01-01T00', '9999-12-31T23')).rejects.toThrow(/at most/);
    const start = Date.parse('2020-01-01T00:00:00.000Z');
    const hour = (n: number) => new Date(start + n * HOUR).toISOString().slice(0, 13);
    expect(await store.usageRows(hour(0), hour(MAX_USAGE_ROW_HOURS - 1))).toEqual([]);
    await expect(store.usageRows(hour(0), hour(MAX_USAGE_ROW_HOURS))).rejects.toThrow(RangeError);
  });

  it('refuses invalid events and options, writing nothing', async () => {
    const { store } = await make();
    const bad: [UsageEvent, { retentionMs: number; maxEvents: number }][] = [
      [makeEvent({ promptTokens: -1 }), KEEP],
      [makeEvent({ completionTokens: 1.5 }), KEEP],
      [makeEvent({ costMicros: Number.NaN }), KEEP],
      [makeEvent({ latencyMs: Number.POSITIVE_INFINITY }), KEEP],
      [makeEvent({ ts: -1 }), KEEP],
      [{ ...makeEvent(), cache: 'SOMETIMES' } as unknown as UsageEvent, KEEP],
      [{ ...makeEvent(), requestId: undefined } as unknown as UsageEvent, KEEP],
      [makeEvent(), { retentionMs: 0, maxEvents: 10 }],
      [makeEvent(), { retentionMs: 1000, maxEvents: 0 }],
      [makeEvent(), { retentionMs: 1000.5, maxEvents: 10 }],
    ];
    for (const [event, options] of bad) await expect(store.recordUsage([event], options)).rejects.toThrow(RangeError);
    expect(await store.usageRows('2026-11-18T00', '2026-11-18T23')).toEqual([]);
    expect(await store.usageEvents({ sinceMs: 0, limit: 100 })).toEqual([]);
  });

  it('keeps an hour until its end plus the retention, then forgets it', async () => {
    const { store, advance } = await make();
    const hour = '2026-11-18T12';
    // 100 ms before the hour ends, kept 300 ms after: gone 400 ms after it is written.
    await store.recordUsage([makeEvent({ ts: H + HOUR - 100, costMicros: 7 })], { retentionMs: 300, maxEvents: 100 });
    // Another hour, kept for long.
    await store.recordUsage([makeEvent({ ts: H - 100, costMicros: 8 })], KEEP);
    expect(await store.usageRows(hour, hour)).toEqual([row(hour, 'key_a', 'gpt-4o-mini', { requests: 1, cacheMisses: 1, cacheLookups: 1, costMicros: 7 })]);
    await advance(450);
    await vi.waitFor(async () => expect(await store.usageRows(hour, hour)).toEqual([]), { timeout: 3000, interval: 25 });
    expect(await store.usageRows('2026-11-18T11', '2026-11-18T11')).toHaveLength(1);
    // The events themselves are not expired by the hour's retention.
    expect(await store.usageEvents({ sinceMs: 0, limit: 10 })).toHaveLength(2);
  });

  it('lists events in arrival order, pages through them with `after`, and returns copies of exactly the event', async () => {
    const { store } = await make();
    const recorded: UsageEvent[] = [];
    for (let i = 0; i < 25; i++) {
      const event = makeEvent({ requestId: `r${i}`, ts: H + i, totalTokens: i });
      recorded.push(event);
      await store.recordUsage([i === 3 ? ({ ...event, extra: 'dropped' } as UsageEvent) : event], KEEP);
    }
    const pages: { id: string; event: UsageEvent }[][] = [];
    let after: string | undefined;
    for (;;) {
      const page = await store.usageEvents({ sinceMs: 0, after, limit: 10 });
      pages.push(page);
      if (page.length === 0) break;
      after = page.at(-1)!.id;
    }
    expect(pages.map((p) => p.length)).toEqual([10, 10, 5, 0]);
    const all = pages.flat();
    for (const { event } of all) expect(Object.keys(event).sort()).toEqual(Object.keys(makeEvent()).sort());
    expect(all.map((e) => e.event)).toEqual(recorded);
    // Ids increase (as `<ms>-<seq>`), so `after` can seek by them.
    const ids = all.map((e) => e.id.split('-').map(Number) as [number, number]);
    for (const [i, [ms, seq]] of ids.entries()) {
      expect(all[i]!.id).toMatch(/^\d+-\d+$/);
      if (i > 0) expect(ms > ids[i - 1]![0] || (ms === ids[i - 1]![0] && seq > ids[i - 1]![1])).toBe(true);
    }
    // `after` wins over sinceMs; the newest event has nothing after it.
    expect(await store.usageEvents({ sinceMs: Number.MAX_SAFE_INTEGER, after: all[20]!.id, limit: 100 })).toEqual(all.slice(21));
    expect(await store.usageEvents({ sinceMs: 0, after: all[24]!.id, limit: 100 })).toEqual([]);

    const copy = (await store.usageEvents({ sinceMs: 0, limit: 1 }))[0]!;
    copy.event.totalTokens = 999;
    expect((await store.usageEvents({ sinceMs: 0, limit: 1 }))[0]!.event.totalTokens).toBe(0);
  });

  it('lists newest first with order desc, pages back with `after`, and stops at sinceMs', async () => {
    const { store, now, advance } = await make();
    await store.recordUsage([makeEvent({ requestId: 'before-since' })], KEEP);
    await advance(30);
    const since = now();
    for (let i = 0; i < 25; i++) await store.recordUsage([makeEvent({ requestId: `r${i}`, ts: H + i, totalTokens: i })], KEEP);
    const asc = await store.usageEvents({ sinceMs: since, limit: 100 });
    expect(asc.map((e) => e.event.requestId)).toEqual(Array.from({ length: 25 }, (_, i) => `r${i}`));

    // The newest few alone: what a "latest requests" view asks for.
    expect(await store.usageEvents({ sinceMs: since, limit: 3, order: 'desc' })).toEqual(asc.slice(-3).reverse());
    // Paging: each page's last id is the next page's `after`; sinceMs bounds every page.
    const pages: { id: string; event: UsageEvent }[][] = [];
    let after: string | undefined;
    for (;;) {
      const page = await store.usageEvents({ sinceMs: since, after, limit: 10, order: 'desc' });
      pages.push(page);
      if (page.length === 0) break;
      after = page.at(-1)!.id;
    }
    expect(pages.map((p) => p.length)).toEqual([10, 10, 5, 0]);
    expect(pages.flat()).toEqual([...asc].reverse());
    // `after` in this order means older than it; the oldest has nothing after it.
    expect(await store.usageEvents({ sinceMs: since, after: asc[4]!.id, limit: 100, order: 'desc' })).toEqual(asc.slice(0, 4).reverse());
    expect(await store.usageEvents({ sinceMs: since, after: asc[0]!.id, limit: 100, order: 'desc' })).toEqual([]);
    // Without the bound, the event before it follows; past the newest, nothing.
    expect((await store.usageEvents({ sinceMs: 0, after: asc[0]!.id, limit: 100, order: 'desc' })).map((e) => e.event.requestId)).toEqual(['before-since']);
    expect(await store.usageEvents({ sinceMs: since + DAY, limit: 10, order: 'desc' })).toEqual([]);
    // 'asc' is the default, said or not.
    expect(await store.usageEvents({ sinceMs: since, limit: 5, order: 'asc' })).toEqual(asc.slice(0, 5));
  });

  it('filters by arrival time with sinceMs (the store’s clock, not event.ts)', async () => {
    const { store, now, advance } = await make();
    // event.ts far in the past and in the future: it does not matter.
    await store.recordUsage([makeEvent({ requestId: 'early', ts: H + 10 * DAY })], KEEP);
    await advance(30);
    const since = now();
    await store.recordUsage([makeEvent({ requestId: 'late', ts: H - 10 * DAY })], KEEP);
    expect((await store.usageEvents({ sinceMs: since, limit: 10 })).map((e) => e.event.requestId)).toEqual(['late']);
    expect((await store.usageEvents({ sinceMs: 0, limit: 10 })).map((e) => e.event.requestId)).toEqual(['early', 'late']);
    expect(await store.usageEvents({ sinceMs: since + DAY, limit: 10 })).toEqual([]);
    const [late] = await store.usageEvents({ sinceMs: since, limit: 10 });
    expect(Number(late!.id.split('-')[0])).toBeGreaterThanOrEqual(since);
  });

  it('refuses malformed event queries', async () => {
    const { store } = await make();
    for (const query of [
      { sinceMs: -1, limit: 10 },
      { sinceMs: 1.5, limit: 10 },
      { sinceMs: 0, limit: 0 },
      { sinceMs: 0, limit: 2.5 },
      { sinceMs: 0, after: 'abc', limit: 10 },
      { sinceMs: 0, after: '(1-0', limit: 10 },
      { sinceMs: 0, after: '-', limit: 10 },
      { sinceMs: 0, limit: 10, order: 'newest' as 'desc' },
      { sinceMs: 0, limit: 10, order: 'DESC' as 'desc' },
    ]) {
      await expect(store.usageEvents(query)).rejects.toThrow(RangeError);
    }
  });

  it('keeps about the newest maxEvents events, and counts every one in the aggregates', async () => {
    const { store } = await make();
    const maxEvents = 100;
    for (let i = 0; i < 3 * maxEvents; i++) await store.recordUsage([makeEvent({ requestId: `r${i}` })], { ...KEEP, maxEvents });
    const kept = (await store.usageEvents({ sinceMs: 0, limit: 10_000 })).map((e) => e.event.requestId);
    // Redis's `MAXLEN ~` trims whole stream nodes (100 entries by default): never below the cap,
    // at most one node's worth above it.
    expect(kept.length).toBeGreaterThanOrEqual(maxEvents);
    expect(kept.length).toBeLessThan(2 * maxEvents);
    expect(kept).toEqual(Array.from({ length: kept.length }, (_, i) => `r${3 * maxEvents - kept.length + i}`));
    expect(await store.usageRows('2026-11-18T12', '2026-11-18T12')).toEqual([
      row('2026-11-18T12', 'key_a', 'gpt-4o-mini', { requests: 3 * maxEvents, cacheMisses: 3 * maxEvents, cacheLookups: 3 * maxEvents }),
    ]);
  });

  it('marks a name once per ttl', async () => {
    const { store, advance } = await make();
    expect(await store.markOnce('budget:key_a:80%:2026-11', 200)).toBe(true);
    expect(await store.markOnce('budget:key_a:80%:2026-11', 200)).toBe(false);
    expect(await store.markOnce('budget:key_a:90%:2026-11', 200)).toBe(true);
    await advance(250);
    await vi.waitFor(async () => expect(await store.markOnce('budget:key_a:80%:2026-11', 60_000)).toBe(true), {
      timeout: 3000,
      interval: 25,
    });
    expect(await store.markOnce('budget:key_a:80%:2026-11', 60_000)).toBe(false);
    await expect(store.markOnce('x', 0)).rejects.toThrow(RangeError);
    await expect(store.markOnce('x', 1.5)).rejects.toThrow(RangeError);
    await expect(store.markOnce('', 1000)).rejects.toThrow(RangeError);
  });
});

describe('Memory store usage only', () => {
  function clocked(start = H) {
    let t = start;
    const store = track(createMemoryStore({ clock: () => t }));
    return { store, set: (ms: number) => (t = ms), add: (ms: number) => (t += ms) };
  }

  it('expires an hour exactly at its end plus the retention, on the injected clock', async () => {
    const { store, set } = clocked(H + 30 * 60_000);
    const hour = '2026-11-18T12';
    // Written at 12:30 for an event that arrived at 12:59:59.900: lives 100 ms + retention from now.
    await store.recordUsage([makeEvent({ ts: H + HOUR - 100 })], { retentionMs: 1000, maxEvents: 10 });
    set(H + 30 * 60_000 + 1099);
    expect(await store.usageRows(hour, hour)).toHaveLength(1);
    set(H + 30 * 60_000 + 1100);
    expect(await store.usageRows(hour, hour)).toEqual([]);
  });

  it('keeps exactly maxEvents, and ids increase even when the clock goes back', async () => {
    const { store, add } = clocked();
    for (let i = 0; i < 2500; i++) {
      add(i % 7 === 0 ? -5 : 1);
      await store.recordUsage([makeEvent({ requestId: `r${i}` })], { ...KEEP, maxEvents: 1000 });
    }
    const kept = await store.usageEvents({ sinceMs: 0, limit: 5000 });
    expect(kept).toHaveLength(1000);
    expect(kept[0]!.event.requestId).toBe('r1500');
    expect(new Set(kept.map((e) => e.id)).size).toBe(1000);
    const page = await store.usageEvents({ sinceMs: 0, after: kept[499]!.id, limit: 1 });
    expect(page[0]!.event.requestId).toBe('r2000');
  });
});

describe('Redis store usage only', () => {
  let raw: Redis;
  beforeAll(() => {
    raw = new Redis(testRedisUrl(), { maxRetriesPerRequest: 1, commandTimeout: 2000 });
  });
  afterAll(async () => {
    await raw.quit();
  });

  function logger() {
    return { warn: vi.fn(), error: vi.fn() };
  }

  it('lays usage out in one hash per hour (escaped fields, only non-zero metrics), a stream and marks', async () => {
    const prefix = uniquePrefix();
    const store = await redisStore({ prefix });
    const keys = redisKeys(prefix);
    expect(keys.usageHour('2026-11-18T12')).toBe(`${prefix}usage:hour:{2026-11-18T12}`);
    expect(keys.usageSeen('2026-11-18T12')).toBe(`${prefix}usage:seen:{2026-11-18T12}`);
    expect(keys.usageEvents()).toBe(`${prefix}usage:events`);
    // Tagged with the stream's name: the stream's cluster slot, so list.lua marks and appends at once.
    expect(keys.usageListed('2026-11-18T12')).toBe(`${prefix}usage:listedcount:{${prefix}usage:events}:2026-11-18T12`);
    expect(keys.mark('m')).toBe(`${prefix}mark:m`);

    const hit = makeEvent({ ts: H + HOUR - 60_000, keyId: 'key|a', model: 'm%7C|x', cache: 'HIT', savedTokens: 15, savedMicros: 40 });
    await store.recordUsage([hit], { retentionMs: DAY, maxEvents: 50 });
    await store.recordUsage([makeEvent({ ts: H + 5, keyId: null, model: null, status: 401, cache: null })], { retentionMs: DAY, maxEvents: 50 });
    await store.markOnce('m', 60_000);

    const hourKey = keys.usageHour('2026-11-18T12');
    expect(await raw.hgetall(hourKey)).toEqual({
      'key%7Ca|m%257C%7Cx|requests': '1',
      'key%7Ca|m%257C%7Cx|cacheHits': '1',
      'key%7Ca|m%257C%7Cx|cacheLookups': '1',
      'key%7Ca|m%257C%7Cx|savedTokens': '15',
      'key%7Ca|m%257C%7Cx|savedMicros': '40',
      '||requests': '1',
      '||errors': '1',
    });
    // The last write set it: 1 h - 5 ms to the end of the hour, plus a day.
    const pttl = await raw.pttl(hourKey);
    expect(pttl).toBeGreaterThan(DAY + HOUR - 5 - 2000);
    expect(pttl).toBeLessThanOrEqual(DAY + HOUR - 5);
    const entries = await raw.xrange(keys.usageEvents(), '-', '+');
    expect(entries).toHaveLength(2);
    // One field, `e`: the event's JSON.
    expect(entries[0]![1]).toHaveLength(2);
    expect(entries[0]![1][0]).toBe('e');
    expect(JSON.parse(entries[0]![1][1]!)).toEqual(hit);
    expect(await raw.pttl(keys.mark('m'))).toBeGreaterThan(59_000);
    // The hour's set of counted event ids lives as long as a replay could come (the hour, then 6 h).
    const seenKey = keys.usageSeen('2026-11-18T12');
    expect(await raw.scard(seenKey)).toBe(2);
    // And its hash of batch id -> events listed, as long.
    const listedKey = keys.usageListed('2026-11-18T12');
    expect(Object.values(await raw.hgetall(listedKey))).toEqual(['1', '1']);
    expect(Math.abs((await raw.pttl(listedKey)) - (await raw.pttl(seenKey)))).toBeLessThan(2000);
    expect((await raw.keys(`${prefix}*`)).sort()).toEqual([hourKey, seenKey, listedKey, keys.mark('m'), keys.usageEvents()].sort());
  });

  it('lists a large batch in chunks of LIST_CHUNK_EVENTS, and a replay lists only what an earlier try did not', async () => {
    const prefix = uniquePrefix();
    const store = await redisStore({ prefix });
    const keys = redisKeys(prefix);
    // 150 events over two hours, interleaved: three chunks, each holding events of both hours.
    const batch = Array.from({ length: 150 }, (_, i) => makeEvent({ ts: H + (i % 2) * HOUR + i, requestId: `big-${i}` }));
    const scriptCalls = async () => {
      const stats = await raw.info('commandstats');
      return [...stats.matchAll(/^cmdstat_(?:evalsha|eval):calls=(\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
    };
    const before = await scriptCalls();
    await store.recordUsage(batch, KEEP);
    // Two record.lua calls (one per hour), then one list.lua per chunk (the run may add other calls).
    expect((await scriptCalls()) - before).toBeGreaterThanOrEqual(2 + Math.ceil(150 / LIST_CHUNK_EVENTS));
    const listed = async () => (await raw.xrange(keys.usageEvents(), '-', '+')).map((e) => (JSON.parse(e[1][1]!) as UsageEvent).requestId);
    expect(await listed()).toEqual(batch.map((e) => e.requestId));

    // As if a first try had listed only its first chunk: wind the marks back to that, drop the
    // rest from the stream, and replay. The count does not move; the listing resumes where it was.
    const first = batch.slice(0, LIST_CHUNK_EVENTS);
    const entries = await raw.xrange(keys.usageEvents(), '-', '+');
    for (const [id] of entries.slice(LIST_CHUNK_EVENTS)) await raw.xdel(keys.usageEvents(), id);
    for (const hour of ['2026-11-18T12', '2026-11-18T13']) {
      const listedKey = keys.usageListed(hour);
      const [batchId] = Object.keys(await raw.hgetall(listedKey));
      await raw.hset(listedKey, batchId!, first.filter((e) => hourId(e.ts) === hour).length);
    }
    const counted = await store.usageRows('2026-11-18T12', '2026-11-18T13');
    await store.recordUsage(batch, KEEP);
    expect(await listed()).toEqual(batch.map((e) => e.requestId));
    expect(await store.usageRows('2026-11-18T12', '2026-11-18T13')).toEqual(counted);
    // And once all is listed, a replay lists nothing more.
    await store.recordUsage(batch, KEEP);
    expect(await listed()).toHaveLength(150);
  });

  it('skips corrupt stream entries, fills the page from beyond them, and logs without their content', async () => {
    const prefix = uniquePrefix();
    const log = logger();
    const store = await redisStore({ prefix, logger: log });
    const stream = redisKeys(prefix).usageEvents();
    await store.recordUsage([makeEvent({ requestId: 'a' })], KEEP);
    await raw.xadd(stream, '*', 'e', '{not json secret-model');
    await raw.xadd(stream, '*', 'e', JSON.stringify({ ...makeEvent(), promptTokens: 'many', model: 'secret-model' }));
    await raw.xadd(stream, '*', 'other', JSON.stringify(makeEvent()));
    await store.recordUsage([makeEvent({ requestId: 'b' })], KEEP);
    await store.recordUsage([makeEvent({ requestId: 'c' })], KEEP);

    const page = await store.usageEvents({ sinceMs: 0, limit: 2 });
    expect(page.map((e) => e.event.requestId)).toEqual(['a', 'b']);
    const rest = await store.usageEvents({ sinceMs: 0, after: page[1]!.id, limit: 2 });
    expect(rest.map((e) => e.event.requestId)).toEqual(['c']);
    expect(log.warn).toHaveBeenCalledTimes(1);
    expect(JSON.stringify(log.warn.mock.calls)).not.toContain('secret-model');
  });

  it('skips malformed aggregate fields', async () => {
    const prefix = uniquePrefix();
    const log = logger();
    const store = await redisStore({ prefix, logger: log });
    await store.recordUsage([makeEvent({ costMicros: 3 })], KEEP);
    const hourKey = redisKeys(prefix).usageHour('2026-11-18T12');
    // A later version's metric (well formed, unknown here) is skipped too, but is not corruption.
    await raw.hset(hourKey, 'key_a|gpt-4o-mini|aLaterMetric', '5');
    expect(await store.usageRows('2026-11-18T12', '2026-11-18T12')).toEqual([
      row('2026-11-18T12', 'key_a', 'gpt-4o-mini', { requests: 1, cacheMisses: 1, cacheLookups: 1, costMicros: 3 }),
    ]);
    expect(log.warn).not.toHaveBeenCalled();
    await raw.hset(hourKey, 'garbage', '1', 'key_a|gpt-4o-mini|bad metric!', '5', 'key_a|gpt-4o-mini|errors', 'x', 'a|b|c|requests', '1');
    expect(await store.usageRows('2026-11-18T12', '2026-11-18T12')).toEqual([
      row('2026-11-18T12', 'key_a', 'gpt-4o-mini', { requests: 1, cacheMisses: 1, cacheLookups: 1, costMicros: 3 }),
    ]);
    expect(log.warn).toHaveBeenCalledTimes(1);
  });
});
