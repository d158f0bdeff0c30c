// In-process Store for the embedded single-instance default; same contract as the Redis store.
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { KeyRecord } from '../keys.js';
import {
  EMPTY_BUDGET,
  SETTLED_RETENTION_MS,
  admissionResult,
  checkAdmission,
  checkJoinedLookup,
  checkLeadToken,
  checkPeriods,
  checkSettlement,
  epochSecond,
  firstBrokenLimit,
  msUntilEmpty,
  oldestWindowSecond,
  windowBuckets,
  windowStates,
  windowTotals,
  type Bucket,
  type BudgetCounters,
} from './quota-math.js';
import { cacheNameParts } from './redis-keys.js';
import { CacheWaitList } from './cache-wait.js';
import { checkKeyPageQuery, cutPage } from './key-page.js';
import {
  checkEventsQuery,
  checkMark,
  checkResponseOwner,
  checkUsage,
  compareStreamIds,
  decodeUsageEvent,
  hourId,
  hourRange,
  sortUsageRows,
  usageParts,
  usageRowsOfHour,
  type StreamId,
} from './usage-math.js';
import type { UsageEvent } from '../usage/event.js';
import type {
  AdmissionRequest,
  CacheEntry,
  AdmissionResult,
  JoinedLookup,
  CacheLookup,
  EventsQuery,
  KeyChange,
  KeyChangeListener,
  KeyPage,
  KeyPageQuery,
  Periods,
  QuotaUsage,
  Settlement,
  SettleOutcome,
  Store,
  UsageRow,
} from './store.js';
import type { ResponseOwner } from './store.js';

export interface MemoryStoreOptions {
  /**
   * Clock of the methods not handed `now`: `hit`, the cache's expiries, the usage hours' expiries,
   * the event ids (what usageEvents' `sinceMs` filters on) and markOnce; default Date.now.
   */
  clock?: () => number;
}

/** One hour of usage aggregates, the fields as in the Redis hash; gone once the clock reaches `expiresAt`. */
interface UsageHour {
  fields: Map<string, number>;
  expiresAt: number;
}

/** A stored usage event: its stream-like id, and the JSON (a copy nobody shares, read back as Redis would). */
interface StoredEvent extends StreamId {
  json: string;
}

/** Trimmed events are dropped from the array's front once this many have piled up (and half of it is dead). */
const EVENT_COMPACT_AT = 1024;

/** What the Redis store keeps per gateway key (see redis-keys.ts), as plain maps. */
interface KeyQuota {
  /** Rolling-minute buckets by epoch second. */
  buckets: Map<number, Bucket>;
  reservations: Map<string, Reservation>;
  /** reservationId -> lease expiry (ms). */
  leases: Map<string, number>;
  /** Leases ended before their settlement (endLease), not in flight: reservationId -> expiry (ms). */
  ended: Map<string, number>;
  /** Lower bound of the earliest lease expiry (ended ones too): no lease can be dead before it, so no scan is needed. */
  earliestLease: number;
  /** reservationId -> settle time (ms). */
  settled: Map<string, number>;
}

interface Reservation {
  tokens: number;
  usdMicros: number;
  second: number;
  day: string;
  month: string;
}

/** A period's budget counters; like the Redis hash, it is gone once `now` reaches `expiresAt`. */
interface Budget extends BudgetCounters {
  expiresAt: number;
}

type PeriodKind = 'day' | 'month';

/** How often (in the callers' `now`) expired budgets, counters and idle keys are swept out. */
const SWEEP_INTERVAL_MS = 60_000;

