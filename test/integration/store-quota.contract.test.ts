// The quota half of the Store contract (admit, settle, renewLeases, quotaUsage, hit), run against the
// memory and Redis stores with the same expectations; then what only the Redis store promises.
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newKeyId } from '../../src/keys.js';
import { createMemoryStore } from '../../src/store/memory-store.js';
import { redisKeys } from '../../src/store/redis-keys.js';
import type { AdmissionRequest, AdmissionResult, Periods, Store, StoreLimits } from '../../src/store/store.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';
import { clusterStore, redisStore, track } from '../helpers/stores.js';


const SECOND = 1000;
const DAY = 86_400_000;
/** On a second boundary, so bucket arithmetic in the expectations stays readable. */
const T = Date.parse('2026-11-18T12:00:00.000Z');

function periods(day = '2026-11-18', month = '2026-11'): Periods {
  // Far longer than any test's clock moves, so no store expires a budget mid-test.
  return { day, month, dayTtlMs: 3 * DAY, monthTtlMs: 40 * DAY };
}

const NO_LIMITS: StoreLimits = {
  rpm: 0,
  tpm: 0,
  tokensPerDay: 0,
  tokensPerMonth: 0,
  usdMicrosPerDay: 0,
  usdMicrosPerMonth: 0,
  maxConcurrent: 0,
};

/** A request maker for one fresh gateway key. */
function forKey(store: Store, limits: Partial<StoreLimits> = {}) {
  const keyId = newKeyId();
  const base = { ...NO_LIMITS, ...limits };
  return {
    keyId,
    admit(o: Partial<AdmissionRequest> = {}): Promise<AdmissionResult> {
      return store.admit({
        keyId,
        reservationId: randomUUID(),
        limits: base,
        tokens: 10,
        usdMicros: 1000,
        now: T,
        periods: periods(),
        leaseTtlMs: 60 * SECOND,
        ...o,
      });
    },
    /** Admits and returns the reservation id, failing the test if not admitted. */
    async reserve(o: Partial<AdmissionRequest> = {}): Promise<string> {
      const reservationId = o.reservationId ?? randomUUID();
      const result = await this.admit({ ...o, reservationId });
      expect(result.admitted, JSON.stringify(result)).toBe(true);
      return reservationId;
    },
    settle(reservationId: string, o: { tokens?: number; usdMicros?: number; now?: number; fallbackPeriods?: Periods } = {}) {
      return store.settle({
        keyId,
        reservationId,
        tokens: o.tokens ?? 0,
        usdMicros: o.usdMicros ?? 0,
        now: o.now ?? T,
        fallbackPeriods: o.fallbackPeriods ?? periods(),
      });
    },
    usage(now = T, p = periods()) {
      return store.quotaUsage(keyId, p, now);
    },
  };
}

