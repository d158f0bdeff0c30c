// A Store that fails fast while the real one is down: every call first asks the health monitor, so
// during an outage no request waits for a command timeout; every failure is reported to the monitor.
// It also releases the cache leads of calls whose answer never came, once the store answers again.
import { randomBytes } from 'node:crypto';
import type { Store } from '../store/store.js';
import { StoreUnavailableError, type StoreHealth } from './store-health.js';
import { createReplayQueue } from './replay-queue.js';

export interface GuardOptions {
  /** Where a lead release that cannot be queued (the queue is full) is reported. */
  logger?: { warn(obj: object, msg?: string): void };
  /** Lead releases kept while the store is down; past this a lead just lapses at its ttl. */
  leadReleasesMax?: number;
}

/** A single-flight lead a call may have taken without the caller hearing of it. */
interface LeadRelease {
  name: string;
  token: string;
}

/**
 * Wraps `store`. While `health.up` is false every call rejects at once with StoreUnavailableError
 * (cacheWait resolves 'failed', as it never rejects); the background probe is what brings it back.
 * While up, calls go through (each bounded by the store's own command timeout) and their outcome
 * feeds the monitor: the first call to time out flips the whole instance to degraded mode.
 *
 * A call that takes a cache lead (admitAndLookup, cacheLookup, cacheAcquire) and fails after it was
 * sent may still have taken it: a stalled (not dead) Redis runs the queued script when it resumes,
 * and nobody would fill or release that lock, so identical requests would wait on it for the
 * whole single-flight wait. Such a call leads with a token the guard chose, and a release of that
 * token (cacheFill without an entry: only if the token still holds the lock, a no-op otherwise) is
 * written when the store answers again; on the same connection, after the script it answers for.
 */
export function guardStore(store: Store, health: StoreHealth, opts: GuardOptions = {}): Store {
  function guard<A extends unknown[], R>(fn: (...args: A) => Promise<R>): (...args: A) => Promise<R> {
    return async (...args: A) => {
      if (!health.up) throw new StoreUnavailableError();
      try {
        const result = await fn.apply(store, args);
        health.success();
        return result;
      } catch (err) {
        health.failure(err);
        throw err;
      }
    };
  }

  const cacheFill = guard(store.cacheFill);
  const releases = createReplayQueue<LeadRelease>({
    max: opts.leadReleasesMax ?? 10_000,
    write: ({ name, token }) => cacheFill(name, { token }),
    log: (lead, err, why) => opts.logger?.warn({ err, cacheName: lead.name }, `${why}; it lapses at its ttl (CACHE_SINGLE_FLIGHT_WAIT_MS)`),
    what: 'cache lead release',
  });
  health.onRecover(() => void releases.flush());

  /** Tokens as the Redis store makes them: this instance, and a counter (unique per lead, not secret). */
  const instanceId = randomBytes(8).toString('hex');
  let leads = 0;
  const newLeadToken = () => `${instanceId}:${(++leads).toString(36)}`;

  /** Runs a call that may take the lead of `name` with `token`; if its outcome is unknown, queues the release. */
  async function leading<R>(name: string, token: string, call: () => Promise<R>): Promise<R> {
    try {
      return await call();
    } catch (err) {
      // Refused by the guard: never sent. A RangeError or TypeError: refused by the store's checks
      // before anything was sent. Anything else (a timeout, a lost connection, an error reply) may
      // have come after the script ran.
      if (!(err instanceof StoreUnavailableError || err instanceof RangeError || err instanceof TypeError)) {
        releases.keep({ name, token }, err);
        // Still up (an error that did not degrade the instance): the store answers, release now.
        if (health.up) void releases.flush();
      }
      throw err;
    }
  }

  const admitAndLookup = guard(store.admitAndLookup);
  const cacheLookup = guard(store.cacheLookup);
  const cacheAcquire = guard(store.cacheAcquire);

  return {
    kind: store.kind,
    createKey: guard(store.createKey),
    getKeyById: guard(store.getKeyById),
    getKeyByHash: guard(store.getKeyByHash),
    listKeys: guard(store.listKeys),
    listKeysPage: guard(store.listKeysPage),
    updateKey: guard(store.updateKey),
    onKeyChange: (listener) => store.onKeyChange(listener),
    admit: guard(store.admit),
    admitAndLookup: (request, lookup) => {
      const token = lookup.token ?? newLeadToken();
      // A literal, not `{ ...lookup, token }`: this runs for every cacheable request, and V8's
      // spread into a new object costs ~1 us more here.
      return leading(lookup.name, token, () => admitAndLookup(request, { name: lookup.name, leadTtlMs: lookup.leadTtlMs, token }));
    },
    settle: guard(store.settle),
    renewLeases: guard(store.renewLeases),
    endLease: guard(store.endLease),
    quotaUsage: guard(store.quotaUsage),
    hit: guard(store.hit),
    cacheGet: guard(store.cacheGet),
    cacheLookup: (name, leadTtlMs, token = newLeadToken()) => leading(name, token, () => cacheLookup(name, leadTtlMs, token)),
    cacheAcquire: (name, ttlMs, token = newLeadToken()) => leading(name, token, () => cacheAcquire(name, ttlMs, token)),
    cacheFill,
    // Never rejects, by contract: while down there is no leader to wait for.
    cacheWait: async (name, timeoutMs) => (health.up ? store.cacheWait(name, timeoutMs) : 'failed'),
    cachePurge: guard(store.cachePurge),
    recordUsage: guard(store.recordUsage),
    usageRows: guard(store.usageRows),
    usageEvents: guard(store.usageEvents),
    markOnce: guard(store.markOnce),
    setResponseOwner: guard(store.setResponseOwner),
    getResponseOwner: guard(store.getResponseOwner),
    deleteResponseOwner: guard(store.deleteResponseOwner),
    ping: guard(store.ping),
    close: () => store.close(),
  };
}
