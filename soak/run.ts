// A bounded soak test on loopback: the built gateway as its own process, mixed streamed, cached and
// failing traffic against a fake upstream that fails 5% of calls, and one Redis restart mid-run.
// Reports requests served, errors by class, recorded usage against upstream usage, and memory.
//
//   npm run build && npx tsx soak/run.ts [--minutes 3] [--concurrency 20]
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { startFakeOpenAI } from '../src/fake-openai/server.js';
import { freePort, startRedisServer, type RedisServer } from '../test/helpers/redis-server.js';

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '3' },
    concurrency: { type: 'string', default: '20' },
    'fail-rate': { type: 'string', default: '0.05' },
  },
});
const durationMs = Number(values.minutes) * 60_000;
const concurrency = Number(values.concurrency);
const ADMIN = 'soak-admin-token-0123456789';
const UPSTREAM_KEY = 'sk-soak-upstream';

function rssMb(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) => Number(/(\d+) kB/.exec(status.split('\n').find((l) => l.startsWith(field)) ?? '')?.[1] ?? 0);
  return { rss: Math.round(kb('VmRSS:') / 1024), peak: Math.round(kb('VmHWM:') / 1024) };
}

/** The gateway's own V8 heap in use, from its Prometheus process metrics. */
async function heapUsedMb(base: string): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('nodejs_heap_size_used_bytes '));
  return Math.round(Number(line?.split(' ')[1] ?? 0) / 1048576);
}

async function main() {
  const redisPort = await freePort();
  // Persistent, like a production Redis: the restart mid-run must not lose keys or usage.
  const redisDir = mkdtempSync(join(tmpdir(), 'tollgate-soak-'));
  let redis: RedisServer = await startRedisServer(redisPort, { persistDir: redisDir });
  const fake = await startFakeOpenAI({ apiKey: UPSTREAM_KEY, failRate: Number(values['fail-rate']) });
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const gateway: ChildProcess = spawn(process.execPath, ['dist/server.js'], {
    env: {
      PATH: process.env.PATH,
      PORT: String(port),
      HOST: '127.0.0.1',
      LOG_LEVEL: 'warn',
      OPENAI_API_KEY: UPSTREAM_KEY,
      OPENAI_BASE_URL: fake.url,
      REDIS_URL: redis.url,
      REDIS_COMMAND_TIMEOUT_MS: '300',
      ADMIN_TOKEN: ADMIN,
      QUOTA_FAIL_MODE: 'open',
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const stop = async () => {
    gateway.kill('SIGTERM');
    await fake.close();
    await redis.stop();
    rmSync(redisDir, { recursive: true, force: true });
  };
  process.on('SIGINT', () => void stop().then(() => process.exit(130)));

  for (let i = 0; ; i++) {
    if ((await fetch(`${base}/healthz`).catch(() => undefined))?.ok) break;
    if (i > 100) throw new Error('gateway did not start');
    await sleep(100);
  }
  const admin = (path: string, init: RequestInit = {}) =>
    fetch(`${base}${path}`, { ...init, headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' } });
  const keys: string[] = [];
  for (const name of ['soak-a', 'soak-b', 'soak-c']) {
    const res = await admin('/admin/keys', { method: 'POST', body: JSON.stringify({ name, limits: { rpm: 1_000_000, tokensPerDay: 1_000_000_000 } }) });
    keys.push(((await res.json()) as { key: string }).key);
  }
  const memoryBefore = rssMb(gateway.pid!);
  const heapBefore = await heapUsedMb(base);

  const outcomes = new Map<string, number>();
  const count = (label: string) => outcomes.set(label, (outcomes.get(label) ?? 0) + 1);
  let sent = 0;
  let unique = 0;
  const deadline = Date.now() + durationMs;

  async function one(worker: number) {
    const key = keys[worker % keys.length]!;
    const roll = Math.random();
    const prompt = roll < 0.3 ? `repeat ${Math.floor(Math.random() * 10)}` : `unique ${worker}-${unique++}`;
    const stream = roll >= 0.3 && roll < 0.55;
    const embeddings = roll >= 0.9;
    const body = embeddings
      ? { model: 'text-embedding-3-small', input: prompt }
      : { model: 'gpt-4o-mini', messages: [{ role: 'user', content: prompt }], max_tokens: 30, stream };
    sent++;
    try {
      const res = await fetch(`${base}/v1/${embeddings ? 'embeddings' : 'chat/completions'}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(10_000),
      });
      await res.text();
      count(res.status < 400 ? `${res.status} ${res.headers.get('x-tollgate-cache') ?? ''}`.trim() : `${res.status}`);
    } catch (err) {
      count(`client error: ${(err as Error).name}`);
    }
  }

  const restartAt = Date.now() + durationMs / 2;
  let restarted = false;
  const workers = Array.from({ length: concurrency }, async (_, w) => {
    while (Date.now() < deadline) {
      if (!restarted && Date.now() >= restartAt) {
        restarted = true;
        console.log(`[soak] killing Redis at ${new Date().toISOString()} (restart in 5 s)`);
        await redis.stop();
        void sleep(5000).then(async () => {
          redis = await startRedisServer(redisPort, { persistDir: redisDir });
          console.log('[soak] Redis restarted');
        });
      }
      await one(w);
    }
  });
  await Promise.all(workers);
  const memoryAfter = rssMb(gateway.pid!);
  await sleep(5000); // let the collector run on an idle process: live data, not garbage
  const heapAfter = await heapUsedMb(base);

  // Let buffered usage and settlements reach Redis, then compare with what upstream billed.
  const upstream = fake.usageTotals();
  let recorded: Record<string, number> = {};
  for (let i = 0; i < 60; i++) {
    const res = await admin(`/admin/usage?groupBy=key&from=${Date.now() - durationMs - 3_600_000}`);
    if (!res.ok) {
      await sleep(1000); // still recovering
      continue;
    }
    recorded = ((await res.json()) as { totals: Record<string, number> }).totals;
    if (recorded.requests === sent && recorded.totalTokens === upstream.total_tokens) break;
    await sleep(1000);
  }

  console.log('\nTollgate soak report');
  console.log(`  duration ${values.minutes} min, ${concurrency} concurrent clients, upstream fail rate ${values['fail-rate']}`);
  console.log(`  requests sent ${sent}; recorded ${recorded.requests}`);
  for (const [label, n] of [...outcomes].sort((a, b) => b[1] - a[1])) console.log(`    ${label.padEnd(24)} ${n}`);
  const equal = recorded.totalTokens === upstream.total_tokens && recorded.promptTokens === upstream.prompt_tokens;
  console.log(`  tokens recorded ${recorded.totalTokens} vs upstream ${upstream.total_tokens}: ${equal ? 'EQUAL' : 'DIFFERENT'}`);
  console.log(`  gateway RSS before ${memoryBefore.rss} MB, after ${memoryAfter.rss} MB, peak ${memoryAfter.peak} MB`);
  console.log(`  gateway heap used before ${heapBefore} MB, after (5 s idle) ${heapAfter} MB`);
  await stop();
  process.exit(equal && recorded.requests === sent ? 0 : 1);
}

void main();
