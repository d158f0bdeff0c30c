// The response cache: which requests may use it and under which name, lookups with single-flight
// (one upstream call for many identical concurrent requests, across instances), and fills.
import { createHash } from 'node:crypto';
import type { FastifyBaseLogger, FastifyRequest } from 'fastify';
import type { KeyRecord } from '../keys.js';
import type { Endpoint } from '../openai/endpoints.js';
import type { CacheEntry, CacheLookup, JoinedLookup, Store } from '../store/store.js';
import { exactSeedDigits } from '../openai/big-seed.js';
import { canonicalJson } from './canonical.js';
import { parseCacheControl } from './cache-control.js';
import { ThrottledWarning } from '../resilience/throttled-log.js';

export interface CacheOptions {
  store: Store;
  clock: () => number;
  enabled: boolean;
  /** 'key': entries belong to one gateway key; 'global': identical requests share across keys. */
  scope: 'key' | 'global';
  defaultTtlMs: number;
  maxEntryBytes: number;
  /** How long identical requests wait for the one in flight before going upstream themselves. */
  singleFlightWaitMs: number;
  logger: FastifyBaseLogger;
}

/**
 * Whether a field is left out of the cache name, so that it never splits entries: only where it is
 * the endpoint's own parameter and cannot change the answer. `stream` where the endpoint streams
 * (the two forms share entries); `stream_options` on a request that streams (on one that does not,
 * upstream may refuse it: a hit would answer 200 what a miss answers 400); `user` where it is a
 * parameter the answer does not echo (a Responses object carries it: a hit would hand one end
 * user's id to another, another key's with CACHE_SCOPE=global; moderations take none).
 */
function leftOutOfName(field: string, endpoint: Endpoint, body: Record<string, unknown>): boolean {
  if (field === 'stream') return endpoint.streamable;
  if (field === 'stream_options') return endpoint.streamable && body.stream === true;
  if (field === 'user') return USER_NOT_ECHOED.has(endpoint.name);
  return false;
}
const USER_NOT_ECHOED: ReadonlySet<string> = new Set(['chat.completions', 'completions', 'embeddings']);

/**
 * Fields that hold JSON schemas (a tool's or function's `parameters`; `schema` of a structured
 * output format, chat's response_format.json_schema and Responses' text.format): their keys keep
 * the order they were sent in within the cache name. The model writes an object's properties in
 * its schema's order (reasoning before answer, or after), so two schemas that differ only in that
 * order are different requests. The order of every other object's keys means nothing. (Integer-like
 * property names, "1" and "2", come out of JSON.parse in numeric order whatever their order in the
 * body: such schemas that differ only in that order share a name. Rare enough to leave.)
 */
const ORDERED_FIELDS: ReadonlySet<string> = new Set(['parameters', 'schema']);

/** What one request may do with the cache, decided before anything else happens. */
export interface CachePlan {
  name: string;
  /** The x-tollgate-cache value if it does not turn into a HIT. */
  status: 'MISS' | 'BYPASS';
  read: boolean;
  write: boolean;
  maxAgeMs?: number;
  ttlMs: number;
  /**
   * Whether this request waits for an identical one in flight instead of going upstream. Not a
   * streamed request: its client would see nothing until the other's whole generation ended.
   */
  joinsInFlight: boolean;
  /** The cross-instance single-flight lead this request holds (its token), released in fill(). */
  leader: string | null;
  /** Ends this request's in-process lead (other local requests wait on it). */
  finishLocal?: () => void;
  filled: boolean;
}

export type Cache = ReturnType<typeof createCache>;

/** A request's admission joined with the lookup of its cache name (Quota.admitAndLookup, bound to it). */
export type JoinedAdmission<A> = (lookup: CacheLookup) => Promise<JoinedLookup<A>>;

/** An entry as the pipeline hands it over; the cache stamps the time it is stored. */
export type NewCacheEntry = Omit<CacheEntry, 'storedAt'>;

