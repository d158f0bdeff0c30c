// The benchmark of issue 7: Tollgate against the fake upstream directly and against nginx, in one run.
// `npm run bench` builds, then runs this. Every process started here is killed on exit.
// Settings (environment variables, all optional) are listed in BENCHMARKS.md and printed with the table.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { summariseProfile } from './profile-summary.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
// The Tollgate to measure: this checkout's dist/ by default, or another built tree (e.g. a clean copy of HEAD).
const tollgateDir = process.env.BENCH_TOLLGATE_DIR ?? root;
const env = process.env;
const num = (name, dflt) => (env[name] !== undefined && env[name] !== '' ? Number(env[name]) : dflt);
/** "A=1 B=2" as { A: '1', B: '2' }; a pair without "=" stops the run rather than being dropped. */
function parseEnvPairs(text) {
  return Object.fromEntries(
    text.split(/\s+/).filter(Boolean).map((pair) => {
      const eq = pair.indexOf('=');
      if (eq < 1) throw new Error(`BENCH_TOLLGATE_ENV: "${pair}" is not NAME=value`);
      return [pair.slice(0, eq), pair.slice(eq + 1)];
    }),
  );
}

const cfg = {
  rounds: num('BENCH_ROUNDS', 3),
  duration: num('BENCH_DURATION', 5), // s, each max-throughput measurement
  fixedDuration: num('BENCH_FIXED_DURATION', 5), // s, each fixed-rate measurement
  warmup: num('BENCH_WARMUP', 3), // s, per target before the first round
  connections: num('BENCH_CONNECTIONS', 50),
  rates: (env.BENCH_RATES ?? '100,500').split(',').map(Number),
  slowConnections: num('BENCH_SLOW_CONNECTIONS', 200),
  addedLatencyMs: num('BENCH_ADDED_LATENCY_MS', 50),
  streams: num('BENCH_STREAMS', 1000),
  streamChunkDelayMs: num('BENCH_STREAM_CHUNK_DELAY_MS', 300),
  streamsDuration: num('BENCH_STREAMS_DURATION', 10),
  profileDuration: num('BENCH_PROFILE_DURATION', 8),
  targetCore: env.BENCH_TARGET_CORE ?? '0',
  loadCore: env.BENCH_LOAD_CORE ?? '1',
  scenarios: (env.BENCH_SCENARIOS ?? 'max,fixed,slow,rss,path,profile').split(','),
  logLevel: env.BENCH_LOG_LEVEL ?? 'info',
  mallocArenaMax: env.BENCH_MALLOC_ARENA_MAX ?? '2',
  mallocMmapThreshold: env.BENCH_MALLOC_MMAP_THRESHOLD ?? '131072',
  // More of Tollgate's environment, as space-separated NAME=value pairs (e.g. "MEMORY_TRIM_INTERVAL_MS=0").
  tollgateEnv: parseEnvPairs(env.BENCH_TOLLGATE_ENV ?? ''),
};
/** glibc's settings as the container image gives them (Dockerfile), for Tollgate and the Node floor alike. */
const mallocEnv = {
  ...(cfg.mallocArenaMax ? { MALLOC_ARENA_MAX: cfg.mallocArenaMax } : {}),
  ...(cfg.mallocMmapThreshold ? { MALLOC_MMAP_THRESHOLD_: cfg.mallocMmapThreshold } : {}),
};
const mallocLabel = Object.entries(mallocEnv).map(([k, v]) => `${k}=${v}`).join(', ');
const want = (s) => cfg.scenarios.includes(s);

// ---------------------------------------------------------------- processes, cleaned up on every exit
const children = new Set();
const work = mkdtempSync(join(tmpdir(), 'tollgate-bench-'));
let keepWork = false;

function start(name, cmd, args, opts = {}) {
  const child = spawn(cmd, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  child.name = name;
  children.add(child);
  child.stderrText = '';
  child.stderr?.on('data', (d) => {
    if (child.stderrText.length < 20_000) child.stderrText += d;
  });
  child.once('exit', () => children.delete(child));
  return child;
}

function killAll() {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {}
  }
  children.clear();
  if (!keepWork) rmSync(work, { recursive: true, force: true });
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    console.error(`\n${sig}: stopping every benchmark process`);
    process.exit(130);
  });
}

async function stop(child, signal = 'SIGTERM', timeoutMs = 10_000) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill(signal);
  const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  await exited;
  clearTimeout(t);
}

const pinned = (core, cmd, args) => ['taskset', ['-c', String(core), cmd, ...args]];

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitHttp(url, child, what) {
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error(`${what} exited (${child.exitCode}): ${child.stderrText.slice(-2000)}`);
    try {
      const res = await fetch(url);
      await res.arrayBuffer();
      if (res.status < 500) return;
    } catch {}
    await sleep(100);
  }
  throw new Error(`${what} did not answer at ${url}: ${child.stderrText.slice(-2000)}`);
}

/** A node script of bench/ that prints `listening <port>` once it serves. */
async function startScript(core, name, script, extraArgs = [], extraEnv = {}) {
  const child = start(name, ...pinned(core, process.execPath, [join(here, script), '--port', '0', ...extraArgs]), { env: { ...env, ...extraEnv } });
  const port = await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`${name} exited ${code}: ${child.stderrText}`)));
  });
  return { child, origin: `http://127.0.0.1:${port}`, port };
}

async function startUpstream(core, name) {
  const { child, origin, port } = await startScript(core, name, 'upstream.mjs');
  return {
    child,
    origin,
    port,
    config: async (c) => (await fetch(`${origin}/__bench/config`, { method: 'POST', body: JSON.stringify(c) })).json(),
    stats: async () => (await fetch(`${origin}/__bench/stats`)).json(),
  };
}

