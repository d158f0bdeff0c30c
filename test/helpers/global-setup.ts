// vitest global setup: one throwaway redis-server and one three-master Redis Cluster for the run,
// their addresses handed to tests via inject().
import type { TestProject } from 'vitest/node';
import { startRedisServer, type RedisServer } from './redis-server.js';
import { startRedisCluster, type RedisCluster } from './redis-cluster.js';

let server: RedisServer | undefined;
let cluster: RedisCluster | undefined;

export async function setup(project: TestProject) {
  const [s, c] = await Promise.allSettled([startRedisServer(), startRedisCluster()]);
  if (s.status === 'fulfilled') server = s.value;
  if (c.status === 'fulfilled') cluster = c.value;
  if (s.status === 'rejected' || c.status === 'rejected') {
    await teardown();
    throw s.status === 'rejected' ? s.reason : (c as PromiseRejectedResult).reason;
  }
  project.provide('redisUrl', server!.url);
  project.provide('redisClusterNodes', cluster!.nodes);
}

export async function teardown() {
  await Promise.all([server?.stop(), cluster?.stop()]);
}

declare module 'vitest' {
  export interface ProvidedContext {
    redisUrl: string;
    /** `127.0.0.1:<port>` of each cluster master (REDIS_CLUSTER_NODES, split). */
    redisClusterNodes: string[];
  }
}
