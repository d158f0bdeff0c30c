// The SSE relay: events pass through in order, and a slow client's back-pressure leaves no
// listeners behind however many times the relay has to wait.
import { describe, expect, it } from 'vitest';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { execFileSync } from 'node:child_process';
import { createParser } from 'eventsource-parser';
import fc from 'fast-check';
import { SseParser, relaySse } from '../../src/openai/sse.js';
import { generatedText } from '../../src/openai/usage.js';

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

describe('relaySse: behaviour', () => {
  const chunk = (content: string) => `data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":${JSON.stringify(content)}}}]}\n\n`;
  const usageChunk = 'data: {"object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n';

  async function collect(stream: Readable): Promise<string> {
    let text = '';
    for await (const c of stream) text += (c as Buffer).toString();
    return text;
  }

  it('relays events in order, reads usage, drops the usage-only chunk when asked, counts the first event once', async () => {
    const source = Readable.from([chunk('Hel'), chunk('lo') + usageChunk, 'data: [DONE]\n\n'].map((e) => Buffer.from(e)));
    let firsts = 0;
    const { stream, done } = relaySse(source, { dropUsageChunk: true, onFirstEvent: () => firsts++ });
    const text = await collect(stream);
    const result = await done;
    expect(text).toBe(chunk('Hel') + chunk('lo') + 'data: [DONE]\n\n');
    expect(result).toMatchObject({ completed: true, events: 3, model: 'gpt-4o-mini-2024-07-18', usage: { promptTokens: 3, completionTokens: 2, totalTokens: 5 } });
    expect(result.data).toHaveLength(3); // the usage chunk's data is kept, [DONE] is not
    expect(result.error).toBeUndefined();
    expect(firsts).toBe(1);
  });

  it('takes "usage":null out of the chunks of a client that did not ask for usage, as OpenAI sends them then', async () => {
    const withNull = (content: string) => chunk(content).replace('}]}\n\n', '}],"usage":null}\n\n');
    const first = 'data: {"usage":null,"object":"chat.completion.chunk","choices":[]}\n\n';
    const text = 'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"say \\"usage\\":null"}}],"usage":null}\n\n';
    const events = [first, withNull('Hel'), text, withNull('lo') + usageChunk, 'data: [DONE]\n\n'];
    const unasked = relaySse(Readable.from(events.map((e) => Buffer.from(e))), { dropUsageChunk: true });
    expect(await collect(unasked.stream)).toBe(
      'data: {"object":"chat.completion.chunk","choices":[]}\n\n' +
        chunk('Hel') +
        'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"say \\"usage\\":null"}}]}\n\n' +
        chunk('lo') +
        'data: [DONE]\n\n',
    );
    // A client that asked for usage gets every chunk as it came.
    const asked = relaySse(Readable.from(events.map((e) => Buffer.from(e))), { dropUsageChunk: false });
    expect(await collect(asked.stream)).toBe(events.join(''));
  });

  it('writes the events of one upstream chunk in one piece, and those of a later chunk in another', async () => {
    const source = new Readable({ read() {} });
    const { stream, done } = relaySse(source, { dropUsageChunk: false });
    const pieces: string[] = [];
    stream.on('data', (c: Buffer) => pieces.push(c.toString()));
    source.push(chunk('a') + chunk('b') + chunk('c'));
    await sleep(5);
    source.push(chunk('d') + 'data: [DONE]\n\n');
    source.push(null);
    await done;
    // One write to the client per upstream chunk, not one per event.
    expect(pieces).toEqual([chunk('a') + chunk('b') + chunk('c'), chunk('d') + 'data: [DONE]\n\n']);
  });

  it('keeps multi-byte characters split across chunks whole, and drops a leading byte-order mark', async () => {
    const bytes = Buffer.from(`\uFEFF${chunk('naïve 東京 😀')}data: [DONE]\n\n`);
    const pieces = Array.from({ length: bytes.length }, (_, i) => bytes.subarray(i, i + 1)); // one byte at a time
    const { stream, done } = relaySse(Readable.from(pieces), { dropUsageChunk: false });
    expect(await collect(stream)).toBe(chunk('naïve 東京 😀') + 'data: [DONE]\n\n');
    expect((await done).completed).toBe(true);
  });

  it('re-serialises event, id and multi-line data; CRLF is fine', async () => {
    const source = Readable.from([Buffer.from('event: response.created\r\nid: 7\r\ndata: {"a":1,\r\ndata: "b":2}\r\n\r\n')]);
    const { stream } = relaySse(source, { dropUsageChunk: false, readEvent: () => undefined });
    expect(await collect(stream)).toBe('event: response.created\nid: 7\ndata: {"a":1,\ndata: "b":2}\n\n');
  });

  it("passes on upstream's comments between events (keep-alives: proxies time out a silent stream), masked; drops those within one", async () => {
    const source = Readable.from([Buffer.from(': keep-alive\r\n\r\n: sk-upstream-secret\n\ndata: {"a":\n: inside\ndata: 1}\n\n:\n\n')]);
    const maskError = Object.assign((text: string) => text.replace('sk-upstream-secret', 'sk-***'), { hasServerKey: () => false, maskServerKeys: (t: string) => t });
    const { stream, done } = relaySse(source, { dropUsageChunk: false, readEvent: () => undefined, maskError });
    expect(await collect(stream)).toBe(': keep-alive\n\n: sk-***\n\ndata: {"a":\ndata: 1}\n\n:\n\n');
    expect((await done).events).toBe(1); // a comment is no event
  });

  it('keeps the events of a long generation only up to a bound, then the text they generated: what a cut stream is billed from', async () => {
    const source = new Readable({ read() {} });
    const { stream, done } = relaySse(source, { dropUsageChunk: false, textOf: generatedText, keptDataMaxChars: 1000 });
    const text = collect(stream);
    const words = Array.from({ length: 200 }, (_, i) => `w${i} `);
    for (const w of words) source.push(chunk(w));
    source.push(null);
    const result = await done;
    expect(result.dataDropped).toBe(true);
    // 200 events of ~80 characters: never more than ~1000 of them held, the rest as their text.
    expect(result.data.join('').length).toBeLessThanOrEqual(1000);
    expect((result.text ?? '') + generatedText(result.data)).toBe(words.join(''));
    expect(await text).toBe(words.map(chunk).join('')); // the client gets every event, of course
  });

  it('an upstream failure mid-stream ends the stream with the in-band error event', async () => {
    const source = new Readable({ read() {} });
    const { stream, done } = relaySse(source, { dropUsageChunk: false });
    const text = collect(stream);
    source.push(chunk('Hi'));
    await sleep(5);
    source.destroy(new Error('socket hang up'));
    const result = await done;
    expect((result.error as Error).message).toBe('socket hang up');
    expect(result.completed).toBe(false);
    expect(result.events).toBe(1);
    const out = await text;
    expect(out.startsWith(chunk('Hi'))).toBe(true);
    expect(out).toContain('"upstream_stream_error"');
  });

  it('a typed stream (the Responses API) that breaks off ends with an error event continuing its sequence_number', async () => {
    const source = new Readable({ read() {} });
    const { stream } = relaySse(source, { dropUsageChunk: false, readEvent: () => undefined, typedEvents: true });
    const text = collect(stream);
    source.push('event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":4,"delta":"Hi"}\n\n');
    await sleep(5);
    source.destroy(new Error('socket hang up'));
    const events = (await text).trim().split('\n\n');
    expect(events.at(-1)).toBe(
      'event: error\ndata: {"type":"error","code":"upstream_stream_error","message":"The upstream stream was interrupted.","param":null,"sequence_number":5}',
    );
  });

  it('a client that leaves stops the relay at once and drops upstream, without waiting for its next chunk', async () => {
    const source = new Readable({ read() {} });
    const { stream, done } = relaySse(source, { dropUsageChunk: false });
    stream.resume();
    source.push(chunk('Hi'));
    await sleep(5);
    stream.destroy();
    const result = await Promise.race([done, sleep(1000).then(() => 'still waiting' as const)]);
    expect(result).not.toBe('still waiting');
    expect(((result as { error?: Error }).error as Error).message).toBe('client closed the stream');
    expect(source.destroyed).toBe(true);
  });

  it('waits for onEvent before relaying each event, keeping the order', async () => {
    const source = Readable.from([Buffer.from(chunk('a') + chunk('b')), Buffer.from(chunk('c') + 'data: [DONE]\n\n')]);
    const seen: string[] = [];
    const { stream, done } = relaySse(source, {
      dropUsageChunk: false,
      onEvent: async (data) => {
        await sleep(5);
        seen.push(JSON.parse(data).choices[0].delta.content as string);
      },
    });
    expect(await collect(stream)).toBe(chunk('a') + chunk('b') + chunk('c') + 'data: [DONE]\n\n');
    expect(seen).toEqual(['a', 'b', 'c']);
    expect((await done).events).toBe(4);
  });

  it('an upstream that ends without [DONE] is relayed and reported incomplete', async () => {
    const { stream, done } = relaySse(Readable.from([Buffer.from(chunk('cut'))]), { dropUsageChunk: false });
    expect(await collect(stream)).toBe(chunk('cut'));
    expect(await done).toMatchObject({ completed: false, events: 1 });
  });
});