async function startRedis() {
  const port = await freePort();
  const child = start(
    'redis',
    ...pinned(cfg.loadCore, 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no']),
  );
  const url = `redis://127.0.0.1:${port}`;
  const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  probe.on('error', () => {});
  for (let attempt = 0; ; attempt++) {
    try {
      await probe.connect();
      await probe.ping();
      probe.disconnect();
      break;
    } catch (err) {
      if (attempt > 100 || child.exitCode !== null) throw new Error(`redis-server did not start: ${err}`);
      await sleep(50);
    }
  }
  return { child, url };
}

async function startNginx(upstreamPort) {
  const prefix = join(work, 'nginx');
  for (const d of ['logs', 'tmp']) mkdirSync(join(prefix, d), { recursive: true });
  const port = await freePort();
  const conf = readFileSync(join(here, 'nginx.conf.template'), 'utf8')
    .replaceAll('__UPSTREAM_PORT__', String(upstreamPort))
    .replaceAll('__LISTEN_PORT__', String(port));
  writeFileSync(join(prefix, 'nginx.conf'), conf);
  const child = start('nginx', ...pinned(cfg.targetCore, 'nginx', ['-p', prefix, '-c', join(prefix, 'nginx.conf'), '-e', join(prefix, 'logs', 'error.log')]));
  const origin = `http://127.0.0.1:${port}`;
  await waitHttp(`${origin}/__bench/stats`, child, 'nginx');
  return { child, origin };
}

const ADMIN_TOKEN = 'bench-admin-token-0123456789abcdef';

async function startTollgate(upstreamOrigin, redisUrl, { extraEnv = {}, nodeFlags = [], name = 'tollgate', stdout = 'ignore' } = {}) {
  const port = await freePort();
  const child = start(name, ...pinned(cfg.targetCore, process.execPath, [...nodeFlags, join(tollgateDir, 'dist', 'server.js')]), {
    env: {
      PATH: env.PATH,
      HOME: env.HOME,
      PORT: String(port),
      HOST: '127.0.0.1',
      LOG_LEVEL: cfg.logLevel,
      OPENAI_API_KEY: 'sk-bench-upstream',
      OPENAI_BASE_URL: `${upstreamOrigin}/v1`,
      REDIS_URL: redisUrl,
      ADMIN_TOKEN,
      // Unique bodies leave ~1.5 KB per miss in Redis: let them go soon.
      CACHE_TTL_SECONDS: '300',
      // As the container image runs it (Dockerfile); BENCH_MALLOC_ARENA_MAX= / BENCH_MALLOC_MMAP_THRESHOLD= (empty) for glibc's defaults.
      ...mallocEnv,
      ...cfg.tollgateEnv,
      ...extraEnv,
    },
    // stdout is the one-line-per-request JSON log: discarded (it is still written), unless a file is given.
    stdio: ['ignore', stdout, 'pipe'],
    cwd: tollgateDir,
  });
  const origin = `http://127.0.0.1:${port}`;
  await waitHttp(`${origin}/readyz`, child, name);
  return { child, origin, pid: child.pid };
}

async function createKey(origin) {
  const res = await fetch(`${origin}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'bench', limits: { rpm: 1_000_000_000, tokensPerDay: 1_000_000_000_000 } }),
  });
  const body = await res.json();
  if (res.status !== 201) throw new Error(`creating the bench key failed: ${res.status} ${JSON.stringify(body)}`);
  return body.key;
}

// ---------------------------------------------------------------- load generators
let nonceSeq = 0;
const nonce = () => `${Date.now().toString(36)}-${++nonceSeq}`;

function runCapture(name, cmd, args, envExtra = {}) {
  return new Promise((resolve, reject) => {
    const child = start(name, cmd, args, { env: { ...env, ...envExtra } });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.once('exit', (code) => {
      const m = /BENCH_RESULT (\{.*\})/.exec(out);
      if (!m) return reject(new Error(`${name} failed (${code}): ${out.slice(-1000)} ${child.stderrText.slice(-1000)}`));
      resolve(JSON.parse(m[1]));
    });
  });
}

/** Max throughput (closed loop): wrk, one thread, on the load core. */
async function wrk(target, { stream, connections, duration, unique = target.unique }) {
  const r = await runCapture(
    'wrk',
    ...pinned(cfg.loadCore, 'wrk', ['-t1', `-c${connections}`, `-d${duration}s`, '--timeout', '30s', '-s', join(here, 'lua', 'chat.lua'), `${target.origin}/v1/chat/completions`]),
    { BENCH_KEY: target.key, BENCH_STREAM: stream ? '1' : '0', BENCH_UNIQUE: unique ? '1' : '0', BENCH_NONCE: nonce() },
  );
  const errors = r.connect_errors + r.read_errors + r.write_errors + r.status_errors + r.timeouts;
  return { rps: r.requests / (r.duration_us / 1e6), p50: r.p50_us / 1000, p90: r.p90_us / 1000, p99: r.p99_us / 1000, errors, requests: r.requests };
}

/** Fixed rate (open loop): bench/fixed-rate.mjs on the load core. */
async function fixedRate(target, { stream, rate, duration }) {
  const args = [join(here, 'fixed-rate.mjs'), '--origin', target.origin, '--rate', String(rate), '--duration', String(duration), '--key', target.key, '--nonce', nonce()];
  if (stream) args.push('--stream');
  if (target.unique) args.push('--unique');
  const r = await runCapture('fixed-rate', ...pinned(cfg.loadCore, process.execPath, args));
  return {
    p50: r.p50_ms,
    p90: r.p90_ms,
    p99: r.p99_ms,
    ttfb50: r.ttfb_p50_ms,
    ttfb99: r.ttfb_p99_ms,
    rps: r.achieved_rps,
    ok: r.ok,
    errors: r.errors + r.non2xx,
    late: r.late,
    firstError: r.first_error,
  };
}

// ---------------------------------------------------------------- memory of a process
/** The V8 heap's size (used or not) as Tollgate's Prometheus metrics report it, in MB; NaN if unreadable. */
async function v8HeapMb(origin) {
  try {
    const text = await (await fetch(`${origin}/metrics`)).text();
    return Number(/^nodejs_heap_size_total_bytes (\S+)$/m.exec(text)?.[1] ?? NaN) / 1048576;
  } catch {
    return NaN;
  }
}

function procStatus(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN);
    return { rssKb: kb('VmRSS'), hwmKb: kb('VmHWM') };
  } catch {
    return { rssKb: NaN, hwmKb: NaN };
  }
}

/** CPU time (user + system, all threads) a process has used so far, in µs. */
function cpuUs(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1e6) / CLK_TCK;
  } catch {
    return NaN;
  }
}
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
let redisClient;
/** Commands the bench Redis has processed so far (INFO stats), to count Redis work per request. */
async function redisCommands() {
  if (!redisClient) return NaN;
  const info = await redisClient.info('stats');
  return Number(/total_commands_processed:(\d+)/.exec(info)?.[1] ?? NaN) - 1; // minus this INFO
}
/** Per-command counts (INFO commandstats). */
async function redisCommandStats() {
  const info = await redisClient.info('commandstats');
  const out = {};
  for (const m of info.matchAll(/cmdstat_([\w|]+):calls=(\d+)/g)) out[m[1]] = Number(m[2]);
  return out;
}
const loadavg = () => Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);

/** Runs one measurement and adds the target process's CPU time per request and the machine's load. */
async function measured(target, run) {
  const before = cpuUs(target.pid);
  const cmdsBefore = await redisCommands();
  const r = await run();
  const used = cpuUs(target.pid) - before;
  const requests = r.requests ?? r.ok;
  r.cpuUsPerReq = requests > 0 ? used / requests : NaN;
  r.redisCmdsPerReq = requests > 0 ? ((await redisCommands()) - cmdsBefore) / requests : NaN;
  r.load1 = loadavg();
  return r;
}

// ---------------------------------------------------------------- helpers for the table
const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const notes = [];
function check(label, r) {
  if (r.errors > 0) notes.push(`${label}: ${r.errors} failed or non-2xx responses${r.firstError ? ` (${r.firstError})` : ''}`);
  if (r.late > 0) {
    const key = label.replace(/ round \d+$/, '');
    lateSends.set(key, (lateSends.get(key) ?? 0) + r.late);
  }
}
const lateSends = new Map();

// ---------------------------------------------------------------- main
async function main() {
  if (!existsSync(join(tollgateDir, 'dist', 'server.js'))) throw new Error('dist/server.js is missing: run `npm run build` (npm run bench does)');
  for (const tool of ['wrk', 'nginx', 'taskset', 'redis-server']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) throw new Error(`${tool} is not installed (apt-get install -y wrk nginx redis-server util-linux)`);
  }
  const started = Date.now();
  const log = (msg) => console.error(`[${((Date.now() - started) / 1000).toFixed(0).padStart(4)} s] ${msg}`);
  log(`settings: ${JSON.stringify(cfg)}`);

  const redis = await startRedis();
  redisClient = new Redis(redis.url, { maxRetriesPerRequest: 1 });
  const direct = await startUpstream(cfg.targetCore, 'upstream-direct'); // the zero line: the upstream itself is the target
  const backend = await startUpstream(cfg.loadCore, 'upstream-backend'); // what nginx and Tollgate forward to
  const nginx = await startNginx(backend.port);
  // The Node floor: Tollgate's stack with no features (bench/floor.mjs), forwarding to the same backend.
  // Run as Tollgate is (glibc's settings), so the two compare like with like.
  const floor = await startScript(cfg.targetCore, 'floor', 'floor.mjs', ['--upstream', backend.origin], mallocEnv);
  // ...and the floor of a cache hit: the same stack answering from memory (it asks the backend once).
  const hitFloor = await startScript(cfg.targetCore, 'hit-floor', 'floor.mjs', ['--upstream', backend.origin, '--from-memory'], mallocEnv);
  const tollgate = await startTollgate(backend.origin, redis.url);
  const key = await createKey(tollgate.origin);
  log(`redis ${redis.url}, direct ${direct.origin}, backend ${backend.origin}, nginx ${nginx.origin}, tollgate ${tollgate.origin} (pid ${tollgate.pid})`);

  const targets = {
    direct: { name: 'direct', origin: direct.origin, key: 'sk-bench', unique: true, pid: direct.child.pid },
    nginx: { name: 'nginx', origin: nginx.origin, key: 'sk-bench', unique: true, pid: nginx.child.pid },
    floor: { name: 'floor', origin: floor.origin, key: 'sk-bench', unique: true, pid: floor.child.pid },
    hitfloor: { name: 'hitfloor', origin: hitFloor.origin, key: 'sk-bench', unique: false, pid: hitFloor.child.pid },
    tollgate: { name: 'tollgate', origin: tollgate.origin, key, unique: true, pid: tollgate.pid },
    hits: { name: 'hits', origin: tollgate.origin, key, unique: false, pid: tollgate.pid },
  };
  const setUpstreams = async (c) => Promise.all([direct.config(c), backend.config(c)]);

  // A first real request through Tollgate must succeed, or nothing below means anything.
  for (const stream of [false, true]) {
    const res = await fetch(`${tollgate.origin}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o-mini', stream, stream_options: stream ? { include_usage: true } : undefined, messages: [{ role: 'user', content: `smoke ${nonce()}` }] }),
    });
    const text = await res.text();
    if (res.status !== 200) throw new Error(`smoke request (stream ${stream}) failed: ${res.status} ${text}`);
  }

  // results[scenario][target] = list over rounds
  const results = {};
  const put = (scenario, target, r) => ((results[scenario] ??= {})[target] ??= []).push(r);

  const scenarios = [];
  if (want('max')) {
    for (const stream of [false, true]) {
      scenarios.push({
        id: stream ? 'max-stream' : 'max',
        targets: ['direct', 'nginx', 'floor', 'tollgate', 'hitfloor', 'hits'],
        run: (t) => wrk(t, { stream, connections: cfg.connections, duration: cfg.duration }),
      });
    }
  }
  if (want('fixed')) {
    for (const rate of cfg.rates) {
      for (const stream of [false, true]) {
        scenarios.push({
          id: `fixed${rate}${stream ? '-stream' : ''}`,
          targets: ['direct', 'nginx', 'floor', 'tollgate'],
          run: (t) => fixedRate(t, { stream, rate, duration: cfg.fixedDuration }),
        });
      }
    }
  }
  if (want('slow')) {
    scenarios.push({
      id: 'slow',
      targets: ['direct', 'nginx', 'floor', 'tollgate'],
      before: () => setUpstreams({ latencyMs: cfg.addedLatencyMs }),
      after: () => setUpstreams({ latencyMs: 0 }),
      run: (t) => wrk(t, { stream: false, connections: cfg.slowConnections, duration: cfg.duration }),
    });
  }

  if (scenarios.length) {
    log(`warm-up: ${cfg.warmup} s per target and mode`);
    for (const t of Object.values(targets)) {
      for (const stream of [false, true]) await wrk(t, { stream, connections: cfg.connections, duration: cfg.warmup });
    }
  }
  for (let round = 1; round <= cfg.rounds; round++) {
    for (const s of scenarios) {
      await s.before?.();
      // Alternate: each round starts with a different target, so no target always runs first or last.
      const order = s.targets.map((_, i) => s.targets[(i + round - 1) % s.targets.length]);
      for (const name of order) {
        const r = await measured(targets[name], () => s.run(targets[name]));
        check(`${s.id} ${name} round ${round}`, r);
        put(s.id, name, r);
        allLoads.push(r.load1);
        log(`round ${round} ${s.id.padEnd(16)} ${name.padEnd(8)} ${fmtResult(r)}`);
      }
      await s.after?.();
    }
  }
  // The issue's memory target holds "under these loads" too: the peak of the Tollgate that served them all.
  const loadsHwmMb = scenarios.length ? procStatus(tollgate.pid).hwmKb / 1024 : undefined;
  const loadsServed = [...new Set(scenarios.map((s) => s.id.replace(/[0-9]+|-stream/g, '')))].join(', ');

  // ---- 1,000 concurrent slow streams: peak RSS of a fresh Tollgate
  let rss;
  if (want('rss')) {
    log(`rss: ${cfg.streams} concurrent streams, ${cfg.streamChunkDelayMs} ms between events, ${cfg.streamsDuration} s`);
    const fresh = await startTollgate(backend.origin, redis.url, {
      name: 'tollgate-rss',
      // The upstream pool (default 256 connections) must hold every stream open at once.
      extraEnv: { UPSTREAM_MAX_CONNECTIONS: String(cfg.streams + 100) },
    });
    const t = { origin: fresh.origin, key, unique: true };
    await wrk(t, { stream: true, connections: 10, duration: 2 }); // JIT and pools warm, as in service
    await sleep(500);
    const idle = procStatus(fresh.pid);
    // The V8 heap's share of it: what RSS holds beyond that is native (malloc'd) memory and the binary.
    const idleHeapMb = await v8HeapMb(fresh.origin);
    await backend.config({ chunkDelayMs: cfg.streamChunkDelayMs });
    let peakActive = 0;
    let peakRss = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const [st] = await Promise.all([backend.stats(), sleep(200)]);
        peakActive = Math.max(peakActive, st.active);
        peakRss = Math.max(peakRss, procStatus(fresh.pid).rssKb);
      }
    })();
    const w = await wrk(t, { stream: true, connections: cfg.streams, duration: cfg.streamsDuration });
    sampling = false;
    await sampler;
    await backend.config({ chunkDelayMs: 0 });
    const end = procStatus(fresh.pid);
    rss = { idleMb: idle.rssKb / 1024, idleHeapMb, peakRssMb: peakRss / 1024, hwmMb: end.hwmKb / 1024, peakActive, completed: w.requests, errors: w.errors, p50: w.p50, p99: w.p99 };
    check('rss streams', w);
    log(`rss: idle ${rss.idleMb.toFixed(1)} MB (V8 heap ${rss.idleHeapMb.toFixed(1)} MB), VmHWM ${rss.hwmMb.toFixed(1)} MB, peak open upstream streams ${peakActive}, completed ${w.requests}`);
    await stop(fresh.child);
  }

  // ---- Where a request's time goes at 100 req/s: Tollgate's own log line, and one Redis round trip
  let path;
  if (want('path')) {
    log(`path: 100 req/s for ${cfg.fixedDuration} s through a fresh Tollgate whose log is kept, then Redis PINGs from the target core`);
    const logFile = join(work, 'tollgate-path.log');
    const fd = openSync(logFile, 'w');
    let fresh;
    try {
      // Its request lines are the measurement, whatever BENCH_LOG_LEVEL says.
      fresh = await startTollgate(backend.origin, redis.url, { name: 'tollgate-path', stdout: fd, extraEnv: { LOG_LEVEL: 'info' } });
    } finally {
      closeSync(fd); // the child has its own copy
    }
    const t = { origin: fresh.origin, key, unique: true };
    await wrk(t, { stream: false, connections: 10, duration: 2 }); // JIT and pools warm
    await sleep(500);
    const from = Date.now(); // log lines of the warm-up are older
    const client = await fixedRate(t, { stream: false, rate: 100, duration: cfg.fixedDuration });
    check('path fixed100', client);
    await stop(fresh.child, 'SIGTERM', 30_000); // a graceful stop writes every line
    const lines = [];
    for (const l of readFileSync(logFile, 'utf8').split('\n')) {
      if (!l.includes('"msg":"request"')) continue;
      try {
        lines.push(JSON.parse(l));
      } catch {
        // a last line cut short (the process was killed): not worth the run
      }
    }
    const measuredLines = lines.filter((l) => l.time >= from && l.endpoint === 'chat.completions' && l.status === 200);
    const p50 = (field) => median(measuredLines.map((l) => l[field]).filter(Number.isFinite));
    const ping = await runCapture('store-rtt', ...pinned(cfg.targetCore, process.execPath, [join(here, 'store-rtt.mjs'), '--redis', redis.url, '--rate', '100', '--duration', String(cfg.fixedDuration)]));
    path = {
      requests: measuredLines.length,
      clientP50: client.p50,
      latencyMs: p50('latencyMs'),
      upstreamMs: p50('upstreamMs'),
      overheadMs: p50('overheadMs'),
      storeMs: p50('storeMs'),
      overheadLessStoreMs: median(measuredLines.map((l) => l.overheadMs - l.storeMs).filter(Number.isFinite)),
      pingP50: ping.p50_ms,
      pingP99: ping.p99_ms,
    };
    log(`path: ${JSON.stringify(path)}`);
  }

  // ---- CPU profile of Tollgate under the non-streamed load
  let profile;
  if (want('profile')) {
    log(`profile: node --cpu-prof, non-streamed, ${cfg.connections} connections, ${cfg.profileDuration} s`);
    const dir = join(here, 'results');
    mkdirSync(dir, { recursive: true });
    for (const f of readdirSync(dir)) if (f.endsWith('.cpuprofile')) rmSync(join(dir, f));
    const prof = await startTollgate(backend.origin, redis.url, { name: 'tollgate-prof', nodeFlags: ['--cpu-prof', `--cpu-prof-dir=${dir}`, '--cpu-prof-name=tollgate.cpuprofile'] });
    const t = { origin: prof.origin, key, unique: true };
    await wrk(t, { stream: false, connections: cfg.connections, duration: 2 });
    const statsBefore = await redisCommandStats();
    const w = await wrk(t, { stream: false, connections: cfg.connections, duration: cfg.profileDuration });
    const statsAfter = await redisCommandStats();
    const perReq = Object.entries(statsAfter)
      .map(([cmd, n]) => [cmd, (n - (statsBefore[cmd] ?? 0)) / w.requests])
      .filter(([cmd, x]) => x >= 0.01 && cmd !== 'info')
      .sort((a, b) => b[1] - a[1]);
    const stopAt = Date.now();
    await stop(prof.child, 'SIGTERM', 30_000);
    const tailMs = Date.now() - stopAt;
    const file = join(dir, 'tollgate.cpuprofile');
    if (!existsSync(file)) {
      notes.push('profile: no .cpuprofile was written');
    } else {
      profile = summariseProfile(JSON.parse(readFileSync(file, 'utf8')), { windowMs: cfg.profileDuration * 1000, skipTailMs: tailMs + 100, root: tollgateDir });
      profile.rps = w.rps;
      profile.redisPerReq = perReq;
      profile.file = 'bench/results/tollgate.cpuprofile';
    }
  }

  redisClient.disconnect();
  await Promise.all([stop(tollgate.child), stop(nginx.child, 'SIGQUIT'), stop(floor.child), stop(hitFloor.child), stop(direct.child), stop(backend.child), stop(redis.child, 'SIGKILL')]);

  if (lateSends.size) {
    notes.push(`fixed-rate sends more than 5 ms behind schedule (summed over rounds; the load core was busy): ${[...lateSends].map(([k, n]) => `${k} ${n}`).join(', ')}`);
  }
  const table = renderTable(results, rss, loadsHwmMb === undefined ? undefined : { hwmMb: loadsHwmMb, scenarios: loadsServed });
  const profileText = profile ? renderProfile(profile) : '';
  const settings = renderSettings(started);
  const out = [`## Results (${new Date().toISOString()})`, '', settings, '', table, '', path ? renderPath(path) : '', notes.length ? `Notes:\n${notes.map((n) => `- ${n}`).join('\n')}\n` : 'Notes: every request of every measurement answered 2xx.\n', profileText].join('\n');
  process.stdout.write(`\n${out}\n`);
  mkdirSync(join(here, 'results'), { recursive: true });
  writeFileSync(join(here, 'results', 'latest.md'), out + '\n');
  writeFileSync(join(here, 'results', 'latest.json'), JSON.stringify({ settings: cfg, results, loadsHwmMb, rss, path, profile, notes }, null, 1) + '\n');
  log(`done in ${((Date.now() - started) / 1000).toFixed(0)} s; written to bench/results/latest.md and latest.json`);
}

