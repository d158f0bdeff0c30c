// Store on Redis: records as JSON strings, a hash index, a creation-ordered ZSET, pub/sub for key
// changes; quotas in per-key hashes and ZSETs changed only by the Lua scripts in ./lua/; cache
// entries and single-flight locks as PX strings, fills heard on a pub/sub channel; usage in one
// hash per UTC hour and a capped stream of events.
import { randomBytes } from 'node:crypto';
import type { ChainableCommander, Redis } from 'ioredis';
import { z } from 'zod';
import { storedLimitsSchema, type KeyRecord } from '../keys.js';
import { loadLua } from './lua.js';
import { createRedisConnection, type RedisClient, type RedisConnection, type RedisConnectionOptions } from './redis-connection.js';
import { CacheWaitList } from './cache-wait.js';
import {
  EMPTY_BUDGET,
  LIMIT_ORDER,
  SETTLED_RETENTION_MS,
  admissionResult,
  bucketsFromHash,
  checkAdmission,
  checkJoinedLookup,
  checkLeadToken,
  checkPeriods,
  checkSettlement,
  msUntilEmpty,
  windowBuckets,
  windowTotals,
  type BudgetCounters,
} from './quota-math.js';
import { redisKeys, type RedisKeys } from './redis-keys.js';
import { checkKeyPageQuery, cutPage } from './key-page.js';
import {
  checkEventsQuery,
  checkMark,
  checkResponseOwner,
  contextTokensOf,
  checkUsage,
  decodeUsageEvent,
  hourId,
  hourRange,
  sortUsageRows,
  usageParts,
  usageRowsOfHour,
} from './usage-math.js';
import type { UsageEvent } from '../usage/event.js';
import type {
  AdmissionRequest,
  AdmissionResult,
  JoinedLookup,
  CacheLookup,
  CacheEntry,
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
  WindowState,
} from './store.js';
import { KeyChangeConflictError, type ResponseOwner } from './store.js';

export interface RedisStoreLogger {
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** Where Redis is (one server, a cluster or Sentinel: see RedisConnectionOptions), and how the store uses it. */
export interface RedisStoreOptions extends RedisConnectionOptions {
  /** Prepended to every key and channel; default 'tg:'. */
  prefix?: string;
  /** Defaults to silence; the gateway passes its pino logger. */
  logger?: RedisStoreLogger;
  /** How often the subscriber is checked; default SUBSCRIBER_PING_INTERVAL_MS (tests shorten it). */
  subscriberCheckIntervalMs?: number;
}

/** How often a persisting Redis outage is logged again. */
const ERROR_LOG_INTERVAL_MS = 30_000;
/**
 * How often the subscriber's connection is checked with a PING. A subscriber only listens, so a
 * node that froze (or a connection cut without a reset) would go unnoticed: no error, no messages.
 */
const SUBSCRIBER_PING_INTERVAL_MS = 5_000;
/** PINGs in a row, each bounded by the command timeout, that must go unanswered to drop the subscriber. */
const SUBSCRIBER_PING_ATTEMPTS = 2;
const WILDCARD = { id: '*', hash: '*' } as const;

// Checks the shape the gateway relies on. Loose objects keep fields a newer version may have
// written, so an older instance updating a record during a rolling upgrade does not drop them.
const storedKeyRecordSchema = z.looseObject({
  id: z.string().min(1),
  name: z.string(),
  hash: z.string().min(1),
  hint: z.string(),
  models: z.array(z.string()).nullable(),
  limits: storedLimitsSchema.loose(),
  metadata: z.record(z.string(), z.union([z.string(), z.number(), z.boolean(), z.null()])),
  createdAt: z.string(),
  updatedAt: z.string(),
  revokedAt: z.string().nullable(),
});

const keyChangeSchema = z.object({ id: z.string().min(1), hash: z.string().min(1) });

// A cache entry as read back: anything else is a miss. Unknown fields are dropped (z.object), so
// callers get exactly a CacheEntry, as from the memory store.
const storedCacheEntrySchema = z.object({
  storedAt: z.number(),
  body: z.string(),
  model: z.string(),
  promptTokens: z.number().int().nonnegative(),
  cachedPromptTokens: z.number().int().nonnegative(),
  completionTokens: z.number().int().nonnegative(),
}) satisfies z.ZodType<CacheEntry>;

/** What fill.lua publishes on the cache-fills channel (when someone waits). */
const cacheFillSchema = z.object({ name: z.string().min(1), filled: z.boolean() });
/** A waiters mark outlives no wait: the longest a wait can be (setTimeout's limit, ~24.8 days). */
const MAX_WAIT_MARK_MS = 2 ** 31 - 1;

/** SCAN page size of cachePurge; each page's matches are unlinked in one round trip. */
const PURGE_SCAN_COUNT = 500;
/** Hours read per round trip by usageRows: a week in one, and no reply so big it holds up the connection for long. */
const USAGE_HOURS_PER_ROUND_TRIP = 168;


/**
 * Added to an ended lease's expiry (Store.endLease; admit.lua's ENDED): far above any epoch-ms
 * expiry, so an older admit.lua (a rolling upgrade) sees an ended lease as still in flight rather
 * than dead, and far below 2^53, so every score stays an exact integer.
 */
export const ENDED_LEASE_OFFSET = 1e15;

/**
 * Events per list.lua call. A script holds Redis while it runs; this many events take ~0.2 ms,
 * where one call for a whole flush of a busy instance (500 events) held it ~1.6 ms.
 */
export const LIST_CHUNK_EVENTS = 64;
/** Compare-and-set rounds an updateKey tries before giving up: each lost round means another write won. */
const MAX_KEY_UPDATE_ATTEMPTS = 10;
/** How old a connection error may be and still explain a failed ping (see ping()). */
const RECENT_CONNECTION_ERROR_MS = 5_000;
/** The commands `defineCommand` adds (ioredis cannot type them): keys first, then arguments. */
interface QuotaCommands {
  tollgateAdmit(...keysAndArgs: (string | number)[]): Promise<(number | string)[]>;
  tollgateAdmitLookup(...keysAndArgs: (string | number)[]): Promise<(number | string)[]>;
  tollgateSettle(...keysAndArgs: (string | number)[]): Promise<number>;
  tollgateHit(key: string, windowMs: number): Promise<[number, number]>;
  tollgateLookup(entry: string, lock: string, token: string, ttlMs: number): Promise<[number, string?]>;
  tollgateFill(...keysAndArgs: (string | number)[]): Promise<number>;
  tollgateRecord(...keysAndArgs: (string | number)[]): Promise<number>;
  tollgateSwap(key: string, expected: string, value: string): Promise<number>;
  tollgateKeyPage(keyList: string, after: string, count: number): Promise<string[] | null>;
  tollgateList(numberOfKeys: number, ...keysAndArgs: (string | number)[]): Promise<number>;
}

const SETTLE_OUTCOMES: Record<number, SettleOutcome> = { 1: 'settled', 2: 'already-settled', 3: 'expired' };

export class RedisStore implements Store {
  readonly kind = 'redis' as const;
  readonly #conn: RedisConnection;
  /** One server (standalone or Sentinel-named) or a cluster client that routes each command to its slot's master. */
  readonly #redis: RedisClient;
  readonly #cluster: boolean;
  /** Subscriber mode needs a connection of its own; on a cluster it is replaced when its node is lost. */
  #sub: Redis;
  readonly #keys: RedisKeys;
  /** The same connection as #redis, seen with its script commands. */
  readonly #scripts: QuotaCommands;
  readonly #log: RedisStoreLogger;
  readonly #timeoutMs: number;
  readonly #listeners = new Set<KeyChangeListener>();
  readonly #outage: OutageLog;
  /** Corrupt cache entries and malformed fill messages: logged at most once per interval each. */
  readonly #corruptEntryLog: ThrottledLog;
  readonly #missingRecordLog: ThrottledLog;
  readonly #badFillLog: ThrottledLog;
  /** Corrupt usage stream entries and aggregate fields: skipped, logged at most once per interval each. */
  readonly #corruptEventLog: ThrottledLog;
  readonly #corruptUsageFieldLog: ThrottledLog;
  readonly #waits: CacheWaitList;
  /** The value of the cache locks this instance takes: tells an operator who leads a name. */
  readonly #instanceId = randomBytes(8).toString('hex');
  #leads = 0;
  #closed = false;
  readonly #subscriberCheck: NodeJS.Timeout;
  #subscriberPing: Promise<void> | undefined;

