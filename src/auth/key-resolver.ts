// Resolves a secret's hash to its key record: a short in-process cache, then the store.
// Any instance's change to a key reaches every instance's cache through the store's change feed.
import type { Store } from '../store/store.js';
import type { KeyRecord } from '../keys.js';

export type KeyResolver = ReturnType<typeof createKeyResolver>;

export function createKeyResolver(store: Store, ttlMs: number, now: () => number = Date.now) {
  const cache = new Map<string, { record: KeyRecord; expires: number }>();

  store.onKeyChange(({ hash }) => {
    // '*': the change feed may have missed messages (reconnect), so trust nothing cached.
    if (hash === '*') cache.clear();
    else cache.delete(hash);
  });

  return {
    /** The cached live key for this hash, if any: no I/O, the hot path. */
    cached(hash: string): KeyRecord | undefined {
      const hit = cache.get(hash);
      if (hit && hit.expires > now()) return hit.record;
      return undefined;
    },

    /** Asks the store: the key, or null when unknown or revoked. Throws if the store cannot answer. */
    async lookup(hash: string): Promise<KeyRecord | null> {
      const record = await store.getKeyByHash(hash);
      if (!record || record.revokedAt !== null || record.hash !== hash) {
        cache.delete(hash);
        return null;
      }
      if (ttlMs > 0) cache.set(hash, { record, expires: now() + ttlMs });
      return record;
    },

    clear: () => cache.clear(),
  };
}
