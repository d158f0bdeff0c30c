// The cache half of the Store contract (entries, single-flight locks, waits, purge), run against the
// memory and Redis stores with the same expectations; then what only the Redis store promises.
import { createHash, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { newKeyId } from '../../src/keys.js';
import { createMemoryStore } from '../../src/store/memory-store.js';
import { redisKeys } from '../../src/store/redis-keys.js';
import { createRedisStore } from '../../src/store/redis-store.js';
import type { CacheEntry, Store } from '../../src/store/store.js';
import { freePort } from '../helpers/redis-server.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';
import { clusterStore, redisStore, track } from '../helpers/stores.js';


/** A name as the cache module builds it: `<scope>:<sha256 hex>`. */
function cacheName(scope: string = newKeyId()): string {
  return `${scope}:${createHash('sha256').update(randomBytes(16)).digest('hex')}`;
}

function makeEntry(overrides: Partial<CacheEntry> = {}): CacheEntry {
  return {
    storedAt: Date.now(),
    body: JSON.stringify({ id: 'chatcmpl-1', object: 'chat.completion', choices: [{ message: { content: 'hi' } }] }),
    model: 'gpt-4o-mini-2024-07-18',
    promptTokens: 12,
    cachedPromptTokens: 0,
    completionTokens: 3,
    ...overrides,
  };
}

/** How long a promise takes to settle, and its value. */
async function timed<T>(promise: Promise<T>): Promise<{ value: T; ms: number }> {
  const start = Date.now();
  const value = await promise;
  return { value, ms: Date.now() - start };
}

describe.each([
  {
    kind: 'memory',
    // One process, one store: "another instance" is the same store.
    pair: async (): Promise<[Store, Store]> => {
      const store = track(createMemoryStore());
      return [store, store];
    },
  },
  {
    kind: 'redis',
    pair: async (): Promise<[Store, Store]> => {
      const prefix = uniquePrefix();
      return [await redisStore({ prefix }), await redisStore({ prefix })];
    },
  },
  {
    kind: 'cluster',
    pair: async (): Promise<[Store, Store]> => {
      const prefix = uniquePrefix();
      return [await clusterStore({ prefix }), await clusterStore({ prefix })];
    },
  },
])('Store cache contract: $kind', ({ pair }) => {
  const one = async () => (await pair())[0];

  it('stores, reads back and overwrites entries; unknown names miss', async () => {
    const store = await one();
    const name = cacheName();
    expect(await store.cacheGet(name)).toBeNull();
    const entry = makeEntry();
    await store.cacheFill(name, { entry, ttlMs: 60_000, token: null });
    expect(await store.cacheGet(name)).toEqual(entry);
    const newer = makeEntry({ body: '{"second":true}', storedAt: entry.storedAt + 1 });
    await store.cacheFill(name, { entry: newer, ttlMs: 60_000, token: null });
    expect(await store.cacheGet(name)).toEqual(newer);
    expect(await store.cacheGet(cacheName())).toBeNull();
  });

  it('shares entries between instances', async () => {
    const [a, b] = await pair();
    const name = cacheName('global');
    await a.cacheFill(name, { entry: makeEntry(), ttlMs: 60_000, token: null });
    expect(await b.cacheGet(name)).toEqual(await a.cacheGet(name));
  });

  it('expires entries after their ttl', async () => {
    const store = await one();
    const name = cacheName();
    await store.cacheFill(name, { entry: makeEntry(), ttlMs: 100, token: null });
    expect(await store.cacheGet(name)).not.toBeNull();
    await vi.waitFor(async () => expect(await store.cacheGet(name)).toBeNull(), { timeout: 2000, interval: 20 });
  });

  it('hands out copies: mutating what goes in or comes out changes nothing stored', async () => {
    const store = await one();
    const name = cacheName();
    const entry = makeEntry();
    const original = structuredClone(entry);
    await store.cacheFill(name, { entry, ttlMs: 60_000, token: null });
    entry.body = 'mutated input';
    const out = await store.cacheGet(name);
    if (!out) throw new Error('expected an entry');
    out.body = 'mutated output';
    out.promptTokens = 999;
    expect(await store.cacheGet(name)).toEqual(original);
  });

  it('keeps only the fields of a CacheEntry', async () => {
    const store = await one();
    const name = cacheName();
    const entry = makeEntry();
    await store.cacheFill(name, { entry: { ...entry, extra: 'dropped' } as CacheEntry, ttlMs: 60_000, token: null });
    expect(await store.cacheGet(name)).toStrictEqual(entry);
  });

  it('refuses names it cannot place and ttls that are not positive integers; cacheWait still resolves', async () => {
    const store = await one();
    for (const bad of ['', 'nocolon', ':hash', 'key_a:', '{key}:hash', 'a}b:hash']) {
      await expect(store.cacheGet(bad)).rejects.toThrow(RangeError);
      await expect(store.cacheFill(bad, { entry: makeEntry(), ttlMs: 1000, token: null })).rejects.toThrow(RangeError);
      await expect(store.cacheAcquire(bad, 1000)).rejects.toThrow(RangeError);
      await expect(store.cacheWait(bad, 1000)).resolves.toBe('failed');
    }
    for (const ttl of [0, -1, 1.5, Number.NaN, Infinity]) {
      await expect(store.cacheFill(cacheName(), { entry: makeEntry(), ttlMs: ttl, token: null })).rejects.toThrow(RangeError);
      await expect(store.cacheAcquire(cacheName(), ttl)).rejects.toThrow(RangeError);
    }
  });

  it('lookup: the entry without taking the lock, else leadership for exactly one caller', async () => {
    const [a, b] = await pair();
    const name = cacheName();
    const found = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).cacheLookup(name, 10_000)));
    expect(found.every((f) => f.entry === null)).toBe(true);
    const leaders = found.filter((f) => f.leader !== null);
    expect(leaders).toHaveLength(1);
    expect(await a.cacheAcquire(name, 10_000)).toBeNull(); // the lookup's lock holds
    const entry = makeEntry();
    await b.cacheFill(name, { entry, ttlMs: 60_000, token: leaders[0]!.leader });
    expect(await a.cacheLookup(name, 10_000)).toEqual({ entry, leader: null });
    // Finding the entry took no lock: the name can still be led (a refresh past a max-age).
    expect(await b.cacheAcquire(name, 10_000)).not.toBeNull();
    await expect(a.cacheLookup(name, 0)).rejects.toThrow(RangeError);
    await expect(a.cacheFill(name, { entry, token: null })).rejects.toThrow(RangeError); // an entry needs a ttl
  });

  it('admitAndLookup: a hit admitted count-only, a miss admitted in full with the lead, nothing while another leads', async () => {
    const [a, b] = await pair();
    const keyId = newKeyId();
    const now = Date.now();
    const day = new Date(now).toISOString().slice(0, 10);
    const periods = { day, month: day.slice(0, 7), dayTtlMs: 86_400_000, monthTtlMs: 40 * 86_400_000 };
    const limits = { rpm: 3, tpm: 0, tokensPerDay: 0, tokensPerMonth: 0, usdMicrosPerDay: 0, usdMicrosPerMonth: 0, maxConcurrent: 0 };
    const request = (reservationId = randomBytes(8).toString('hex')) => ({ keyId, reservationId, limits, tokens: 40, usdMicros: 900, now, periods, leaseTtlMs: 60_000 });
    const usage = () => a.quotaUsage(keyId, periods, now);
    const name = cacheName(keyId);

    // A miss: admitted in full and leading the name; the lookup's lock holds for everyone else.
    const miss = await a.admitAndLookup(request(), { name, leadTtlMs: 10_000 });
    expect(miss).toMatchObject({ lookup: 'miss', admission: { admitted: true } });
    const leader = miss.lookup === 'miss' ? miss.leader : null;
    expect(leader).not.toBeNull();
    expect(await b.cacheAcquire(name, 10_000)).toBeNull();
    expect(await usage()).toMatchObject({ minute: { requests: 1, tokens: 40 }, inFlight: 1, day: { tokens: { reserved: 40 } } });

    // While it leads, an identical request is neither admitted nor counted: it waits.
    expect(await b.admitAndLookup(request(), { name, leadTtlMs: 10_000 })).toEqual({ lookup: 'wait' });
    expect(await usage()).toMatchObject({ minute: { requests: 1 }, inFlight: 1 });

    // Filled: a hit, counted against rpm but reserving nothing.
    const entry = makeEntry();
    await a.cacheFill(name, { entry, ttlMs: 60_000, token: leader });
    expect(await b.admitAndLookup(request(), { name, leadTtlMs: 10_000 })).toEqual({
      lookup: 'hit',
      entry,
      admission: { admitted: true, requests: { limit: 3, remaining: 1, resetMs: expect.any(Number) } },
    });
    expect(await usage()).toMatchObject({ minute: { requests: 2, tokens: 40 }, inFlight: 1, day: { tokens: { reserved: 40 } } });

    // Refused: a miss takes no lead, so an admitted request can still lead the name.
    const other = cacheName(keyId);
    await a.admitAndLookup(request(), { name: cacheName(keyId), leadTtlMs: 10_000 });
    const refused = await a.admitAndLookup(request(), { name: other, leadTtlMs: 10_000 });
    expect(refused).toMatchObject({ lookup: 'miss', leader: null, admission: { admitted: false, limit: 'rpm' } });
    expect(await b.cacheAcquire(other, 10_000)).not.toBeNull();
    // A hit is refused by a spent rpm too (the entry comes back with the refusal).
    expect(await b.admitAndLookup(request(), { name, leadTtlMs: 10_000 })).toMatchObject({ lookup: 'hit', admission: { admitted: false, limit: 'rpm' } });

    // Only a name in the request key's own scope, and the arguments of admit and cacheLookup.
    await expect(a.admitAndLookup(request(), { name: cacheName(), leadTtlMs: 10_000 })).rejects.toThrow(RangeError);
    await expect(a.admitAndLookup(request(), { name: cacheName('global'), leadTtlMs: 10_000 })).rejects.toThrow(RangeError);
    await expect(a.admitAndLookup(request(), { name: cacheName(keyId), leadTtlMs: 0 })).rejects.toThrow(RangeError);
    await expect(a.admitAndLookup({ ...request(), tokens: -1 }, { name: cacheName(keyId), leadTtlMs: 10_000 })).rejects.toThrow(RangeError);
  });

  it('admitAndLookup: a hit passes a spent budget alike at its limit and past it (it adds nothing to it); a miss does not', async () => {
    const [a] = await pair();
    const now = Date.now();
    const day = new Date(now).toISOString().slice(0, 10);
    const periods = { day, month: day.slice(0, 7), dayTtlMs: 86_400_000, monthTtlMs: 40 * 86_400_000 };
    const limits = { rpm: 0, tpm: 0, tokensPerDay: 50, tokensPerMonth: 0, usdMicrosPerDay: 0, usdMicrosPerMonth: 0, maxConcurrent: 0 };
    for (const used of [50, 60]) {
      const keyId = newKeyId();
      const request = () => ({ keyId, reservationId: randomBytes(8).toString('hex'), limits, tokens: 40, usdMicros: 0, now, periods, leaseTtlMs: 60_000 });
      const name = cacheName(keyId);
      await a.cacheFill(name, { entry: makeEntry(), ttlMs: 60_000, token: null });
      // The day's budget spent: exactly, then past it (settled usage can overshoot its reservation).
      const spent = request();
      expect((await a.admit(spent)).admitted).toBe(true);
      await a.settle({ keyId, reservationId: spent.reservationId, tokens: used, usdMicros: 0, now, fallbackPeriods: periods });
      const miss = await a.admitAndLookup(request(), { name: cacheName(keyId), leadTtlMs: 10_000 });
      expect(miss, `miss, ${used} used`).toMatchObject({ lookup: 'miss', leader: null, admission: { admitted: false, limit: 'tokensPerDay' } });
      const hit = await a.admitAndLookup(request(), { name, leadTtlMs: 10_000 });
      expect(hit, `hit, ${used} used`).toMatchObject({ lookup: 'hit', admission: { admitted: true } });
    }
  });

  it('leads with the caller’s token when given one, so a caller that never heard the answer can release the lead', async () => {
    const [a, b] = await pair();
    const keyId = newKeyId();
    const now = Date.now();
    const day = new Date(now).toISOString().slice(0, 10);
    const periods = { day, month: day.slice(0, 7), dayTtlMs: 86_400_000, monthTtlMs: 40 * 86_400_000 };
    const limits = { rpm: 0, tpm: 0, tokensPerDay: 0, tokensPerMonth: 0, usdMicrosPerDay: 0, usdMicrosPerMonth: 0, maxConcurrent: 0 };
    const request = { keyId, reservationId: randomBytes(8).toString('hex'), limits, tokens: 40, usdMicros: 900, now, periods, leaseTtlMs: 60_000 };
    const leads = [
      { name: cacheName(keyId), take: (name: string, token: string) => a.admitAndLookup(request, { name, leadTtlMs: 10_000, token }) },
      { name: cacheName(), take: (name: string, token: string) => a.cacheLookup(name, 10_000, token) },
      { name: cacheName(), take: (name: string, token: string) => a.cacheAcquire(name, 10_000, token) },
    ];
    for (const [i, { name, take }] of leads.entries()) {
      const token = `caller-token-${i}`;
      expect(JSON.stringify(await take(name, token))).toContain(token);
      expect(await b.cacheAcquire(name, 10_000)).toBeNull();
      await b.cacheFill(name, { token: 'another-token' }); // not ours: still held
      expect(await b.cacheAcquire(name, 10_000)).toBeNull();
      await b.cacheFill(name, { token });
      expect(await b.cacheAcquire(name, 10_000)).not.toBeNull();
    }
    await expect(a.cacheAcquire(cacheName(), 10_000, '')).rejects.toThrow(RangeError);
    await expect(a.cacheLookup(cacheName(), 10_000, '')).rejects.toThrow(RangeError);
    await expect(a.admitAndLookup({ ...request, reservationId: 'r2' }, { name: cacheName(keyId), leadTtlMs: 10_000, token: '' })).rejects.toThrow(RangeError);
  });

  it('acquire is exclusive across instances until released', async () => {
    const [a, b] = await pair();
    const name = cacheName();
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).cacheAcquire(name, 10_000)));
    const winners = results.filter((token) => token !== null);
    expect(winners).toHaveLength(1);
    expect(await a.cacheAcquire(name, 10_000)).toBeNull();
    const winner = results.findIndex((token) => token !== null);
    // A release with another token does not end the leadership.
    await (winner % 2 ? a : b).cacheFill(name, { token: 'not-the-token' });
    expect(await a.cacheAcquire(name, 10_000)).toBeNull();
    await (winner % 2 ? a : b).cacheFill(name, { token: winners[0]! });
    expect(await b.cacheAcquire(name, 10_000)).not.toBeNull();
    // Locks of other names are independent.
    expect(await a.cacheAcquire(cacheName(), 10_000)).not.toBeNull();
  });

  it('leadership lapses after its ttl', async () => {
    const [a, b] = await pair();
    const name = cacheName();
    const token = await a.cacheAcquire(name, 150);
    expect(token).not.toBeNull();
    expect(await b.cacheAcquire(name, 150)).toBeNull();
    await vi.waitFor(async () => expect(await b.cacheAcquire(name, 10_000)).not.toBeNull(), { timeout: 2000, interval: 20 });
  });

  it('a leader whose lock lapsed and was taken over does not end the new leadership', async () => {
    const [a, b] = await pair();
    const name = cacheName();
    const slow = await a.cacheAcquire(name, 100);
    expect(slow).not.toBeNull();
    let taken: string | null = null;
    await vi.waitFor(async () => expect((taken = await b.cacheAcquire(name, 10_000))).not.toBeNull(), { timeout: 2000, interval: 20 });
    await a.cacheFill(name, { token: slow! });
    expect(await a.cacheAcquire(name, 10_000)).toBeNull(); // b still leads
    await b.cacheFill(name, { token: taken! });
    expect(await a.cacheAcquire(name, 10_000)).not.toBeNull();
  });

  it('a release that filled wakes every waiter, on every instance, with filled', async () => {
    const [leader, follower] = await pair();
    const name = cacheName();
    const token = await leader.cacheAcquire(name, 10_000);
    expect(token).not.toBeNull();
    const waits = [
      ...Array.from({ length: 10 }, () => follower.cacheWait(name, 5000)),
      ...Array.from({ length: 3 }, () => leader.cacheWait(name, 5000)),
    ];
    await sleep(50);
    const entry = makeEntry();
    await leader.cacheFill(name, { entry, ttlMs: 60_000, token: token! });
    const { value, ms } = await timed(Promise.all(waits));
    expect(value).toEqual(Array(13).fill('filled'));
    expect(ms).toBeLessThan(1000);
    expect(await follower.cacheGet(name)).toEqual(entry);
  });

  it('a release that did not fill wakes waiters with failed', async () => {
    const [leader, follower] = await pair();
    const name = cacheName();
    const token = await leader.cacheAcquire(name, 10_000);
    expect(token).not.toBeNull();
    const waits = Array.from({ length: 5 }, () => follower.cacheWait(name, 5000));
    await sleep(50);
    await leader.cacheFill(name, { token: token! });
    const { value, ms } = await timed(Promise.all(waits));
    expect(value).toEqual(Array(5).fill('failed'));
    expect(ms).toBeLessThan(1000);
  });

  it('waiters time out while the leader is still at work', async () => {
    const [leader, follower] = await pair();
    const name = cacheName();
    const token = await leader.cacheAcquire(name, 10_000);
    expect(token).not.toBeNull();
    const { value, ms } = await timed(Promise.all([follower.cacheWait(name, 150), follower.cacheWait(name, 400)]));
    expect(value).toEqual(['timeout', 'timeout']);
    expect(ms).toBeGreaterThanOrEqual(390);
    expect(ms).toBeLessThan(1500);
  });

  it('a lock that lapses without a release wakes waiters with failed within a second', async () => {
    const [leader, follower] = await pair();
    const name = cacheName();
    const token = await leader.cacheAcquire(name, 200);
    expect(token).not.toBeNull();
    const { value, ms } = await timed(Promise.all([follower.cacheWait(name, 5000), follower.cacheWait(name, 5000)]));
    expect(value).toEqual(['failed', 'failed']);
    expect(ms).toBeGreaterThanOrEqual(150);
    expect(ms).toBeLessThan(1000);
  });

  it('a stored entry wakes waiters with filled even if its release never comes', async () => {
    const [leader, follower] = await pair();
    const name = cacheName();
    const token = await leader.cacheAcquire(name, 10_000);
    expect(token).not.toBeNull();
    const wait = follower.cacheWait(name, 5000);
    await sleep(50);
    await leader.cacheFill(name, { entry: makeEntry(), ttlMs: 60_000, token: null });
    const { value, ms } = await timed(wait);
    expect(value).toBe('filled');
    expect(ms).toBeLessThan(1000);
  });

  it('an entry there before the wait ends none while a leader holds the lock (it may be refreshing it); its fill does', async () => {
    const [leader, follower] = await pair();
    const name = cacheName();
    await leader.cacheFill(name, { entry: makeEntry(), ttlMs: 60_000, token: null }); // the old entry
    const token = await leader.cacheAcquire(name, 10_000); // a refresh, for a request whose max-age it is past
    expect(token).not.toBeNull();
    let ended = false;
    const wait = timed(follower.cacheWait(name, 5000)).finally(() => (ended = true));
    await sleep(600); // past two polls: was 'filled' at once, the old entry
    expect(ended).toBe(false);
    await leader.cacheFill(name, { entry: makeEntry(), ttlMs: 60_000, token: token! });
    expect((await wait).value).toBe('filled');
  });

  it('a wait on a name nobody leads resolves at once: filled if there is an entry, else failed', async () => {
    const store = await one();
    const empty = cacheName();
    const full = cacheName();
    await store.cacheFill(full, { entry: makeEntry(), ttlMs: 60_000, token: null });
    const failed = await timed(store.cacheWait(empty, 5000));
    const filled = await timed(store.cacheWait(full, 5000));
    expect([failed.value, filled.value]).toEqual(['failed', 'filled']);
    expect(Math.max(failed.ms, filled.ms)).toBeLessThan(500); // no poll interval, let alone a timeout
  });

  it('waits that end leave no timers behind', async () => {
    const [leader, follower] = await pair();
    const names = [cacheName(), cacheName(), cacheName()];
    const tokens: string[] = [];
    for (const name of names) tokens.push((await leader.cacheAcquire(name, 10_000))!);
    expect(tokens.every((t) => t !== null)).toBe(true);
    await sleep(20);
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const before = timers();
    const waits = [
      ...names.flatMap((name) => Array.from({ length: 20 }, () => follower.cacheWait(name, 3000))),
      follower.cacheWait(names[0]!, 20), // times out while the others of its name wait on
    ];
    expect(timers()).toBeGreaterThan(before);
    await sleep(50);
    await leader.cacheFill(names[0]!, { token: tokens[0]! });
    await leader.cacheFill(names[1]!, { entry: makeEntry(), ttlMs: 60_000, token: tokens[1]! });
    await leader.cacheFill(names[2]!, { token: tokens[2]! });
    const outcomes = await Promise.all(waits);
    expect(outcomes.filter((o) => o === 'filled')).toHaveLength(20);
    expect(outcomes.filter((o) => o === 'failed')).toHaveLength(40);
    expect(outcomes.at(-1)).toBe('timeout');
    await vi.waitFor(() => expect(timers()).toBeLessThanOrEqual(before), { timeout: 1000, interval: 10 });
  });

  it('closing resolves pending waits with failed, and later ones at once', async () => {
    const [leader, follower] = await pair();
    const name = cacheName();
    const token = await leader.cacheAcquire(name, 10_000);
    expect(token).not.toBeNull();
    const wait = follower.cacheWait(name, 10_000);
    await sleep(20);
    await follower.close();
    const { value, ms } = await timed(wait);
    expect(value).toBe('failed');
    expect(ms).toBeLessThan(500);
    expect(await follower.cacheWait(cacheName(), 10_000)).toBe('failed');
  });

  it('purges everything, or one scope while the others survive', async () => {
    const [a, b] = await pair();
    const keyA = newKeyId();
    const keyB = newKeyId();
    const names = {
      a: [cacheName(keyA), cacheName(keyA), cacheName(keyA)],
      b: [cacheName(keyB), cacheName(keyB)],
      global: [cacheName('global'), cacheName('global')],
    };
    for (const name of Object.values(names).flat()) await a.cacheFill(name, { entry: makeEntry(), ttlMs: 60_000, token: null });
    const lock = cacheName(keyA);
    expect(await a.cacheAcquire(lock, 10_000)).not.toBeNull();

    expect(await b.cachePurge(`${keyA}:`)).toBe(3);
    for (const name of names.a) expect(await b.cacheGet(name)).toBeNull();
    for (const name of [...names.b, ...names.global]) expect(await b.cacheGet(name)).not.toBeNull();

    expect(await b.cachePurge('global:')).toBe(2);
    expect(await b.cacheGet(names.b[0]!)).not.toBeNull();
    await a.cacheFill(names.global[0]!, { entry: makeEntry(), ttlMs: 60_000, token: null });

    expect(await b.cachePurge()).toBe(3);
    for (const name of Object.values(names).flat()) expect(await a.cacheGet(name)).toBeNull();
    expect(await b.cachePurge()).toBe(0);
    // Purge deletes responses, not leadership.
    expect(await b.cacheAcquire(lock, 10_000)).toBeNull();
  });

  it('purges by literal name prefix: glob characters are not patterns, a bare prefix covers every scope it starts', async () => {
    const store = await one();
    const scope = `key_${randomBytes(6).toString('hex')}`;
    for (const name of [`${scope}:x*1`, `${scope}:xy`, `${scope}:x?[]\\`, `${scope}x:h`, 'global:x*1']) {
      await store.cacheFill(name, { entry: makeEntry(), ttlMs: 60_000, token: null });
    }
    expect(await store.cachePurge(`${scope}:x*`)).toBe(1);
    expect(await store.cacheGet(`${scope}:xy`)).not.toBeNull();
    expect(await store.cachePurge(`${scope}:x?[]\\`)).toBe(1);
    expect(await store.cachePurge(`${scope}:`)).toBe(1);
    expect(await store.cacheGet(`${scope}x:h`)).not.toBeNull();
    expect(await store.cachePurge(scope)).toBe(1); // `${scope}x:h`
    expect(await store.cachePurge('glo')).toBe(1);
  });

  it('purge does not count entries that already expired', async () => {
    const store = await one();
    const scope = newKeyId();
    await store.cacheFill(cacheName(scope), { entry: makeEntry(), ttlMs: 50, token: null });
    await store.cacheFill(cacheName(scope), { entry: makeEntry(), ttlMs: 60_000, token: null });
    await sleep(120);
    expect(await store.cachePurge(`${scope}:`)).toBe(1);
  });
});

