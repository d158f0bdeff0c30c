// One Redis round trip (PING) at a fixed rate, from wherever it is pinned (the bench runs it on the
// target core): the least time any admission checked in Redis before forwarding adds to a request.
//
//   node bench/store-rtt.mjs --redis redis://127.0.0.1:6379 --rate 100 --duration 5
//
// Prints `BENCH_RESULT {"p50_ms":...,"p90_ms":...,"p99_ms":...,"count":...}`.
import { Redis } from 'ioredis';

const args = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const redis = new Redis(arg('redis', 'redis://127.0.0.1:6379'), { maxRetriesPerRequest: 1 });
const rate = Number(arg('rate', 100));
const durationMs = Number(arg('duration', 5)) * 1000;

await redis.ping(); // connected before the clock starts
const times = [];
const started = performance.now();
for (let i = 0; performance.now() - started < durationMs; i++) {
  // Open loop on a fixed schedule, one PING at a time: as a request at this rate meets Redis idle.
  const due = started + (i * 1000) / rate;
  const wait = due - performance.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  const sent = performance.now();
  await redis.ping();
  times.push(performance.now() - sent);
}
redis.disconnect();
times.sort((a, b) => a - b);
const at = (q) => times[Math.min(times.length - 1, Math.floor(q * times.length))];
console.log(`BENCH_RESULT ${JSON.stringify({ p50_ms: at(0.5), p90_ms: at(0.9), p99_ms: at(0.99), count: times.length })}`);