describe.each([
  { kind: 'memory', create: async (): Promise<Store> => track(createMemoryStore()) },
  { kind: 'redis', create: (): Promise<Store> => redisStore() },
  { kind: 'cluster', create: (): Promise<Store> => clusterStore() },
])('Store quota contract: $kind', ({ create }) => {
  it('admits anything with no limits set, records the reservation, and returns no window states', async () => {
    const key = forKey(await create());
    expect(await key.admit({ tokens: 120, usdMicros: 4500 })).toEqual({ admitted: true });
    expect(await key.usage(T + 500)).toEqual({
      minute: { requests: 1, tokens: 120, resetMs: 59_500 },
      inFlight: 1,
      day: { tokens: { used: 0, reserved: 120 }, usdMicros: { used: 0, reserved: 4500 } },
      month: { tokens: { used: 0, reserved: 120 }, usdMicros: { used: 0, reserved: 4500 } },
    });
  });

  it('a count-only admission (a cache hit) counts against rpm but reserves nothing and holds no lease', async () => {
    const key = forKey(await create(), { rpm: 3, maxConcurrent: 2 });
    const hit = { tokens: 0, usdMicros: 0, countOnly: true };
    expect((await key.admit(hit)).admitted).toBe(true);
    expect(await key.usage(T + 500)).toEqual({
      minute: { requests: 1, tokens: 0, resetMs: 59_500 },
      inFlight: 0,
      day: { tokens: { used: 0, reserved: 0 }, usdMicros: { used: 0, reserved: 0 } },
      month: { tokens: { used: 0, reserved: 0 }, usdMicros: { used: 0, reserved: 0 } },
    });
    // Concurrency and rpm are still checked: two requests in flight fill maxConcurrent, and hits count toward rpm.
    await key.reserve();
    await key.reserve();
    expect(await key.admit(hit)).toMatchObject({ admitted: false, limit: 'maxConcurrent' });
    const relaxed = forKey(await create(), { rpm: 2 });
    expect((await relaxed.admit(hit)).admitted).toBe(true);
    expect((await relaxed.admit(hit)).admitted).toBe(true);
    expect(await relaxed.admit(hit)).toMatchObject({ admitted: false, limit: 'rpm' });
    // It reserves nothing, so it cannot carry amounts.
    await expect(key.admit({ tokens: 5, usdMicros: 0, countOnly: true })).rejects.toThrow(RangeError);
  });

  it('a full admission already counted against rpm (a hit whose entry could not answer it) is checked and recorded without a second count', async () => {
    const key = forKey(await create(), { rpm: 2 });
    expect((await key.admit({ tokens: 0, usdMicros: 0, countOnly: true })).admitted).toBe(true);
    // The same request, now going upstream: rpm already holds it, so it passes at the limit's edge too.
    const again = await key.admit({ rpmCounted: true, tokens: 30 });
    expect(again).toMatchObject({ admitted: true, requests: { limit: 2, remaining: 1 } });
    expect(await key.usage(T + 500)).toMatchObject({ minute: { requests: 1, tokens: 30 }, inFlight: 1, day: { tokens: { reserved: 30 } } });
    // Its reservation is a full one: settled like any other.
    expect((await key.admit()).admitted).toBe(true);
    expect(await key.admit()).toMatchObject({ admitted: false, limit: 'rpm' });
    // Still refused by rpm when the window is over it (the key's limit was lowered meanwhile).
    const lowered = forKey(await create(), { rpm: 1 });
    await lowered.reserve();
    await lowered.reserve({ limits: { ...NO_LIMITS, rpm: 2 } });
    expect(await lowered.admit({ rpmCounted: true })).toMatchObject({ admitted: false, limit: 'rpm' });
    await expect(key.admit({ tokens: 0, usdMicros: 0, countOnly: true, rpmCounted: true })).rejects.toThrow(RangeError);
  });

  // A hit adds nothing to tpm or a budget, so neither can refuse it: not at the limit (where any miss,
  // needing at least one token, is refused) and not past it either (settled usage can overshoot).
  it.each([
    { limit: 'tpm', limits: { tpm: 25 }, spent: (n: number) => ({ tokens: n }) },
    { limit: 'tokensPerDay', limits: { tokensPerDay: 25 }, spent: (n: number) => ({ tokens: n }) },
    { limit: 'tokensPerMonth', limits: { tokensPerMonth: 25 }, spent: (n: number) => ({ tokens: n }) },
    { limit: 'usdPerDay', limits: { usdMicrosPerDay: 25 }, spent: (n: number) => ({ usdMicros: n }) },
    { limit: 'usdPerMonth', limits: { usdMicrosPerMonth: 25 }, spent: (n: number) => ({ usdMicros: n }) },
  ])('a count-only admission (a cache hit) passes $limit alike at and over the limit; a miss is refused at both', async ({ limit, limits, spent }) => {
    const store = await create();
    const hit = { tokens: 0, usdMicros: 0, countOnly: true };
    for (const used of [25, 26]) {
      const key = forKey(store, limits);
      await key.settle(await key.reserve({ tokens: 10, usdMicros: 10 }), spent(used));
      expect(await key.admit({ tokens: 1, usdMicros: 1 }), `miss, ${used} used`).toMatchObject({ admitted: false, limit });
      expect((await key.admit(hit)).admitted, `hit, ${used} used`).toBe(true);
    }
  });

  it('reports nothing for a key never seen', async () => {
    const key = forKey(await create());
    expect(await key.usage()).toEqual({
      minute: { requests: 0, tokens: 0, resetMs: 0 },
      inFlight: 0,
      day: { tokens: { used: 0, reserved: 0 }, usdMicros: { used: 0, reserved: 0 } },
      month: { tokens: { used: 0, reserved: 0 }, usdMicros: { used: 0, reserved: 0 } },
    });
  });

  it.each([
    { limit: 'maxConcurrent', limits: { maxConcurrent: 2 }, retryAfterMs: 1000 },
    { limit: 'rpm', limits: { rpm: 2 }, retryAfterMs: 60_000 },
    { limit: 'tpm', limits: { tpm: 25 }, retryAfterMs: 60_000 },
    { limit: 'tokensPerDay', limits: { tokensPerDay: 25 } },
    { limit: 'tokensPerMonth', limits: { tokensPerMonth: 25 } },
    { limit: 'usdPerDay', limits: { usdMicrosPerDay: 2500 } },
    { limit: 'usdPerMonth', limits: { usdMicrosPerMonth: 2500 } },
  ] as const)('$limit rejects the request that does not fit, and records nothing', async ({ limit, limits, ...expected }) => {
    // Each request: 10 tokens, 1000 micros. Two fit, the third does not. For a budget the two are
    // settled in full: one refused by what is used has no retry hint (reservations: the next test).
    const key = forKey(await create(), limits);
    const held = [await key.reserve(), await key.reserve()];
    if (limit !== 'maxConcurrent') for (const id of held) await key.settle(id, { tokens: 10, usdMicros: 1000 });
    const before = await key.usage();
    const rejected = await key.admit();
    expect(rejected).toMatchObject({ admitted: false, limit });
    if ('retryAfterMs' in expected) expect(rejected).toMatchObject({ retryAfterMs: expected.retryAfterMs });
    else expect(rejected).not.toHaveProperty('retryAfterMs');
    expect(await key.usage()).toEqual(before);
    // A smaller request still fits the budgets (not maxConcurrent or rpm).
    const small = await key.admit({ tokens: 5, usdMicros: 500 });
    expect(small.admitted).toBe(!['maxConcurrent', 'rpm'].includes(limit));
  });

  it.each([
    { limit: 'tokensPerDay', limits: { tokensPerDay: 25 } },
    { limit: 'tokensPerMonth', limits: { tokensPerMonth: 25 } },
    { limit: 'usdPerDay', limits: { usdMicrosPerDay: 2500 } },
    { limit: 'usdPerMonth', limits: { usdMicrosPerMonth: 2500 } },
  ] as const)('$limit held by requests in flight: a 1000 ms retry hint while what is used leaves room', async ({ limit, limits }) => {
    const key = forKey(await create(), limits);
    const [first, second] = [await key.reserve(), await key.reserve()];
    // 20 of 25 reserved, none used: the third fits what is left once they settle for less.
    expect(await key.admit()).toEqual({ admitted: false, limit, retryAfterMs: 1000 });
    await key.settle(first, { tokens: 10, usdMicros: 1000 });
    expect(await key.admit()).toEqual({ admitted: false, limit, retryAfterMs: 1000 });
    // 20 used: the third no longer fits, whatever the one in flight settles for.
    await key.settle(second, { tokens: 10, usdMicros: 1000 });
    expect(await key.admit()).toEqual({ admitted: false, limit });
    // Used 10, reserved 10: a request of 10 fits what is used, not what is held.
    const other = forKey(await create(), limits);
    const used = await other.reserve();
    await other.settle(used, { tokens: 10, usdMicros: 1000 });
    await other.reserve();
    expect(await other.admit()).toEqual({ admitted: false, limit, retryAfterMs: 1000 });
    expect(await other.admit({ tokens: 20, usdMicros: 2000 })).toEqual({ admitted: false, limit });
  });

  it('a budget that is spent is named before one merely held, whatever their order, so the answer is not a retry', async () => {
    // The day (checked first) is held by a reservation; the month is spent by settled use.
    const key = forKey(await create(), { tokensPerDay: 100, usdMicrosPerMonth: 5000 });
    const old = await key.reserve({ tokens: 10, usdMicros: 5000, periods: periods('2026-11-17') });
    await key.settle(old, { tokens: 10, usdMicros: 5000 });
    await key.reserve({ tokens: 95, usdMicros: 0 });
    expect(await key.admit({ tokens: 10, usdMicros: 1 })).toEqual({ admitted: false, limit: 'usdPerMonth' });
    // Without the spent month, the day is what refuses, with a retry hint.
    expect(await key.admit({ tokens: 10, usdMicros: 0 })).toEqual({ admitted: false, limit: 'tokensPerDay', retryAfterMs: 1000 });
  });

  it('a request larger than a whole budget names that one, before a spent month: no reset lets it through', async () => {
    const key = forKey(await create(), { tokensPerDay: 100, tokensPerMonth: 1000 });
    const old = await key.reserve({ tokens: 10, usdMicros: 0, periods: periods('2026-11-17') });
    await key.settle(old, { tokens: 990, usdMicros: 0 }); // used more than it reserved (a long answer)
    // The month is spent for it too, but naming the month says "wait for the 1st", then the day refuses it.
    expect(await key.admit({ tokens: 150, usdMicros: 0 })).toEqual({ admitted: false, limit: 'tokensPerDay' });
    expect(await key.admit({ tokens: 50, usdMicros: 0 })).toEqual({ admitted: false, limit: 'tokensPerMonth' });
  });

  it('is all or nothing: a request failing tpm leaves the rpm and budget counters alone', async () => {
    const key = forKey(await create(), { rpm: 10, tpm: 100, tokensPerDay: 1000, usdMicrosPerDay: 1_000_000 });
    await key.reserve({ tokens: 80, usdMicros: 8000 });
    const result = await key.admit({ tokens: 30, usdMicros: 3000, now: T + 5 * SECOND });
    expect(result).toEqual({
      admitted: false,
      limit: 'tpm',
      retryAfterMs: 55_000,
      requests: { limit: 10, remaining: 9, resetMs: 0 },
      tokens: { limit: 100, remaining: 20, resetMs: 55_000 },
    });
    expect(await key.usage(T + 5 * SECOND)).toEqual({
      minute: { requests: 1, tokens: 80, resetMs: 55_000 },
      inFlight: 1,
      day: { tokens: { used: 0, reserved: 80 }, usdMicros: { used: 0, reserved: 8000 } },
      month: { tokens: { used: 0, reserved: 80 }, usdMicros: { used: 0, reserved: 8000 } },
    });
  });

  it('checks limits in order: maxConcurrent, rpm, tpm, then the budgets, months before days', async () => {
    const all = { maxConcurrent: 1, rpm: 1, tpm: 10, tokensPerDay: 10, tokensPerMonth: 10, usdMicrosPerDay: 1000, usdMicrosPerMonth: 1000 };
    const store = await create();
    const key = forKey(store, all);
    await key.reserve();
    expect(await key.admit()).toMatchObject({ admitted: false, limit: 'maxConcurrent' });
    expect(await key.admit({ limits: { ...all, maxConcurrent: 0 } })).toMatchObject({ limit: 'rpm' });
    expect(await key.admit({ limits: { ...all, maxConcurrent: 0, rpm: 0 } })).toMatchObject({ limit: 'tpm' });
    const budgetsOnly = { ...all, maxConcurrent: 0, rpm: 0, tpm: 0 };
    // A spent month outlasts a spent day: naming the day would send the client back at midnight.
    expect(await key.admit({ limits: budgetsOnly })).toMatchObject({ limit: 'tokensPerMonth' });
    expect(await key.admit({ limits: { ...budgetsOnly, tokensPerMonth: 0 } })).toMatchObject({ limit: 'usdPerMonth' });
    expect(await key.admit({ limits: { ...budgetsOnly, tokensPerMonth: 0, usdMicrosPerMonth: 0 } })).toMatchObject({ limit: 'tokensPerDay' });
    expect(await key.admit({ limits: { ...NO_LIMITS, usdMicrosPerDay: 1000 } })).toMatchObject({ limit: 'usdPerDay' });
  });

  it('rolls the rpm window: a request leaves it 60 s after its second', async () => {
    const key = forKey(await create(), { rpm: 2 });
    expect(await key.admit({ now: T })).toEqual({ admitted: true, requests: { limit: 2, remaining: 1, resetMs: 0 } });
    // Full now: room again when the request of T leaves, at T + 60 s.
    expect(await key.admit({ now: T + 30 * SECOND })).toEqual({
      admitted: true,
      requests: { limit: 2, remaining: 0, resetMs: 30_000 },
    });
    expect(await key.admit({ now: T + 59_750 })).toEqual({
      admitted: false,
      limit: 'rpm',
      retryAfterMs: 250,
      requests: { limit: 2, remaining: 0, resetMs: 250 },
    });
    // At T + 61 s the first request has left the window; the one of T + 30 s has not.
    expect(await key.admit({ now: T + 61 * SECOND })).toEqual({
      admitted: true,
      requests: { limit: 2, remaining: 0, resetMs: 29_000 },
    });
    expect((await key.usage(T + 61 * SECOND)).minute).toEqual({ requests: 2, tokens: 20, resetMs: 60_000 });
    expect(await key.admit({ now: T + 62 * SECOND })).toMatchObject({ admitted: false, limit: 'rpm', retryAfterMs: 28_000 });
    expect((await key.usage(T + 200 * SECOND)).minute).toEqual({ requests: 0, tokens: 0, resetMs: 0 });
  });

  it('tpm: retryAfterMs is when enough old tokens have left for the request to fit', async () => {
    const key = forKey(await create(), { tpm: 100 });
    expect(await key.admit({ tokens: 40, now: T })).toEqual({
      admitted: true,
      tokens: { limit: 100, remaining: 60, resetMs: 60_000 },
    });
    await key.reserve({ tokens: 40, now: T + 10 * SECOND });
    // 80 in the window; 50 more need 30 to leave: the 40 of T, at T + 60 s.
    expect(await key.admit({ tokens: 50, now: T + 20_500 })).toEqual({
      admitted: false,
      limit: 'tpm',
      retryAfterMs: 39_500,
      tokens: { limit: 100, remaining: 20, resetMs: 49_500 },
    });
    // 70 more need 50 to leave: both buckets, the second at T + 70 s.
    expect(await key.admit({ tokens: 70, now: T + 20_500 })).toMatchObject({ limit: 'tpm', retryAfterMs: 49_500 });
    // Exactly at the limit fits.
    expect(await key.admit({ tokens: 20, now: T + 20_500 })).toEqual({
      admitted: true,
      tokens: { limit: 100, remaining: 0, resetMs: 60_000 - 500 },
    });
  });

  it('tpm: a request larger than the whole limit is refused with no retry hint', async () => {
    const key = forKey(await create(), { tpm: 100 });
    const result = await key.admit({ tokens: 101 });
    expect(result).toEqual({ admitted: false, limit: 'tpm', tokens: { limit: 100, remaining: 100, resetMs: 0 } });
    expect(await key.admit({ tokens: 100 })).toMatchObject({ admitted: true });
  });

  it('maxConcurrent: leases are released by settle and by expiry; renewLeases keeps one alive', async () => {
    const store = await create();
    const key = forKey(store, { maxConcurrent: 2 });
    const lease = 10 * SECOND;
    const a = await key.reserve({ now: T, leaseTtlMs: lease });
    const b = await key.reserve({ now: T, leaseTtlMs: lease });
    expect(await key.admit({ now: T })).toEqual({ admitted: false, limit: 'maxConcurrent', retryAfterMs: 1000 });

    expect(await key.settle(a, { tokens: 5, now: T + 1 * SECOND })).toBe('settled');
    const c = await key.reserve({ now: T + 1 * SECOND, leaseTtlMs: lease }); // lease until T + 11 s
    expect(await key.admit({ now: T + 2 * SECOND })).toMatchObject({ admitted: false, limit: 'maxConcurrent' });
    expect((await key.usage(T + 2 * SECOND)).inFlight).toBe(2);

    // c keeps renewing (to T + 15 s); b's instance went quiet (expires T + 10 s).
    await store.renewLeases([{ keyId: key.keyId, reservationId: c }], T + 5 * SECOND, lease);
    expect((await key.usage(T + 10 * SECOND)).inFlight).toBe(1);
    const d = await key.reserve({ now: T + 12 * SECOND, leaseTtlMs: lease }); // releases b
    expect(await key.admit({ now: T + 12 * SECOND })).toMatchObject({ admitted: false, limit: 'maxConcurrent' });
    const usage = await key.usage(T + 12 * SECOND);
    expect(usage.inFlight).toBe(2);
    // b's reservation was given back; a's usage, c's and d's reservations remain.
    expect(usage.day.tokens).toEqual({ used: 5, reserved: 20 });

    // Renewing released leases does not bring them back.
    await store.renewLeases(
      [a, b].map((reservationId) => ({ keyId: key.keyId, reservationId })),
      T + 12 * SECOND,
      lease,
    );
    expect((await key.usage(T + 12 * SECOND)).inFlight).toBe(2);
    expect(await key.settle(d, { now: T + 13 * SECOND })).toBe('settled');
    expect(await key.admit({ now: T + 13 * SECOND })).toMatchObject({ admitted: true });
  });

  it('renewLeases: renews leases of several keys at once and ignores unknown ones', async () => {
    const store = await create();
    const k1 = forKey(store);
    const k2 = forKey(store);
    const r1 = await k1.reserve({ leaseTtlMs: 1000 });
    const r2 = await k2.reserve({ leaseTtlMs: 1000 });
    const r3 = await k2.reserve({ leaseTtlMs: 1000 });
    await store.renewLeases([], T, 1000);
    await store.renewLeases(
      [
        { keyId: k1.keyId, reservationId: r1 },
        { keyId: k2.keyId, reservationId: r2 },
        { keyId: k2.keyId, reservationId: r3 },
        { keyId: k2.keyId, reservationId: 'never-admitted' },
        { keyId: newKeyId(), reservationId: 'nor-this' },
      ],
      T + 900,
      1000,
    );
    expect((await k1.usage(T + 1500)).inFlight).toBe(1);
    expect((await k2.usage(T + 1500)).inFlight).toBe(2);
    expect((await k2.usage(T + 1900)).inFlight).toBe(0);
    // Nothing was created for unknown reservations: they settle as expired.
    expect(await k2.settle('never-admitted')).toBe('expired');
  });

  it('settle replaces the reservation by the real usage, once', async () => {
    const key = forKey(await create(), { tpm: 1000 });
    const id = await key.reserve({ tokens: 500, usdMicros: 25_000 });
    expect(await key.settle(id, { tokens: 120, usdMicros: 6_123, now: T + 2 * SECOND })).toBe('settled');
    const settled = {
      // The tpm window now counts the real 120 tokens, not the 500 reserved.
      minute: { requests: 1, tokens: 120, resetMs: 58_000 },
      inFlight: 0,
      day: { tokens: { used: 120, reserved: 0 }, usdMicros: { used: 6_123, reserved: 0 } },
      month: { tokens: { used: 120, reserved: 0 }, usdMicros: { used: 6_123, reserved: 0 } },
    };
    expect(await key.usage(T + 2 * SECOND)).toEqual(settled);
    expect(await key.admit({ tokens: 880, now: T + 2 * SECOND })).toMatchObject({ admitted: true, tokens: { remaining: 0 } });

    const key2 = forKey(await create());
    const id2 = await key2.reserve({ tokens: 500, usdMicros: 25_000 });
    expect(await key2.settle(id2, { tokens: 120, usdMicros: 6_123, now: T + 2 * SECOND })).toBe('settled');
    const once = await key2.usage(T + 2 * SECOND);
    expect(await key2.settle(id2, { tokens: 999, usdMicros: 999, now: T + 3 * SECOND })).toBe('already-settled');
    expect(await key2.settle(id2, { tokens: 120, usdMicros: 6_123, now: T + 3 * SECOND })).toBe('already-settled');
    expect(await key2.usage(T + 2 * SECOND)).toEqual(once);
  });

  it('settle corrects the tpm window up or down, only while the bucket is in it', async () => {
    const key = forKey(await create(), { tpm: 1000 });
    const over = await key.reserve({ tokens: 100 });
    const under = await key.reserve({ tokens: 100 });
    expect(await key.settle(over, { tokens: 250, now: T + SECOND })).toBe('settled');
    expect(await key.settle(under, { tokens: 0, now: T + SECOND })).toBe('settled');
    expect((await key.usage(T + SECOND)).minute.tokens).toBe(250);
    expect((await key.usage(T + SECOND)).day.tokens).toEqual({ used: 250, reserved: 0 });
    // Once its bucket has left the window, a settle no longer touches it.
    const late = await key.reserve({ tokens: 100, now: T + 2 * SECOND });
    expect(await key.settle(late, { tokens: 50, now: T + 70 * SECOND })).toBe('settled');
    expect((await key.usage(T + 70 * SECOND)).minute.tokens).toBe(0);
    expect((await key.usage(T + 70 * SECOND)).day.tokens).toEqual({ used: 300, reserved: 0 });
  });

  it('settle after the lease expired and was released: "expired", usage still counted in the fallback periods', async () => {
    const key = forKey(await create());
    const lost = await key.reserve({ tokens: 100, usdMicros: 5000, leaseTtlMs: 1000 });
    // The next admission releases the dead lease and gives its reservation back.
    await key.reserve({ tokens: 7, usdMicros: 70, now: T + 2 * SECOND });
    expect((await key.usage(T + 2 * SECOND)).day.tokens).toEqual({ used: 0, reserved: 7 });

    const next = periods('2026-11-19');
    expect(await key.settle(lost, { tokens: 42, usdMicros: 2100, now: T + 3 * SECOND, fallbackPeriods: next })).toBe('expired');
    expect(await key.usage(T + 3 * SECOND, next)).toMatchObject({
      day: { tokens: { used: 42, reserved: 0 }, usdMicros: { used: 2100, reserved: 0 } },
      month: { tokens: { used: 42, reserved: 7 }, usdMicros: { used: 2100, reserved: 70 } },
    });
    expect((await key.usage(T + 3 * SECOND)).day.tokens).toEqual({ used: 0, reserved: 7 });
    expect(await key.settle(lost, { tokens: 42, now: T + 4 * SECOND, fallbackPeriods: next })).toBe('already-settled');
    expect((await key.usage(T + 4 * SECOND, next)).day.tokens.used).toBe(42);
  });

  it('settle of a lease past its expiry that no admission has released yet is a normal settle', async () => {
    const key = forKey(await create());
    const id = await key.reserve({ tokens: 100, leaseTtlMs: 1000 });
    expect((await key.usage(T + 5 * SECOND)).inFlight).toBe(0);
    expect(await key.settle(id, { tokens: 30, now: T + 5 * SECOND })).toBe('settled');
    expect((await key.usage(T + 5 * SECOND)).day.tokens).toEqual({ used: 30, reserved: 0 });
  });

  it('a request reserved at 23:59 on day A and settled on day B counts in day A', async () => {
    const key = forKey(await create());
    const dayA = periods('2026-11-17');
    const dayB = periods('2026-11-18');
    const lateA = Date.parse('2026-11-17T23:59:45.000Z');
    const id = await key.reserve({ tokens: 300, usdMicros: 9000, now: lateA, periods: dayA });
    expect(await key.settle(id, { tokens: 77, usdMicros: 1234, now: lateA + 30 * SECOND, fallbackPeriods: dayB })).toBe('settled');
    expect(await key.usage(lateA + 30 * SECOND, dayA)).toEqual({
      minute: { requests: 1, tokens: 77, resetMs: 30_000 },
      inFlight: 0,
      day: { tokens: { used: 77, reserved: 0 }, usdMicros: { used: 1234, reserved: 0 } },
      month: { tokens: { used: 77, reserved: 0 }, usdMicros: { used: 1234, reserved: 0 } },
    });
    expect((await key.usage(lateA + 30 * SECOND, dayB)).day).toEqual({
      tokens: { used: 0, reserved: 0 },
      usdMicros: { used: 0, reserved: 0 },
    });
  });

  it('a dead lease from an earlier day is given back to that day, not today', async () => {
    const key = forKey(await create(), { tokensPerDay: 100 });
    const dayA = periods('2026-11-17');
    const dayB = periods('2026-11-18');
    await key.reserve({ tokens: 90, now: T - DAY, periods: dayA, leaseTtlMs: 1000 });
    await key.reserve({ tokens: 90, now: T, periods: dayB });
    expect((await key.usage(T, dayA)).day.tokens).toEqual({ used: 0, reserved: 0 });
    expect((await key.usage(T, dayB)).day.tokens).toEqual({ used: 0, reserved: 90 });
  });

  it('usd budgets in integer micro-dollars, per day and per month', async () => {
    const key = forKey(await create(), { usdMicrosPerDay: 1_000_000, usdMicrosPerMonth: 1_500_000 });
    const id = await key.reserve({ usdMicros: 600_000 });
    // Held by the reservation, not used: worth a retry once it settles.
    expect(await key.admit({ usdMicros: 400_001 })).toEqual({ admitted: false, limit: 'usdPerDay', retryAfterMs: 1000 });
    expect(await key.admit({ usdMicros: 1_000_001 })).toEqual({ admitted: false, limit: 'usdPerDay' });
    await key.reserve({ usdMicros: 400_000 });
    expect(await key.admit({ usdMicros: 1 })).toEqual({ admitted: false, limit: 'usdPerDay', retryAfterMs: 1000 });
    // Settling for less frees the difference at once.
    expect(await key.settle(id, { usdMicros: 100_000 })).toBe('settled');
    await key.reserve({ usdMicros: 500_000 });
    // Next day: the day budget is fresh, the month has 1_000_000 of 1_500_000.
    const tomorrow = periods('2026-11-19');
    expect(await key.admit({ usdMicros: 500_001, periods: tomorrow })).toEqual({ admitted: false, limit: 'usdPerMonth', retryAfterMs: 1000 });
    await key.reserve({ usdMicros: 500_000, periods: tomorrow });
    expect((await key.usage(T, tomorrow)).month.usdMicros).toEqual({ used: 100_000, reserved: 1_400_000 });
  });

  it('keeps large amounts exact (micro-dollars past 1e14)', async () => {
    const key = forKey(await create());
    const big = 123_456_789_012_345;
    const id = await key.reserve({ tokens: 2 ** 40, usdMicros: big, leaseTtlMs: 1000 });
    expect((await key.usage()).day.usdMicros).toEqual({ used: 0, reserved: big });
    // Released by expiry: given back exactly.
    await key.reserve({ tokens: 1, usdMicros: 1, now: T + 2 * SECOND });
    expect((await key.usage(T + 2 * SECOND)).day.usdMicros).toEqual({ used: 0, reserved: 1 });
    expect((await key.usage(T + 2 * SECOND)).day.tokens).toEqual({ used: 0, reserved: 1 });
    expect(await key.settle(id, { tokens: 2 ** 40, usdMicros: big, now: T + 3 * SECOND })).toBe('expired');
    expect((await key.usage(T + 3 * SECOND)).day.usdMicros).toEqual({ used: big, reserved: 1 });
  });

  it('quotaUsage: the rolling minute, live leases only, both periods', async () => {
    const key = forKey(await create());
    const a = await key.reserve({ tokens: 100, usdMicros: 10, now: T });
    await key.reserve({ tokens: 200, usdMicros: 20, now: T + 10_500 });
    await key.settle(a, { tokens: 60, usdMicros: 6, now: T + 11 * SECOND });
    await key.reserve({ tokens: 1, usdMicros: 1, now: T + 12 * SECOND, leaseTtlMs: 1000 }); // dead at T + 13 s
    expect(await key.usage(T + 20 * SECOND)).toEqual({
      // The newest bucket (second T + 12) leaves at T + 72 s.
      minute: { requests: 3, tokens: 261, resetMs: 52_000 },
      inFlight: 1,
      day: { tokens: { used: 60, reserved: 201 }, usdMicros: { used: 6, reserved: 21 } },
      month: { tokens: { used: 60, reserved: 201 }, usdMicros: { used: 6, reserved: 21 } },
    });
    // The first second left the window at T + 60 s.
    expect((await key.usage(T + 65 * SECOND)).minute).toEqual({ requests: 2, tokens: 201, resetMs: 7_000 });
    expect((await key.usage(T + 65 * SECOND, periods('2026-12-01', '2026-12'))).month.tokens).toEqual({ used: 0, reserved: 0 });
  });

  it('refuses a reservation id that is already held', async () => {
    const key = forKey(await create());
    const id = await key.reserve();
    await expect(key.admit({ reservationId: id })).rejects.toThrow(/already exists/);
    expect((await key.usage()).minute.requests).toBe(1);
  });

  it('rejects amounts that are not non-negative integers, before touching anything', async () => {
    const key = forKey(await create());
    await expect(key.admit({ tokens: 1.5 })).rejects.toThrow(RangeError);
    await expect(key.admit({ usdMicros: -1 })).rejects.toThrow(RangeError);
    await expect(key.admit({ limits: { ...NO_LIMITS, rpm: Number.NaN } })).rejects.toThrow(RangeError);
    await expect(key.settle('x', { tokens: -5 })).rejects.toThrow(RangeError);
    expect((await key.usage()).minute.requests).toBe(0);
  });

  it('hit: a fixed-window counter per name', async () => {
    const store = await create();
    const name = `auth-fail:${randomUUID()}`;
    const first = await store.hit(name, 400);
    expect(first.count).toBe(1);
    expect(first.ttlMs).toBeGreaterThan(0);
    expect(first.ttlMs).toBeLessThanOrEqual(400);
    expect((await store.hit(name, 400)).count).toBe(2);
    const third = await store.hit(name, 400);
    expect(third.count).toBe(3);
    expect(third.ttlMs).toBeLessThanOrEqual(first.ttlMs);
    expect((await store.hit(`${name}:other`, 400)).count).toBe(1);
    await sleep(450);
    const fresh = await store.hit(name, 400);
    expect(fresh.count).toBe(1);
    expect(fresh.ttlMs).toBeGreaterThan(300);
  });
});