describe('Redis store cache only', () => {
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

  /** The part of a key Redis Cluster hashes to pick its slot. */
  function hashTag(key: string): string {
    const open = key.indexOf('{');
    const close = key.indexOf('}', open + 1);
    if (open < 0 || close <= open + 1) return key;
    return key.slice(open + 1, close);
  }

  /** Resolves once the store's subscriber is live (it reports a wildcard key change on each subscription). */
  async function subscribed(store: Store) {
    let live = false;
    store.onKeyChange((c) => (live ||= c.id === '*'));
    await vi.waitFor(() => expect(live).toBe(true), { timeout: 2000, interval: 10 });
  }

  it('lays out per-key entries under the key’s tag and global entries under their own hash', () => {
    const keys = redisKeys('tg:');
    expect(keys.cacheEntry('key_abc:0f1e')).toBe('tg:cache:{key_abc}:0f1e');
    expect(keys.cacheLock('key_abc:0f1e')).toBe('tg:cachelock:{key_abc}:0f1e');
    expect(keys.cacheEntry('global:0f1e')).toBe('tg:cache:global:{0f1e}');
    expect(keys.cacheLock('global:0f1e')).toBe('tg:cachelock:global:{0f1e}');
    expect(keys.cacheFillsChannel()).toBe('tg:events:cache-fills');

    const perKey = [cacheName('key_abc'), cacheName('key_abc'), cacheName('key_abc')];
    expect(new Set(perKey.map((n) => hashTag(keys.cacheEntry(n))))).toEqual(new Set(['key_abc']));
    const global = [cacheName('global'), cacheName('global'), cacheName('global')];
    expect(new Set(global.map((n) => hashTag(keys.cacheEntry(n)))).size).toBe(3);
    for (const name of [...perKey, ...global, 'key_x:a}b', 'global:a}b', 'global:{x']) {
      expect(hashTag(keys.cacheLock(name))).toBe(hashTag(keys.cacheEntry(name)));
      expect(keys.cacheNameOf(keys.cacheEntry(name))).toBe(name);
    }
    expect(keys.cacheNameOf(keys.cacheLock(perKey[0]!))).toBeNull();
    expect(keys.cacheEntryPattern()).toBe('tg:cache:*');
    expect(keys.cacheEntryPattern('key_abc:')).toBe('tg:cache:{key_abc}:*');
    expect(keys.cacheEntryPattern('global:')).toBe('tg:cache:global:{*');
    expect(keys.cacheEntryPattern('key_a:x*')).toBe('tg:cache:{key_a}:x\\**');
  });

  it('writes JSON with a PX ttl under the laid-out names, and the lock beside it', async () => {
    const prefix = uniquePrefix();
    const store = await redisStore({ prefix });
    const keys = redisKeys(prefix);
    const name = cacheName();
    const entry = makeEntry();
    await store.cacheFill(name, { entry, ttlMs: 60_000, token: null });
    const token = await store.cacheAcquire(name, 30_000);
    expect(token).not.toBeNull();
    expect(JSON.parse((await raw.get(keys.cacheEntry(name))) ?? 'null')).toEqual(entry);
    expect(await raw.pttl(keys.cacheEntry(name))).toBeGreaterThan(59_000);
    expect(await raw.pttl(keys.cacheLock(name))).toBeGreaterThan(29_000);
    expect((await raw.keys(`${prefix}*`)).sort()).toEqual([keys.cacheEntry(name), keys.cacheLock(name)].sort());
  });

  it('treats a corrupt entry as a miss and logs it, rate-limited, without its content', async () => {
    const prefix = uniquePrefix();
    const log = logger();
    const store = await redisStore({ prefix, logger: log });
    const keys = redisKeys(prefix);
    const [bad, worse, good] = [cacheName(), cacheName(), cacheName()];
    await store.cacheFill(good, { entry: makeEntry(), ttlMs: 60_000, token: null });
    await raw.set(keys.cacheEntry(bad), '{not json secret-body', 'PX', 60_000);
    await raw.set(keys.cacheEntry(worse), JSON.stringify({ ...makeEntry(), promptTokens: 'many', body: 'secret-body' }), 'PX', 60_000);
    expect(await store.cacheGet(bad)).toBeNull();
    expect(await store.cacheGet(worse)).toBeNull();
    expect(await store.cacheGet(bad)).toBeNull();
    expect(await store.cacheGet(good)).not.toBeNull();
    expect(log.warn).toHaveBeenCalledTimes(1);
    expect(JSON.stringify(log.warn.mock.calls)).not.toContain('secret-body');
  });

  it('admitAndLookup takes a corrupt entry for a miss without the lead, admitted in full', async () => {
    const prefix = uniquePrefix();
    const store = await redisStore({ prefix, logger: logger() });
    const keyId = newKeyId();
    const name = cacheName(keyId);
    await raw.set(redisKeys(prefix).cacheEntry(name), '{not json', 'PX', 60_000);
    const now = Date.now();
    const periods = { day: '2026-11-30', month: '2026-11', dayTtlMs: 86_400_000, monthTtlMs: 40 * 86_400_000 };
    const limits = { rpm: 0, tpm: 0, tokensPerDay: 0, tokensPerMonth: 0, usdMicrosPerDay: 0, usdMicrosPerMonth: 0, maxConcurrent: 0 };
    const found = await store.admitAndLookup(
      { keyId, reservationId: 'r1', limits, tokens: 40, usdMicros: 900, now, periods, leaseTtlMs: 60_000 },
      { name, leadTtlMs: 10_000 },
    );
    expect(found).toEqual({ lookup: 'miss', leader: null, admission: { admitted: true } });
    // Held in full (it goes upstream), and counted once against rpm: as the hit it seemed, not again as a miss.
    expect(await store.quotaUsage(keyId, periods, now)).toMatchObject({ minute: { requests: 1, tokens: 40 }, inFlight: 1, day: { tokens: { reserved: 40 } } });
  });

  it('a release message alone wakes waiters (no polling needed), and malformed ones are ignored', async () => {
    const prefix = uniquePrefix();
    const log = logger();
    const store = await redisStore({ prefix, logger: log });
    await subscribed(store);
    const name = cacheName();
    // The lock stays and no entry appears: only the message can say 'filled'.
    await raw.set(redisKeys(prefix).cacheLock(name), 'elsewhere', 'PX', 10_000);
    const wait = timed(store.cacheWait(name, 5000));
    await sleep(20);
    const channel = redisKeys(prefix).cacheFillsChannel();
    await raw.publish(channel, 'garbage');
    await raw.publish(channel, JSON.stringify({ name, filled: 'yes' }));
    await raw.publish(channel, JSON.stringify({ name: cacheName(), filled: true }));
    await raw.publish(channel, JSON.stringify({ name, filled: true }));
    const { value, ms } = await wait;
    expect(value).toBe('filled');
    expect(ms).toBeLessThan(2000); // far below the 5 s a missing message would take
    expect(log.warn).toHaveBeenCalledTimes(1); // two malformed messages, one line
  });

  it('a fill publishes only when someone waits on the name', async () => {
    const prefix = uniquePrefix();
    const [leader, follower] = [await redisStore({ prefix }), await redisStore({ prefix })];
    await subscribed(follower);
    const listener = raw.duplicate();
    const heard: string[] = [];
    listener.on('message', (_channel: string, message: string) => heard.push(message));
    await listener.subscribe(redisKeys(prefix).cacheFillsChannel());
    try {
      const quiet = cacheName();
      const quietLock = await leader.cacheLookup(quiet, 10_000);
      await leader.cacheFill(quiet, { entry: makeEntry(), ttlMs: 60_000, token: quietLock.leader });
      const awaited = cacheName();
      const lock = await leader.cacheLookup(awaited, 10_000);
      const wait = follower.cacheWait(awaited, 5000);
      await sleep(50);
      await leader.cacheFill(awaited, { entry: makeEntry(), ttlMs: 60_000, token: lock.leader });
      expect(await wait).toBe('filled');
      await vi.waitFor(() => expect(heard.length).toBeGreaterThan(0), { timeout: 2000, interval: 10 });
      await sleep(50);
      expect(heard.map((m) => JSON.parse(m) as unknown)).toEqual([{ name: awaited, filled: true }]);
    } finally {
      listener.disconnect();
    }
  });

  it('a missed release (lock deleted, no message) still wakes waiters: filled if an entry exists', async () => {
    const prefix = uniquePrefix();
    const [leader, follower] = [await redisStore({ prefix }), await redisStore({ prefix })];
    const keys = redisKeys(prefix);
    const [filledName, failedName] = [cacheName(), cacheName()];
    for (const name of [filledName, failedName]) expect(await leader.cacheAcquire(name, 10_000)).not.toBeNull();
    const waits = Promise.all([follower.cacheWait(filledName, 5000), follower.cacheWait(failedName, 5000)]);
    await sleep(50);
    // What a leader does when its PUBLISH is lost: the entry written, the lock gone, no message.
    await raw.set(keys.cacheEntry(filledName), JSON.stringify(makeEntry()), 'PX', 60_000);
    await raw.del(keys.cacheLock(filledName), keys.cacheLock(failedName));
    const { value, ms } = await timed(waits);
    expect(value).toEqual(['filled', 'failed']);
    expect(ms).toBeLessThan(1000);
  });

  it('never rejects a wait while Redis is unreachable: it times out', async () => {
    const port = await freePort();
    const store = await createRedisStore({
      url: `redis://127.0.0.1:${port}`,
      prefix: uniquePrefix(),
      commandTimeoutMs: 100,
      connectTimeoutMs: 100,
      logger: logger(),
    }).then(track);
    const { value, ms } = await timed(store.cacheWait(cacheName(), 600));
    expect(value).toBe('timeout');
    expect(ms).toBeGreaterThanOrEqual(580);
    await expect(store.cacheGet(cacheName())).rejects.toThrow();
  });

  it('purges in SCAN pages: more entries than one page', async () => {
    const prefix = uniquePrefix();
    const store = await redisStore({ prefix });
    const scope = newKeyId();
    const pipeline = raw.pipeline();
    const keys = redisKeys(prefix);
    for (let i = 0; i < 1200; i++) pipeline.set(keys.cacheEntry(cacheName(i % 3 ? scope : 'global')), '{}', 'PX', 60_000);
    await pipeline.exec();
    expect(await store.cachePurge(`${scope}:`)).toBe(800);
    expect(await store.cachePurge()).toBe(400);
    expect(await raw.keys(`${prefix}*`)).toEqual([]);
  });
});
