// Fixed-rate (open-loop) load generator: wrk2 is not in Debian, so this sends requests at a constant
// rate with undici and records per-request latency (send -> last body byte) and TTFB (send -> first
// body byte). Kept deliberately small so its own CPU stays low; run it pinned to the other core.
//
//   node bench/fixed-rate.mjs --origin http://127.0.0.1:8080 --rate 100 --duration 5 [--stream] [--unique]
//        [--key tg-...] [--nonce x] [--path /v1/chat/completions] [--connections 256]
//
// Prints `BENCH_RESULT {...}` (milliseconds). `late` counts sends more than 5 ms behind schedule
// (the generator or the target fell behind; latencies are then understated for an open loop).
import { Pool } from 'undici';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const flag = (name) => args.includes(`--${name}`);

const origin = opt('origin', 'http://127.0.0.1:8080');
const path = opt('path', '/v1/chat/completions');
const rate = Number(opt('rate', 100));
const durationS = Number(opt('duration', 5));
const stream = flag('stream');
const unique = flag('unique');
const key = opt('key', 'none');
const nonce = opt('nonce', String(Date.now()));
const connections = Number(opt('connections', 256));

const system =
  'You are a concise financial analyst assistant. Answer in plain English, at most five sentences, ' +
  'no bullet points, no tables. If a figure is missing from the report, say so instead of guessing. ' +
  'Always mention revenue growth, margins, cash and the outlook when they are given.';
const report =
  'Quarterly report excerpt: revenue 29.4M USD (+12% YoY), subscription revenue 21.1M (+19%), ' +
  'hardware 8.3M (flat). Operating expenses 17.9M (+4%), headcount 412 (+38, mostly engineering and support). ' +
  'Gross margin 61% (58% a year ago). Cash and equivalents 48.2M. Guidance next quarter: revenue 30-32M; ' +
  'risks: FX, longer enterprise sales cycles. Please summarise this for the board.';
const streamPart = stream ? ',"stream":true,"stream_options":{"include_usage":true}' : '';
const prefix = `{"model":"gpt-4o-mini","max_tokens":256,"temperature":0.2${streamPart},"messages":[{"role":"system","content":"${system}"},{"role":"user","content":"`;
const suffix = '"}]}';
let counter = 0;
const bodyFor = () => `${prefix}${report} [run ${nonce}${unique ? ` fr n${++counter}` : ''}]${suffix}`;

const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
const pool = new Pool(origin, { connections, pipelining: 1, keepAliveTimeout: 60_000 });

const latencies = [];
const ttfbs = [];
let errors = 0;
let non2xx = 0;
let late = 0;
let sent = 0;
let firstError;

async function one() {
  const t0 = performance.now();
  try {
    const res = await pool.request({ method: 'POST', path, headers, body: bodyFor() });
    let ttfb;
    for await (const _chunk of res.body) {
      if (ttfb === undefined) ttfb = performance.now() - t0;
    }
    const total = performance.now() - t0;
    if (res.statusCode < 200 || res.statusCode > 299) {
      non2xx++;
      return;
    }
    latencies.push(total);
    ttfbs.push(ttfb ?? total);
  } catch (err) {
    errors++;
    firstError ??= String(err);
  }
}

const pct = (sorted, p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] : NaN);

const inflight = new Set();
const start = performance.now();
const total = Math.round(rate * durationS);
await new Promise((resolve) => {
  const tick = () => {
    const now = performance.now();
    const due = Math.min(total, Math.floor(((now - start) / 1000) * rate) + 1);
    while (sent < due) {
      const scheduled = start + (sent / rate) * 1000;
      if (now - scheduled > 5) late++;
      sent++;
      const p = one();
      inflight.add(p);
      void p.finally(() => inflight.delete(p));
    }
    if (sent >= total) return resolve();
    // setTimeout(1) fires every ~1 ms: enough resolution for 100-1000 req/s.
    setTimeout(tick, Math.max(0, Math.min(1, start + (sent / rate) * 1000 - performance.now())));
  };
  tick();
});
await Promise.all(inflight);
const elapsed = (performance.now() - start) / 1000;
await pool.close();

latencies.sort((a, b) => a - b);
ttfbs.sort((a, b) => a - b);
const r3 = (x) => Math.round(x * 1000) / 1000;
const result = {
  rate,
  sent,
  ok: latencies.length,
  errors,
  non2xx,
  late,
  achieved_rps: r3(latencies.length / elapsed),
  p50_ms: r3(pct(latencies, 50)),
  p90_ms: r3(pct(latencies, 90)),
  p99_ms: r3(pct(latencies, 99)),
  max_ms: r3(latencies.at(-1) ?? NaN),
  ttfb_p50_ms: r3(pct(ttfbs, 50)),
  ttfb_p90_ms: r3(pct(ttfbs, 90)),
  ttfb_p99_ms: r3(pct(ttfbs, 99)),
  first_error: firstError,
};
process.stdout.write(`BENCH_RESULT ${JSON.stringify(result)}\n`);
