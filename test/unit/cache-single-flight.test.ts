// The cache's in-process single-flight, over the real memory store: which request on this instance
// the others wait on, in memory, rather than through the store.
import { describe, expect, it } from 'vitest';
import pino from 'pino';
import { createCache, type CachePlan } from '../../src/cache/cache.js';
import { createMemoryStore } from '../../src/store/memory-store.js';
import type { JoinedLookup } from '../../src/store/store.js';

const NAME = 'key1:0123abcd';
const plan = (): CachePlan => ({ name: NAME, status: 'MISS', read: true, write: true, ttlMs: 60_000, joinsInFlight: true, leader: null, filled: false });
const entry = { body: '{"answer":"B"}', model: 'gpt-4o-mini', promptTokens: 3, cachedPromptTokens: 0, completionTokens: 2 };

describe('in-process single-flight', () => {
  it("a leader that outlived its store lock, ending, leaves the new leader's wait alone: the next request still waits on it in memory", async () => {
    const store = createMemoryStore();
    let storeWaits = 0;
    const cacheWait = store.cacheWait.bind(store);
    store.cacheWait = (name, ms) => (storeWaits++, cacheWait(name, ms));
    const cache = createCache({ store, clock: Date.now, enabled: true, scope: 'key', defaultTtlMs: 60_000, maxEntryBytes: 1 << 20, singleFlightWaitMs: 2_000, logger: pino({ level: 'silent' }) });
    // A leads; its store lock lapses while it works, and B (the store saw no lock) leads after it.
    const a = plan();
    await cache.lookupAndAdmit(a, async (): Promise<JoinedLookup<string>> => ({ lookup: 'miss', leader: 'token-a', admission: 'a' }));
    const b = plan();
    await cache.lookupAndAdmit(b, async (): Promise<JoinedLookup<string>> => ({ lookup: 'miss', leader: 'token-b', admission: 'b' }));
    await cache.fill(a, undefined); // A failed: nothing stored
    // C finds B leading: it waits on B here, in memory (A's end had dropped B's lead: through the store).
    const c = cache.lookupAndAdmit(plan(), async (): Promise<JoinedLookup<string>> => ({ lookup: 'wait' }));
    await cache.fill(b, entry);
    expect((await c).entry).toMatchObject({ body: entry.body });
    expect(storeWaits).toBe(0);
    await store.close();
  });
});
