// Quota arithmetic shared by both stores: the memory store runs it, the Redis store reads with it, and
// lua/admit.lua mirrors its admission line for line (settle.lua mirrors MemoryStore.settle); the
// contract suite holds both stores to the same answers.
import type {
  AdmissionRequest,
  AdmissionResult,
  CacheLookup,
  LimitName,
  Periods,
  Settlement,
  StoreLimits,
  WindowState,
} from './store.js';
import { cacheNameParts } from './redis-keys.js';

/** The rolling window: the bucket of second `s` counts while `s >= floor(now / 1000) - 59`. */
export const WINDOW_SECONDS = 60;
/** Redis TTL of the window hash, refreshed by every admission: a little longer than the window. */
export const WINDOW_TTL_MS = 61_000;
/** retryAfterMs hint when maxConcurrent is full: a slot frees whenever a request ends, not at a known time. */
export const CONCURRENCY_RETRY_MS = 1000;
/**
 * retryAfterMs hint when a budget has room for the request but requests in flight hold it: each
 * settles at what it used, often far below the worst case it reserved, when it ends.
 */
export const BUDGET_HELD_RETRY_MS = 1000;
/** How long a settled reservation id is remembered, so a repeated settle changes nothing. */
export const SETTLED_RETENTION_MS = 2 * 86_400_000;

/**
 * Limit codes as the admit script returns them: index + 1. The order they are checked in is
 * maxConcurrent, rpm, tpm, then the budgets (firstBrokenLimit below).
 */
export const LIMIT_ORDER = [
  'maxConcurrent',
  'rpm',
  'tpm',
  'tokensPerDay',
  'tokensPerMonth',
  'usdPerDay',
  'usdPerMonth',
] as const satisfies readonly LimitName[];

export interface Bucket {
  requests: number;
  tokens: number;
}

/** One period's budget counters (a Redis hash `tu tr uu ur`). */
export interface BudgetCounters {
  tokensUsed: number;
  tokensReserved: number;
  usdUsed: number;
  usdReserved: number;
}

export const EMPTY_BUDGET: Readonly<BudgetCounters> = { tokensUsed: 0, tokensReserved: 0, usdUsed: 0, usdReserved: 0 };

export function epochSecond(now: number): number {
  return Math.floor(now / 1000);
}

/** Oldest second whose bucket is still in the window at `now`. */
export function oldestWindowSecond(now: number): number {
  return epochSecond(now) - (WINDOW_SECONDS - 1);
}

/** ms from `now` until the bucket of `second` leaves the window. Always > 0 for an in-window bucket. */
export function leavesInMs(second: number, now: number): number {
  return (second + WINDOW_SECONDS) * 1000 - now;
}

/** The in-window buckets, oldest first. Buckets ahead of `now` (another instance's clock) count too. */
export function windowBuckets(buckets: Iterable<[number, Bucket]>, now: number): [number, Bucket][] {
  const oldest = oldestWindowSecond(now);
  return [...buckets].filter(([s]) => s >= oldest).sort((a, b) => a[0] - b[0]);
}

/** Parses the Redis window hash (`r:<sec>` / `t:<sec>` fields) into buckets by second. */
export function bucketsFromHash(hash: Record<string, string>): Map<number, Bucket> {
  const buckets = new Map<number, Bucket>();
  for (const [field, value] of Object.entries(hash)) {
    const m = /^([rt]):(\d+)$/.exec(field);
    if (!m) continue;
    const second = Number(m[2]);
    const bucket = buckets.get(second) ?? { requests: 0, tokens: 0 };
    if (m[1] === 'r') bucket.requests = Number(value);
    else bucket.tokens = Number(value);
    buckets.set(second, bucket);
  }
  return buckets;
}

export function windowTotals(list: [number, Bucket][]): Bucket {
  let requests = 0;
  let tokens = 0;
  for (const [, b] of list) {
    requests += b.requests;
    tokens += b.tokens;
  }
  return { requests, tokens };
}

/**
 * ms until at least `amount` requests (or tokens) have left the window, oldest buckets leaving
 * first: 0 when `amount <= 0`, undefined when the window does not hold that much.
 */
export function msUntilFreed(list: [number, Bucket][], field: keyof Bucket, amount: number, now: number): number | undefined {
  if (amount <= 0) return 0;
  let freed = 0;
  for (const [second, bucket] of list) {
    freed += bucket[field];
    if (freed >= amount) return leavesInMs(second, now);
  }
  return undefined;
}

