// The Store contract, run against the memory and Redis stores; then what only the Redis store promises.
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it, vi } from 'vitest';
import { hashSecret, newKeyId, newSecret, secretHint, type KeyRecord } from '../../src/keys.js';
import { createMemoryStore } from '../../src/store/memory-store.js';
import { redisKeys } from '../../src/store/redis-keys.js';
import { createRedisStore } from '../../src/store/redis-store.js';
import { KeyChangeConflictError, type Store } from '../../src/store/store.js';
import { freePort, startRedisServer } from '../helpers/redis-server.js';
import { clusterAddresses } from '../helpers/redis-cluster.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';
import { closeTracked, clusterStore, redisStore, track } from '../helpers/stores.js';

type Change = { id: string; hash: string };


let clock = Date.parse('2025-01-01T00:00:00.000Z');
function makeRecord(overrides: Partial<KeyRecord> = {}): KeyRecord {
  const secret = newSecret();
  const at = new Date((clock += 1000)).toISOString();
  return {
    id: newKeyId(),
    name: 'test key',
    hash: hashSecret(secret),
    hint: secretHint(secret),
    models: ['gpt-4o*'],
    limits: { rpm: 60, usdPerDay: 5 },
    metadata: { team: 'search', tier: 2, internal: true, note: null },
    createdAt: at,
    updatedAt: at,
    revokedAt: null,
    ...overrides,
  };
}

/** Records every change a store reports; wildcards are kept apart from real changes. */
function recordChanges(store: Store) {
  const changes: Change[] = [];
  let wildcards = 0;
  store.onKeyChange((c) => (c.id === '*' ? wildcards++ : changes.push(c)));
  return { changes, wildcards: () => wildcards };
}

