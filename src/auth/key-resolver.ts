// Resolves a secret's hash to its key record: a short in-process cache, then the store; and, while
// the store cannot answer, the last record it gave for a recently seen key (the outage grace).
// Any instance's change to a key reaches every instance's cache through the store's change feed.
import type { Store } from '../store/store.js';
import type { KeyRecord } from '../keys.js';

export type KeyResolver = ReturnType<typeof createKeyResolver>;

export interface KeyResolverGrace {
  /**
   * How long after its last successful lookup a key is still accepted while the store cannot
   * answer (AUTH_OUTAGE_GRACE_MS). 0: no grace, every lookup the store cannot answer is a 503.
   */
  graceMs: number;
  /** Told each time a key is accepted from the grace list (metrics, a throttled warning). */
  onGrace?: (keyId: string, err: unknown) => void;
}

// Bounds the grace list to real keys: only successful lookups enter it, and it never grows past this.
const MAX_GRACE_ENTRIES = 100_000;
// Bounds the list of hashes the store just said it does not know (a spray of distinct wrong keys).
const MAX_MISSES = 10_000;

export function createKeyResolver(store: Store, ttlMs: number, now: () => number = Date.now, grace: KeyResolverGrace = { graceMs: 0 }) {
  const cache = new Map<string, { record: KeyRecord; expires: number }>();
  /**
   * Hashes the store did not know, until when (as long as a key is cached): an app retrying with a
   * revoked or mistyped key, or a blocked address trying the same ones, costs the store nothing more.
   * A key created later has a new random secret, so no live key's hash is ever in here.
   */
  const misses = new Map<string, number>();
  /** Every key looked up successfully within graceMs, with when: used only when the store cannot answer. */
  const lastGood = new Map<string, { record: KeyRecord; verifiedAt: number }>();
  let servedFromGrace = 0;
  /**
   * Bumped by every change the feed reports. A lookup whose answer left Redis before a revocation
   * was heard would otherwise cache the stale, unrevoked record: it checks the count did not move.
   */
  let changes = 0;

  store.onKeyChange(({ hash }) => {
    changes++;
    // '*': the change feed may have missed messages (reconnect), so trust nothing cached, not even
    // for the outage grace: a revocation we missed must not be honoured from memory later.
    if (hash === '*') {
      cache.clear();
      lastGood.clear();
      misses.clear();
    } else {
      // A change or revocation drops the key at once from both, so it holds through an outage.
      cache.delete(hash);
      lastGood.delete(hash);
      misses.delete(hash);
    }
  });

  function remember(hash: string, record: KeyRecord) {
    if (grace.graceMs <= 0) return;
    if (lastGood.size >= MAX_GRACE_ENTRIES && !lastGood.has(hash)) {
      const cutoff = now() - grace.graceMs;
      for (const [h, entry] of lastGood) if (entry.verifiedAt <= cutoff) lastGood.delete(h);
      // Still full of live entries: the oldest inserted goes.
      if (lastGood.size >= MAX_GRACE_ENTRIES) lastGood.delete(lastGood.keys().next().value!);
    }
    lastGood.delete(hash); // re-insert: Map order stays oldest-verified first
    lastGood.set(hash, { record, verifiedAt: now() });
  }

  return {
    /** The cached live key for this hash, if any: no I/O, the hot path. */
    cached(hash: string): KeyRecord | undefined {
      const hit = cache.get(hash);
      if (hit && hit.expires > now()) return hit.record;
      return undefined;
    },

    /**
     * Asks the store: the key, or null when unknown or revoked. When the store cannot answer, a key
     * looked up successfully within graceMs is still accepted (its last known record, limits
     * included); otherwise this throws, and the caller answers 503.
     */
    async lookup(hash: string): Promise<KeyRecord | null> {
      const missedUntil = misses.get(hash);
      if (missedUntil !== undefined) {
        if (missedUntil > now()) return null;
        misses.delete(hash);
      }
      let record: KeyRecord | null;
      const changesBefore = changes;
      try {
        record = await store.getKeyByHash(hash);
      } catch (err) {
        const known = lastGood.get(hash);
        if (known && now() - known.verifiedAt < grace.graceMs) {
          servedFromGrace++;
          grace.onGrace?.(known.record.id, err);
          return known.record;
        }
        if (known) lastGood.delete(hash);
        throw err;
      }
      if (!record || record.revokedAt !== null || record.hash !== hash) {
        cache.delete(hash);
        lastGood.delete(hash);
        if (ttlMs > 0 && changes === changesBefore) {
          if (misses.size >= MAX_MISSES) misses.delete(misses.keys().next().value!);
          misses.set(hash, now() + ttlMs);
        }
        return null;
      }
      // A key change arrived meanwhile: this answer may predate it, so serve it once, keep nothing.
      if (changes !== changesBefore) return record;
      if (ttlMs > 0) cache.set(hash, { record, expires: now() + ttlMs });
      remember(hash, record);
      return record;
    },

    clear: () => {
      cache.clear();
      lastGood.clear();
      misses.clear();
    },

    /** For /readyz and metrics: keys the grace could serve now, and how many requests it served. */
    graceStats: () => {
      const cutoff = now() - grace.graceMs;
      let keys = 0;
      for (const entry of lastGood.values()) if (entry.verifiedAt > cutoff) keys++;
      return { graceMs: grace.graceMs, keys, servedFromGrace };
    },
  };
}