/** ms until nothing of `fields` is left in the window (its newest non-empty bucket has left); 0 if empty. */
export function msUntilEmpty(list: [number, Bucket][], fields: (keyof Bucket)[], now: number): number {
  for (let i = list.length - 1; i >= 0; i--) {
    const [second, bucket] = list[i]!;
    if (fields.some((f) => bucket[f] > 0)) return leavesInMs(second, now);
  }
  return 0;
}

export interface AdmissionInput {
  limits: StoreLimits;
  tokens: number;
  usdMicros: number;
  now: number;
  /** Live leases after the dead ones were released. */
  inFlight: number;
  /** A count-only request (a cache hit): it adds nothing to tpm or a budget, so only rpm and concurrency apply. */
  countOnly?: boolean;
  /** Already in the window's requests (AdmissionRequest.rpmCounted): rpm is checked without adding it again. */
  rpmCounted?: boolean;
  /** In-window buckets, oldest first, without this request (but with it if rpmCounted). */
  window: [number, Bucket][];
  day: BudgetCounters;
  month: BudgetCounters;
}

/** The first limit the request breaks, in the documented order, with its retry hint; null if it passes. */
export function firstBrokenLimit(input: AdmissionInput): { limit: LimitName; retryAfterMs: number | undefined } | null {
  const { limits, tokens, usdMicros, now, window, day, month } = input;
  const totals = windowTotals(window);
  if (limits.maxConcurrent > 0 && input.inFlight + 1 > limits.maxConcurrent) {
    return { limit: 'maxConcurrent', retryAfterMs: CONCURRENCY_RETRY_MS };
  }
  const counting = input.rpmCounted ? 0 : 1;
  if (limits.rpm > 0 && totals.requests + counting > limits.rpm) {
    return { limit: 'rpm', retryAfterMs: msUntilFreed(window, 'requests', totals.requests + counting - limits.rpm, now) };
  }
  // Nothing for tpm or a budget to refuse: not at the limit, and not past it either (settled usage
  // can overshoot a budget), where `used + 0 > limit` alone would refuse it.
  if (input.countOnly) return null;
  if (limits.tpm > 0 && totals.tokens + tokens > limits.tpm) {
    // A request larger than the whole limit never fits, however long it waits.
    const retryAfterMs = tokens > limits.tpm ? undefined : msUntilFreed(window, 'tokens', totals.tokens + tokens - limits.tpm, now);
    return { limit: 'tpm', retryAfterMs };
  }
  // [limit, its value, settled use plus this request, reserved by requests in flight, this request
  // alone]; the months first: a spent month outlasts a spent day, and naming the day would send the
  // client back at midnight (or at once, when the day it arrived in has ended since) to be refused again.
  const budgets: [LimitName, number, number, number, number][] = [
    ['tokensPerMonth', limits.tokensPerMonth, month.tokensUsed + tokens, month.tokensReserved, tokens],
    ['usdPerMonth', limits.usdMicrosPerMonth, month.usdUsed + usdMicros, month.usdReserved, usdMicros],
    ['tokensPerDay', limits.tokensPerDay, day.tokensUsed + tokens, day.tokensReserved, tokens],
    ['usdPerDay', limits.usdMicrosPerDay, day.usdUsed + usdMicros, day.usdReserved, usdMicros],
  ];
  /** The first budget whose `amount` is over its value. */
  const firstOver = (amount: (b: (typeof budgets)[number]) => number) => budgets.find((b) => b[1] > 0 && amount(b) > b[1])?.[0];
  // Each question is asked of every budget before the next: larger than a whole budget (no period's
  // end lets it through: the client must ask for less); past what is left of one (waiting within
  // the period does not help, and one merely held must not hide one that is spent); only requests
  // in flight standing in the way.
  const refused = firstOver(([, , , , alone]) => alone) ?? firstOver(([, , wanted]) => wanted);
  if (refused) return { limit: refused, retryAfterMs: undefined };
  const held = firstOver(([, , wanted, reserved]) => wanted + reserved);
  if (held) return { limit: held, retryAfterMs: BUDGET_HELD_RETRY_MS };
  return null;
}

/**
 * Header states of the window (`window` must already include this request if it was admitted):
 * - requests.resetMs: ms until the window holds fewer than `rpm` requests, i.e. until one more
 *   request would pass rpm (0 when it would pass now);
 * - tokens.resetMs: ms until every token now in the window has left it (0 when it holds none).
 */
