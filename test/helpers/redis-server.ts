// Starts a throwaway redis-server (no persistence) on a free loopback port, for tests and benchmarks.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';

export interface RedisServer {
  port: number;
  url: string;
  stop(): Promise<void>;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const address = srv.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * `persistDir`: keep data across a SIGKILL (append-only file, fsync on every write), as a production
 * Redis would; killed and restarted on the same port and dir, it comes back with its data. Without
 * it the server keeps nothing and a restart comes back empty.
 */
export async function startRedisServer(port?: number, options: { persistDir?: string } = {}): Promise<RedisServer> {
  const p = port ?? (await freePort());
  const persistence = options.persistDir
    ? ['--appendonly', 'yes', '--appendfsync', 'always', '--dir', options.persistDir]
    : ['--appendonly', 'no'];
  const child: ChildProcess = spawn(
    'redis-server',
    ['--port', String(p), '--bind', '127.0.0.1', '--save', '', ...persistence, '--protected-mode', 'no'],
    { stdio: 'ignore' },
  );
  const url = `redis://127.0.0.1:${p}`;
  // Wait until it answers PING.
  const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  probe.on('error', () => {});
  for (let attempt = 0; ; attempt++) {
    try {
      await probe.connect();
      await probe.ping();
      probe.disconnect();
      break;
    } catch (err) {
      if (attempt > 100 || child.exitCode !== null) throw new Error(`redis-server did not start on ${p}: ${String(err)}`);
      await sleep(50);
    }
  }
  return {
    port: p,
    url,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGKILL');
      }),
  };
}
