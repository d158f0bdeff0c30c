// Self time of a V8 .cpuprofile (node --cpu-prof), by module and by function, over a time window;
// and the inclusive time of Tollgate's own functions (each sample counted once for every distinct
// function on its stack: what a function and everything it calls synchronously cost; work after an
// `await` is counted under whatever resumed it).
//   node bench/profile-summary.mjs bench/results/tollgate.cpuprofile [windowSeconds] [skipTailMs]
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const SPECIAL = new Set(['(idle)', '(program)', '(garbage collector)', '(root)']);

function moduleOf(url, functionName, root) {
  if (!url) return SPECIAL.has(functionName) ? functionName : 'V8 builtins / native';
  let u = url.startsWith('file://') ? fileURLToPath(url) : url;
  if (u.startsWith('wasm://')) return "wasm (undici's HTTP parser, llhttp)";
  if (u.startsWith('node:')) {
    const rest = u.slice(5).replace(/^internal\/(deps\/)?/, '');
    return `node:${rest.split('/')[0].replace(/\.js$/, '')}`;
  }
  const nm = u.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const parts = u.slice(nm + 14).split('/');
    return parts[0].startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0];
  }
  if (root && u.startsWith(root)) u = u.slice(root.length + 1);
  return `tollgate ${u}`;
}

function shortWhere(url, line, root) {
  if (!url) return '';
  let u = url.startsWith('file://') ? fileURLToPath(url) : url;
  const nm = u.lastIndexOf('/node_modules/');
  if (nm >= 0) u = u.slice(nm + 14);
  else if (root && u.startsWith(root)) u = u.slice(root.length + 1);
  return `${u}:${line + 1}`;
}

/** A function's key in the tables: its name and where it is, split again by byFunction. */
const functionKey = (cf, root) => `${cf.functionName || '(anonymous)'}\u0000${shortWhere(cf.url, cf.lineNumber, root)}`;

export function summariseProfile(profile, { windowMs, skipTailMs = 0, root } = {}) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const end = profile.endTime - skipTailMs * 1000;
  const begin = windowMs ? end - windowMs * 1000 : profile.startTime;
  const self = new Map(); // node id -> µs
  const parent = new Map(); // node id -> its caller's node id
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  let t = profile.startTime;
  const { samples, timeDeltas } = profile;
  for (let i = 0; i < samples.length; i++) {
    t += timeDeltas[i];
    const next = i + 1 < samples.length ? timeDeltas[i + 1] : 0;
    if (t < begin || t > end) continue;
    self.set(samples[i], (self.get(samples[i]) ?? 0) + next);
  }
  const modules = new Map();
  const functions = new Map();
  let total = 0;
  let idle = 0;
  for (const [id, us] of self) {
    const { callFrame: cf } = byId.get(id);
    total += us;
    if (cf.functionName === '(idle)') {
      idle += us;
      continue;
    }
    const mod = moduleOf(cf.url, cf.functionName, root);
    modules.set(mod, (modules.get(mod) ?? 0) + us);
    const fkey = functionKey(cf, root);
    functions.set(fkey, (functions.get(fkey) ?? 0) + us);
  }
  const busy = total - idle;
  // Inclusive: a sample's time goes once to every distinct Tollgate function on its stack.
  const inclusive = new Map();
  for (const [id, us] of self) {
    if (byId.get(id).callFrame.functionName === '(idle)') continue;
    const seen = new Set();
    for (let n = id; n !== undefined; n = parent.get(n)) {
      const { callFrame: cf } = byId.get(n);
      if (!moduleOf(cf.url, cf.functionName, root).startsWith('tollgate ')) continue;
      const fkey = functionKey(cf, root);
      if (seen.has(fkey)) continue;
      seen.add(fkey);
      inclusive.set(fkey, (inclusive.get(fkey) ?? 0) + us);
    }
  }
  const list = (m) =>
    [...m]
      .map(([k, us]) => ({ k, ms: us / 1000, pct: (100 * us) / busy }))
      .sort((a, b) => b.ms - a.ms);
  const byFunction = (m) =>
    list(m).map(({ k, ms, pct }) => {
      const [name, where] = k.split('\u0000');
      return { name, where, ms, pct };
    });
  return {
    windowMs: (end - begin) / 1000,
    totalMs: total / 1000,
    busyPct: (100 * busy) / total,
    modules: list(modules).map(({ k, ms, pct }) => ({ name: k, ms, pct })),
    functions: byFunction(functions),
    inclusive: byFunction(inclusive),
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const [file, windowS, tail] = process.argv.slice(2);
  const p = summariseProfile(JSON.parse(readFileSync(file, 'utf8')), {
    windowMs: windowS ? Number(windowS) * 1000 : undefined,
    skipTailMs: tail ? Number(tail) : 0,
    root: process.cwd(),
  });
  const share = (m) => `${m.ms.toFixed(0).padStart(7)} ms ${m.pct.toFixed(1).padStart(5)}%  ${m.name}${m.where === undefined ? '' : `  ${m.where}`}`;
  console.log(`busy ${p.busyPct.toFixed(1)}% of ${p.totalMs.toFixed(0)} ms`);
  console.log('\nby module:');
  for (const m of p.modules.slice(0, 25)) console.log(share(m));
  console.log('\nby function:');
  for (const m of p.functions.slice(0, 40)) console.log(share(m));
  console.log("\nTollgate's functions, inclusive:");
  for (const m of p.inclusive.slice(0, 30)) console.log(share(m));
}
