// Stores for the contract suites: memory, a standalone Redis and the run's Redis Cluster, each
// closed after the test that opened it (importing this module registers the afterEach).
import { afterEach, inject } from 'vitest';
import { createRedisStore, type RedisStoreOptions } from '../../src/store/redis-store.js';
import type { Store } from '../../src/store/store.js';
import { clusterAddresses } from './redis-cluster.js';
import { testRedisUrl, uniquePrefix } from './redis.js';

const open: Store[] = [];

/** Closes every store opened so far (before a test stops a server of its own, say). */
export async function closeTracked() {
  await Promise.all(open.splice(0).map((s) => s.close()));
}
afterEach(closeTracked);

/** Closes the store after the current test. */
export function track<S extends Store>(store: S): S {
  open.push(store);
  return store;
}

/** A store on the run's standalone Redis, under a fresh prefix. */
export function redisStore(opts: Partial<RedisStoreOptions> = {}) {
  return createRedisStore({ url: testRedisUrl(), prefix: uniquePrefix(), ...opts }).then(track);
}

/** A store on the run's Redis Cluster (three masters), under a fresh prefix. */
export function clusterStore(opts: Partial<RedisStoreOptions> = {}) {
  return createRedisStore({ clusterNodes: clusterAddresses(inject('redisClusterNodes')), prefix: uniquePrefix(), ...opts }).then(track);
}