  constructor(opts: RedisStoreOptions) {
    this.#keys = redisKeys(opts.prefix ?? 'tg:');
    this.#log = opts.logger ?? silentLogger;
    this.#timeoutMs = opts.commandTimeoutMs ?? 1000;
    this.#outage = new OutageLog(this.#log);
    this.#corruptEntryLog = new ThrottledLog(this.#log, 'corrupt cache entry in redis; treating it as a miss');
    this.#missingRecordLog = new ThrottledLog(
      this.#log,
      'the key list names keys whose records are missing or unreadable in redis (data lost? their secrets now get 401); listing the others',
    );
    this.#badFillLog = new ThrottledLog(this.#log, 'ignoring malformed cache-fill message');
    this.#corruptEventLog = new ThrottledLog(this.#log, 'corrupt usage event in redis; skipping it');
    this.#corruptUsageFieldLog = new ThrottledLog(this.#log, 'malformed usage aggregate field in redis; skipping it');
    this.#waits = new CacheWaitList((name) => this.#cacheOutcome(name));

    // Connects in the background and retries until Redis answers (see redis-connection.ts).
    this.#conn = createRedisConnection({ ...opts, commandTimeoutMs: this.#timeoutMs });
    this.#redis = this.#conn.client;
    this.#cluster = this.#conn.mode === 'cluster';
    // EVALSHA, falling back to EVAL once per connection when Redis does not have the script yet.
    this.#redis.defineCommand('tollgateAdmit', { numberOfKeys: 5, lua: loadLua('admit') });
    // The same script joined with the cache lookup: two more keys (see admit.lua).
    this.#redis.defineCommand('tollgateAdmitLookup', { numberOfKeys: 7, lua: loadLua('admit') });
    this.#redis.defineCommand('tollgateSettle', { numberOfKeys: 6, lua: loadLua('settle') });
    this.#redis.defineCommand('tollgateHit', { numberOfKeys: 1, lua: loadLua('hit') });
    this.#redis.defineCommand('tollgateLookup', { numberOfKeys: 2, lua: loadLua('lookup') });
    this.#redis.defineCommand('tollgateFill', { numberOfKeys: 3, lua: loadLua('fill') });
    this.#redis.defineCommand('tollgateRecord', { numberOfKeys: 2, lua: loadLua('record') });
    this.#redis.defineCommand('tollgateSwap', { numberOfKeys: 1, lua: loadLua('swap') });
    this.#redis.defineCommand('tollgateKeyPage', { numberOfKeys: 1, lua: loadLua('keypage') });
    // One key per hour the batch spans, plus the stream: the caller passes the count first.
    this.#redis.defineCommand('tollgateList', { lua: loadLua('list') });
    this.#scripts = this.#redis as unknown as QuotaCommands;
    // Without a listener ioredis reports every failed reconnect on stderr. A cluster reports its
    // nodes' connection errors as 'node error'.
    this.#redis.on('error', (err: unknown) => this.#outage.error('command', err));
    if (this.#cluster) this.#redis.on('node error', (err: unknown) => this.#outage.error('command', err));
    this.#redis.on('ready', () => this.#outage.recovered('command'));
    this.#sub = this.#openSubscriber();
    this.#subscriberCheck = setInterval(() => this.#checkSubscriber(), opts.subscriberCheckIntervalMs ?? SUBSCRIBER_PING_INTERVAL_MS).unref();
  }

