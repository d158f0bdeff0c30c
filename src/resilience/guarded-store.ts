// A Store that fails fast while the real one is down: every call first asks the health monitor, so
// during an outage no request waits for a command timeout; every failure is reported to the monitor.
import type { Store } from '../store/store.js';
import { StoreUnavailableError, type StoreHealth } from './store-health.js';

/**
 * Wraps `store`. While `health.up` is false every call rejects at once with StoreUnavailableError
 * (cacheWait resolves 'failed', as it never rejects); the background probe is what brings it back.
 * While up, calls go through (each bounded by the store's own command timeout) and their outcome
 * feeds the monitor: the first call to time out flips the whole instance to degraded mode.
 */
export function guardStore(store: Store, health: StoreHealth): Store {
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

  return {
    kind: store.kind,
    createKey: guard(store.createKey),
    getKeyById: guard(store.getKeyById),
    getKeyByHash: guard(store.getKeyByHash),
    listKeys: guard(store.listKeys),
    updateKey: guard(store.updateKey),
    onKeyChange: (listener) => store.onKeyChange(listener),
    admit: guard(store.admit),
    admitAndLookup: guard(store.admitAndLookup),
    settle: guard(store.settle),
    renewLeases: guard(store.renewLeases),
    quotaUsage: guard(store.quotaUsage),
    hit: guard(store.hit),
    cacheGet: guard(store.cacheGet),
    cacheLookup: guard(store.cacheLookup),
    cacheAcquire: guard(store.cacheAcquire),
    cacheFill: guard(store.cacheFill),
    // Never rejects, by contract: while down there is no leader to wait for.
    cacheWait: async (name, timeoutMs) => (health.up ? store.cacheWait(name, timeoutMs) : 'failed'),
    cachePurge: guard(store.cachePurge),
    recordUsage: guard(store.recordUsage),
    usageRows: guard(store.usageRows),
    usageEvents: guard(store.usageEvents),
    markOnce: guard(store.markOnce),
    setResponseOwner: guard(store.setResponseOwner),
    getResponseOwner: guard(store.getResponseOwner),
    ping: guard(store.ping),
    close: () => store.close(),
  };
}
