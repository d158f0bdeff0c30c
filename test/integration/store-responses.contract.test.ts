// The Responses half of the Store contract (who created each response object), run against the
// memory store, a standalone Redis and a Redis Cluster with the same expectations.
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it, vi } from 'vitest';
import { createMemoryStore } from '../../src/store/memory-store.js';
import type { Store } from '../../src/store/store.js';
import { clusterStore, redisStore, track } from '../helpers/stores.js';

interface Harness {
  store: Store;
  advance(ms: number): Promise<void>;
}

describe.each([
  {
    kind: 'memory',
    make: async (): Promise<Harness> => {
      let t = Date.parse('2026-11-18T12:30:00.000Z');
      const store = track(createMemoryStore({ clock: () => t }));
      return { store, advance: async (ms) => void (t += ms) };
    },
  },
  {
    kind: 'redis',
    make: async (): Promise<Harness> => {
      const store = await redisStore();
      return { store, advance: (ms) => sleep(ms) };
    },
  },
  {
    kind: 'cluster',
    make: async (): Promise<Harness> => {
      const store = await clusterStore();
      return { store, advance: (ms) => sleep(ms) };
    },
  },
])('Store response owners contract: $kind', ({ make }) => {
  it('records, overwrites and forgets the owner of a response id', async () => {
    const { store } = await make();
    expect(await store.getResponseOwner('resp_unknown')).toBeNull();
    // Many ids, so on a cluster they land in different slots.
    const ids = Array.from({ length: 20 }, (_, i) => `resp_${i.toString(16).padStart(48, '0')}`);
    await Promise.all(ids.map((id, i) => store.setResponseOwner(id, `key_${i % 3}`, 60_000)));
    expect(await Promise.all(ids.map((id) => store.getResponseOwner(id)))).toEqual(ids.map((_, i) => `key_${i % 3}`));
    await store.setResponseOwner(ids[0]!, 'key_other', 60_000);
    expect(await store.getResponseOwner(ids[0]!)).toBe('key_other');
  });

  it('forgets the owner of a deleted response, and only that one', async () => {
    const { store } = await make();
    await store.setResponseOwner('resp_deleted', 'key_a', 60_000);
    await store.setResponseOwner('resp_kept', 'key_a', 60_000);
    await store.deleteResponseOwner('resp_deleted');
    expect(await store.getResponseOwner('resp_deleted')).toBeNull();
    expect(await store.getResponseOwner('resp_kept')).toBe('key_a');
    await store.deleteResponseOwner('resp_never_recorded'); // a no-op, not an error
    await expect(store.deleteResponseOwner('')).rejects.toThrow(RangeError);
  });

  it('expires an owner after its ttl', async () => {
    const { store, advance } = await make();
    await store.setResponseOwner('resp_short', 'key_a', 150);
    expect(await store.getResponseOwner('resp_short')).toBe('key_a');
    await advance(200);
    await vi.waitFor(async () => expect(await store.getResponseOwner('resp_short')).toBeNull(), { timeout: 3000, interval: 25 });
  });

  it('refuses bad arguments with a RangeError, writing nothing', async () => {
    const { store } = await make();
    await expect(store.setResponseOwner('', 'key_a', 1000)).rejects.toThrow(RangeError);
    await expect(store.setResponseOwner('resp_x', '', 1000)).rejects.toThrow(RangeError);
    await expect(store.setResponseOwner('resp_x', 'key_a', 0)).rejects.toThrow(RangeError);
    await expect(store.setResponseOwner('resp_x', 'key_a', 1.5)).rejects.toThrow(RangeError);
    await expect(store.getResponseOwner('')).rejects.toThrow(RangeError);
    expect(await store.getResponseOwner('resp_x')).toBeNull();
  });
});
