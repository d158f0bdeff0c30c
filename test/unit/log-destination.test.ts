// The log's stdout: lines batched (one string per batch), flushed on a timer, and none lost at exit.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { createLineBatcher } from '../../src/log-destination.js';

/** Runs `body` in a child process with `batchedStdout` imported; returns its stdout. */
function child(body: string): string {
  const script = `import { batchedStdout } from './src/log-destination.ts';\n${body}`;
  const run = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 20_000 });
  expect(run.stderr).toBe('');
  return run.stdout;
}

const line = (i: number) => `{"msg":"request","i":${i},"pad":"${'x'.repeat(200)}"}\n`;

describe('createLineBatcher', () => {
  it('hands lines over joined, once enough have gathered, and the rest on flush, in order', () => {
    const batches: string[] = [];
    const batcher = createLineBatcher((b) => batches.push(b), 1000);
    for (let i = 0; i < 4; i++) batcher.write(line(i)); // ~880 units: held
    expect(batches).toEqual([]);
    batcher.write(line(4));
    expect(batches).toEqual([[0, 1, 2, 3, 4].map(line).join('')]);
    batcher.write(line(5));
    batcher.flush();
    batcher.flush(); // nothing left: hands nothing over
    expect(batches).toEqual([[0, 1, 2, 3, 4].map(line).join(''), line(5)]);
    batcher.write(line(6));
    expect(batcher.take()).toBe(line(6));
    expect(batcher.take()).toBe('');
  });
});

describe('batchedStdout', () => {
  it('writes every line, in order, when the process exits at once', () => {
    const out = child(`
      const out = batchedStdout();
      for (let i = 0; i < 2000; i++) out.write(JSON.stringify({ i }) + '\\n');
      process.exit(0);
    `);
    const lines = out.trim().split('\n').map((l) => (JSON.parse(l) as { i: number }).i);
    expect(lines).toEqual(Array.from({ length: 2000 }, (_, i) => i));
  });

  it('writes a quiet batch within its interval, without waiting for more lines or the exit', () => {
    // SIGKILL runs no exit hook: only the timer can have written these.
    const out = child(`
      const out = batchedStdout({ flushMs: 50 });
      for (let i = 0; i < 3; i++) out.write(JSON.stringify({ i }) + '\\n');
      setTimeout(() => process.kill(process.pid, 'SIGKILL'), 500);
    `);
    expect(out).toBe('{"i":0}\n{"i":1}\n{"i":2}\n');
  });
});
