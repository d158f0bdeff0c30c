// The commands a turn of the event loop issues leave in one socket write (write-coalescing.ts), on
// one server and on each node of a cluster, in order, with every reply where it belongs.
import type { Socket } from 'node:net';
import type { Redis } from 'ioredis';
import { afterEach, describe, expect, inject, it } from 'vitest';
import { createRedisConnection, type RedisConnection } from '../../src/store/redis-connection.js';
import { clusterAddresses } from '../helpers/redis-cluster.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';

const open: RedisConnection[] = [];
afterEach(() => {
  for (const c of open.splice(0)) c.client.disconnect();
});

/** Counts the writes that reach the socket (one per write(2)/writev(2) Node makes). */
function countWrites(node: Redis): { writes: number } {
  const socket = node.stream as Socket & { _write: (...a: unknown[]) => void; _writev: (...a: unknown[]) => void };
  const seen = { writes: 0 };
  const write = socket._write.bind(socket);
  const writev = socket._writev.bind(socket);
  socket._write = (...a) => {
    seen.writes++;
    write(...a);
  };
  socket._writev = (...a) => {
    seen.writes++;
    writev(...a);
  };
  return seen;
}

describe('write coalescing', () => {
  it('sends the commands of one turn in one write, replies in order', async () => {
    const conn = createRedisConnection({ url: testRedisUrl() });
    open.push(conn);
    const redis = conn.client as Redis;
    await redis.ping();
    const seen = countWrites(redis);
    const p = uniquePrefix();
    const replies = await Promise.all(Array.from({ length: 20 }, (_, i) => redis.set(`${p}k${i}`, String(i)).then(() => redis.get(`${p}k${i}`))));
    expect(replies).toEqual(Array.from({ length: 20 }, (_, i) => String(i)));
    // 20 SETs in one turn, then the 20 GETs issued as their replies arrive (one or a few turns).
    expect(seen.writes).toBeGreaterThanOrEqual(2);
    expect(seen.writes).toBeLessThanOrEqual(4);
  });

  it('does the same on each node of a cluster', async () => {
    const conn = createRedisConnection({ clusterNodes: clusterAddresses(inject('redisClusterNodes')) });
    open.push(conn);
    const p = uniquePrefix();
    const tag = `{${p}}`;
    await conn.client.set(`${tag}warm`, '1');
    // Every key carries one hash tag, so all the commands go to the node that owns its slot.
    const counts = (await conn.masters()).filter((m) => m.status === 'ready').map((m) => countWrites(m));
    const values = await Promise.all(Array.from({ length: 20 }, (_, i) => conn.client.incrby(`${tag}n`, i)));
    expect(values.at(-1)).toBe((19 * 20) / 2);
    expect(counts.reduce((n, c) => n + c.writes, 0)).toBe(1);
  });
});
