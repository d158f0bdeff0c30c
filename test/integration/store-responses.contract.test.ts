// The Responses half of the Store contract (who created each response object), run against the
// memory store, a standalone Redis and a Redis Cluster with the same expectations.
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it, vi } from 'vitest';
import { createMemoryStore } from '../../src/store/memory-store.js';
import type { Store } from '../../src/store/store.js';
import { Redis } from 'ioredis';
import { redisKeys } from '../../src/store/redis-keys.js';
import { clusterStore, redisStore, track } from '../helpers/stores.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';

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
    expect(await Promise.all(ids.map((id) => store.getResponseOwner(id)))).toEqual(ids.map((_, i) => ({ keyId: `key_${i % 3}`, contextTokens: 0 })));
    await store.setResponseOwner(ids[0]!, 'key_other', 60_000);
    expect(await store.getResponseOwner(ids[0]!)).toEqual({ keyId: 'key_other', contextTokens: 0 });
  });

  it('keeps the context tokens of a response (what continuing it sends again), updated as it completes', async () => {
    const { store } = await make();
    await store.setResponseOwner('resp_ctx', 'key_a', 60_000); // created: no usage yet
    expect(await store.getResponseOwner('resp_ctx')).toEqual({ keyId: 'key_a', contextTokens: 0 });
    await store.setResponseOwner('resp_ctx', 'key_a', 60_000, 5_115); // completed
    expect(await store.getResponseOwner('resp_ctx')).toEqual({ keyId: 'key_a', contextTokens: 5_115 });
  });

  it('forgets the owner of a deleted response, and only that one', async () => {
    const { store } = await make();
    await store.setResponseOwner('resp_deleted', 'key_a', 60_000);
    await store.setResponseOwner('resp_kept', 'key_a', 60_000);
    await store.deleteResponseOwner('resp_deleted');
    expect(await store.getResponseOwner('resp_deleted')).toBeNull();
    expect(await store.getResponseOwner('resp_kept')).toMatchObject({ keyId: 'key_a' });
    await store.deleteResponseOwner('resp_never_recorded'); // a no-op, not an error
    await expect(store.deleteResponseOwner('')).rejects.toThrow(RangeError);
  });

  it('expires an owner after its ttl', async () => {
    const { store, advance } = await make();
    await store.setResponseOwner('resp_short', 'key_a', 150);
    expect(await store.getResponseOwner('resp_short')).toMatchObject({ keyId: 'key_a' });
    await advance(200);
    await vi.waitFor(async () => expect(await store.getResponseOwner('resp_short')).toBeNull(), { timeout: 3000, interval: 25 });
  });

  it('refuses bad arguments with a RangeError, writing nothing', async () => {
    const { store } = await make();
    await expect(store.setResponseOwner('', 'key_a', 1000)).rejects.toThrow(RangeError);
    await expect(store.setResponseOwner('resp_x', '', 1000)).rejects.toThrow(RangeError);
    await expect(store.setResponseOwner('resp_x', 'key_a', 0)).rejects.toThrow(RangeError);
    await expect(store.setResponseOwner('resp_x', 'key_a', 1.5)).rejects.toThrow(RangeError);
    await expect(store.setResponseOwner('resp_x', 'key_a', 1000, -1)).rejects.toThrow(RangeError);
    await expect(store.setResponseOwner('resp_x', 'key_a', 1000, 2.5)).rejects.toThrow(RangeError);
    await expect(store.getResponseOwner('')).rejects.toThrow(RangeError);
    expect(await store.getResponseOwner('resp_x')).toBeNull();
  });
});

describe('Redis response owners across versions (rolling upgrades, rollbacks)', () => {
  it('keeps the owner as the bare key id an earlier version reads, the context tokens apart', async () => {
    const prefix = uniquePrefix();
    const store = await redisStore({ prefix });
    const raw = new Redis(testRedisUrl());
    try {
      await store.setResponseOwner('resp_new', 'key_new', 60_000, 5_115);
      expect(await raw.get(redisKeys(prefix).responseOwner('resp_new'))).toBe('key_new');
      await store.deleteResponseOwner('resp_new');
      expect(await raw.exists(redisKeys(prefix).responseOwner('resp_new'), redisKeys(prefix).responseContext('resp_new'))).toBe(0);
    } finally {
      raw.disconnect();
    }
  });

  it('reads an owner an earlier version wrote (no context tokens) as that owner with no known context', async () => {
    const prefix = uniquePrefix();
    const store = await redisStore({ prefix });
    const raw = new Redis(testRedisUrl());
    try {
      await raw.set(redisKeys(prefix).responseOwner('resp_old'), 'key_old', 'PX', 60_000);
      expect(await store.getResponseOwner('resp_old')).toEqual({ keyId: 'key_old', contextTokens: 0 });
    } finally {
      raw.disconnect();
    }
  });
});