describe('SseParser', () => {
  type Parsed = { id?: string; event?: string; data: string };
  const withReference = (text: string[]): Parsed[] => {
    const events: Parsed[] = [];
    const parser = createParser({ onEvent: (e) => events.push({ id: e.id, event: e.event, data: e.data }) });
    for (const t of text) parser.feed(t);
    return events;
  };
  const withOurs = (text: string[]): Parsed[] => {
    const events: Parsed[] = [];
    const parser = new SseParser((e) => events.push({ id: e.id, event: e.event, data: e.data }));
    for (const t of text) parser.feed(t);
    return events;
  };
  const piece = fc.constantFrom('data:', 'data: ', 'data', 'event:', 'event: x', 'id:', 'id: 1', 'id: a\0b', ':', ': note', 'retry: 5', 'retry: x',
    'foo: bar', 'x', '{"a":1}', '[DONE]', '\n', '\n', '\r', '\r\n', '\r\n', ' ', 'é', '東京', '\uFEFF', ':\n');
  /** Text cut into chunks at arbitrary places. */
  const chunked = fc.tuple(fc.array(piece, { maxLength: 60 }), fc.array(fc.nat(), { maxLength: 12 })).map(([pieces, cuts]) => {
    const text = pieces.join('');
    const at = [...new Set(cuts.map((c) => c % (text.length + 1)))].sort((a, b) => a - b);
    const out: string[] = [];
    let prev = 0;
    for (const c of at) {
      out.push(text.slice(prev, c));
      prev = c;
    }
    out.push(text.slice(prev));
    return out;
  });

  it('parses exactly as eventsource-parser, however the text is cut into chunks', () => {
    fc.assert(
      fc.property(chunked, (chunks) => {
        // Once a last LF follows: eventsource-parser holds a CR that ends its input until it sees
        // whether an LF comes next; ours ends the line at once (see the next test).
        expect(withOurs([...chunks, '\n'])).toEqual(withReference([...chunks, '\n']));
      }),
      { numRuns: 5000, seed: 11 },
    );
  });

  it('ends a line at its CR at once: a stream ending lines with CR alone has each event as its blank line arrives, the last too', () => {
    const events: string[] = [];
    const parser = new SseParser((e) => events.push(e.data));
    parser.feed('data: 1\r\r');
    expect(events).toEqual(['1']); // was held until the next chunk: the last event of a stream never came
    parser.feed('\ndata: 2\r'); // that LF was the rest of a CRLF cut in two: no blank line
    parser.feed('\n\r\n');
    expect(events).toEqual(['1', '2']);
  });

  it('parses an OpenAI stream', () => {
    const text = 'data: {"a":1}\n\ndata: {"b":2}\n\nevent: response.done\ndata: {"c":3}\n\ndata: [DONE]\n\n';
    expect(withOurs([text])).toEqual([
      { id: undefined, event: undefined, data: '{"a":1}' },
      { id: undefined, event: undefined, data: '{"b":2}' },
      { id: undefined, event: 'response.done', data: '{"c":3}' },
      { id: undefined, event: undefined, data: '[DONE]' },
    ]);
  });
});

