// Resolves a client's secret to its key record: sha256, then a short in-process cache, then the store.
// Any instance's change to a key reaches every instance's cache through the store's change feed.
import type { Store } from '../store/store.js';
import { hashSecret, type KeyRecord } from '../keys.js';

export type KeyResolver = ReturnType<typeof createKeyResolver>;

export function createKeyResolver(store: Store, ttlMs: number, now: () => number = Date.now) {
  const cache = new Map<string, { record: KeyRecord; expires: number }>();

  store.onKeyChange(({ hash }) => {
    // '*': the change feed may have missed messages (reconnect), so trust nothing cached.
    if (hash === '*') cache.clear();
    else cache.delete(hash);
  });

  /** The key for this secret, or null when unknown or revoked. Throws if the store cannot answer. */
  async function resolve(secret: string): Promise<KeyRecord | null> {
    const hash = hashSecret(secret);
    const hit = cache.get(hash);
    if (hit && hit.expires > now()) return hit.record;
    const record = await store.getKeyByHash(hash);
    if (!record || record.revokedAt !== null || record.hash !== hash) {
      cache.delete(hash);
      return null;
    }
    if (ttlMs > 0) cache.set(hash, { record, expires: now() + ttlMs });
    return record;
  }

  return { resolve, clear: () => cache.clear() };
}