function fmtResult(r) {
  const f = (x) => (Number.isFinite(x) ? x.toFixed(2) : '-');
  return `${Number.isFinite(r.rps) ? r.rps.toFixed(0).padStart(6) : '-'} req/s  p50 ${f(r.p50)}  p90 ${f(r.p90)}  p99 ${f(r.p99)} ms` +
    (r.ttfb50 !== undefined ? `  ttfb p50 ${f(r.ttfb50)} p99 ${f(r.ttfb99)}` : '') + `  cpu ${Number.isFinite(r.cpuUsPerReq) ? r.cpuUsPerReq.toFixed(0) : '-'} us/req  redis ${Number.isFinite(r.redisCmdsPerReq) ? r.redisCmdsPerReq.toFixed(1) : '-'}/req  load ${r.load1}` + (r.errors ? `  ERRORS ${r.errors}` : '');
}

function renderSettings(started) {
  const cpu = (readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/) ?? [])[1] ?? '?';
  const v = (cmd) => spawnSync('sh', ['-c', cmd], { encoding: 'utf8' }).stdout.trim().split('\n')[0];
  return [
    `Machine: ${cpu}, ${v('nproc')} cores; Node ${process.version}; ${v('nginx -v 2>&1')}; ${v('wrk -v 2>&1 | head -1')}; ${v('redis-server --version')}.`,
    `Target on core ${cfg.targetCore}; load generator, fake upstream(s) and Redis on core ${cfg.loadCore}. ` +
      `${cfg.rounds} rounds, targets alternating within each scenario, medians over rounds. ` +
      `Max throughput: wrk -t1 -c${cfg.connections}, ${cfg.duration} s. Fixed rate: bench/fixed-rate.mjs, ${cfg.fixedDuration} s per rate. ` +
      `Upstream +${cfg.addedLatencyMs} ms: wrk -c${cfg.slowConnections}, ${cfg.duration} s. ` +
      `Streams: ${cfg.streams} connections, ${cfg.streamChunkDelayMs} ms between SSE events, ${cfg.streamsDuration} s. Total run ${((Date.now() - started) / 1000).toFixed(0)} s.`,
    `Machine load (1-min load average) during the measurements: median ${f2(median(allLoads))}, max ${f2(Math.max(...allLoads))} (2 cores: above ~2.2 means other work competed with the benchmark).`,
    `Tollgate: ${tollgateDir}/dist/server.js, ${env.BENCH_TOLLGATE_LABEL ?? `at ${v(`git -C ${tollgateDir} rev-parse --short HEAD 2>/dev/null`) || '?'}${v(`git -C ${tollgateDir} status --porcelain --untracked-files=no 2>/dev/null | head -1`) ? ' (working tree with uncommitted changes)' : ''}`}; LOG_LEVEL=${cfg.logLevel} (log to /dev/null; the path scenario keeps its own at info), Redis store, cache on, metrics on${mallocLabel ? `, ${mallocLabel} (as in the image; the Node floor too)` : ''}${Object.entries(cfg.tollgateEnv).map(([name, value]) => `, ${name}=${value}`).join('')}.`,
  ].join('\n');
}