  async createKey(record: KeyRecord): Promise<void> {
    const score = creationScore(record);
    // The writes land in different cluster slots, so no MULTI: they go one by one, in an order
    // where a partial failure leaves inert garbage, never a usable key that ops cannot list.
    const created = await this.#redis.set(this.#keys.keyRecord(record.id), JSON.stringify(record), 'NX');
    if (created === null) throw new Error(`key ${record.id} already exists`);
    await this.#redis.zadd(this.#keys.keyList(), score, record.id);
    // Last: from here on the secret authenticates.
    await this.#redis.set(this.#keys.keyHashIndex(record.hash), record.id);
  }

  async getKeyById(id: string): Promise<KeyRecord | null> {
    const key = this.#keys.keyRecord(id);
    const raw = await this.#redis.get(key);
    return raw === null ? null : this.#parseRecord(raw, key, id);
  }

  async getKeyByHash(hash: string): Promise<KeyRecord | null> {
    const id = await this.#redis.get(this.#keys.keyHashIndex(hash));
    if (id === null) return null;
    const record = await this.getKeyById(id);
    // The record, not the index, is the truth: an index entry left behind by an interrupted
    // rotation must not let the old secret in.
    return record !== null && record.hash === hash ? record : null;
  }

  async listKeys(): Promise<KeyRecord[]> {
    return this.#recordsOf(await this.#redis.zrange(this.#keys.keyList(), 0, '-1'));
  }

  async listKeysPage(query: KeyPageQuery): Promise<KeyPage | null> {
    checkKeyPageQuery(query);
    const { limit, after } = query;
    // One id past the page: only there to say whether more follow.
    const idsFromCursor = await this.#scripts.tollgateKeyPage(this.#keys.keyList(), after ?? '', limit + 1);
    if (idsFromCursor === null) return null;
    const { ids, hasMore } = cutPage(idsFromCursor, limit);
    return { keys: await this.#recordsOf(ids), hasMore, lastId: ids.at(-1) ?? null };
  }

  /** The records of `ids`, in their order; those gone or unreadable are left out. */
  async #recordsOf(ids: string[]): Promise<KeyRecord[]> {
    // One GET per record: they sit in different cluster slots, so no MGET.
    const records = await Promise.all(ids.map((id) => this.getKeyById(id)));
    const listed = records.filter((r): r is KeyRecord => r !== null);
    if (listed.length < ids.length) {
      // Keys are never taken off the list (a revoked key keeps its record): a listed id without a
      // record means Redis lost data (a restart without persistence, a FLUSHALL, a failed master
      // with no replica) or someone deleted it by hand. (An unreadable record is logged by #parseRecord.)
      const gone = ids.filter((_, i) => records[i] === null);
      this.#missingRecordLog.warn({ count: gone.length, keyIds: gone.slice(0, 20) });
    }
    return listed;
  }

  async updateKey(id: string, change: KeyChange): Promise<{ record: KeyRecord; changed: boolean } | null> {
    const key = this.#keys.keyRecord(id);
    for (let attempt = 0; attempt < MAX_KEY_UPDATE_ATTEMPTS; attempt++) {
      const raw = await this.#redis.get(key);
      const current = raw === null ? null : this.#parseRecord(raw, key, id);
      if (raw === null || current === null) return null;
      const record = change(structuredClone(current));
      if (record === null) return { record: current, changed: false };
      if (record.id !== id) throw new RangeError(`a change may not alter a key's id (${id})`);
      // Record first, and only over what was read (a gone key is not resurrected either): once
      // written, a revocation holds and the old hash stops resolving even if the index updates in
      // #keyChanged never happen. Lost the race: read again and apply the change to the winner.
      if ((await this.#scripts.tollgateSwap(key, raw, JSON.stringify(record))) !== 1) continue;
      await this.#keyChanged(record, current.hash);
      return { record, changed: true };
    }
    throw new KeyChangeConflictError(id, MAX_KEY_UPDATE_ATTEMPTS);
  }

  /** After a key's record was rewritten: the hash index follows a rotation, and every instance hears of it. */
  async #keyChanged(record: KeyRecord, previousHash: string): Promise<void> {
    if (record.hash !== previousHash) {
      await this.#redis.set(this.#keys.keyHashIndex(record.hash), record.id);
      await this.#redis.del(this.#keys.keyHashIndex(previousHash));
    }
    const changes = [...new Set([previousHash, record.hash])].map((hash) => ({ id: record.id, hash }));
    // Local listeners hear it at once, without waiting for our own subscriber's copy, so a
    // revocation holds on this instance as soon as the call returns.
    for (const change of changes) this.#notify(change);
    const channel = this.#keys.keyChangesChannel();
    await Promise.all(changes.map((change) => this.#redis.publish(channel, JSON.stringify(change))));
  }

  onKeyChange(listener: KeyChangeListener): void {
    this.#listeners.add(listener);
  }

  async admit(req: AdmissionRequest): Promise<AdmissionResult> {
    checkAdmission(req);
    return this.#admissionOf(await this.#scripts.tollgateAdmit(...this.#admitKeys(req), ...this.#admitArgs(req)));
  }

  async admitAndLookup(req: AdmissionRequest, lookup: CacheLookup): Promise<JoinedLookup> {
    checkJoinedLookup(req, lookup);
    const k = this.#keys;
    const token = lookup.token ?? this.#newLeadToken();
    const entryKey = k.cacheEntry(lookup.name);
    const reply = await this.#scripts.tollgateAdmitLookup(
      ...this.#admitKeys(req),
      entryKey,
      k.cacheLock(lookup.name),
      ...this.#admitArgs(req),
      token,
      lookup.leadTtlMs,
    );
    const found = Number(reply[9]);
    if (found === 3) return { lookup: 'wait' };
    const admission = this.#admissionOf(reply);
    if (found !== 1) return { lookup: 'miss', leader: found === 2 ? token : null, admission };
    const entry = this.#readEntry(entryKey, String(reply[10]));
    if (entry) return { lookup: 'hit', entry, admission };
    // Corrupt: admitted as a hit, which cannot cover an upstream call. Admit it in full as well
    // (already counted against rpm) and let it go upstream without the lead; its fill overwrites the entry.
    return { lookup: 'miss', leader: null, admission: admission.admitted ? await this.admit({ ...req, rpmCounted: true }) : admission };
  }

  /** admit.lua's declared keys: the key's quota state in its periods. */
  #admitKeys(req: AdmissionRequest): string[] {
    const k = this.#keys;
    const { keyId: id, periods } = req;
    return [k.window(id), k.reservations(id), k.leases(id), k.dayBudget(id, periods.day), k.monthBudget(id, periods.month)];
  }

  /** admit.lua's arguments, in its order. */
  #admitArgs(req: AdmissionRequest): (string | number)[] {
    const k = this.#keys;
    const { keyId: id, limits, periods } = req;
    return [
      k.dayBudget(id, ''),
      k.monthBudget(id, ''),
      req.reservationId,
      req.now,
      req.leaseTtlMs,
      req.tokens,
      req.usdMicros,
      periods.day,
      periods.month,
      periods.dayTtlMs,
      periods.monthTtlMs,
      limits.rpm,
      limits.tpm,
      limits.tokensPerDay,
      limits.tokensPerMonth,
      limits.usdMicrosPerDay,
      limits.usdMicrosPerMonth,
      limits.maxConcurrent,
      req.countOnly ? 1 : req.rpmCounted ? 2 : 0,
    ];
  }