export function createCache(opts: CacheOptions) {
  const { store, logger } = opts;
  /** In-process single-flight: one request per name talks to Redis, the others on this instance wait on it. */
  const local = new Map<string, Promise<void>>();

  /** While the store cannot serve the cache: one warning per interval (with how many were left out), not one per call. */
  const unavailable = new ThrottledWarning(logger, 30_000);
  /** Cache trouble never fails a request: it becomes a miss (the stated policy when Redis is down). */
  async function safely<T>(what: string, fallback: T, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      unavailable.warn({ err: (err as Error).message, op: what }, 'cache unavailable: bypassed');
      return fallback;
    }
  }

  /** `seedDigits`: a seed JSON.parse rounded (big-seed.ts), so two such seeds never share a name. */
  function nameFor(key: KeyRecord, endpoint: Endpoint, body: Record<string, unknown>, seedDigits: string | undefined): string {
    const significant: Record<string, unknown> = {};
    for (const [field, value] of Object.entries(body)) if (!leftOutOfName(field, endpoint, body)) significant[field] = value;
    // As a string: no valid request has a string seed, so it cannot meet another request's name.
    if (seedDigits !== undefined) significant.seed = seedDigits;
    const digest = createHash('sha256').update(canonicalJson({ endpoint: endpoint.name, body: significant }, ORDERED_FIELDS)).digest('hex');
    return `${opts.scope === 'global' ? 'global' : key.id}:${digest}`;
  }

  /** Young enough for the request's Cache-Control max-age, if it gave one. */
  function fresh(plan: CachePlan, entry: CacheEntry): boolean {
    return plan.maxAgeMs === undefined || opts.clock() - entry.storedAt <= plan.maxAgeMs;
  }

  async function get(plan: CachePlan): Promise<CacheEntry | undefined> {
    const entry = await safely('get', null, () => store.cacheGet(plan.name));
    return entry && fresh(plan, entry) ? entry : undefined;
  }

  function waitLocally(pending: Promise<void>): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, opts.singleFlightWaitMs);
      void pending.then(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Makes this request the one on this instance that talks to the store for `plan.name`. */
  function leadLocally(plan: CachePlan) {
    let finish!: () => void;
    const lead = new Promise<void>((resolve) => (finish = resolve));
    local.set(plan.name, lead);
    plan.finishLocal = () => {
      // A leader that outlived its store lock may have been followed by another: its lead stays.
      if (local.get(plan.name) === lead) local.delete(plan.name);
      finish();
    };
  }

  /** Another caller leads `plan.name`: its entry once it is filled, or undefined (go upstream). */
  async function waitForLeader(plan: CachePlan): Promise<CacheEntry | undefined> {
    const outcome = await store.cacheWait(plan.name, opts.singleFlightWaitMs);
    if (outcome === 'filled') {
      const entry = await get(plan);
      if (entry) {
        plan.finishLocal?.();
        return entry;
      }
    }
    return undefined; // the leader failed or is too slow: go upstream ourselves
  }

  /**
   * A usable entry, or undefined: then the caller goes upstream and must call fill() once done.
   * Identical requests in flight are joined: on this instance through memory, across instances
   * through the store's lock, each waiting at most singleFlightWaitMs. A miss costs one store
   * round trip here (cacheLookup: the entry, or else the lock; a second, cacheAcquire, for an entry
   * too old for the request's max-age) and one in fill().
   */
  async function lookup(plan: CachePlan): Promise<CacheEntry | undefined> {
    if (!plan.read) return undefined; // a plan that reads also writes (plan(): no-store turns off both)

    const pending = local.get(plan.name);
    if (pending) {
      const hit = await get(plan);
      if (hit || !plan.joinsInFlight) return hit;
      await waitLocally(pending);
      return get(plan);
    }
    leadLocally(plan);
    const found = await safely('lookup', { entry: null, leader: null }, () => store.cacheLookup(plan.name, opts.singleFlightWaitMs));
    if (found.entry && fresh(plan, found.entry)) {
      plan.finishLocal?.();
      return found.entry;
    }
    // No entry, or one too old for this request's max-age: lead a refresh, like any miss.
    plan.leader = found.entry
      ? await safely('acquire', null, () => store.cacheAcquire(plan.name, opts.singleFlightWaitMs))
      : found.leader;
    if (plan.leader !== null || !plan.joinsInFlight) return undefined;
    return waitForLeader(plan);
  }

  return {
    /** The largest answer stored (CACHE_MAX_ENTRY_BYTES): a larger one is not kept. */
    maxEntryBytes: opts.maxEntryBytes,

    /** The plan for a request, or undefined when its endpoint (or this request of it) is not cacheable. */
    plan(request: FastifyRequest, key: KeyRecord, endpoint: Endpoint, body: Record<string, unknown>): CachePlan | undefined {
      if (!endpoint.cacheable || endpoint.cacheableRequest?.(body) === false) return undefined;
      const control = parseCacheControl(request.headers['cache-control']);
      const enabled = opts.enabled && key.cache?.enabled !== false;
      const read = enabled && !control.noCache && !control.noStore;
      const write = enabled && !control.noStore;
      return {
        name: nameFor(key, endpoint, body, exactSeedDigits(request, body)),
        status: read ? 'MISS' : 'BYPASS',
        read,
        write,
        maxAgeMs: control.maxAgeSeconds === undefined ? undefined : control.maxAgeSeconds * 1000,
        ttlMs: key.cache?.ttlSeconds !== undefined ? key.cache.ttlSeconds * 1000 : opts.defaultTtlMs,
        joinsInFlight: !(endpoint.streamable && body.stream === true),
        leader: null,
        filled: false,
      };
    },

    lookup,

    /**
     * lookup() and the request's admission in one store round trip (before forwarding, a miss then
     * costs one round trip instead of two), when the plan allows it: it reads and writes, its name
     * is in the key's own scope (the same cluster slot as the key's quota state) and it asks no
     * max-age. A hit comes with its free admission, a miss with its full one and, if nobody else
     * had it, the lead. Otherwise, or when another request leads the name (it waits for it, as
     * lookup() does), `admission` is undefined: the caller admits the request itself. Throws what
     * admission throws.
     */
    async lookupAndAdmit<A>(plan: CachePlan, admitAndLookup: JoinedAdmission<A>): Promise<{ entry?: CacheEntry; admission?: A }> {
      if (!plan.read || opts.scope !== 'key' || plan.maxAgeMs !== undefined) return { entry: await lookup(plan) };
      const found = await admitAndLookup({ name: plan.name, leadTtlMs: opts.singleFlightWaitMs });
      if (found.lookup === 'hit') return { entry: found.entry, admission: found.admission };
      if (found.lookup === 'miss') {
        plan.leader = found.leader;
        // Identical requests on this instance then wait for it in memory, not through the store.
        if (found.leader !== null) leadLocally(plan);
        return { admission: found.admission };
      }
      // Another request leads: nothing was admitted; one that does not wait goes upstream, admitted by the caller.
      if (!plan.joinsInFlight) return {};
      const pending = local.get(plan.name);
      if (!pending) return { entry: await waitForLeader(plan) };
      await waitLocally(pending);
      return { entry: await get(plan) };
    },

    /**
     * Ends a miss: stores the entry when there is one and the request may write, ends its
     * single-flight lead and wakes the waiters (who read the entry, or go upstream if there is
     * none), in one store round trip. Safe to call twice.
     */
    async fill(plan: CachePlan, entry: NewCacheEntry | undefined): Promise<void> {
      if (plan.filled) return;
      plan.filled = true;
      let stored: CacheEntry | undefined;
      if (entry && plan.write) {
        if (Buffer.byteLength(entry.body) > opts.maxEntryBytes) {
          logger.debug({ bytes: Buffer.byteLength(entry.body) }, 'response too large to cache');
        } else {
          stored = { ...entry, storedAt: opts.clock() };
        }
      }
      const token = plan.leader;
      if (stored || token !== null) {
        await safely('fill', undefined, () => store.cacheFill(plan.name, { entry: stored, ttlMs: plan.ttlMs, token }));
      }
      plan.finishLocal?.();
    },

    /** Deletes entries: all, or one gateway key's (only meaningful when scoped per key). */
    purge(keyId?: string): Promise<number> {
      return store.cachePurge(keyId === undefined ? undefined : `${keyId}:`);
    },

    /** Seconds since the entry was stored, for the Age header. */
    ageSeconds(entry: CacheEntry): number {
      return Math.max(0, Math.floor((opts.clock() - entry.storedAt) / 1000));
    },

    scope: opts.scope,
  };
}