function renderTable(results, rss, loadsRss) {
  const rows = [];
  const f = (x, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '-');
  const med = (scenario, target, metric) => median((results[scenario]?.[target] ?? []).map((r) => r[metric]));
  const head = '| scenario | metric | direct | nginx | Tollgate | Tollgate hits | Tollgate / direct | Tollgate / nginx | issue 7 target | met |';
  rows.push(head, '|' + ' --- |'.repeat(10));
  const verdict = (ok) => (ok === undefined ? '' : ok ? 'yes' : '**no**');

  const throughput = (scenario, label, targetRatio, targetText) => {
    if (!results[scenario]) return;
    const d = med(scenario, 'direct', 'rps');
    const n = med(scenario, 'nginx', 'rps');
    const t = med(scenario, 'tollgate', 'rps');
    const h = med(scenario, 'hits', 'rps');
    rows.push(`| ${label} | req/s | ${f(d, 0)} | ${f(n, 0)} | ${f(t, 0)} | ${f(h, 0)} | ${f(t / d)}x | ${f(t / n)}x | ${targetText} | ${verdict(targetRatio ? t / d >= targetRatio : undefined)} |`);
    if (results[scenario].hits && scenario === 'max') {
      rows.push(`| ${label} | cache hits req/s | | | | ${f(h, 0)} | ${f(h / d)}x (hits) | ${f(h / n)}x (hits) | hits >= 0.50x direct | ${verdict(h / d >= 0.5)} |`);
    }
    const c = (x) => med(scenario, x, 'cpuUsPerReq');
    rows.push(`| ${label} | target CPU us/req | ${f(c('direct'), 0)} | ${f(c('nginx'), 0)} | ${f(c('tollgate'), 0)} | ${f(c('hits'), 0)} | ${f(c('tollgate') / c('direct'))}x | ${f(c('tollgate') / c('nginx'))}x | | |`);
    const rc = (x) => med(scenario, x, 'redisCmdsPerReq');
    rows.push(`| ${label} | Redis commands run/req (incl. inside Lua) | | | ${f(rc('tollgate'), 1)} | ${f(rc('hits'), 1)} | | | | |`);
    if (results[scenario].floor) {
      // The Node floor (bench/floor.mjs): Tollgate's stack with no features, in the Tollgate column.
      const fl = med(scenario, 'floor', 'rps');
      rows.push(`| ${label} | Node floor req/s (Fastify + undici, no features) | | | ${f(fl, 0)} | | ${f(fl / d)}x | ${f(fl / n)}x | | |`);
      rows.push(`| ${label} | Node floor CPU us/req | | | ${f(c('floor'), 0)} | | ${f(c('floor') / c('direct'))}x | ${f(c('floor') / c('nginx'))}x | | |`);
    }
    if (results[scenario].hitfloor) {
      // The floor of a hit (floor.mjs --from-memory): the stack answering from memory, in the hits column.
      // Its verdict is the hits target's: were the floor itself Tollgate, would it hold?
      const hf = med(scenario, 'hitfloor', 'rps');
      const hitTarget = scenario === 'max' ? 0.5 : undefined;
      rows.push(`| ${label} | Node floor for hits req/s (Fastify answering from memory, no features) | | | | ${f(hf, 0)} | ${f(hf / d)}x | ${f(hf / n)}x | ${hitTarget ? 'the floor alone: >= 0.50x direct' : ''} | ${verdict(hitTarget ? hf / d >= hitTarget : undefined)} |`);
      rows.push(`| ${label} | Node floor for hits CPU us/req | | | | ${f(c('hitfloor'), 0)} | ${f(c('hitfloor') / c('direct'))}x | ${f(c('hitfloor') / c('nginx'))}x | | |`);
    }
    rows.push(`| ${label} | req/s per core from CPU | ${f(1e6 / c('direct'), 0)} | ${f(1e6 / c('nginx'), 0)} | ${f(1e6 / c('tollgate'), 0)} | ${f(1e6 / c('hits'), 0)} | ${f(c('direct') / c('tollgate'))}x | ${f(c('nginx') / c('tollgate'))}x | ${targetText} | ${verdict(targetRatio ? c('direct') / c('tollgate') >= targetRatio : undefined)} |`);
    for (const m of ['p50', 'p99']) {
      rows.push(`| ${label} | ${m} ms | ${f(med(scenario, 'direct', m))} | ${f(med(scenario, 'nginx', m))} | ${f(med(scenario, 'tollgate', m))} | ${f(med(scenario, 'hits', m))} | ${f(med(scenario, 'tollgate', m) / med(scenario, 'direct', m))}x | ${f(med(scenario, 'tollgate', m) / med(scenario, 'nginx', m))}x | | |`);
    }
  };
  const latency = (scenario, label, metric, name, limitMs) => {
    const d = med(scenario, 'direct', metric);
    const n = med(scenario, 'nginx', metric);
    const t = med(scenario, 'tollgate', metric);
    const sign = (x) => (x >= 0 ? '+' : '') + f(x);
    rows.push(`| ${label} | ${name} ms | ${f(d)} | ${f(n)} | ${f(t)} | | ${sign(t - d)} ms | ${sign(t - n)} ms | ${limitMs !== undefined ? `<= direct + ${limitMs} ms` : ''} | ${verdict(limitMs !== undefined ? t - d <= limitMs : undefined)} |`);
    if (results[scenario].floor && limitMs !== undefined) {
      // The same limit applied to the Node floor (no features): where it fails, no feature set can pass.
      const fl = med(scenario, 'floor', metric);
      rows.push(`| ${label} | Node floor ${name} ms (no features) | | | ${f(fl)} | | ${sign(fl - d)} ms | ${sign(fl - n)} ms | the floor alone: <= direct + ${limitMs} ms | ${verdict(fl - d <= limitMs)} |`);
    }
  };

  throughput('max', `non-streamed, max, ${cfg.connections} conns`, 0.3, '>= 0.30x direct');
  throughput('max-stream', `streamed, max, ${cfg.connections} conns`, 0.25, '>= 0.25x direct');
  for (const rate of cfg.rates) {
    const at100 = rate === 100;
    if (results[`fixed${rate}`]) {
      latency(`fixed${rate}`, `non-streamed, ${rate} req/s`, 'p50', 'p50', at100 ? 0.3 : undefined);
      latency(`fixed${rate}`, `non-streamed, ${rate} req/s`, 'p90', 'p90');
      latency(`fixed${rate}`, `non-streamed, ${rate} req/s`, 'p99', 'p99', at100 ? 2 : undefined);
    }
    if (results[`fixed${rate}-stream`]) {
      const s = `fixed${rate}-stream`;
      latency(s, `streamed, ${rate} req/s`, 'p50', 'p50', at100 ? 0.3 : undefined);
      latency(s, `streamed, ${rate} req/s`, 'p90', 'p90');
      latency(s, `streamed, ${rate} req/s`, 'p99', 'p99', at100 ? 2 : undefined);
      latency(s, `streamed, ${rate} req/s`, 'ttfb50', 'TTFB p50', at100 ? 1 : undefined);
      latency(s, `streamed, ${rate} req/s`, 'ttfb99', 'TTFB p99');
    }
  }
  if (results.slow) {
    const label = `upstream +${cfg.addedLatencyMs} ms, ${cfg.slowConnections} conns`;
    const d = med('slow', 'direct', 'rps');
    const n = med('slow', 'nginx', 'rps');
    const t = med('slow', 'tollgate', 'rps');
    rows.push(`| ${label} | req/s | ${f(d, 0)} | ${f(n, 0)} | ${f(t, 0)} | | ${f(t / d)}x | ${f(t / n)}x | >= 0.95x direct | ${verdict(t / d >= 0.95)} |`);
    const p = (x) => med('slow', x, 'p99');
    rows.push(`| ${label} | p99 ms | ${f(p('direct'))} | ${f(p('nginx'))} | ${f(p('tollgate'))} | | ${f(p('tollgate') / p('direct'))}x | ${f(p('tollgate') / p('nginx'))}x | <= 65 ms | ${verdict(p('tollgate') <= 65)} |`);
    if (results.slow.floor) {
      const fl = med('slow', 'floor', 'rps');
      rows.push(`| ${label} | Node floor req/s (no features) | | | ${f(fl, 0)} | | ${f(fl / d)}x | ${f(fl / n)}x | the floor alone: >= 0.95x direct | ${verdict(fl / d >= 0.95)} |`);
      rows.push(`| ${label} | Node floor p99 ms (no features) | | | ${f(p('floor'))} | | ${f(p('floor') / p('direct'))}x | ${f(p('floor') / p('nginx'))}x | the floor alone: <= 65 ms | ${verdict(p('floor') <= 65)} |`);
    }
  }
  if (loadsRss) {
    rows.push(`| the loads above (${loadsRss.scenarios}; one Tollgate, misses and hits) | peak RSS (VmHWM) MB | | | ${f(loadsRss.hwmMb, 1)} | | | | <= 150 MB | ${verdict(loadsRss.hwmMb <= 150)} |`);
  }
  if (rss) {
    rows.push(`| ${cfg.streams} concurrent slow streams | peak RSS (VmHWM) MB | | | ${f(rss.hwmMb, 1)} | | | | <= 150 MB | ${verdict(rss.hwmMb <= 150 && rss.peakActive >= cfg.streams)} |`);
    rows.push(`| ${cfg.streams} concurrent slow streams | RSS before the streams MB | | | ${f(rss.idleMb, 1)} | | | | | |`);
    rows.push(`| ${cfg.streams} concurrent slow streams | of it, the V8 heap (nodejs_heap_size_total_bytes) MB | | | ${f(rss.idleHeapMb, 1)} | | | | | |`);
    rows.push(`| ${cfg.streams} concurrent slow streams | peak streams open upstream | | | ${rss.peakActive} | | | | ${cfg.streams} | ${verdict(rss.peakActive >= cfg.streams)} |`);
  }
  return rows.join('\n');
}