describe('relaySse: memory', () => {
  it('costs little per open stream (one is held per stream, thousands at once)', () => {
    // In a fresh process with --expose-gc: 2,000 relays, each with a stream open and 3 events
    // relayed, against 2,000 bare source/sink pairs. The first version (PassThrough, async iterator,
    // TextDecoder, eventsource-parser) cost ~5.9 KB of heap here; this one ~3.5 KB.
    const sse = JSON.stringify(new URL('../../src/openai/sse.ts', import.meta.url).href);
    const script = `
      import { PassThrough, Writable } from 'node:stream';
      const { relaySse } = await import(${sse});
      const keep = [];
      const ev = 'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\\n\\n';
      const one = (relay) => {
        const source = new PassThrough();
        const sink = new Writable({ write(_c, _e, cb) { cb(); } });
        if (relay) { const { stream, done } = relaySse(source, { dropUsageChunk: false }); stream.pipe(sink); keep.push(stream, done); }
        keep.push(source, sink);
        for (let k = 0; k < 3; k++) source.write(ev);
      };
      const settle = async () => { await new Promise((r) => setTimeout(r, 100)); gc(); await new Promise((r) => setTimeout(r, 20)); gc(); };
      one(true); one(false); await settle();
      const heap = [];
      for (const relay of [false, true]) {
        const before = process.memoryUsage().heapUsed;
        for (let i = 0; i < 2000; i++) one(relay);
        await settle();
        heap.push((process.memoryUsage().heapUsed - before) / 2000);
      }
      console.log(Math.round(heap[1] - heap[0]));
    `;
    const out = execFileSync(process.execPath, ['--expose-gc', '--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8' });
    const perRelay = Number(out.trim().split('\n').pop());
    expect(perRelay).toBeGreaterThan(0);
    expect(perRelay).toBeLessThan(4500);
  });
});
