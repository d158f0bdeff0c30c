// Where a running Tollgate allocates, per request: V8's sampling heap profiler, counting objects the
// garbage collector has already freed too (most of a request's garbage dies young), while you drive
// load at it (wrk, bench/fixed-rate.mjs, ...). Requests are counted from its /metrics.
//
//   node --inspect=127.0.0.1:9229 dist/server.js          # the gateway, with its inspector open
//   node --experimental-websocket bench/alloc-profile.mjs --origin http://127.0.0.1:8080 --seconds 5
//
// Options: --inspector http://127.0.0.1:9229 (where the inspector listens), --metrics-token T (if
// METRICS_TOKEN is set), --top 30. Prints KB allocated per request in all, then by allocation site
// (the function that allocated, self only). Sampling (one sample per 4 KB allocated on average) adds
// little overhead; the totals are estimates, good to a few percent over a few thousand requests.
// (Node 20 needs --experimental-websocket for the inspector's WebSocket; Node 22 has it built in.)
import { setTimeout as sleep } from 'node:timers/promises';

const args = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const origin = arg('origin', 'http://127.0.0.1:8080');
const inspector = arg('inspector', 'http://127.0.0.1:9229');
const seconds = Number(arg('seconds', 5));
const top = Number(arg('top', 30));
const metricsToken = arg('metrics-token');

/** Requests Tollgate has answered so far (the sum of tollgate_requests_total). */
async function requestsServed() {
  const res = await fetch(`${origin}/metrics`, { headers: metricsToken ? { authorization: `Bearer ${metricsToken}` } : {} });
  if (!res.ok) throw new Error(`GET /metrics: ${res.status}`);
  let total = 0;
  for (const line of (await res.text()).split('\n')) {
    if (line.startsWith('tollgate_requests_total{')) total += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return total;
}

const [target] = await (await fetch(`${inspector}/json/list`)).json();
const ws = new WebSocket(target.webSocketDebuggerUrl);
let seq = 0;
const waiting = new Map();
ws.onmessage = (m) => {
  const reply = JSON.parse(m.data);
  waiting.get(reply.id)?.(reply);
  waiting.delete(reply.id);
};
await new Promise((resolve, reject) => {
  ws.onopen = resolve;
  ws.onerror = reject;
});
const call = (method, params = {}) =>
  new Promise((resolve) => {
    const id = ++seq;
    waiting.set(id, resolve);
    ws.send(JSON.stringify({ id, method, params }));
  });

await call('HeapProfiler.enable');
const before = await requestsServed();
await call('HeapProfiler.startSampling', { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true });
await sleep(seconds * 1000);
const { result } = await call('HeapProfiler.stopSampling');
const requests = (await requestsServed()) - before;
ws.close();
if (requests <= 0) throw new Error('no requests were served while sampling: drive load at the gateway meanwhile');

const bySite = new Map();
let total = 0;
(function walk(node) {
  const { functionName, url, lineNumber } = node.callFrame;
  if (node.selfSize > 0) {
    const where = `${functionName || '(anonymous)'} ${url.replace(/^.*\/(node_modules|dist)\//, '')}${url ? `:${lineNumber + 1}` : ''}`;
    bySite.set(where, (bySite.get(where) ?? 0) + node.selfSize);
    total += node.selfSize;
  }
  for (const child of node.children) walk(child);
})(result.profile.head);

const kb = (bytes) => (bytes / 1024 / requests).toFixed(2).padStart(7);
console.log(`${requests} requests in ${seconds} s: ${kb(total).trim()} KB allocated per request`);
for (const [where, bytes] of [...bySite].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${kb(bytes)} KB  ${where}`);
