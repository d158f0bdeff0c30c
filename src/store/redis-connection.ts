// Builds the ioredis clients the Redis store talks through: one server (a URL), a Redis Cluster (seed
// nodes) or the master a set of Sentinels names; all with the same timeouts and reconnect policy.
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import { coalesceWrites } from './write-coalescing.js';

export interface RedisAddress {
  host: string;
  port: number;
}

/** Where Redis is: exactly one of `url`, `clusterNodes` or `sentinels` (with `sentinelName`). */
export interface RedisConnectionOptions {
  /** One server: `redis://[user:password@]host:port[/db]` or `rediss://...`. */
  url?: string;
  /** Seed nodes of a Redis Cluster; the rest of the cluster is discovered from them. */
  clusterNodes?: RedisAddress[];
  /** Sentinels watching the master named `sentinelName`; the client follows failovers. */
  sentinels?: RedisAddress[];
  sentinelName?: string;
  /** Credentials of the data nodes (cluster nodes, or the master and replicas behind Sentinel). */
  username?: string;
  password?: string;
  /** Upper bound on every command, queued or sent; default 1000. */
  commandTimeoutMs?: number;
  /** Per connection attempt; default 2000. */
  connectTimeoutMs?: number;
}

export type RedisClient = Redis | Cluster;

export interface RedisConnection {
  readonly mode: 'standalone' | 'cluster' | 'sentinel';
  /** Where every command goes. */
  readonly client: RedisClient;
  /**
   * A new connection for subscriber mode, not yet subscribed. On a cluster it goes to one node
   * (classic pub/sub reaches every node) and ends, rather than retrying forever, when that node
   * stays unreachable: open another then, which goes to the next node.
   */
  subscriber(): Redis;
  /** The servers holding the keys, for SCAN: every master of a cluster, or the one server. */
  masters(): Promise<Redis[]>;
  /**
   * Resolves when every key can be served now (readiness, and the health probe that ends degraded
   * mode); throws what is wrong otherwise. Each command is bounded by the command timeout.
   */
  serving(): Promise<void>;
}

/** Throws unless every reply is PONG. */
async function pingAll(servers: Redis[]): Promise<void> {
  const replies = await Promise.all(servers.map((server) => server.ping()));
  const bad = replies.find((reply) => reply !== 'PONG');
  if (bad !== undefined) throw new Error(`unexpected PING reply: ${String(bad)}`);
}

/** Reconnect backoff: 100 ms doubling to this cap, plus jitter so instances do not reconnect in step. */
const MAX_RECONNECT_DELAY_MS = 2_000;
/** Failed reconnects to one cluster node before the subscriber moves to another. */
const SUBSCRIBER_NODE_ATTEMPTS = 3;

export function reconnectDelay(times: number): number {
  return Math.min(100 * 2 ** Math.min(times - 1, 10), MAX_RECONNECT_DELAY_MS) + Math.floor(Math.random() * 100);
}

/**
 * Parses `host:port[,host:port...]` (IPv6 hosts in brackets: `[::1]:7000`). Returns the addresses,
 * or the problems found, one per bad entry.
 */
export function parseRedisAddresses(list: string): { addresses: RedisAddress[]; problems: string[] } {
  const addresses: RedisAddress[] = [];
  const problems: string[] = [];
  const entries = list.split(',').map((s) => s.trim());
  for (const entry of entries) {
    const m = /^(?:\[([^\]]+)\]|([^:\s[\]]+)):(\d{1,5})$/.exec(entry);
    const port = m ? Number(m[3]) : NaN;
    if (!m || port < 1 || port > 65_535) {
      problems.push(`${JSON.stringify(entry)} is not host:port`);
      continue;
    }
    addresses.push({ host: (m[1] ?? m[2])!, port });
  }
  if (entries.length === 0 || addresses.length + problems.length === 0) problems.push('no host:port given');
  return { addresses, problems };
}

export function createRedisConnection(opts: RedisConnectionOptions): RedisConnection {
  const given = [opts.url !== undefined, opts.clusterNodes !== undefined, opts.sentinels !== undefined].filter(Boolean).length;
  if (given !== 1) throw new Error('redis: give exactly one of url, clusterNodes or sentinels');
  const commandTimeout = opts.commandTimeoutMs ?? 1000;
  const common = {
    // Every command, including those queued while disconnected, fails after this: nothing hangs.
    // A timed-out write may still land later (it was sent, or sits in the offline queue), so a
    // timeout means "outcome unknown" (updateKey is safe to retry; createKey may then say the id exists).
    commandTimeout,
    connectTimeout: opts.connectTimeoutMs ?? 2000,
    // Commands that outlive a lost connection are retried once, then failed; together with the
    // reconnect backoff this also bounds how much the offline queue can hold during an outage.
    maxRetriesPerRequest: 1,
    connectionName: 'tollgate',
    ...(opts.username !== undefined && { username: opts.username }),
    ...(opts.password !== undefined && { password: opts.password }),
  } satisfies RedisOptions;
  const standaloneOptions: RedisOptions = {
    ...common,
    // Never give up: the gateway must recover by itself once Redis is back.
    retryStrategy: reconnectDelay,
    // Connects in the background, so a Redis that is down at start only makes /readyz fail.
    lazyConnect: false,
  };

  if (opts.clusterNodes !== undefined) return clusterConnection(opts.clusterNodes, common, commandTimeout);
  if (opts.sentinels !== undefined && (opts.sentinels.length === 0 || !opts.sentinelName)) {
    throw new Error('redis: sentinels need at least one address and the master name (sentinelName)');
  }

  const client =
    opts.sentinels !== undefined
      ? new Redis({
          ...standaloneOptions,
          sentinels: opts.sentinels,
          name: opts.sentinelName,
          role: 'master',
          sentinelRetryStrategy: reconnectDelay,
        })
      : new Redis(opts.url!, standaloneOptions);
  coalesceWrites(client);
  return {
    mode: opts.sentinels !== undefined ? 'sentinel' : 'standalone',
    client,
    // Same server (or the same Sentinel-named master, followed through failovers).
    subscriber: () => client.duplicate({ autoResubscribe: false, connectionName: 'tollgate:sub' }),
    masters: async () => [client],
    serving: () => pingAll([client]),
  };
}