export class MemoryStore implements Store {
  readonly kind = 'memory' as const;
  readonly #byId = new Map<string, KeyRecord>();
  readonly #idByHash = new Map<string, string>();
  readonly #listeners = new Set<KeyChangeListener>();
  readonly #quotas = new Map<string, KeyQuota>();
  /** `${kind}\n${keyId}\n${periodId}` -> budget. */
  readonly #budgets = new Map<string, Budget>();
  readonly #counters = new Map<string, { count: number; expiresAt: number }>();
  readonly #clock: () => number;
  #lastSweep = -Infinity;
  /** Cache name -> entry, and name -> lock expiry; both expire lazily by the clock, like PX keys. */
  readonly #cache = new Map<string, { entry: CacheEntry; expiresAt: number }>();
  readonly #cacheLocks = new Map<string, { expiresAt: number; token: string }>();
  #lastCacheSweep = -Infinity;
  /** 'release' (name, filled): what the Redis store hears on its cache-fills channel. */
  readonly #releases = new EventEmitter();
  readonly #waits: CacheWaitList;
  /** Hour id -> aggregates (the Redis `usage:hour:<id>` hashes). */
  readonly #usageHours = new Map<string, UsageHour>();
  /** Per hour, the event ids already counted (record.lua's set): a replayed event counts once. */
  readonly #usageSeen = new Map<string, { ids: Set<string>; expiresAt: number }>();
  /**
   * The event stream, oldest first, ids increasing; the live part starts at #eventsHead (the entries
   * before it are trimmed, and dropped in batches), so trimming costs O(1) per event.
   */
  #events: StoredEvent[] = [];
  #eventsHead = 0;
  /** The last id handed out: ids never go back, even if the clock does (as in Redis). */
  #lastEventId: StreamId = { ms: 0, seq: 0 };
  /** Responses API object id -> its creator's key id and expiry (clock ms). */
  readonly #responseOwners = new Map<string, { keyId: string; contextTokens: number; expiresAt: number }>();
  /** markOnce name -> expiry (clock ms). */
  readonly #marks = new Map<string, number>();
  #lastUsageSweep = -Infinity;

