// Giving freed native memory back to the OS (src/native-memory.ts, native/malloc_trim.c). Each case
// that measures memory runs in a fresh Node process, so the test runner's own heap does not blur it.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadAddon, mallocTrimAddon, startMemoryTrimmer } from '../../src/native-memory.js';
import { onLinuxGlibc } from '../helpers/platform.js';

const nativeMemoryModule = JSON.stringify(new URL('../../src/native-memory.ts', import.meta.url).href);

/** Runs `body` (an async function body with `nm` = the module) in a fresh process; its JSON result. */
function inFreshProcess(body: string): any {
  const script = `
    const nm = await import(${nativeMemoryModule});
    const result = await (async () => { ${body} })();
    console.log(JSON.stringify(result));
  `;
  const out = execFileSync(process.execPath, ['--expose-gc', '--import', 'tsx', '--input-type=module', '-e', script], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH },
  });
  return JSON.parse(out.trim().split('\n').pop()!);
}

/**
 * Leaves ~55 MB of freed, fragmented malloc memory behind: 4,000 buffers of 16 KB (below glibc's mmap
 * threshold, so from its heap), one in eight kept so the freed ones lie between live ones, where
 * glibc does not give pages back by itself. Then RSS in MB, as glibc left it.
 */
const fragment = `
  const rss = () => process.memoryUsage.rss() / 1048576;
  let buffers = [];
  for (let i = 0; i < 4000; i++) buffers.push(Buffer.allocUnsafeSlow(16 * 1024).fill(1));
  globalThis.kept = buffers.filter((_, i) => i % 8 === 0);
  buffers = [];
  const settle = () => new Promise((r) => setTimeout(r, 50));
  for (let i = 0; i < 3; i++) { globalThis.gc(); await settle(); }
  const fragmented = rss();
  await settle();
`;

describe.runIf(onLinuxGlibc)('malloc_trim addon (Linux, glibc)', () => {
  it('is built by npm install and loads', () => {
    const addon = mallocTrimAddon();
    expect(addon, 'npm ci builds it (needs python3, make and g++)').not.toBeNull();
    expect(typeof addon!.trim!()).toBe('boolean');
  });

  it('gives back freed memory that glibc otherwise keeps', () => {
    const r = inFreshProcess(`
      ${fragment}
      const keptByGlibc = rss();
      const released = nm.mallocTrimAddon().trim();
      return { fragmented, keptByGlibc, released, after: rss() };
    `);
    // Without a trim glibc keeps it (the bug this fixes); with one, most of it goes.
    expect(r.keptByGlibc).toBeGreaterThan(r.fragmented - 5);
    expect(r.released).toBe(true);
    expect(r.keptByGlibc - r.after).toBeGreaterThan(30);
  });

  it('trims on its timer once started, and reports it', () => {
    const r = inFreshProcess(`
      ${fragment}
      // Starting does not trim: what goes below comes from the timer.
      const trimmer = nm.startMemoryTrimmer(20);
      const atStart = rss();
      await new Promise((r) => setTimeout(r, 200));
      trimmer.stop();
      return { status: trimmer.status, fragmented, atStart, after: rss() };
    `);
    expect(r.status).toEqual({ trimming: true, intervalMs: 20 });
    expect(r.atStart).toBeGreaterThan(r.fragmented - 5);
    expect(r.fragmented - r.after).toBeGreaterThan(30);
  });
});

describe('loadAddon', () => {
  it('tells an addon that was never built from one that will not load', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tollgate-addon-'));
    const notAnAddon = join(dir, 'malloc_trim.node');
    writeFileSync(notAnAddon, 'not a shared object'); // as a build for another platform fails to load
    expect(loadAddon(join(dir, 'missing.node'))).toEqual({ addon: null, failure: 'addon not built' });
    expect(loadAddon(notAnAddon)).toEqual({ addon: null, failure: 'addon failed to load' });
  });
});

describe('startMemoryTrimmer', () => {
  it('does nothing when the interval is 0', () => {
    const trimmer = startMemoryTrimmer(0);
    expect(trimmer.status).toEqual({ trimming: false, reason: 'disabled' });
    trimmer.stop();
  });
});