describe.each([
  { name: 'memory', kind: 'memory', create: async (): Promise<Store> => track(createMemoryStore()) },
  { name: 'redis', kind: 'redis', create: (): Promise<Store> => redisStore() },
  { name: 'cluster', kind: 'redis', create: (): Promise<Store> => clusterStore() },
])('Store contract: $name', ({ kind, create }) => {
  it('reports its kind', async () => {
    expect((await create()).kind).toBe(kind);
  });

  it('creates a key and finds it by id and by hash', async () => {
    const store = await create();
    const record = makeRecord();
    await store.createKey(record);
    expect(await store.getKeyById(record.id)).toEqual(record);
    expect(await store.getKeyByHash(record.hash)).toEqual(record);
  });

  it('returns null for unknown ids and hashes', async () => {
    const store = await create();
    expect(await store.getKeyById('key_nope')).toBeNull();
    expect(await store.getKeyByHash(hashSecret('tg-nope'))).toBeNull();
  });

  it('lists keys oldest first, whatever the insertion order', async () => {
    const store = await create();
    const [a, b, c] = [makeRecord(), makeRecord(), makeRecord()] as [KeyRecord, KeyRecord, KeyRecord];
    for (const r of [c, a, b]) await store.createKey(r);
    expect((await store.listKeys()).map((r) => r.id)).toEqual([a.id, b.id, c.id]);
  });

  it('lists nothing when empty', async () => {
    expect(await (await create()).listKeys()).toEqual([]);
  });

  /** Every page of the key list, `limit` keys each, following each page's lastId. */
  async function allPages(store: Store, limit: number) {
    const pages: { ids: string[]; hasMore: boolean; lastId: string | null }[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await store.listKeysPage({ limit, after });
      if (!page) throw new Error(`no page after ${after}`);
      pages.push({ ids: page.keys.map((k) => k.id), hasMore: page.hasMore, lastId: page.lastId });
      if (!page.hasMore) return pages;
      after = page.lastId!;
    }
  }

  it('pages through the keys in the order listKeys gives them, each key once, even where creation times tie', async () => {
    const store = await create();
    // Seven keys over three creation times (ties are ordered by id), created out of order.
    const at = (ms: number) => new Date(Date.parse('2026-06-01T00:00:00.000Z') + ms).toISOString();
    const records = [0, 0, 0, 5, 5, 9, 9].map((ms) => makeRecord({ createdAt: at(ms) }));
    for (const r of [...records].reverse()) await store.createKey(r);
    const listed = (await store.listKeys()).map((r) => r.id);
    expect(listed).toHaveLength(7);

    const pages = await allPages(store, 3);
    expect(pages.map((p) => p.ids.length)).toEqual([3, 3, 1]);
    expect(pages.map((p) => p.hasMore)).toEqual([true, true, false]);
    expect(pages.flatMap((p) => p.ids)).toEqual(listed);
    expect(pages.map((p) => p.lastId)).toEqual([listed[2], listed[5], listed[6]]);

    // A limit the keys fill exactly: the last full page says no more follow.
    expect((await allPages(store, 7)).map((p) => [p.ids.length, p.hasMore])).toEqual([[7, false]]);
    expect((await allPages(store, 1000)).flatMap((p) => p.ids)).toEqual(listed);
    // After the last key: an empty page.
    expect(await store.listKeysPage({ limit: 3, after: listed[6] })).toEqual({ keys: [], hasMore: false, lastId: null });
  });

  it('a page holds the records, revoked ones included, as copies', async () => {
    const store = await create();
    const [a, b] = [makeRecord(), makeRecord()] as [KeyRecord, KeyRecord];
    await store.createKey(a);
    await store.createKey(b);
    const revoked = { ...b, revokedAt: '2026-12-01T00:00:00.000Z' };
    await store.updateKey(b.id, () => revoked);
    const page = await store.listKeysPage({ limit: 10 });
    expect(page).toEqual({ keys: [a, revoked], hasMore: false, lastId: b.id });
    page!.keys[0]!.name = 'mutated output';
    expect(await store.getKeyById(a.id)).toEqual(a);
  });

  it('a page after a key that is not listed is null; an empty store gives an empty first page', async () => {
    const store = await create();
    expect(await store.listKeysPage({ limit: 100 })).toEqual({ keys: [], hasMore: false, lastId: null });
    const record = makeRecord();
    await store.createKey(record);
    expect(await store.listKeysPage({ limit: 100, after: newKeyId() })).toBeNull();
    expect(await store.listKeysPage({ limit: 100, after: record.id })).toEqual({ keys: [], hasMore: false, lastId: null });
  });

  it('a key created between pages shows up on a later page, and none is listed twice', async () => {
    const store = await create();
    const first = [makeRecord(), makeRecord(), makeRecord()];
    for (const r of first) await store.createKey(r);
    const page1 = await store.listKeysPage({ limit: 2 });
    const later = makeRecord();
    await store.createKey(later);
    const page2 = await store.listKeysPage({ limit: 2, after: page1!.lastId! });
    expect([...page1!.keys, ...page2!.keys].map((k) => k.id)).toEqual([...first, later].map((r) => r.id));
    expect(page2!.hasMore).toBe(false);
  });

  it('refuses a limit outside 1..1000 or that is no integer, and an empty cursor', async () => {
    const store = await create();
    for (const limit of [0, -1, 1001, 1.5, Number.NaN]) {
      await expect(store.listKeysPage({ limit }), String(limit)).rejects.toThrow(RangeError);
    }
    await expect(store.listKeysPage({ limit: 10, after: '' })).rejects.toThrow(RangeError);
    expect(await store.listKeysPage({ limit: 1000 })).toEqual({ keys: [], hasMore: false, lastId: null });
  });

  it('updates a key in place', async () => {
    const store = await create();
    const record = makeRecord();
    await store.createKey(record);
    const updated = { ...record, name: 'renamed', limits: { tpm: 1000 }, updatedAt: new Date().toISOString() };
    await store.updateKey(record.id, () => updated);
    expect(await store.getKeyById(record.id)).toEqual(updated);
    expect(await store.getKeyByHash(record.hash)).toEqual(updated);
    expect(await store.listKeys()).toEqual([updated]);
  });

  it('rotation: the old hash stops resolving and the new one resolves', async () => {
    const store = await create();
    const record = makeRecord();
    await store.createKey(record);
    const rotated = { ...record, hash: hashSecret(newSecret()) };
    await store.updateKey(record.id, () => rotated);
    expect(await store.getKeyByHash(record.hash)).toBeNull();
    expect(await store.getKeyByHash(rotated.hash)).toEqual(rotated);
    expect(await store.getKeyById(record.id)).toEqual(rotated);
    expect(await store.listKeys()).toHaveLength(1);
  });

  it('returns revoked keys, with revokedAt, by id, by hash and in the list', async () => {
    const store = await create();
    const record = makeRecord();
    await store.createKey(record);
    const revoked = { ...record, revokedAt: new Date().toISOString() };
    await store.updateKey(record.id, () => revoked);
    expect((await store.getKeyByHash(record.hash))?.revokedAt).toBe(revoked.revokedAt);
    expect((await store.getKeyById(record.id))?.revokedAt).toBe(revoked.revokedAt);
    expect(await store.listKeys()).toEqual([revoked]);
  });

  it('overlapping changes of one key all land: each is applied to the record the others left', async () => {
    const store = await create();
    const record = makeRecord();
    await store.createKey(record);
    const newHash = hashSecret(newSecret());
    const results = await Promise.all([
      store.updateKey(record.id, (c) => ({ ...c, name: 'renamed' })),
      store.updateKey(record.id, (c) => ({ ...c, limits: { rpm: 5 } })),
      store.updateKey(record.id, (c) => ({ ...c, hash: newHash })),
      store.updateKey(record.id, (c) => ({ ...c, revokedAt: '2026-12-01T00:00:00.000Z' })),
    ]);
    expect(results.every((r) => r?.changed)).toBe(true);
    const stored = await store.getKeyById(record.id);
    expect(stored).toMatchObject({ name: 'renamed', limits: { rpm: 5 }, hash: newHash, revokedAt: '2026-12-01T00:00:00.000Z' });
    expect(await store.getKeyByHash(newHash)).toEqual(stored);
    expect(await store.getKeyByHash(record.hash)).toBeNull();
  });

  it('a change that returns null writes nothing; one that throws writes nothing and rethrows', async () => {
    const store = await create();
    const record = makeRecord();
    await store.createKey(record);
    const { changes } = recordChanges(store);
    expect(await store.updateKey(record.id, () => null)).toEqual({ record, changed: false });
    await expect(
      store.updateKey(record.id, () => {
        throw new Error('refused by the caller');
      }),
    ).rejects.toThrow('refused by the caller');
    await expect(store.updateKey(record.id, (c) => ({ ...c, id: 'key_other' }))).rejects.toThrow(RangeError);
    expect(await store.getKeyById(record.id)).toEqual(record);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(changes.filter((c) => c.id === record.id)).toEqual([]);
  });

  it('refuses to create a key whose id exists, and keeps the original', async () => {
    const store = await create();
    const record = makeRecord();
    await store.createKey(record);
    await expect(store.createKey({ ...record, name: 'impostor' })).rejects.toThrow(/already exists/);
    expect(await store.getKeyById(record.id)).toEqual(record);
    expect(await store.listKeys()).toHaveLength(1);
  });

  it('refuses to update a key that does not exist', async () => {
    const store = await create();
    const record = makeRecord();
    expect(await store.updateKey(record.id, () => record)).toBeNull();
    expect(await store.getKeyById(record.id)).toBeNull();
    expect(await store.getKeyByHash(record.hash)).toBeNull();
  });

  it('hands out copies: mutating what goes in or comes out changes nothing stored', async () => {
    const store = await create();
    const record = makeRecord();
    const original = structuredClone(record);
    await store.createKey(record);
    record.name = 'mutated input';
    record.models?.push('evil');

    const byId = await store.getKeyById(original.id);
    const byHash = await store.getKeyByHash(original.hash);
    const [listed] = await store.listKeys();
    for (const r of [byId, byHash, listed]) {
      if (!r) throw new Error('expected a record');
      r.name = 'mutated output';
      r.limits.rpm = 1;
      r.metadata.team = 'other';
    }
    expect(await store.getKeyById(original.id)).toEqual(original);
  });

  it('tells onKeyChange listeners about both hashes of a rotation', async () => {
    const store = await create();
    const record = makeRecord();
    await store.createKey(record);
    const { changes } = recordChanges(store);
    const newHash = hashSecret(newSecret());
    await store.updateKey(record.id, () => ({ ...record, hash: newHash }));
    await vi.waitFor(
      () => {
        expect(changes).toContainEqual({ id: record.id, hash: record.hash });
        expect(changes).toContainEqual({ id: record.id, hash: newHash });
      },
      { timeout: 1000, interval: 10 },
    );
    expect(changes.every((c) => c.id === record.id)).toBe(true);
  });

  it('tells onKeyChange listeners about a revocation', async () => {
    const store = await create();
    const record = makeRecord();
    await store.createKey(record);
    const { changes } = recordChanges(store);
    await store.updateKey(record.id, () => ({ ...record, revokedAt: new Date().toISOString() }));
    await vi.waitFor(() => expect(changes).toContainEqual({ id: record.id, hash: record.hash }), {
      timeout: 1000,
      interval: 10,
    });
  });

  it('keeps calling the other listeners when one throws', async () => {
    const store = await create();
    const record = makeRecord();
    await store.createKey(record);
    store.onKeyChange(() => {
      throw new Error('listener bug');
    });
    const { changes } = recordChanges(store);
    await store.updateKey(record.id, () => ({ ...record, name: 'x' }));
    await vi.waitFor(() => expect(changes).toContainEqual({ id: record.id, hash: record.hash }), {
      timeout: 1000,
      interval: 10,
    });
  });

  it('answers ping and closes', async () => {
    const store = await create();
    await expect(store.ping()).resolves.toBeUndefined();
    await store.close();
  });
});