  constructor(opts: MemoryStoreOptions = {}) {
    this.#clock = opts.clock ?? Date.now;
    this.#waits = new CacheWaitList(async (name) => {
      // As RedisStore's #cacheOutcome: the lock first, then the entry.
      const now = this.#clock();
      if (this.#liveCacheLock(name, now)) return null;
      return this.#liveCacheEntry(name, now) ? 'filled' : 'failed';
    });
    this.#releases.on('release', (name: string, filled: boolean) => this.#waits.settle(name, filled ? 'filled' : 'failed'));
  }

  async createKey(record: KeyRecord): Promise<void> {
    creationScore(record);
    if (this.#byId.has(record.id)) throw new Error(`key ${record.id} already exists`);
    // Cloned on the way in and out so no caller shares an object with the store.
    this.#byId.set(record.id, structuredClone(record));
    this.#idByHash.set(record.hash, record.id);
  }

  async getKeyById(id: string): Promise<KeyRecord | null> {
    const record = this.#byId.get(id);
    return record ? structuredClone(record) : null;
  }

  async getKeyByHash(hash: string): Promise<KeyRecord | null> {
    const id = this.#idByHash.get(hash);
    const record = id === undefined ? undefined : this.#byId.get(id);
    return record && record.hash === hash ? structuredClone(record) : null;
  }

  async listKeys(): Promise<KeyRecord[]> {
    return this.#listOrder().map((r) => structuredClone(r));
  }

  async listKeysPage(query: KeyPageQuery): Promise<KeyPage | null> {
    checkKeyPageQuery(query);
    const { limit, after } = query;
    // Sorts every key per page: the embedded store is for one instance and few keys, where that costs
    // less than keeping a sorted index up to date.
    const ordered = this.#listOrder();
    const start = after === undefined ? 0 : ordered.findIndex((r) => r.id === after) + 1;
    if (start === 0 && after !== undefined) return null;
    const { ids, hasMore } = cutPage(ordered.slice(start, start + limit + 1).map((r) => r.id), limit);
    return { keys: ids.map((id) => structuredClone(this.#byId.get(id)!)), hasMore, lastId: ids.at(-1) ?? null };
  }

  /** Every record (not copies), in the Redis ZSET's order: creation time, ties broken by id. */
  #listOrder(): KeyRecord[] {
    return [...this.#byId.values()].sort((a, b) => creationScore(a) - creationScore(b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  async updateKey(id: string, change: KeyChange): Promise<{ record: KeyRecord; changed: boolean } | null> {
    const current = this.#byId.get(id);
    if (!current) return null;
    // Read, change and write in one synchronous step: nothing can land in between.
    const record = change(structuredClone(current));
    if (record === null) return { record: structuredClone(current), changed: false };
    if (record.id !== id) throw new RangeError(`a change may not alter a key's id (${id})`);
    const previousHash = current.hash;
    this.#byId.set(id, structuredClone(record));
    if (record.hash !== previousHash) {
      this.#idByHash.set(record.hash, record.id);
      if (this.#idByHash.get(previousHash) === record.id) this.#idByHash.delete(previousHash);
    }
    const hashes = previousHash === record.hash ? [record.hash] : [previousHash, record.hash];
    // After the write but before the caller resumes, like a change feed that is never late.
    queueMicrotask(() => {
      for (const hash of hashes) this.#notify({ id: record.id, hash });
    });
    return { record: structuredClone(record), changed: true };
  }

  onKeyChange(listener: KeyChangeListener): void {
    this.#listeners.add(listener);
  }

  // The quota methods never await: each runs to the end in one go, as atomic as a Lua script.

  async admit(req: AdmissionRequest): Promise<AdmissionResult> {
    checkAdmission(req);
    return this.#admit(req);
  }

  async admitAndLookup(req: AdmissionRequest, lookup: CacheLookup): Promise<JoinedLookup> {
    checkJoinedLookup(req, lookup);
    const now = this.#clock();
    const stored = this.#liveCacheEntry(lookup.name, now);
    if (stored) {
      const admission = this.#admit({ ...req, tokens: 0, usdMicros: 0, countOnly: true });
      return { lookup: 'hit', entry: copyEntry(stored.entry), admission };
    }
    this.#sweepCache(now);
    if (this.#liveCacheLock(lookup.name, now)) return { lookup: 'wait' };
    const admission = this.#admit(req);
    return { lookup: 'miss', leader: admission.admitted ? this.#lead(lookup.name, lookup.leadTtlMs, now, lookup.token) : null, admission };
  }

  /** admit() after its checks, in one synchronous step (admitAndLookup runs it between its cache reads). */
  #admit(req: AdmissionRequest): AdmissionResult {
    const { keyId, now, periods, tokens, usdMicros } = req;
    this.#sweep(now);
    const q = this.#quota(keyId);
    if (q.reservations.has(req.reservationId)) throw new Error(`reservation ${req.reservationId} already exists`);

    // 1. Release dead leases (expiry <= now), ended ones too (no settlement came).
    if (q.earliestLease <= now) {
      let earliest = Infinity;
      for (const leases of [q.leases, q.ended]) {
        for (const [id, expiresAt] of leases) {
          if (expiresAt > now) {
            earliest = Math.min(earliest, expiresAt);
            continue;
          }
          leases.delete(id);
          const reservation = q.reservations.get(id);
          if (reservation) {
            this.#unreserve(keyId, reservation, now);
            q.reservations.delete(id);
          }
        }
      }
      q.earliestLease = earliest;
    }

    // 2-3. Limits on the window as it is, then record all or nothing.
    const window = windowBuckets(q.buckets, now);
    const broken = firstBrokenLimit({
      limits: req.limits,
      tokens,
      usdMicros,
      now,
      inFlight: q.leases.size,
      countOnly: req.countOnly === true,
      rpmCounted: req.rpmCounted === true,
      window,
      day: this.#budget(keyId, 'day', periods.day, now) ?? EMPTY_BUDGET,
      month: this.#budget(keyId, 'month', periods.month, now) ?? EMPTY_BUDGET,
    });
    if (broken !== null) return admissionResult(broken, windowStates(window, req.limits, now));

    const second = epochSecond(now);
    const oldest = oldestWindowSecond(now);
    for (const s of q.buckets.keys()) if (s < oldest) q.buckets.delete(s);
    const bucket = q.buckets.get(second) ?? { requests: 0, tokens: 0 };
    if (!req.rpmCounted) bucket.requests += 1;
    bucket.tokens += tokens;
    q.buckets.set(second, bucket);
    if (req.countOnly) return admissionResult(null, windowStates(windowBuckets(q.buckets, now), req.limits, now));

    for (const [kind, id, ttl] of [
      ['day', periods.day, periods.dayTtlMs],
      ['month', periods.month, periods.monthTtlMs],
    ] as const) {
      const b = this.#liveOrNewBudget(keyId, kind, id, now);
      b.tokensReserved += tokens;
      b.usdReserved += usdMicros;
      b.expiresAt = now + ttl;
    }

    q.reservations.set(req.reservationId, { tokens, usdMicros, second, day: periods.day, month: periods.month });
    const expiresAt = now + req.leaseTtlMs;
    q.leases.set(req.reservationId, expiresAt);
    q.earliestLease = Math.min(q.earliestLease, expiresAt);

    return admissionResult(null, windowStates(windowBuckets(q.buckets, now), req.limits, now));
  }

  async settle(s: Settlement): Promise<SettleOutcome> {
    checkSettlement(s);
    const { keyId, now, fallbackPeriods: fallback } = s;
    this.#sweep(now);
    const q = this.#quota(keyId);
    if (q.settled.has(s.reservationId)) return 'already-settled';

    let outcome: SettleOutcome = 'expired';
    const reservation = q.reservations.get(s.reservationId);
    q.reservations.delete(s.reservationId);
    q.leases.delete(s.reservationId);
    q.ended.delete(s.reservationId);
    if (reservation) {
      this.#unreserve(keyId, reservation, now);
      // Charged to the periods it was reserved in, even if a new day has begun since.
      this.#addUsed(keyId, 'day', reservation.day, s, fallback.day === reservation.day, fallback.dayTtlMs);
      this.#addUsed(keyId, 'month', reservation.month, s, fallback.month === reservation.month, fallback.monthTtlMs);
      // The tpm window counted the worst case; make it count the real tokens while the bucket is in it.
      const bucket = reservation.second >= oldestWindowSecond(now) ? q.buckets.get(reservation.second) : undefined;
      if (bucket) bucket.tokens = Math.max(0, bucket.tokens + s.tokens - reservation.tokens);
      outcome = 'settled';
    } else {
      this.#addUsed(keyId, 'day', fallback.day, s, true, fallback.dayTtlMs);
      this.#addUsed(keyId, 'month', fallback.month, s, true, fallback.monthTtlMs);
    }

    for (const [id, at] of q.settled) if (at < now - SETTLED_RETENTION_MS) q.settled.delete(id);
    q.settled.set(s.reservationId, now);
    return outcome;
  }

  async renewLeases(leases: { keyId: string; reservationId: string }[], now: number, leaseTtlMs: number): Promise<void> {
    for (const { keyId, reservationId } of leases) {
      const q = this.#quotas.get(keyId);
      // Only leases that still exist: one already released (its reservation given back) stays released.
      // An ended one counts in flight again, as in Redis (where renewing overwrites its offset score).
      if (!q || !(q.leases.has(reservationId) || q.ended.delete(reservationId))) continue;
      q.leases.set(reservationId, now + leaseTtlMs);
      q.earliestLease = Math.min(q.earliestLease, now + leaseTtlMs);
    }
  }

  async endLease(lease: { keyId: string; reservationId: string }, now: number, leaseTtlMs: number): Promise<void> {
    const q = this.#quotas.get(lease.keyId);
    // Only a lease that still exists (ended again: its expiry moves, as in Redis).
    if (!q || !(q.leases.delete(lease.reservationId) || q.ended.has(lease.reservationId))) return;
    q.ended.set(lease.reservationId, now + leaseTtlMs);
    q.earliestLease = Math.min(q.earliestLease, now + leaseTtlMs);
  }

  async quotaUsage(keyId: string, periods: Periods, now: number): Promise<QuotaUsage> {
    checkPeriods(periods);
    const q = this.#quotas.get(keyId);
    const window = q ? windowBuckets(q.buckets, now) : [];
    const totals = windowTotals(window);
    let inFlight = 0;
    for (const expiresAt of q?.leases.values() ?? []) if (expiresAt > now) inFlight++;
    const day = this.#budget(keyId, 'day', periods.day, now) ?? EMPTY_BUDGET;
    const month = this.#budget(keyId, 'month', periods.month, now) ?? EMPTY_BUDGET;
    return {
      minute: { requests: totals.requests, tokens: totals.tokens, resetMs: msUntilEmpty(window, ['requests', 'tokens'], now) },
      inFlight,
      day: { tokens: { used: day.tokensUsed, reserved: day.tokensReserved }, usdMicros: { used: day.usdUsed, reserved: day.usdReserved } },
      month: {
        tokens: { used: month.tokensUsed, reserved: month.tokensReserved },
        usdMicros: { used: month.usdUsed, reserved: month.usdReserved },
      },
    };
  }

  async hit(name: string, windowMs: number): Promise<{ count: number; ttlMs: number }> {
    if (!Number.isSafeInteger(windowMs) || windowMs <= 0) throw new RangeError(`windowMs must be a positive integer, got ${windowMs}`);
    const now = this.#clock();
    let counter = this.#counters.get(name);
    if (!counter || counter.expiresAt <= now) {
      counter = { count: 0, expiresAt: now + windowMs };
      this.#counters.set(name, counter);
    }
    counter.count++;
    return { count: counter.count, ttlMs: counter.expiresAt - now };
  }

  async cacheGet(name: string): Promise<CacheEntry | null> {
    cacheNameParts(name);
    const stored = this.#liveCacheEntry(name, this.#clock());
    return stored ? copyEntry(stored.entry) : null;
  }

  async cacheLookup(name: string, leadTtlMs: number, token?: string): Promise<{ entry: CacheEntry | null; leader: string | null }> {
    cacheNameParts(name);
    checkTtl(leadTtlMs);
    if (token !== undefined) checkLeadToken(token);
    const entry = await this.cacheGet(name);
    if (entry) return { entry, leader: null };
    return { entry: null, leader: await this.cacheAcquire(name, leadTtlMs, token) };
  }

  async cacheAcquire(name: string, ttlMs: number, token?: string): Promise<string | null> {
    cacheNameParts(name);
    checkTtl(ttlMs);
    if (token !== undefined) checkLeadToken(token);
    const now = this.#clock();
    this.#sweepCache(now);
    if (this.#liveCacheLock(name, now)) return null;
    return this.#lead(name, ttlMs, now, token);
  }

  /** Takes the single-flight lead of a name nobody leads: its token (the caller's, if given). */
  #lead(name: string, ttlMs: number, now: number, token: string = randomUUID()): string {
    this.#cacheLocks.set(name, { expiresAt: now + ttlMs, token });
    return token;
  }

  async cacheFill(name: string, fill: { entry?: CacheEntry; ttlMs?: number; token: string | null }): Promise<void> {
    cacheNameParts(name);
    const now = this.#clock();
    if (fill.entry !== undefined) {
      checkTtl(fill.ttlMs as number);
      this.#sweepCache(now);
      this.#cache.set(name, { entry: copyEntry(fill.entry), expiresAt: now + (fill.ttlMs as number) });
    }
    if (fill.token !== null && this.#cacheLocks.get(name)?.token === fill.token) this.#cacheLocks.delete(name);
    this.#releases.emit('release', name, this.#liveCacheEntry(name, now) !== undefined);
  }

  cacheWait(name: string, timeoutMs: number): Promise<'filled' | 'failed' | 'timeout'> {
    return this.#waits.wait(name, timeoutMs);
  }

  async cachePurge(scopePrefix = ''): Promise<number> {
    const now = this.#clock();
    let deleted = 0;
    for (const [name, stored] of this.#cache) {
      if (!name.startsWith(scopePrefix)) continue;
      this.#cache.delete(name);
      // Like UNLINK, which does not count a key that had already expired.
      if (stored.expiresAt > now) deleted++;
    }
    return deleted;
  }

  async recordUsage(events: readonly UsageEvent[], options: { retentionMs: number; maxEvents: number }): Promise<void> {
    const checked = events.map((event) => checkUsage(event, options));
    const now = this.#clock();
    this.#sweepUsage(now);

    const countedHours = new Set<string>();
    for (const part of usageParts(checked, options.retentionMs)) {
      let seen = this.#usageSeen.get(part.hour);
      if (!seen || seen.expiresAt <= now) this.#usageSeen.set(part.hour, (seen = { ids: new Set(), expiresAt: now }));
      if (seen.ids.has(part.batchId)) continue;
      seen.ids.add(part.batchId);
      seen.expiresAt = now + part.seenTtlMs;
      let hour = this.#liveUsageHour(part.hour, now);
      if (!hour) {
        hour = { fields: new Map(), expiresAt: now };
        this.#usageHours.set(part.hour, hour);
      }
      for (const [field, by] of part.increments) hour.fields.set(field, (hour.fields.get(field) ?? 0) + by);
      // Like the PEXPIRE that follows every write in Redis: relative to now (see usageTtlMs).
      hour.expiresAt = now + part.ttlMs;
      countedHours.add(part.hour);
    }
    // Listed once per part, like Redis's list.lua. Here counting and listing are one synchronous
    // step, so no part is ever counted without being listed (Redis needs a mark of its own for
    // that: the count's reply may be lost), and a part counted before is listed already.
    for (const e of checked) if (countedHours.has(hourId(e.ts))) this.#appendEvent(e, now, options.maxEvents);
  }

  /** Ids like Redis stream ids: the clock's ms, a sequence within it, never going back. */
  #appendEvent(e: UsageEvent, now: number, maxEvents: number) {
    const ms = Math.max(Math.floor(now), this.#lastEventId.ms);
    this.#lastEventId = { ms, seq: ms === this.#lastEventId.ms ? this.#lastEventId.seq + 1 : 0 };
    this.#events.push({ ...this.#lastEventId, json: JSON.stringify(e) });
    // Exactly the newest maxEvents are kept (Redis's `MAXLEN ~` may keep a few more).
    this.#eventsHead = Math.max(this.#eventsHead, this.#events.length - maxEvents);
    if (this.#eventsHead >= EVENT_COMPACT_AT && this.#eventsHead * 2 >= this.#events.length) {
      this.#events = this.#events.slice(this.#eventsHead);
      this.#eventsHead = 0;
    }
  }

  async usageRows(fromHour: string, toHour: string): Promise<UsageRow[]> {
    const hours = hourRange(fromHour, toHour);
    const now = this.#clock();
    const rows: UsageRow[] = [];
    // Hour ids sort as they read, so the stored hours in range are found without walking the range.
    const [first, last] = [hours[0], hours.at(-1)];
    if (first === undefined || last === undefined) return rows;
    for (const id of [...this.#usageHours.keys()]) {
      if (id < first || id > last) continue;
      const hour = this.#liveUsageHour(id, now);
      if (hour) rows.push(...usageRowsOfHour(id, hour.fields).rows);
    }
    return sortUsageRows(rows);
  }

  /** `sinceMs` filters on when the event was recorded (this store's clock), not on `event.ts`, as in Redis. */
  async usageEvents(query: EventsQuery): Promise<{ id: string; event: UsageEvent }[]> {
    const after = checkEventsQuery(query);
    const events = this.#events;
    const since: StreamId = { ms: query.sinceMs, seq: 0 };
    // First live index whose id reaches `id`: ids increase, so bisect.
    const firstFrom = (id: StreamId) => {
      let lo = this.#eventsHead;
      let hi = events.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (compareStreamIds(events[mid]!, id) < 0) lo = mid + 1;
        else hi = mid;
      }
      return lo;
    };
    const out: { id: string; event: UsageEvent }[] = [];
    const take = (i: number) => {
      const stored = events[i]!;
      // Always decodes (it was checked on the way in); read back like Redis's, so both return alike.
      const event = decodeUsageEvent(stored.json);
      if (event) out.push({ id: `${stored.ms}-${stored.seq}`, event });
    };
    if (query.order === 'desc') {
      // Newest first: from just before `after` (or the newest) down to the first one at `since`.
      const stop = firstFrom(since);
      for (let i = (after ? firstFrom(after) : events.length) - 1; i >= stop && out.length < query.limit; i--) take(i);
      return out;
    }
    // Oldest first: from just past `after`, or else from `since`.
    const start = firstFrom(after ? { ms: after.ms, seq: after.seq + 1 } : since);
    for (let i = start; i < events.length && out.length < query.limit; i++) take(i);
    return out;
  }

  async markOnce(name: string, ttlMs: number): Promise<boolean> {
    checkMark(name, ttlMs);
    const now = this.#clock();
    this.#sweepUsage(now);
    const expiresAt = this.#marks.get(name);
    if (expiresAt !== undefined && expiresAt > now) return false;
    this.#marks.set(name, now + ttlMs);
    return true;
  }

  async setResponseOwner(responseId: string, keyId: string, ttlMs: number, contextTokens = 0): Promise<void> {
    checkResponseOwner(responseId, keyId, ttlMs, contextTokens);
    const now = this.#clock();
    // Expired owners are dropped as new ones arrive, so the map stays as big as the live set.
    if (this.#responseOwners.size > 0 && this.#responseOwners.size % 1024 === 0) {
      for (const [id, owner] of this.#responseOwners) if (owner.expiresAt <= now) this.#responseOwners.delete(id);
    }
    this.#responseOwners.set(responseId, { keyId, contextTokens, expiresAt: now + ttlMs });
  }

  async getResponseOwner(responseId: string): Promise<ResponseOwner | null> {
    checkResponseOwner(responseId);
    const owner = this.#responseOwners.get(responseId);
    if (!owner) return null;
    if (owner.expiresAt <= this.#clock()) {
      this.#responseOwners.delete(responseId);
      return null;
    }
    return { keyId: owner.keyId, contextTokens: owner.contextTokens };
  }

  async deleteResponseOwner(responseId: string): Promise<void> {
    checkResponseOwner(responseId);
    this.#responseOwners.delete(responseId);
  }

  async ping(): Promise<void> {}

  async close(): Promise<void> {
    this.#listeners.clear();
    this.#waits.close();
  }

  #liveUsageHour(id: string, now: number): UsageHour | undefined {
    const hour = this.#usageHours.get(id);
    if (hour && hour.expiresAt <= now) {
      this.#usageHours.delete(id);
      return undefined;
    }
    return hour;
  }

  /** Drops usage hours and marks past their expiry that nobody reads again (lazy expiry alone would keep them). */
  #sweepUsage(now: number) {
    if (now - this.#lastUsageSweep < SWEEP_INTERVAL_MS && now >= this.#lastUsageSweep) return;
    this.#lastUsageSweep = now;
    for (const [id, hour] of this.#usageHours) if (hour.expiresAt <= now) this.#usageHours.delete(id);
    for (const [id, seen] of this.#usageSeen) if (seen.expiresAt <= now) this.#usageSeen.delete(id);
    for (const [name, expiresAt] of this.#marks) if (expiresAt <= now) this.#marks.delete(name);
  }

  #liveCacheEntry(name: string, now: number) {
    const stored = this.#cache.get(name);
    if (stored && stored.expiresAt <= now) {
      this.#cache.delete(name);
      return undefined;
    }
    return stored;
  }

  #liveCacheLock(name: string, now: number): boolean {
    const expiresAt = this.#cacheLocks.get(name)?.expiresAt;
    if (expiresAt !== undefined && expiresAt <= now) this.#cacheLocks.delete(name);
    return expiresAt !== undefined && expiresAt > now;
  }

  /** Drops expired entries and locks nobody asked for again, which lazy expiry alone would keep forever. */
  #sweepCache(now: number) {
    if (now - this.#lastCacheSweep < SWEEP_INTERVAL_MS && now >= this.#lastCacheSweep) return;
    this.#lastCacheSweep = now;
    for (const [name, stored] of this.#cache) if (stored.expiresAt <= now) this.#cache.delete(name);
    for (const [name, lock] of this.#cacheLocks) if (lock.expiresAt <= now) this.#cacheLocks.delete(name);
  }

  #quota(keyId: string): KeyQuota {
    let q = this.#quotas.get(keyId);
    if (!q) {
      q = { buckets: new Map(), reservations: new Map(), leases: new Map(), ended: new Map(), earliestLease: Infinity, settled: new Map() };
      this.#quotas.set(keyId, q);
    }
    return q;
  }

  /** A period's budget if it has not expired at `now` (an expired one is dropped, as Redis would). */
  #budget(keyId: string, kind: PeriodKind, periodId: string, now: number): Budget | undefined {
    const key = budgetKey(kind, keyId, periodId);
    const budget = this.#budgets.get(key);
    if (budget && budget.expiresAt <= now) {
      this.#budgets.delete(key);
      return undefined;
    }
    return budget;
  }

  /** Like HINCRBY on a missing hash: a new, empty budget. The caller sets its expiry. */
  #liveOrNewBudget(keyId: string, kind: PeriodKind, periodId: string, now: number): Budget {
    let budget = this.#budget(keyId, kind, periodId, now);
    if (!budget) {
      budget = { tokensUsed: 0, tokensReserved: 0, usdUsed: 0, usdReserved: 0, expiresAt: now };
      this.#budgets.set(budgetKey(kind, keyId, periodId), budget);
    }
    return budget;
  }

  /** Gives a reservation's amounts back to its periods' budgets that still exist, never below 0. */
  #unreserve(keyId: string, r: Reservation, now: number) {
    for (const b of [this.#budget(keyId, 'day', r.day, now), this.#budget(keyId, 'month', r.month, now)]) {
      if (!b) continue;
      b.tokensReserved = Math.max(0, b.tokensReserved - r.tokens);
      b.usdReserved = Math.max(0, b.usdReserved - r.usdMicros);
    }
  }

  /**
   * Adds real usage to a period. The fallback (current) periods get their expiry refreshed, as on
   * every write; another period keeps its own, unless it had expired and is created anew.
   */
  #addUsed(
    keyId: string,
    kind: PeriodKind,
    periodId: string,
    usage: { tokens: number; usdMicros: number; now: number },
    isFallback: boolean,
    ttlMs: number,
  ) {
    const { now } = usage;
    const existing = this.#budget(keyId, kind, periodId, now);
    const budget = existing ?? this.#liveOrNewBudget(keyId, kind, periodId, now);
    budget.tokensUsed += usage.tokens;
    budget.usdUsed += usage.usdMicros;
    if (isFallback || !existing) budget.expiresAt = now + ttlMs;
  }

  /** Drops what Redis would have expired: budgets and counters past their TTL, keys with no state left. */
  #sweep(now: number) {
    if (now - this.#lastSweep < SWEEP_INTERVAL_MS && now >= this.#lastSweep) return;
    this.#lastSweep = now;
    for (const [key, budget] of this.#budgets) if (budget.expiresAt <= now) this.#budgets.delete(key);
    const clock = this.#clock();
    for (const [name, counter] of this.#counters) if (counter.expiresAt <= clock) this.#counters.delete(name);
    const oldest = oldestWindowSecond(now);
    for (const [keyId, q] of this.#quotas) {
      for (const s of q.buckets.keys()) if (s < oldest) q.buckets.delete(s);
      for (const [id, at] of q.settled) if (at < now - SETTLED_RETENTION_MS) q.settled.delete(id);
      if (q.buckets.size === 0 && q.reservations.size === 0 && q.leases.size === 0 && q.ended.size === 0 && q.settled.size === 0) {
        this.#quotas.delete(keyId);
      }
    }
  }

  #notify(change: { id: string; hash: string }) {
    for (const listener of [...this.#listeners]) {
      // A throwing listener must not break the others, nor escape a microtask and kill the process.
      try {
        listener(change);
      } catch {
        /* the listener's own failure; nothing the store can do */
      }
    }
  }
}

export function createMemoryStore(opts: MemoryStoreOptions = {}): MemoryStore {
  return new MemoryStore(opts);
}

/** Only the fields of a CacheEntry (as the Redis store's schema keeps), so no caller shares an object with the store. */
function copyEntry(e: CacheEntry): CacheEntry {
  return {
    storedAt: e.storedAt,
    body: e.body,
    model: e.model,
    promptTokens: e.promptTokens,
    cachedPromptTokens: e.cachedPromptTokens,
    completionTokens: e.completionTokens,
  };
}

function checkTtl(ttlMs: number) {
  if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0) throw new RangeError(`ttlMs must be a positive integer, got ${ttlMs}`);
}

function budgetKey(kind: PeriodKind, keyId: string, periodId: string): string {
  return `${kind}\n${keyId}\n${periodId}`;
}

/** Creation time in ms: the list order. Rejects what Redis could not score, so both stores agree. */
function creationScore(record: KeyRecord): number {
  const ms = Date.parse(record.createdAt);
  if (!Number.isFinite(ms)) throw new Error(`key ${record.id} has an invalid createdAt`);
  return ms;
}