/** Reloads the cluster's slot map (CLUSTER SLOTS from a node that answers), bounded by `timeoutMs`. */
function refreshSlotMap(cluster: Cluster, timeoutMs: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    // ioredis tries node after node, each within its slotsRefreshTimeout: bound the whole of it.
    const timer = setTimeout(() => reject(new Error('cluster slot map refresh timed out')), timeoutMs);
    cluster.refreshSlotsCache((err) => {
      clearTimeout(timer);
      if (err) reject(err);
      else resolve();
    });
  });
}

function clusterConnection(seeds: RedisAddress[], common: RedisOptions, commandTimeout: number): RedisConnection {
  if (seeds.length === 0) throw new Error('redis: clusterNodes is empty');
  const options: ClusterOptions = {
    redisOptions: common,
    clusterRetryStrategy: reconnectDelay,
    // Queued while the slot map is loading or being refreshed (a failover): bounded by the timeout below.
    enableOfflineQueue: true,
    enableReadyCheck: true,
    // Reads from masters only: a replica may lag, and budgets and single-flight read what they just wrote.
    scaleReads: 'master',
    lazyConnect: false,
  };
  const cluster = new Cluster(seeds, options);
  // A node's commandTimeout starts only once the cluster hands it the command: what waits in the
  // cluster's own offline queue (no slot map yet, or the whole cluster down) would wait forever.
  // Command.setTimeout arms once, so this bounds a command end to end, redirections included.
  const send = cluster.sendCommand.bind(cluster);
  cluster.sendCommand = (command, stream, node) => {
    command.setTimeout(commandTimeout);
    return send(command, stream, node);
  };

  // Each node's connection coalesces its own writes (see write-coalescing.ts).
  cluster.on('+node', (node: Redis) => coalesceWrites(node));

  let next = 0;
  /** The last serving() failed: the next one reloads the slot map first. */
  let lastCheckFailed = false;
  return {
    mode: 'cluster',
    client: cluster,
    subscriber() {
      const known = cluster.nodes('all').map((n) => ({ host: n.options.host, port: n.options.port }));
      const candidates = known.length > 0 ? known : seeds;
      const at = candidates[next++ % candidates.length]!;
      return new Redis({
        ...common,
        host: at.host,
        port: at.port,
        autoResubscribe: false,
        connectionName: 'tollgate:sub',
        retryStrategy: (times) => (times > SUBSCRIBER_NODE_ATTEMPTS ? null : reconnectDelay(times)),
      });
    },
    masters,
    async serving() {
      if (lastCheckFailed && cluster.status === 'ready') {
        // ioredis learns of a failover when a command is redirected, and none are sent while the
        // gateway fails fast: without a fresh map it would ping a failed (or frozen) master for as
        // long as that one stays down, though a replica has taken its slots. Only after a failed
        // check: a healthy cluster's readiness costs no CLUSTER SLOTS.
        await refreshSlotMap(cluster, 2 * commandTimeout);
      }
      lastCheckFailed = true;
      const nodes = await masters();
      await pingAll(nodes);
      // A master that went away (no replica to take over) may no longer be in that list: the
      // cluster's own verdict says whether every slot is served. With cluster-require-full-coverage
      // (the default) Redis refuses every command while it is 'fail'.
      const info = String(await nodes[0]!.call('CLUSTER', 'INFO'));
      const state = /cluster_state:(\w+)/.exec(info)?.[1];
      if (state !== 'ok') throw new Error(`redis cluster_state is ${state ?? 'unknown'}: some slots are not served (a master is down and no replica took over)`);
      lastCheckFailed = false;
    },
  };

  async function masters() {
    // Until the slot map is loaded the node list is empty: a PING waits for it (or times out).
    if (cluster.status !== 'ready') await cluster.ping();
    const nodes = cluster.nodes('master');
    if (nodes.length === 0) throw new Error('redis cluster: no master known');
    return nodes;
  }
}
