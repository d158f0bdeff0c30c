// Readiness on a Redis Cluster when a master fails: the store's ping() is what /readyz answers and
// what ends degraded mode, so it must say "serving" once a replica has taken over, and "not
// serving" while slots have no master. And the change feed must move off a node that froze. Each
// test breaks a cluster of its own.
import { afterEach, describe, expect, it } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { createRedisStore, type RedisStore } from '../../src/store/redis-store.js';
import { clusterAddresses, startRedisCluster, type RedisCluster } from '../helpers/redis-cluster.js';
import { uniquePrefix } from '../helpers/redis.js';

const opened: { close(): Promise<void> }[] = [];
const clusters: RedisCluster[] = [];
afterEach(async () => {
  for (const o of opened.splice(0).reverse()) await o.close();
  for (const c of clusters.splice(0)) await c.stop();
});

async function cluster(options: Parameters<typeof startRedisCluster>[0]) {
  const c = await startRedisCluster({ nodeTimeoutMs: 1000, ...options });
  clusters.push(c);
  return c;
}

async function storeOn(c: RedisCluster, prefix = uniquePrefix()): Promise<RedisStore> {
  const store = await createRedisStore({ clusterNodes: clusterAddresses(c.nodes), prefix });
  opened.push(store);
  return store;
}

const portOf = (node: string) => Number(node.split(':')[1]);

/** CLUSTER NODES as one live node sees it. */
async function clusterView(port: number): Promise<{ state: string; nodes: { port: number; flags: string[] }[] }> {
  const conn = new Redis(port, '127.0.0.1', { maxRetriesPerRequest: 0 });
  try {
    const info = String(await conn.call('CLUSTER', 'INFO'));
    const lines = String(await conn.call('CLUSTER', 'NODES')).trim().split('\n');
    return {
      state: /cluster_state:(\w+)/.exec(info)![1]!,
      nodes: lines.map((l) => {
        const [, address, flags] = l.split(' ');
        return { port: Number(address!.split(':')[1]!.split('@')[0]), flags: flags!.split(',') };
      }),
    };
  } finally {
    conn.disconnect();
  }
}

/** Polls `check` until it returns true (at most `ms`). */
async function until(check: () => Promise<boolean>, ms: number, what: string) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`still waiting for ${what}`);
    await sleep(100);
  }
}

describe('a Redis Cluster master fails', () => {
  it('is serving again once a replica took over, while the failed master stays frozen', async () => {
    const c = await cluster({ masters: 3, replicas: 1 });
    const store = await storeOn(c);
    await store.ping();
    const live = portOf(c.nodes.at(-1)!);
    const frozen = (await clusterView(live)).nodes.find((n) => n.flags.includes('master') && n.port !== live)!.port;
    c.signal(frozen, 'SIGSTOP');
    // The cluster fails it over: its replica is promoted and every slot is served again.
    await until(
      async () => {
        const view = await clusterView(live);
        return view.state === 'ok' && view.nodes.find((n) => n.port === frozen)!.flags.includes('fail');
      },
      20_000,
      'the failover',
    );
    // Nothing was sent meanwhile (as while the gateway fails fast): the store must learn the new map itself.
    await until(() => store.ping().then(() => true, () => false), 10_000, 'ping to pass after the failover');
  }, 60_000);

  it('is not serving while a master without a replica is down, and says why', async () => {
    const c = await cluster({ masters: 3 });
    const store = await storeOn(c);
    await store.ping();
    const [dead, live] = [portOf(c.nodes[1]!), portOf(c.nodes[0]!)];
    c.signal(dead, 'SIGKILL');
    await until(async () => (await clusterView(live)).state === 'fail', 20_000, 'cluster_state:fail');
    // Whatever ioredis keeps of the dead node, the ping must fail every time, saying why.
    const reasons = new Set<string>();
    for (let i = 0; i < 25; i++) {
      const failure = await store.ping().then(() => undefined, (err: Error) => err.message);
      expect(failure, `ping ${i}`).toBeDefined();
      reasons.add(failure!);
      await sleep(200);
    }
    expect([...reasons].join('\n')).toMatch(/ECONNREFUSED|cluster_state is fail/);
  }, 60_000);
});

describe('the change feed on a Redis Cluster', () => {
  it("moves to another node when its node freezes, and hears what is published there", async () => {
    const c = await cluster({ masters: 3 });
    const prefix = uniquePrefix();
    const store = await storeOn(c, prefix);
    const heard: string[] = [];
    store.onKeyChange((change) => heard.push(change.id));
    const subscribedAt = async () => {
      for (const node of c.nodes) {
        const conn = new Redis(portOf(node), '127.0.0.1', { maxRetriesPerRequest: 0, commandTimeout: 500 });
        conn.on('error', () => {});
        try {
          const clients = String(await conn.call('CLIENT', 'LIST', 'TYPE', 'pubsub'));
          if (clients.includes('name=tollgate:sub')) return portOf(node);
        } catch {
          // a frozen node does not answer
        } finally {
          conn.disconnect();
        }
      }
      return undefined;
    };
    let frozen: number | undefined;
    await until(async () => (frozen = await subscribedAt()) !== undefined, 10_000, 'the subscription');
    // SIGSTOP, not SIGKILL: the connection stays open and silent, so nothing but a check notices.
    c.signal(frozen!, 'SIGSTOP');
    const heardBefore = heard.length;
    const publisher = new Redis(portOf(c.nodes.find((n) => portOf(n) !== frozen)!), '127.0.0.1', { maxRetriesPerRequest: 0 });
    try {
      // A change is published on a live node again and again (one sent before the subscriber moved is lost).
      await until(
        async () => {
          await publisher.publish(`${prefix}events:key-changes`, JSON.stringify({ id: 'key_after_freeze', hash: 'h' }));
          return heard.includes('key_after_freeze');
        },
        20_000,
        'the change to be heard',
      );
    } finally {
      publisher.disconnect();
      c.signal(frozen!, 'SIGCONT');
    }
    // Moving on told listeners that changes may have been missed meanwhile.
    expect(heard.slice(heardBefore)).toContain('*');
  }, 60_000);
});
