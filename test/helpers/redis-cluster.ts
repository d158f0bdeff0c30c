// Starts a throwaway Redis Cluster (three masters by default, no replicas, no persistence) on free
// loopback ports. A test that breaks nodes starts one of its own.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { freePort } from './redis-server.js';

export interface RedisCluster {
  /** `127.0.0.1:<port>` of each node (masters first), as REDIS_CLUSTER_NODES takes them. */
  nodes: string[];
  /** Sends a signal to the node on `port`: SIGSTOP freezes it, SIGCONT resumes it, SIGKILL ends it. */
  signal(port: number, signal: 'SIGSTOP' | 'SIGCONT' | 'SIGKILL'): void;
  stop(): Promise<void>;
}

export interface ClusterOptions {
  masters?: number;
  /** Replicas per master (redis-cli --cluster-replicas). */
  replicas?: number;
  /** cluster-node-timeout: how long a node may be unreachable before it is failed over. */
  nodeTimeoutMs?: number;
}

/** The nodes of a `host:port` list as the store options take them. */
export function clusterAddresses(nodes: string[]): { host: string; port: number }[] {
  return nodes.map((n) => {
    const [host, port] = n.split(':') as [string, string];
    return { host, port: Number(port) };
  });
}

export async function startRedisCluster({ masters = 3, replicas = 0, nodeTimeoutMs = 2000 }: ClusterOptions = {}): Promise<RedisCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-cluster-'));
  const children: ChildProcess[] = [];
  const ports: number[] = [];
  const stop = async () => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGCONT'); // a frozen node cannot die
    await Promise.all(children.map(kill));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (let i = 0; i < masters * (1 + replicas); i++) {
      // The bus port is given explicitly: the default (port + 10000) may be taken, or above 65535.
      const [port, busPort] = [await freePort(), await freePort()];
      ports.push(port);
      const child = spawn(
        'redis-server',
        [
          '--port', String(port), '--cluster-port', String(busPort), '--bind', '127.0.0.1', '--protected-mode', 'no',
          '--cluster-enabled', 'yes', '--cluster-config-file', join(dir, `nodes-${port}.conf`), '--cluster-node-timeout', String(nodeTimeoutMs),
          '--dir', dir, '--save', '', '--appendonly', 'no',
        ],
        { stdio: 'ignore' },
      );
      children.push(child);
    }
    await Promise.all(ports.map((p, i) => waitForPing(p, children[i]!)));
    await run('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', String(replicas), '--cluster-yes']);
    await Promise.all(ports.map(waitForClusterOk));
    // A replica can take over only once it holds its master's data.
    if (replicas > 0) await Promise.all(ports.map(waitForReplicaSynced));
    return {
      nodes: ports.map((p) => `127.0.0.1:${p}`),
      signal(port, signal) {
        children[ports.indexOf(port)]!.kill(signal);
      },
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

function probe(port: number): Redis {
  const conn = new Redis(port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  conn.on('error', () => {});
  return conn;
}

async function waitForPing(port: number, child: ChildProcess) {
  for (let attempt = 0; ; attempt++) {
    const conn = probe(port);
    try {
      await conn.connect();
      await conn.ping();
      return;
    } catch (err) {
      if (attempt > 100 || child.exitCode !== null) throw new Error(`redis-server did not start on ${port}: ${String(err)}`);
      await sleep(50);
    } finally {
      conn.disconnect();
    }
  }
}

/** Until this node sees every slot served (`cluster_state:ok`). */
async function waitForClusterOk(port: number) {
  const conn = probe(port);
  try {
    await conn.connect();
    for (let attempt = 0; attempt < 200; attempt++) {
      const info = (await conn.call('CLUSTER', 'INFO')) as string;
      if (/cluster_state:ok/.test(info)) return;
      await sleep(25);
    }
    throw new Error(`cluster node ${port} never reached cluster_state:ok`);
  } finally {
    conn.disconnect();
  }
}

/** Until this node, if it is a replica, has its master link up (a master returns at once). */
async function waitForReplicaSynced(port: number) {
  const conn = probe(port);
  try {
    await conn.connect();
    for (let attempt = 0; attempt < 400; attempt++) {
      const info = await conn.info('replication');
      if (/role:master/.test(info) || /master_link_status:up/.test(info)) return;
      await sleep(25);
    }
    throw new Error(`cluster replica ${port} never synced with its master`);
  } finally {
    conn.disconnect();
  }
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout?.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr?.on('data', (c: Buffer) => (out += c.toString()));
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}:\n${out}`))));
  });
}

function kill(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}