describe('Redis quota store only', () => {
  let raw: Redis;
  beforeAll(() => {
    raw = new Redis(testRedisUrl(), { maxRetriesPerRequest: 1, commandTimeout: 2000 });
  });
  afterAll(async () => {
    await raw.quit();
  });

  it('200 concurrent admissions from two instances: exactly as many as the budget fits', async () => {
    const prefix = uniquePrefix();
    const a = await redisStore({ prefix, commandTimeoutMs: 5000 });
    const b = await redisStore({ prefix, commandTimeoutMs: 5000 });
    const keyId = newKeyId();
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        (i % 2 ? a : b).admit({
          keyId,
          reservationId: `r${i}`,
          limits: { ...NO_LIMITS, tokensPerDay: 70 },
          tokens: 10,
          usdMicros: 1,
          now: T + i,
          periods: periods(),
          leaseTtlMs: 60_000,
        }),
      ),
    );
    expect(results.filter((r) => r.admitted)).toHaveLength(7);
    expect(results.filter((r) => !r.admitted && r.limit === 'tokensPerDay')).toHaveLength(193);
    const usage = await a.quotaUsage(keyId, periods(), T + 200);
    expect(usage.day.tokens).toEqual({ used: 0, reserved: 70 });
    expect(usage.inFlight).toBe(7);
    expect(usage.minute.requests).toBe(7);
  });

  it('keeps every quota key of a gateway key in its hash tag, with a TTL', async () => {
    const prefix = uniquePrefix();
    const store = await redisStore({ prefix });
    const keys = redisKeys(prefix);
    const keyId = newKeyId();
    const p = periods();
    const admit = (reservationId: string, now: number) =>
      store.admit({ keyId, reservationId, limits: { ...NO_LIMITS, rpm: 100 }, tokens: 5, usdMicros: 5, now, periods: p, leaseTtlMs: 1000 });
    await admit('r1', T);
    await admit('r2', T);
    expect(await store.settle({ keyId, reservationId: 'r1', tokens: 3, usdMicros: 3, now: T, fallbackPeriods: p })).toBe('settled');
    await admit('r3', T + 5000); // releases r2's dead lease

    const expected = [
      keys.window(keyId),
      keys.reservations(keyId),
      keys.leases(keyId),
      keys.settled(keyId),
      keys.dayBudget(keyId, p.day),
      keys.monthBudget(keyId, p.month),
    ];
    expect((await raw.keys(`${prefix}*`)).sort()).toEqual([...expected].sort());
    for (const key of expected) {
      expect(key).toContain(`{${keyId}}`);
      expect(await raw.pttl(key), key).toBeGreaterThan(0);
    }
    expect(await raw.hgetall(keys.dayBudget(keyId, p.day))).toEqual({ tu: '3', tr: '5', uu: '3', ur: '5' });
    expect(await raw.zrange(keys.leases(keyId), 0, '-1')).toEqual(['r3']);
    expect(await raw.hget(keys.reservations(keyId), 'r3')).toBe(`5|5|${(T + 5000) / 1000}|${p.day}|${p.month}`);
    const window = await raw.hgetall(keys.window(keyId));
    expect(window).toEqual({ [`r:${T / 1000}`]: '2', [`t:${T / 1000}`]: '8', [`r:${T / 1000 + 5}`]: '1', [`t:${T / 1000 + 5}`]: '5' });
    expect(await raw.pttl(keys.window(keyId))).toBeLessThanOrEqual(61_000);
  });

  it('a rejection writes nothing but the release of dead leases', async () => {
    const prefix = uniquePrefix();
    const store = await redisStore({ prefix });
    const keyId = newKeyId();
    const result = await store.admit({
      keyId,
      reservationId: 'r1',
      limits: { ...NO_LIMITS, tpm: 10 },
      tokens: 11,
      usdMicros: 1,
      now: T,
      periods: periods(),
      leaseTtlMs: 1000,
    });
    expect(result.admitted).toBe(false);
    expect(await raw.keys(`${prefix}*`)).toEqual([]);
  });

  it('hit names its counter through the key builder, with a TTL', async () => {
    const prefix = uniquePrefix();
    const store = await redisStore({ prefix });
    await store.hit('auth:10.0.0.1', 5000);
    const key = redisKeys(prefix).counter('auth:10.0.0.1');
    expect(await raw.get(key)).toBe('1');
    expect(await raw.pttl(key)).toBeGreaterThan(4000);
    // A counter that lost its TTL (e.g. written by hand) gets one back on the next hit.
    await raw.persist(key);
    expect((await store.hit('auth:10.0.0.1', 5000)).count).toBe(2);
    expect(await raw.pttl(key)).toBeGreaterThan(4000);
  });
});
