// The relay's beforeEnd: called once when upstream is done, and the client gets the terminal event,
// the end of the stream or the in-band error only once its promise has settled (the pipeline gives
// the key's concurrency lease back there, before a sequential client can send its next request).
import { describe, expect, it } from 'vitest';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { relaySse } from '../../src/openai/sse.js';
import { readResponsesEventUsage } from '../../src/openai/usage.js';

const chunk = (content: string) => `data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":${JSON.stringify(content)}}}]}\n\n`;
const DONE = 'data: [DONE]\n\n';

/** A beforeEnd whose promise the test settles, counting its calls. */
function gate() {
  let open!: () => void;
  let fail!: (err: Error) => void;
  const g = {
    calls: 0,
    open: () => open(),
    fail: (err: Error) => fail(err),
    beforeEnd: () => {
      g.calls++;
      return new Promise<void>((resolve, reject) => {
        open = resolve;
        fail = reject;
      });
    },
  };
  return g;
}

/** Everything the client has received so far, and whether the stream has ended. */
function client(stream: Readable) {
  const seen = { text: '', ended: false };
  stream.on('data', (c: Buffer) => (seen.text += c.toString()));
  stream.on('end', () => (seen.ended = true));
  return seen;
}

describe('relaySse: beforeEnd', () => {
  it('holds [DONE] and the end until beforeEnd resolves; the events before it pass at once', async () => {
    const source = new Readable({ read() {} });
    const g = gate();
    const { stream, done } = relaySse(source, { dropUsageChunk: false, beforeEnd: g.beforeEnd });
    const seen = client(stream);
    source.push(chunk('a'));
    await sleep(5);
    expect(seen.text).toBe(chunk('a'));
    expect(g.calls).toBe(0);
    source.push(chunk('b') + DONE);
    source.push(null);
    await sleep(20);
    expect(g.calls).toBe(1);
    expect(seen).toEqual({ text: chunk('a') + chunk('b'), ended: false });
    g.open();
    const result = await done;
    await sleep(5);
    expect(seen).toEqual({ text: chunk('a') + chunk('b') + DONE, ended: true });
    expect(result).toMatchObject({ completed: true, events: 3 });
    expect(g.calls).toBe(1);
  });

  it('holds the endpoint terminal event (Responses API) too, after onEvent', async () => {
    const created = 'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_1"}}\n\n';
    const completed =
      'event: response.completed\ndata: {"type":"response.completed","response":{"id":"resp_1","model":"gpt-4o-mini","usage":{"input_tokens":3,"output_tokens":2,"total_tokens":5}}}\n\n';
    const source = Readable.from([Buffer.from(created + completed)]);
    const g = gate();
    const order: string[] = [];
    const { stream, done } = relaySse(source, {
      dropUsageChunk: false,
      readEvent: readResponsesEventUsage,
      onEvent: async (_data, event) => void order.push(`onEvent ${event}`),
      beforeEnd: () => {
        order.push('beforeEnd');
        return g.beforeEnd();
      },
    });
    const seen = client(stream);
    await sleep(20);
    expect(seen.text).toBe(created);
    expect(order).toEqual(['onEvent response.created', 'onEvent response.completed', 'beforeEnd']);
    g.open();
    expect(await done).toMatchObject({ completed: true, usage: { totalTokens: 5 } });
    await sleep(5);
    expect(seen).toEqual({ text: created + completed, ended: true });
  });

  it('an upstream that ends without a terminal event: the end waits', async () => {
    const g = gate();
    const { stream, done } = relaySse(Readable.from([Buffer.from(chunk('cut'))]), { dropUsageChunk: false, beforeEnd: g.beforeEnd });
    const seen = client(stream);
    await sleep(20);
    expect(seen).toEqual({ text: chunk('cut'), ended: false });
    g.open();
    expect(await done).toMatchObject({ completed: false, events: 1 });
    await sleep(5);
    expect(seen.ended).toBe(true);
    expect(g.calls).toBe(1);
  });

  it('an upstream failure: the in-band error waits, and done does not', async () => {
    const source = new Readable({ read() {} });
    const g = gate();
    const { stream, done } = relaySse(source, { dropUsageChunk: false, beforeEnd: g.beforeEnd });
    const seen = client(stream);
    source.push(chunk('Hi'));
    await sleep(5);
    source.destroy(new Error('socket hang up'));
    expect(((await done).error as Error).message).toBe('socket hang up');
    await sleep(5);
    expect(seen).toEqual({ text: chunk('Hi'), ended: false });
    g.open();
    await sleep(5);
    expect(seen.text).toContain('"upstream_stream_error"');
    expect(seen.ended).toBe(true);
  });

  it('a rejected beforeEnd counts as done: the stream ends normally', async () => {
    const g = gate();
    const { stream, done } = relaySse(Readable.from([Buffer.from(chunk('a') + DONE)]), { dropUsageChunk: false, beforeEnd: g.beforeEnd });
    const seen = client(stream);
    await sleep(10);
    g.fail(new Error('store down'));
    const result = await done;
    expect(result.completed).toBe(true);
    expect(result.error).toBeUndefined();
    await sleep(5);
    expect(seen).toEqual({ text: chunk('a') + DONE, ended: true });
  });

  it('a client that leaves while it waits: the relay stops, nothing more is pushed', async () => {
    const g = gate();
    const source = new Readable({ read() {} });
    const { stream, done } = relaySse(source, { dropUsageChunk: false, beforeEnd: g.beforeEnd });
    const seen = client(stream);
    source.push(chunk('a') + DONE);
    await sleep(10);
    stream.destroy();
    expect(((await done).error as Error).message).toBe('client closed the stream');
    g.open();
    await sleep(5);
    expect(seen.text).toBe(chunk('a'));
  });

  it('without beforeEnd nothing waits (no extra turn before the end)', async () => {
    const { stream, done } = relaySse(Readable.from([Buffer.from(chunk('a') + DONE)]), { dropUsageChunk: false });
    const seen = client(stream);
    expect(await done).toMatchObject({ completed: true });
    await sleep(1);
    expect(seen).toEqual({ text: chunk('a') + DONE, ended: true });
  });
});