  /** The admission of admit.lua's reply. */
  #admissionOf(reply: (number | string)[]): AdmissionResult {
    const [admitted, limitCode, retry, rpm, reqRemaining, reqReset, tpm, tokRemaining, tokReset] = reply.slice(0, 9).map(Number) as [
      number, number, number, number, number, number, number, number, number,
    ];
    const limit = LIMIT_ORDER[limitCode - 1];
    if (admitted !== 1 && limit === undefined) throw new Error(`admit script returned an unknown limit code ${limitCode}`);
    const states: { requests?: WindowState; tokens?: WindowState } = {};
    if (rpm > 0) states.requests = { limit: rpm, remaining: reqRemaining, resetMs: reqReset };
    if (tpm > 0) states.tokens = { limit: tpm, remaining: tokRemaining, resetMs: tokReset };
    return admissionResult(
      admitted === 1 || limit === undefined ? null : { limit, retryAfterMs: retry >= 0 ? retry : undefined },
      states,
    );
  }

  async settle(s: Settlement): Promise<SettleOutcome> {
    checkSettlement(s);
    const k = this.#keys;
    const id = s.keyId;
    const fallback = s.fallbackPeriods;
    const code = await this.#scripts.tollgateSettle(
      k.window(id),
      k.reservations(id),
      k.leases(id),
      k.settled(id),
      k.dayBudget(id, fallback.day),
      k.monthBudget(id, fallback.month),
      k.dayBudget(id, ''),
      k.monthBudget(id, ''),
      s.reservationId,
      s.tokens,
      s.usdMicros,
      s.now,
      fallback.dayTtlMs,
      fallback.monthTtlMs,
      SETTLED_RETENTION_MS,
    );
    const outcome = SETTLE_OUTCOMES[Number(code)];
    if (outcome === undefined) throw new Error(`settle script returned an unknown outcome ${String(code)}`);
    return outcome;
  }

  async renewLeases(leases: { keyId: string; reservationId: string }[], now: number, leaseTtlMs: number): Promise<void> {
    if (leases.length === 0) return;
    const expiresAt = now + leaseTtlMs;
    const byKey = new Map<string, (string | number)[]>();
    for (const { keyId, reservationId } of leases) {
      const args = byKey.get(keyId) ?? [];
      args.push(expiresAt, reservationId);
      byKey.set(keyId, args);
    }
    // One round trip; XX: a lease already released (its reservation given back) is not brought back.
    // Each gateway key's leases sit in its own slot.
    await this.#perKey([...byKey].map(([keyId, args]) => (p) => p.zadd(this.#keys.leases(keyId), 'XX', ...args)));
  }

  async endLease(lease: { keyId: string; reservationId: string }, now: number, leaseTtlMs: number): Promise<void> {
    // One plain command: an ended lease stays in the ZSET scored ENDED_LEASE_OFFSET + expiry, which
    // admit.lua does not count in flight but still releases (with its reservation) once the expiry
    // passes. XX: a lease already released is not brought back.
    await this.#redis.zadd(this.#keys.leases(lease.keyId), 'XX', ENDED_LEASE_OFFSET + now + leaseTtlMs, lease.reservationId);
  }

  async quotaUsage(keyId: string, periods: Periods, now: number): Promise<QuotaUsage> {
    checkPeriods(periods);
    const k = this.#keys;
    // One round trip, read only. Not one atomic snapshot, which a report does not need. One
    // pipeline even on a cluster: every key carries the `{keyId}` tag, so they share a slot.
    const replies = throwFirstError(
      await this.#redis
        .pipeline()
        .hgetall(k.window(keyId))
        .zcount(k.leases(keyId), `(${now}`, `(${ENDED_LEASE_OFFSET}`)
        .hmget(k.dayBudget(keyId, periods.day), 'tu', 'tr', 'uu', 'ur')
        .hmget(k.monthBudget(keyId, periods.month), 'tu', 'tr', 'uu', 'ur')
        .exec(),
    );
    const [windowHash, inFlight, day, month] = replies as [Record<string, string>, number, (string | null)[], (string | null)[]];
    const list = windowBuckets(bucketsFromHash(windowHash), now);
    const totals = windowTotals(list);
    const dayBudget = budgetFrom(day);
    const monthBudget = budgetFrom(month);
    return {
      minute: { requests: totals.requests, tokens: totals.tokens, resetMs: msUntilEmpty(list, ['requests', 'tokens'], now) },
      inFlight: Number(inFlight),
      day: {
        tokens: { used: dayBudget.tokensUsed, reserved: dayBudget.tokensReserved },
        usdMicros: { used: dayBudget.usdUsed, reserved: dayBudget.usdReserved },
      },
      month: {
        tokens: { used: monthBudget.tokensUsed, reserved: monthBudget.tokensReserved },
        usdMicros: { used: monthBudget.usdUsed, reserved: monthBudget.usdReserved },
      },
    };
  }

  async hit(name: string, windowMs: number): Promise<{ count: number; ttlMs: number }> {
    if (!Number.isSafeInteger(windowMs) || windowMs <= 0) throw new RangeError(`windowMs must be a positive integer, got ${windowMs}`);
    const [count, ttlMs] = await this.#scripts.tollgateHit(this.#keys.counter(name), windowMs);
    return { count: Number(count), ttlMs: Number(ttlMs) };
  }

  async cacheGet(name: string): Promise<CacheEntry | null> {
    const key = this.#keys.cacheEntry(name);
    const raw = await this.#redis.get(key);
    return raw === null ? null : this.#readEntry(key, raw);
  }

  async cacheLookup(name: string, leadTtlMs: number, token?: string): Promise<{ entry: CacheEntry | null; leader: string | null }> {
    checkTtl(leadTtlMs);
    if (token !== undefined) checkLeadToken(token);
    const key = this.#keys.cacheEntry(name);
    const [found, value] = await this.#scripts.tollgateLookup(key, this.#keys.cacheLock(name), token ?? this.#newLeadToken(), leadTtlMs);
    if (found === 1) return { entry: this.#readEntry(key, value!), leader: null };
    return { entry: null, leader: found === 2 ? value! : null };
  }

  async cacheAcquire(name: string, ttlMs: number, token?: string): Promise<string | null> {
    checkTtl(ttlMs);
    if (token !== undefined) checkLeadToken(token);
    const lead = token ?? this.#newLeadToken();
    return (await this.#redis.set(this.#keys.cacheLock(name), lead, 'PX', ttlMs, 'NX')) === 'OK' ? lead : null;
  }

  async cacheFill(name: string, fill: { entry?: CacheEntry; ttlMs?: number; token: string | null }): Promise<void> {
    if (fill.entry !== undefined) checkTtl(fill.ttlMs as number);
    // One round trip (fill.lua), in this order: a waiter that sees the lock gone before the message
    // arrives finds the entry (stored first) and reads 'filled' all the same. The message goes out
    // (to marked names only) even if the lock had lapsed and was taken over: the new leader's
    // waiters only re-read what is stored, so at worst they call upstream themselves. On a cluster
    // too: PUBLISH names no key, so the script stays in the name's slot.
    await this.#scripts.tollgateFill(
      this.#keys.cacheEntry(name),
      this.#keys.cacheLock(name),
      this.#keys.cacheWaiters(name),
      fill.entry === undefined ? '' : JSON.stringify(fill.entry),
      fill.ttlMs ?? 0,
      fill.token ?? '',
      this.#keys.cacheFillsChannel(),
      name,
    );
  }

  async cacheWait(name: string, timeoutMs: number): Promise<'filled' | 'failed' | 'timeout'> {
    // Mark the name first, then wait (the wait's first check reads the entry and the lock): a fill
    // that lands before the mark is seen by that check, one after it publishes. Never rejects: a
    // name no leader can hold fails in wait(); if the mark cannot be set, the poll still notices.
    try {
      const markMs = Math.min(Math.max(1, Math.ceil(timeoutMs) || 1), MAX_WAIT_MARK_MS);
      await this.#redis.set(this.#keys.cacheWaiters(name), '1', 'PX', markMs);
    } catch {
      // Redis trouble or a malformed name: wait() answers for both.
    }
    return this.#waits.wait(name, timeoutMs);
  }

  /**
   * The value of the cache locks this instance takes: names the instance, for an operator. Unique
   * per lead, not secret: the random instance id and a counter (no random bytes per miss).
   */
  #newLeadToken(): string {
    return `${this.#instanceId}:${(++this.#leads).toString(36)}`;
  }

  /** A stored entry's JSON as a CacheEntry, or null (a miss) when it is corrupt. */
  #readEntry(key: string, raw: string): CacheEntry | null {
    const parsed = storedCacheEntrySchema.safeParse(safeJson(raw));
    if (!parsed.success) {
      // Not deleted: a leader may be writing a good one over it right now. It expires, or the
      // next fill overwrites it. The value is not logged (it is a client's response).
      this.#corruptEntryLog.warn({ key, issues: parsed.error.issues.map((i) => i.path.join('.') || i.message) });
      return null;
    }
    return parsed.data;
  }

  async cachePurge(scopePrefix = ''): Promise<number> {
    const match = this.#keys.cacheEntryPattern(scopePrefix);
    let deleted = 0;
    for (const node of await this.#scanNodes()) {
      let cursor = '0';
      do {
        const [next, keys] = await node.scan(cursor, 'MATCH', match, 'COUNT', PURGE_SCAN_COUNT);
        cursor = next;
        // The pattern may cover more than the prefix asks (see cacheEntryPattern): the name decides.
        const doomed = keys.filter((key) => this.#keys.cacheNameOf(key)?.startsWith(scopePrefix) ?? false);
        if (doomed.length === 0) continue;
        // One UNLINK per key, pipelined, not one UNLINK of them all: on a cluster node a multi-key
        // command must stay in one slot, and global entries are spread over many. The pipeline goes
        // to the node the keys were scanned on, which serves them all.
        const pipeline = node.pipeline();
        for (const key of doomed) pipeline.unlink(key);
        for (const n of throwFirstError(await pipeline.exec())) deleted += Number(n);
      } while (cursor !== '0');
    }
    return deleted;
  }

  async recordUsage(events: readonly UsageEvent[], options: { retentionMs: number; maxEvents: number }): Promise<void> {
    // Every event is checked before anything is written.
    const checked = events.map((event) => checkUsage(event, options));
    const parts = usageParts(checked, options.retentionMs);
    if (parts.length === 0) return;
    // Counted at most once (record.lua keeps the ids of the batches each hour counted): a batch
    // replayed after an outage, whose first try may have landed, is then a no-op. One hour per
    // script: each hour is its own slot. The calls of one batch leave in one write
    // (write-coalescing.ts).
    await Promise.all(
      parts.map((part) =>
        this.#scripts.tollgateRecord(
          this.#keys.usageHour(part.hour),
          this.#keys.usageSeen(part.hour),
          part.batchId,
          part.ttlMs,
          part.seenTtlMs,
          ...[...part.increments].flat(),
        ),
      ),
    );
    // Listed at most once too, but by a mark of its own (list.lua), not by the count's answer: the
    // count may have run on Redis while its reply was lost (a stall past the command timeout), and
    // the replay, finding the batch counted, must still list it. Listing follows the count, so an
    // event is never listed without being counted; a replay completes whichever step is missing.
    // In chunks, one after the other: a script holds Redis while it runs (500 XADDs took ~1.6 ms),
    // and between two chunks Redis serves everyone else's admissions.
    // `~`: Redis trims whole stream nodes only (cheap), so a few more than maxEvents may remain
    // (up to stream-node-max-entries - 1, 99 by default); never fewer.
    const partOf = new Map(parts.map((part) => [part.hour, part]));
    const listedBefore = new Map<string, number>(); // hour -> its events in earlier chunks
    for (let start = 0; start < checked.length; start += LIST_CHUNK_EVENTS) {
      const chunk = checked.slice(start, start + LIST_CHUNK_EVENTS);
      const hours = chunk.map((e) => hourId(e.ts));
      const inChunk = new Map<string, number>(); // hour -> its index in this call (1-based)
      const counts: number[] = [];
      for (const hour of hours) {
        const i = inChunk.get(hour);
        if (i === undefined) {
          inChunk.set(hour, inChunk.size + 1);
          counts.push(1);
        } else counts[i - 1]!++;
      }
      const chunkParts = [...inChunk.keys()].map((hour, i) => {
        const part = partOf.get(hour)!;
        const before = listedBefore.get(hour) ?? 0;
        listedBefore.set(hour, before + counts[i]!);
        return [part.batchId, part.seenTtlMs, before, counts[i]!];
      });
      await this.#scripts.tollgateList(
        1 + inChunk.size,
        this.#keys.usageEvents(),
        ...[...inChunk.keys()].map((hour) => this.#keys.usageListed(hour)),
        options.maxEvents,
        inChunk.size,
        ...chunkParts.flat(),
        ...chunk.flatMap((e, j) => [inChunk.get(hours[j]!)!, JSON.stringify(e)]), // in batch order
      );
    }
  }

  async usageRows(fromHour: string, toHour: string): Promise<UsageRow[]> {
    const hours = hourRange(fromHour, toHour);
    const rows: UsageRow[] = [];
    let skipped = 0;
    for (let i = 0; i < hours.length; i += USAGE_HOURS_PER_ROUND_TRIP) {
      const chunk = hours.slice(i, i + USAGE_HOURS_PER_ROUND_TRIP);
      // Each hour is its own slot.
      const replies = (await this.#perKey(chunk.map((hour) => (p) => p.hgetall(this.#keys.usageHour(hour))))) as Record<string, string>[];
      chunk.forEach((hour, j) => {
        const read = usageRowsOfHour(hour, Object.entries(replies[j] ?? {}));
        rows.push(...read.rows);
        skipped += read.skipped;
      });
    }
    if (skipped > 0) this.#corruptUsageFieldLog.warn({ fromHour, toHour, skipped });
    return sortUsageRows(rows);
  }

  /**
   * `sinceMs` filters on the stream id, i.e. when Redis appended the event (its own clock), not on
   * `event.ts`: ids are what `after` pages by, and XRANGE / XREVRANGE can only seek by them.
   */
  async usageEvents(query: EventsQuery): Promise<{ id: string; event: UsageEvent }[]> {
    checkEventsQuery(query);
    const key = this.#keys.usageEvents();
    const desc = query.order === 'desc';
    // Ascending: from `since` (or just past `after`) up to the newest. Descending: from the newest
    // (or just before `after`) down to `since`, which bounds every page in that order.
    const bound = `${query.sinceMs}-0`;
    let start = query.after === undefined ? (desc ? '+' : bound) : `(${query.after}`;
    const out: { id: string; event: UsageEvent }[] = [];
    // Corrupt entries are skipped, and the page filled from beyond them: fewer than `limit` events
    // then still means the stream has no more. Each pass moves past everything it read.
    while (out.length < query.limit) {
      const want = query.limit - out.length;
      const entries = desc
        ? await this.#redis.xrevrange(key, start, bound, 'COUNT', want)
        : await this.#redis.xrange(key, start, '+', 'COUNT', want);
      let corrupt = 0;
      for (const [id, fields] of entries) {
        const json = fieldValue(fields, 'e');
        const event = json === undefined ? null : decodeUsageEvent(json);
        if (event === null) corrupt++;
        else out.push({ id, event });
      }
      // The ids name the entries, never their content (which holds key names and models).
      if (corrupt > 0) this.#corruptEventLog.warn({ key, corrupt });
      const last = entries.at(-1);
      if (entries.length < want || last === undefined) break;
      start = `(${last[0]}`;
    }
    return out;
  }

  async markOnce(name: string, ttlMs: number): Promise<boolean> {
    checkMark(name, ttlMs);
    return (await this.#redis.set(this.#keys.mark(name), '1', 'PX', ttlMs, 'NX')) === 'OK';
  }

  // The owner's value stays the bare key id (what instances of an earlier version read during a
  // rolling upgrade or after a rollback); the context tokens have a key of their own, written and
  // read in the same round trip.
  async setResponseOwner(responseId: string, keyId: string, ttlMs: number, contextTokens = 0): Promise<void> {
    checkResponseOwner(responseId, keyId, ttlMs, contextTokens);
    const k = this.#keys;
    await this.#perKey([
      (p) => p.set(k.responseOwner(responseId), keyId, 'PX', ttlMs),
      (p) => (contextTokens > 0 ? p.set(k.responseContext(responseId), contextTokens, 'PX', ttlMs) : p.del(k.responseContext(responseId))),
    ]);
  }

  async getResponseOwner(responseId: string): Promise<ResponseOwner | null> {
    checkResponseOwner(responseId);
    const k = this.#keys;
    const [keyId, tokens] = (await this.#perKey([(p) => p.get(k.responseOwner(responseId)), (p) => p.get(k.responseContext(responseId))])) as [
      string | null,
      string | null,
    ];
    return keyId === null ? null : { keyId, contextTokens: contextTokensOf(tokens) };
  }

  async deleteResponseOwner(responseId: string): Promise<void> {
    checkResponseOwner(responseId);
    const k = this.#keys;
    await this.#perKey([(p) => p.del(k.responseOwner(responseId)), (p) => p.del(k.responseContext(responseId))]);
  }

  /** On a cluster, every master must answer: with one down, the keys of its slots are unreachable. */
  async ping(): Promise<void> {
    const started = Date.now();
    try {
      await this.#conn.serving();
    } catch (err) {
      // While ioredis reconnects, a command waits in its queue and times out: the connection's own
      // error (a refused connection, DNS) is what says why, for /readyz and the health monitor.
      // Only a recent one: while down, ioredis fails a reconnect at least every ~2.1 s (its backoff's
      // cap); an older error (another node, minutes ago) would name the wrong fault.
      const cause = this.#outage.errorSince(started - RECENT_CONNECTION_ERROR_MS);
      const message = (err as Error)?.message;
      throw cause !== undefined && cause !== message ? new Error(`${cause} (${message})`) : err;
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#subscriberCheck);
    this.#listeners.clear();
    // Nobody will hear a release any more: waiters are told 'failed' now rather than at their timeout.
    this.#waits.close();
    await Promise.all([shutdown(this.#redis, this.#timeoutMs), shutdown(this.#sub, this.#timeoutMs)]);
  }

  /**
   * Opens the subscriber connection. We subscribe ourselves on every 'ready', to learn when the
   * subscription is live again. A cluster subscriber ends when its node stays unreachable; another
   * node then takes over (any node hears every PUBLISH).
   */
  #openSubscriber(): Redis {
    const sub = this.#conn.subscriber();
    sub.on('error', (err: unknown) => this.#outage.error('subscriber', err));
    sub.on('ready', () => {
      this.#outage.recovered('subscriber');
      void this.#subscribe(sub);
    });
    sub.on('message', (channel: string, message: string) => {
      if (sub === this.#sub) this.#onMessage(channel, message);
    });
    sub.once('end', () => {
      if (!this.#closed && sub === this.#sub) this.#sub = this.#openSubscriber();
    });
    return sub;
  }

  /**
   * PINGs the subscriber (bounded by the command timeout, as every command). When it gets no answer
   * the connection is dropped: 'end' then opens another, on a cluster on the next node (any node
   * hears every PUBLISH), and the new subscription tells listeners that changes may have been missed.
   */
  #checkSubscriber() {
    // While it reconnects, ioredis is already on it; one check at a time.
    if (this.#closed || this.#sub.status !== 'ready' || this.#subscriberPing) return;
    this.#subscriberPing = this.#pingSubscriber(this.#sub).finally(() => {
      this.#subscriberPing = undefined;
    });
  }

  async #pingSubscriber(sub: Redis): Promise<void> {
    let lastError: unknown;
    // One slow answer is not a dead node (a busy Redis, or this process stalled past the timeout):
    // dropping the subscription then would only make every instance forget its keys (the '*').
    for (let attempt = 0; attempt < SUBSCRIBER_PING_ATTEMPTS; attempt++) {
      try {
        await sub.ping();
        return;
      } catch (err) {
        lastError = err;
        if (this.#closed || sub !== this.#sub || sub.status !== 'ready') return;
      }
    }
    this.#outage.error('subscriber', lastError);
    sub.disconnect();
  }

  async #subscribe(sub: Redis): Promise<void> {
    if (this.#closed || sub !== this.#sub) return;
    try {
      await sub.subscribe(this.#keys.keyChangesChannel(), this.#keys.cacheFillsChannel());
    } catch (err) {
      if (this.#closed) return;
      this.#outage.error('subscriber', err);
      // Reconnecting brings another 'ready', hence another attempt.
      sub.disconnect(true);
      return;
    }
    // Changes published while we were not subscribed are lost; on the first subscription too, as
    // the command connection may have served (and callers cached) reads before it.
    this.#notify(WILDCARD);
    // Releases may have been missed too: waiters look for themselves rather than at the next poll.
    this.#waits.checkAll();
  }

  #onMessage(channel: string, message: string) {
    if (this.#closed) return;
    if (channel === this.#keys.cacheFillsChannel()) return this.#onCacheFill(message);
    if (channel !== this.#keys.keyChangesChannel()) return;
    const change = keyChangeSchema.safeParse(safeJson(message));
    if (!change.success) {
      this.#log.warn({ channel }, 'ignoring malformed key-change message');
      return;
    }
    this.#notify(change.data);
  }

  #onCacheFill(message: string) {
    const fill = cacheFillSchema.safeParse(safeJson(message));
    if (!fill.success) return this.#badFillLog.warn({ channel: this.#keys.cacheFillsChannel() });
    this.#waits.settle(fill.data.name, fill.data.filled ? 'filled' : 'failed');
  }

  /**
   * What a waiter on `name` should be told now, or null to keep waiting: while a leader holds the
   * lock, null (an entry there may be the one it refreshes, too old for the waiter's max-age); once
   * it is gone, 'filled' if there is an entry, else 'failed' (the leader went without filling,
   * whether it released, a message we missed, or died and its lock lapsed). One round trip: the
   * entry and its lock share a hash tag.
   */
  async #cacheOutcome(name: string): Promise<'filled' | 'failed' | null> {
    if (this.#closed) return 'failed';
    const [entry, lock] = throwFirstError(
      await this.#redis.pipeline().exists(this.#keys.cacheEntry(name)).exists(this.#keys.cacheLock(name)).exec(),
    );
    if (Number(lock) > 0) return null;
    return Number(entry) > 0 ? 'filled' : 'failed';
  }

  /** The servers a SCAN must visit: SCAN walks one server's keyspace only, so on a cluster every master. */
  #scanNodes(): Promise<Redis[]> {
    return this.#conn.masters();
  }

  /**
   * Independent commands, each on one key, where the keys may sit in different cluster slots, in one
   * round trip: one pipeline on a single server; on a cluster (where ioredis refuses a pipeline that
   * spans nodes, and a reshard could split any multi-slot group) one single-command pipeline each,
   * all sent at once, each to its slot's master. Replies in order; the first error is thrown.
   */
  async #perKey(commands: ((p: ChainableCommander) => unknown)[]): Promise<unknown[]> {
    if (!this.#cluster) {
      const pipeline = this.#redis.pipeline();
      for (const add of commands) add(pipeline);
      return throwFirstError(await pipeline.exec());
    }
    return Promise.all(
      commands.map(async (add) => {
        const pipeline = this.#redis.pipeline();
        add(pipeline);
        return throwFirstError(await pipeline.exec())[0];
      }),
    );
  }

  #notify(change: { id: string; hash: string }) {
    for (const listener of [...this.#listeners]) {
      try {
        listener(change);
      } catch (err) {
        this.#log.error({ err }, 'key-change listener threw');
      }
    }
  }

  #parseRecord(raw: string, key: string, id: string): KeyRecord | null {
    const parsed = storedKeyRecordSchema.safeParse(safeJson(raw));
    if (!parsed.success || parsed.data.id !== id) {
      // Treated as missing: a bad record must cost one key, not crash the gateway. The value is
      // not logged; the issues name the fields.
      const issues = parsed.success ? ['id does not match the key'] : parsed.error.issues.map((i) => i.path.join('.') || i.message);
      this.#log.error({ key, issues }, 'corrupt key record in redis; treating it as missing');
      return null;
    }
    return parsed.data;
  }
}

/** Returns at once: both connections are made in the background and retried until Redis answers. */
export async function createRedisStore(opts: RedisStoreOptions): Promise<RedisStore> {
  return new RedisStore(opts);
}

/**
 * Logs the first error of an outage, then at most one per interval with a count of the rest, and
 * one line when the connection is back: ioredis emits an error on every failed reconnect.
 */
class OutageLog {
  #lastLoggedAt = -Infinity;
  #suppressed = 0;
  #down = false;
  /** The message of the last connection error while down: what a timed-out command was waiting on. */
  #lastError: string | undefined;
  #lastErrorAt = 0;

  constructor(private readonly log: RedisStoreLogger) {}

  error(connection: string, err: unknown) {
    this.#down = true;
    const text = (err as { message?: unknown } | undefined)?.message;
    const now = Date.now();
    this.#lastError = typeof text === 'string' ? text : String(err);
    this.#lastErrorAt = now;
    if (now - this.#lastLoggedAt < ERROR_LOG_INTERVAL_MS) {
      this.#suppressed++;
      return;
    }
    // Expected trouble (a refused or reset connection while Redis is down): its message and code,
    // never a stack trace.
    const { message, code } = (err ?? {}) as { message?: unknown; code?: unknown };
    this.log.error({ err: typeof message === 'string' ? message : String(err), code, connection, suppressed: this.#suppressed }, 'redis connection error');
    this.#lastLoggedAt = now;
    this.#suppressed = 0;
  }

  /** The last connection error if it came at `since` (epoch ms) or later. */
  errorSince(since: number): string | undefined {
    return this.#lastErrorAt >= since ? this.#lastError : undefined;
  }

  recovered(connection: string) {
    this.#lastError = undefined;
    if (!this.#down) return;
    this.#down = false;
    this.log.warn({ connection, suppressed: this.#suppressed }, 'redis connection restored');
    this.#lastLoggedAt = -Infinity;
    this.#suppressed = 0;
  }
}

/** One warning for the first occurrence, then at most one per interval with the count of those left out. */
class ThrottledLog {
  #lastLoggedAt = -Infinity;
  #suppressed = 0;

  constructor(
    private readonly log: RedisStoreLogger,
    private readonly msg: string,
  ) {}

  warn(obj: object) {
    const now = Date.now();
    if (now - this.#lastLoggedAt < ERROR_LOG_INTERVAL_MS) {
      this.#suppressed++;
      return;
    }
    this.log.warn({ ...obj, suppressed: this.#suppressed }, this.msg);
    this.#lastLoggedAt = now;
    this.#suppressed = 0;
  }
}

/** QUIT lets replies in flight arrive; a connection that is not up has none, so it is just cut. */
async function shutdown(conn: RedisClient, timeoutMs: number): Promise<void> {
  if (conn.status === 'ready') {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeoutMs);
    });
    await Promise.race([conn.quit().catch(() => {}), timeout]);
    clearTimeout(timer);
  }
  if (conn.status !== 'end') conn.disconnect();
}

/** A pipeline's results, or its first command error thrown. */
function throwFirstError(results: [Error | null, unknown][] | null): unknown[] {
  if (results === null) throw new Error('redis pipeline was not executed');
  for (const [err] of results) if (err) throw err;
  return results.map(([, result]) => result);
}

/** The value of `name` in a stream entry's flat `[field, value, ...]` list. */
function fieldValue(fields: string[], name: string): string | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === name) return fields[i + 1];
  return undefined;
}

function budgetFrom(fields: (string | null)[]): BudgetCounters {
  if (fields.every((f) => f === null)) return { ...EMPTY_BUDGET };
  const [tu, tr, uu, ur] = fields.map((f) => Number(f ?? 0)) as [number, number, number, number];
  return { tokensUsed: tu, tokensReserved: tr, usdUsed: uu, usdReserved: ur };
}

function creationScore(record: KeyRecord): number {
  const ms = Date.parse(record.createdAt);
  if (!Number.isFinite(ms)) throw new Error(`key ${record.id} has an invalid createdAt`);
  return ms;
}

function checkTtl(ttlMs: number) {
  if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0) throw new RangeError(`ttlMs must be a positive integer, got ${ttlMs}`);
}

function safeJson(raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch {
    return undefined;
  }
}

const silentLogger: RedisStoreLogger = { warn() {}, error() {} };