/** Where a non-streamed miss's time goes at 100 req/s: Tollgate's log line against one Redis round trip. */
function renderPath(p) {
  const ms = (x) => (Number.isFinite(x) ? `${x.toFixed(2)} ms` : '-');
  return [
    `### Where a request's time goes at 100 req/s (non-streamed misses; p50 of ${p.requests} log lines of a fresh Tollgate)`,
    '',
    '| part | p50 |',
    '| --- | --- |',
    `| latency the client measured (bench/fixed-rate.mjs) | ${ms(p.clientP50)} |`,
    `| latencyMs: Tollgate, from its onRequest to the response's end | ${ms(p.latencyMs)} |`,
    `| upstreamMs: the upstream call, from sending to the last body byte | ${ms(p.upstreamMs)} |`,
    `| overheadMs: latencyMs - upstreamMs | ${ms(p.overheadMs)} |`,
    `| storeMs: of the overhead, waiting on Redis (admission joined with the cache lookup) | ${ms(p.storeMs)} |`,
    `| overheadMs - storeMs: Tollgate's own work (parse, auth, validate, count tokens, hash, relay, respond) | ${ms(p.overheadLessStoreMs)} |`,
    `| one Redis PING from the target core at 100/s (bench/store-rtt.mjs; p99 ${ms(p.pingP99)}) | ${ms(p.pingP50)} |`,
    '',
    '(Medians of parts do not add up exactly. The client also pays the hops to and from Tollgate, which its log cannot see.)',
    '',
  ].join('\n');
}

