// The SSE relay: events pass through in order, and a slow client's back-pressure leaves no
// listeners behind however many times the relay has to wait.
import { describe, expect, it } from 'vitest';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { relaySse } from '../../src/openai/sse.js';

describe('relaySse', () => {
  it('waits on a slow client without piling up listeners', async () => {
    const payload = 'x'.repeat(4000);
    const events = Array.from({ length: 300 }, (_, i) => `data: {"i":${i},"p":"${payload}"}\n\n`);
    const source = Readable.from([...events, 'data: [DONE]\n\n'].map((e) => Buffer.from(e)));
    const { stream, done } = relaySse(source, { dropUsageChunk: false });
    let maxListeners = 0;
    let text = '';
    stream.on('data', (chunk: Buffer) => {
      text += chunk.toString();
      maxListeners = Math.max(maxListeners, stream.listenerCount('close'), stream.listenerCount('drain'));
      stream.pause();
      void sleep(1).then(() => stream.resume()); // a slow reader: the relay must wait, many times
    });
    const result = await done;
    await new Promise((r) => stream.once('end', r));
    expect(result.completed).toBe(true);
    expect(result.events).toBe(301);
    expect(text.split('\n\n').filter(Boolean)).toHaveLength(301);
    expect(maxListeners).toBeLessThanOrEqual(3);
  });
});