describe('Redis store only', () => {
  let raw: Redis;
  beforeAll(() => {
    raw = new Redis(testRedisUrl(), { maxRetriesPerRequest: 1, commandTimeout: 2000 });
  });
  afterAll(async () => {
    await raw.quit();
  });

  function logger() {
    return { warn: vi.fn(), error: vi.fn() };
  }

  it('builds hash-tagged per-key names and refuses braces in the prefix', () => {
    const keys = redisKeys('tg:');
    expect(keys.keyRecord('abc')).toContain('{abc}');
    expect(keys.keyRecord('abc')).toBe('tg:key:{abc}');
    expect(() => redisKeys('tg{x}:')).toThrow(/must not contain/);
  });

  it('writes the record under its hash-tagged key, the index and the list under the prefix', async () => {
    const prefix = uniquePrefix();
    const store = await redisStore({ prefix });
    const record = makeRecord();
    await store.createKey(record);
    const keys = redisKeys(prefix);
    expect(JSON.parse((await raw.get(keys.keyRecord(record.id))) ?? 'null')).toEqual(record);
    expect(await raw.get(keys.keyHashIndex(record.hash))).toBe(record.id);
    expect(await raw.zrange(keys.keyList(), 0, '-1')).toEqual([record.id]);
    expect((await raw.keys(`${prefix}*`)).sort()).toEqual(
      [keys.keyRecord(record.id), keys.keyHashIndex(record.hash), keys.keyList()].sort(),
    );
  });

  // The conflict is another connection's write racing this store's: on a machine loaded to its limit
  // (a full suite beside other work) the race once went the store's way in one of its ten rounds.
  // A retry starts over with a new prefix; a store that gave up too soon, or never, fails every try.
  it('gives up on a key change whose compare-and-set keeps losing, with KeyChangeConflictError, changing nothing itself', { retry: 2 }, async () => {
    const prefix = uniquePrefix();
    const store = await redisStore({ prefix });
    const record = makeRecord();
    await store.createKey(record);
    const key = redisKeys(prefix).keyRecord(record.id);
    await raw.ping(); // connected: its writes go out as soon as they are made
    let rounds = 0;
    // Each round another writer changes the key between this change's read and its write (the
    // other connection's SET goes out at once; the store's own commands wait for the next turn).
    const change = (current: KeyRecord) => {
      void raw.set(key, JSON.stringify({ ...current, name: `other-${++rounds}` }));
      return { ...current, name: 'mine' };
    };
    const failure = await store.updateKey(record.id, change).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(KeyChangeConflictError);
    expect(failure).toMatchObject({ keyId: record.id, attempts: 10 });
    expect(rounds).toBe(10);
    expect((await store.getKeyById(record.id))!.name).toBe('other-10');
  });

  it('says so (throttled) when listed keys have lost their records, and lists the others', async () => {
    const prefix = uniquePrefix();
    const log = logger();
    const store = await redisStore({ prefix, logger: log });
    const [kept, lost] = [makeRecord(), makeRecord()];
    await store.createKey(kept);
    await store.createKey(lost);
    await raw.del(redisKeys(prefix).keyRecord(lost.id)); // as a Redis that lost data would
    expect(await store.listKeys()).toEqual([kept]);
    expect((await store.listKeysPage({ limit: 10 }))!.keys).toEqual([kept]);
    expect(log.warn).toHaveBeenCalledTimes(1); // the second listing within the minute is counted, not logged
    expect(log.warn.mock.calls[0]![0]).toMatchObject({ count: 1, keyIds: [lost.id] });
    expect(String(log.warn.mock.calls[0]![1])).toContain('missing');
  });

  it('two instances on one Redis hear each other’s changes within a second', async () => {
    const prefix = uniquePrefix();
    const a = await redisStore({ prefix });
    const b = await redisStore({ prefix });
    const heardByB = recordChanges(b);
    const heardByA = recordChanges(a);
    // The wildcard on (re)subscription tells us B's change feed is live.
    await vi.waitFor(() => expect(heardByB.wildcards()).toBeGreaterThan(0), { timeout: 2000, interval: 10 });

    const record = makeRecord();
    await a.createKey(record);
    const newHash = hashSecret(newSecret());
    await a.updateKey(record.id, () => ({ ...record, hash: newHash }));
    await vi.waitFor(
      () => {
        expect(heardByB.changes).toContainEqual({ id: record.id, hash: record.hash });
        expect(heardByB.changes).toContainEqual({ id: record.id, hash: newHash });
        expect(heardByA.changes).toContainEqual({ id: record.id, hash: newHash });
      },
      { timeout: 1000, interval: 10 },
    );
    expect(await b.getKeyByHash(record.hash)).toBeNull();
    expect((await b.getKeyByHash(newHash))?.id).toBe(record.id);
  });

  it('starts without Redis, fails fast instead of hanging, closes promptly', async () => {
    const log = logger();
    const port = await freePort();
    const store = await createRedisStore({
      url: `redis://127.0.0.1:${port}`,
      prefix: uniquePrefix(),
      commandTimeoutMs: 200,
      connectTimeoutMs: 200,
      logger: log,
    }).then(track);

    const timed = async (fn: () => Promise<unknown>) => {
      const start = Date.now();
      await expect(fn()).rejects.toThrow();
      return Date.now() - start;
    };
    expect(await timed(() => store.ping())).toBeLessThan(2000);
    expect(await timed(() => store.getKeyByHash(hashSecret('tg-x')))).toBeLessThan(2000);
    expect(await timed(() => store.createKey(makeRecord()))).toBeLessThan(2000);

    const start = Date.now();
    await store.close();
    expect(Date.now() - start).toBeLessThan(1000);
    // Many reconnect attempts failed meanwhile; the outage is logged once, not per attempt.
    expect(log.error.mock.calls.length).toBeLessThanOrEqual(1);
  });

  it('recovers after Redis restarts, and tells listeners they may have missed changes', async () => {
    // A server of its own: this test kills it, and the shared one serves other test files.
    let server = await startRedisServer();
    try {
      const log = logger();
      const store = await redisStore({ url: server.url, commandTimeoutMs: 300, logger: log });
      const heard = recordChanges(store);
      await vi.waitFor(() => expect(heard.wildcards()).toBe(1), { timeout: 2000, interval: 10 });
      await store.ping();

      await server.stop();
      await expect(store.ping()).rejects.toThrow();
      server = await startRedisServer(server.port);

      await vi.waitFor(() => expect(heard.wildcards()).toBe(2), { timeout: 10_000, interval: 20 });
      await expect(store.ping()).resolves.toBeUndefined();
      expect(log.error.mock.calls.length).toBeLessThanOrEqual(1);
    } finally {
      await closeTracked();
      await server.stop();
    }
  });

  it('a page reads only its own records and a slice of the list, however many keys there are', async () => {
    // A server of its own: its command counts are this test's alone.
    const server = await startRedisServer();
    const counter = new Redis(server.url, { maxRetriesPerRequest: 1, commandTimeout: 2000 });
    try {
      const store = await redisStore({ url: server.url });
      const records = Array.from({ length: 300 }, () => makeRecord());
      for (const r of records) await store.createKey(r);
      /** Calls of each command since the last reset (commands run by scripts included). */
      const calls = async () => {
        const info = await counter.info('commandstats');
        return Object.fromEntries([...info.matchAll(/^cmdstat_(\w+):calls=(\d+)/gm)].map((m) => [m[1], Number(m[2])]));
      };
      await counter.config('RESETSTAT');
      const page = await store.listKeysPage({ limit: 10, after: records[149]!.id });
      expect(page!.keys.map((k) => k.id)).toEqual(records.slice(150, 160).map((r) => r.id));
      const counts = await calls();
      expect(counts.get).toBe(10);
      // One ZRANK and one ZRANGE by rank (inside the script), never a read of the whole list.
      expect(counts).toMatchObject({ zrank: 1, zrange: 1 });
      expect(counts.zrangebyscore ?? 0).toBe(0);
    } finally {
      await closeTracked();
      await counter.quit();
      await server.stop();
    }
  });

  it('treats a corrupt record as missing, logs it, and keeps serving the rest', async () => {
    const prefix = uniquePrefix();
    const log = logger();
    const store = await redisStore({ prefix, logger: log });
    const keys = redisKeys(prefix);
    const good = makeRecord();
    const bad = makeRecord();
    await store.createKey(good);
    await store.createKey(bad);

    await raw.set(keys.keyRecord(bad.id), '{not json');
    expect(await store.getKeyById(bad.id)).toBeNull();
    expect(await store.getKeyByHash(bad.hash)).toBeNull();
    expect(await store.listKeys()).toEqual([good]);
    // Left out of its page, but the cursor still moves past it: a page of only that key is empty yet
    // leads on, so a client following lastId neither stops nor loops.
    expect(await store.listKeysPage({ limit: 2 })).toEqual({ keys: [good], hasMore: false, lastId: bad.id });
    expect(await store.listKeysPage({ limit: 1, after: good.id })).toEqual({ keys: [], hasMore: false, lastId: bad.id });

    await raw.set(keys.keyRecord(bad.id), JSON.stringify({ ...bad, models: 'all' }));
    expect(await store.getKeyById(bad.id)).toBeNull();

    await raw.set(keys.keyRecord(bad.id), JSON.stringify({ ...good }));
    expect(await store.getKeyById(bad.id)).toBeNull(); // a record filed under another id

    expect(log.error).toHaveBeenCalled();
    expect(JSON.stringify(log.error.mock.calls)).not.toContain(bad.hash);
  });

  it('reads back records an earlier version accepted: a USD limit finer than a millionth, an old model pattern', async () => {
    const prefix = uniquePrefix();
    const store = await redisStore({ prefix });
    const record = makeRecord({ limits: { usdPerDay: 0.0000015 }, models: ['gpt-*-mini'] });
    await store.createKey(record);
    expect(await store.getKeyById(record.id)).toEqual(record);
    expect(await store.getKeyByHash(record.hash)).toEqual(record);
  });

  it('a stale index entry (rotation cut short) does not let the old secret in', async () => {
    const prefix = uniquePrefix();
    const store = await redisStore({ prefix });
    const record = makeRecord();
    await store.createKey(record);
    const rotated = { ...record, hash: hashSecret(newSecret()) };
    await store.updateKey(record.id, () => rotated);
    // As if the process died after writing the record but before deleting the old index entry.
    await raw.set(redisKeys(prefix).keyHashIndex(record.hash), record.id);
    expect(await store.getKeyByHash(record.hash)).toBeNull();
    expect(await store.getKeyByHash(rotated.hash)).toEqual(rotated);
  });

  it('ignores malformed key-change messages', async () => {
    const prefix = uniquePrefix();
    const store = await redisStore({ prefix, logger: logger() });
    const heard = recordChanges(store);
    await vi.waitFor(() => expect(heard.wildcards()).toBe(1), { timeout: 2000, interval: 10 });
    const channel = redisKeys(prefix).keyChangesChannel();
    await raw.publish(channel, 'garbage');
    await raw.publish(channel, JSON.stringify({ id: 42 }));
    await raw.publish(channel, JSON.stringify({ id: 'key_x', hash: 'h' }));
    await vi.waitFor(() => expect(heard.changes).toEqual([{ id: 'key_x', hash: 'h' }]), { timeout: 1000, interval: 10 });
  });
});