export function windowStates(
  list: [number, Bucket][],
  limits: StoreLimits,
  now: number,
): { requests?: WindowState; tokens?: WindowState } {
  const totals = windowTotals(list);
  const states: { requests?: WindowState; tokens?: WindowState } = {};
  if (limits.rpm > 0) {
    states.requests = {
      limit: limits.rpm,
      remaining: Math.max(0, limits.rpm - totals.requests),
      resetMs: msUntilFreed(list, 'requests', totals.requests - limits.rpm + 1, now) ?? 0,
    };
  }
  if (limits.tpm > 0) {
    states.tokens = {
      limit: limits.tpm,
      remaining: Math.max(0, limits.tpm - totals.tokens),
      resetMs: msUntilEmpty(list, ['tokens'], now),
    };
  }
  return states;
}

/** Builds the result without `undefined` members, so both stores return identical objects. */
export function admissionResult(
  broken: { limit: LimitName; retryAfterMs: number | undefined } | null,
  states: { requests?: WindowState; tokens?: WindowState },
): AdmissionResult {
  if (broken === null) return { admitted: true, ...states };
  return {
    admitted: false,
    limit: broken.limit,
    ...(broken.retryAfterMs !== undefined && { retryAfterMs: broken.retryAfterMs }),
    ...states,
  };
}

// Input checks, identical in both stores: the Redis scripts do integer arithmetic on what they are given.

function nonNegativeInt(value: number, name: string) {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${name} must be a non-negative integer, got ${value}`);
}

function positiveInt(value: number, name: string) {
  if (!Number.isSafeInteger(value) || value <= 0) throw new RangeError(`${name} must be a positive integer, got ${value}`);
}

function id(value: string, name: string) {
  // '|' separates the fields of a stored reservation.
  if (typeof value !== 'string' || value.length === 0 || value.includes('|')) {
    throw new RangeError(`${name} must be a non-empty string without '|'`);
  }
}

const LIMIT_FIELDS = [
  'rpm',
  'tpm',
  'tokensPerDay',
  'tokensPerMonth',
  'usdMicrosPerDay',
  'usdMicrosPerMonth',
  'maxConcurrent',
] as const satisfies readonly (keyof StoreLimits)[];

export function checkPeriods(periods: Periods, name = 'periods') {
  id(periods.day, `${name}.day`);
  id(periods.month, `${name}.month`);
  positiveInt(periods.dayTtlMs, `${name}.dayTtlMs`);
  positiveInt(periods.monthTtlMs, `${name}.monthTtlMs`);
}

export function checkAdmission(req: AdmissionRequest) {
  id(req.keyId, 'keyId');
  id(req.reservationId, 'reservationId');
  nonNegativeInt(req.tokens, 'tokens');
  nonNegativeInt(req.usdMicros, 'usdMicros');
  nonNegativeInt(req.now, 'now');
  positiveInt(req.leaseTtlMs, 'leaseTtlMs');
  if (req.countOnly && (req.tokens > 0 || req.usdMicros > 0)) throw new RangeError('a countOnly admission reserves nothing: tokens and usdMicros must be 0');
  if (req.countOnly && req.rpmCounted) throw new RangeError('a countOnly admission is the count: it cannot be rpmCounted too');
  for (const name of LIMIT_FIELDS) nonNegativeInt(req.limits[name], `limits.${name}`);
  checkPeriods(req.periods);
}

/**
 * admitAndLookup's arguments: an admission, and a cache name in the request key's own scope (its
 * entry and lock must share the key's cluster slot for one script to touch them all).
 */
export function checkJoinedLookup(req: AdmissionRequest, lookup: CacheLookup) {
  checkAdmission(req);
  // A hit found by the lookup would not be counted at all.
  if (req.rpmCounted) throw new RangeError('a joined admission counts its own request: it cannot be rpmCounted');
  const { scope } = cacheNameParts(lookup.name);
  if (scope !== req.keyId) throw new RangeError(`cache name ${JSON.stringify(lookup.name)} is not in the scope of key ${req.keyId}`);
  positiveInt(lookup.leadTtlMs, 'leadTtlMs');
  if (lookup.token !== undefined) checkLeadToken(lookup.token);
}

/** A caller's single-flight token (cacheAcquire): non-empty, since a fill without a token passes ''. */
export function checkLeadToken(token: string) {
  if (typeof token !== 'string' || token.length === 0 || token.length > 256) {
    throw new RangeError(`a lead token must be a string of 1 to 256 characters, got ${JSON.stringify(token)}`);
  }
}

export function checkSettlement(s: Settlement) {
  id(s.keyId, 'keyId');
  id(s.reservationId, 'reservationId');
  nonNegativeInt(s.tokens, 'tokens');
  nonNegativeInt(s.usdMicros, 'usdMicros');
  nonNegativeInt(s.now, 'now');
  checkPeriods(s.fallbackPeriods, 'fallbackPeriods');
}
