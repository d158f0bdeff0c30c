// Stop signals during start-up (src/stop-signals.ts), tested where they get lost: a process that is
// PID 1 of its own PID namespace, as Node is in a container (unshare: Linux, as root).
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

const stopSignalsModule = JSON.stringify(new URL('../../src/stop-signals.ts', import.meta.url).href);
const canBePid1 = process.platform === 'linux' && process.getuid?.() === 0 && spawnSync('unshare', ['--version']).status === 0;

/**
 * Runs a start-up as PID 1: optionally imports stop-signals first, says "loading", stays busy for
 * 300 ms (modules loading: no event-loop turn), then "up" and a second of serving. One SIGTERM is
 * sent while it is busy. Resolves with its exit code and output.
 */
async function startUpStoppedAsPid1(withModule: boolean): Promise<{ code: number | null; output: string }> {
  const script = `
    ${withModule ? `await import(${stopSignalsModule});` : ''}
    console.log('loading');
    const until = Date.now() + 300;
    while (Date.now() < until);
    console.log('up');
    await new Promise((r) => setTimeout(r, 1000));
    console.log('served');
  `;
  const proc = spawn('unshare', ['--fork', '--pid', '--mount-proc', process.execPath, '--import', 'tsx', '--input-type=module', '-e', script], {
    env: { PATH: process.env.PATH },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  let signalled = false;
  const onOutput = (d: Buffer) => {
    output += d.toString();
    if (!signalled && output.includes('loading')) {
      signalled = true;
      // Node as PID 1 inside is unshare's child out here.
      const pid = Number(readFileSync(`/proc/${proc.pid}/task/${proc.pid}/children`, 'utf8').trim().split(' ')[0]);
      process.kill(pid, 'SIGTERM');
    }
  };
  proc.stdout!.on('data', onOutput);
  proc.stderr!.on('data', onOutput);
  const [code] = (await once(proc, 'exit')) as [number | null];
  return { code, output };
}

describe.runIf(canBePid1)('stop signals during start-up, as PID 1', () => {
  it('without a handler yet, the signal is lost and the process goes on serving (the problem)', async () => {
    const { code, output } = await startUpStoppedAsPid1(false);
    expect(output).toContain('served');
    expect(code).toBe(0);
  });

  it('with stop-signals loaded first, the start-up ends at once, exit 0', async () => {
    const { code, output } = await startUpStoppedAsPid1(true);
    expect(code, output).toBe(0);
    expect(output).toContain('SIGTERM during start-up: exiting');
    expect(output).not.toContain('served');
  });
});

describe('server.ts', () => {
  it('imports stop-signals before any other module', () => {
    const source = readFileSync(new URL('../../src/server.ts', import.meta.url), 'utf8');
    const firstImport = /^import .*$/m.exec(source)?.[0];
    expect(firstImport).toContain("'./stop-signals.js'");
  });
});
