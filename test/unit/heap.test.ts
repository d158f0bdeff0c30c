// V8 heap sizing (src/heap.ts): each case runs in a fresh Node process, since V8 flags are process-wide.
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

const heapModule = JSON.stringify(new URL('../../src/heap.ts', import.meta.url).href);

/** Runs `body` (an async function body with `heap` = the module) in a fresh process; its JSON result. */
function inFreshProcess(body: string, env: Record<string, string> = {}, nodeFlags: string[] = []): any {
  const script = `
    const heap = await import(${heapModule});
    const result = await (async () => { ${body} })();
    console.log(JSON.stringify(result));
  `;
  const out = execFileSync(process.execPath, [...nodeFlags, '--import', 'tsx', '--input-type=module', '-e', script], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH, ...env },
  });
  return JSON.parse(out.trim().split('\n').pop()!);
}

/** Allocates ~60 MB in small objects that survive a while, across event-loop turns; the young generation's largest size. */
const churn = `
  let largest = heap.youngGenerationBytes();
  let keep = [];
  for (let round = 0; round < 60; round++) {
    for (let i = 0; i < 20000; i++) keep.push({ i, s: 'x' + i });
    if (keep.length > 200000) keep = keep.slice(100000);
    largest = Math.max(largest, heap.youngGenerationBytes());
    await new Promise((r) => setImmediate(r));
  }
  return largest;
`;

/** configureHeap(settings), then the churn, in a fresh process: what applies and the young generation's largest size. */
function configuredThenChurned(settings: { maxSemiSpaceMb: number; growingPercent: number }): any {
  return inFreshProcess(`
    const tuning = heap.configureHeap(${JSON.stringify(settings)});
    const largest = await (async () => { ${churn} })();
    return { tuning, largest };
  `);
}

const MB = 1024 * 1024;
const v8Major = Number(process.versions.v8.split('.')[0]);

describe('configureHeap', () => {
  it('holds the young generation at 2 x V8_MAX_SEMI_SPACE_MB under sustained allocation', () => {
    const r = configuredThenChurned({ maxSemiSpaceMb: 4, growingPercent: 15 });
    expect(r.tuning).toMatchObject({ semiSpaceMb: 4, growingPercent: 15 });
    if (v8Major >= 13) {
      // V8 13+ (Node 24+) also grows it in steps of its own with the growth factor at 1: held near
      // the setting, not at it (src/heap.ts; 8-17 MB measured here, 64 MB with V8's own sizing).
      expect(r.largest).toBeLessThanOrEqual(24 * MB);
      return;
    }
    expect(r.tuning.youngGenerationBytes).toBeGreaterThanOrEqual(8 * MB);
    expect(r.tuning.youngGenerationBytes).toBeLessThanOrEqual(9 * MB);
    expect(r.largest).toBeLessThanOrEqual(9 * MB);
  });

  it('left to V8 (0), the young generation grows as V8 likes (here to 2 x 16 MB)', () => {
    const r = configuredThenChurned({ maxSemiSpaceMb: 0, growingPercent: 0 });
    expect(r.tuning).toMatchObject({ semiSpaceMb: 'v8', growingPercent: 'v8' });
    expect(r.largest).toBeGreaterThan(16 * MB);
  });

  it('leaves alone what the operator set on the command line or in NODE_OPTIONS', () => {
    const r = inFreshProcess(
      `return heap.configureHeap({ maxSemiSpaceMb: 4, growingPercent: 15 });`,
      { NODE_OPTIONS: '--max_semi_space_size=2' },
      ['--heap-growing-percent=40'],
    );
    expect(r).toMatchObject({ semiSpaceMb: 'operator', growingPercent: 'operator' });
  });
});