function renderProfile(p) {
  const functionRow = (m) => `| ${m.name.replaceAll('|', '\\|')} | ${m.where} | ${m.ms.toFixed(0)} | ${m.pct.toFixed(1)} |`;
  const lines = [
    `### CPU profile of Tollgate, non-streamed, ${cfg.connections} connections (${f0(p.rps)} req/s under the profiler)`,
    '',
    `Window: ${(p.windowMs / 1000).toFixed(1)} s of load, ${p.totalMs.toFixed(0)} ms of samples; busy (not idle) ${p.busyPct.toFixed(1)}%. Profile: ${p.file} (open in Chrome DevTools).`,
    '',
    `Redis commands run per request during the profiled load (INFO commandstats, commands inside Lua scripts included): ${p.redisPerReq.map(([c, x]) => `${c} ${x.toFixed(2)}`).join(', ')} (total ${p.redisPerReq.reduce((a, [, x]) => a + x, 0).toFixed(2)}; the tail of the previous load's settlements may add a little).`,
    '',
    '| self time by module | ms | % of busy |',
    '| --- | --- | --- |',
    ...p.modules.slice(0, 18).map((m) => `| ${m.name} | ${m.ms.toFixed(0)} | ${m.pct.toFixed(1)} |`),
    '',
    '| top functions by self time | where | ms | % of busy |',
    '| --- | --- | --- | --- |',
    ...p.functions.slice(0, 25).map(functionRow),
    '',
    "Tollgate's own functions by inclusive time (each sample counted once for every distinct Tollgate function on its stack: the function and what it calls synchronously; work after an `await` counts under whatever resumed it):",
    '',
    '| function | where | ms | % of busy |',
    '| --- | --- | --- | --- |',
    ...p.inclusive.slice(0, 20).map(functionRow),
    '',
  ];
  return lines.join('\n');
}
const f2 = (x) => (Number.isFinite(x) ? x.toFixed(2) : '-');
const allLoads = [];
const f0 = (x) => (Number.isFinite(x) ? x.toFixed(0) : '-');

main().then(
  () => process.exit(0),
  (err) => {
    keepWork = true;
    console.error(`bench failed: ${err.stack ?? err}`);
    for (const c of children) if (c.stderrText) console.error(`--- ${c.name} stderr:\n${c.stderrText.slice(-3000)}`);
    console.error(`work dir kept: ${work}`);
    process.exit(1);
  },
);