describe('Redis Cluster only', () => {
  let raw: Redis;
  beforeAll(() => {
    const [first] = clusterAddresses(inject('redisClusterNodes'));
    raw = new Redis(first!.port, first!.host, { maxRetriesPerRequest: 1, commandTimeout: 2000 });
  });
  afterAll(async () => {
    await raw.quit();
  });

  const slotOf = async (key: string) => Number(await raw.call('CLUSTER', 'KEYSLOT', key));

  it('every key a script or a one-slot pipeline gets for a gateway key hashes to one slot', async () => {
    for (const id of ['key_abc', newKeyId(), 'odd:id|with%chars']) {
      const k = redisKeys(uniquePrefix());
      const groups: Record<string, string[]> = {
        // admit.lua KEYS, then the budget hashes of other periods it builds from the stems.
        admit: [
          k.window(id), k.reservations(id), k.leases(id), k.dayBudget(id, '2026-11-18'), k.monthBudget(id, '2026-11'),
          k.dayBudget(id, '') + '2026-11-17', k.monthBudget(id, '') + '2026-10',
        ],
        // settle.lua KEYS, then the same built keys.
        settle: [
          k.window(id), k.reservations(id), k.leases(id), k.settled(id), k.dayBudget(id, '2026-11-18'), k.monthBudget(id, '2026-11'),
          k.dayBudget(id, '') + '2026-11-17', k.monthBudget(id, '') + '2026-10',
        ],
        // quotaUsage's pipeline.
        quotaUsage: [k.window(id), k.leases(id), k.dayBudget(id, '2026-11-18'), k.monthBudget(id, '2026-11')],
        // lookup.lua, fill.lua and the waiters' check: an entry, its lock and its waiters mark, per-key and global scope.
        cacheScoped: [k.cacheEntry(`${id.replace(/[{}]/g, '')}:abc`), k.cacheLock(`${id.replace(/[{}]/g, '')}:abc`), k.cacheWaiters(`${id.replace(/[{}]/g, '')}:abc`)],
        cacheGlobal: [k.cacheEntry('global:0123abcd'), k.cacheLock('global:0123abcd'), k.cacheWaiters('global:0123abcd')],
      };
      for (const [name, keys] of Object.entries(groups)) {
        const slots = new Set(await Promise.all(keys.map(slotOf)));
        expect(slots.size, `${name} for ${id}: ${keys.join(' ')}`).toBe(1);
      }
      // A per-key group and the key's record share the tag too (not needed, but the layout says so).
      expect(await slotOf(k.keyRecord(id))).toBe(await slotOf(k.window(id)));
    }
  });

  it('two instances on the cluster hear each other’s changes within a second', async () => {
    const prefix = uniquePrefix();
    const a = await clusterStore({ prefix });
    const b = await clusterStore({ prefix });
    const heardByB = recordChanges(b);
    await vi.waitFor(() => expect(heardByB.wildcards()).toBeGreaterThan(0), { timeout: 5000, interval: 10 });
    const record = makeRecord();
    await a.createKey(record);
    await a.updateKey(record.id, () => ({ ...record, revokedAt: new Date().toISOString() }));
    await vi.waitFor(() => expect(heardByB.changes).toContainEqual({ id: record.id, hash: record.hash }), { timeout: 1000, interval: 10 });
    expect((await b.getKeyByHash(record.hash))?.revokedAt).not.toBeNull();
  });

  it('purges global cache entries spread over every master', async () => {
    const prefix = uniquePrefix();
    const store = await clusterStore({ prefix });
    const names = Array.from({ length: 30 }, () => `global:${newKeyId()}`);
    const entry = { storedAt: 1, body: '{}', model: 'm', promptTokens: 1, cachedPromptTokens: 0, completionTokens: 1 };
    await Promise.all(names.map((n) => store.cacheFill(n, { entry, ttlMs: 60_000, token: null })));
    // Which master serves each entry's slot: they must not all sit on one, or SCAN of one node would do.
    const ranges = (await raw.call('CLUSTER', 'SLOTS')) as [number, number, [string, number, ...unknown[]]][];
    const masterOf = (slot: number) => ranges.find(([from, to]) => slot >= from && slot <= to)?.[2][1];
    const masters = new Set(await Promise.all(names.map(async (n) => masterOf(await slotOf(redisKeys(prefix).cacheEntry(n))))));
    expect(masters.size).toBeGreaterThan(1);
    expect(await store.cachePurge('global:')).toBe(30);
    expect(await Promise.all(names.map((n) => store.cacheGet(n)))).toEqual(names.map(() => null));
  });
});
