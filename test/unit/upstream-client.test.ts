// The upstream client's own plumbing: the parts of undici it loads, and the life of one exchange
// (total timeout, the client's abort signal) ending with the response body.
import { createRequire } from 'node:module';
import { getEventListeners } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { abandonedAfterSending, createUpstreamClient } from '../../src/upstream/client.js';
import { startFakeOpenAI, type FakeOpenAI } from '../../src/fake-openai/server.js';
import type { Config } from '../../src/config.js';

const require = createRequire(import.meta.url);

let fake: FakeOpenAI;
beforeAll(async () => {
  fake = await startFakeOpenAI({ apiKey: 'sk-test' });
});
afterAll(async () => {
  await fake.close();
});

function upstream(overrides: Partial<Config['upstream']> = {}): Config['upstream'] {
  return {
    baseUrl: fake.url,
    apiKey: 'sk-test',
    apiKeys: ['sk-test'],
    connectTimeoutMs: 1000,
    headersTimeoutMs: 5000,
    idleTimeoutMs: 5000,
    totalTimeoutMs: 10_000,
    maxConnections: 4,
    maxRetries: 0,
    retryBaseDelayMs: 10,
    retryMaxDelayMs: 10,
    retryAfterMaxMs: 10,
    keyCooldownMs: 1000,
    keyInvalidCooldownMs: 1000,
    ...overrides,
  };
}

const chat = (stream = false) =>
  JSON.stringify({ model: 'gpt-4o-mini', stream, messages: [{ role: 'user', content: 'Hello!' }] });

describe('undici, loaded in parts', () => {
  it('is the same Pool, errors and request API undici exports', () => {
    const undici = require('undici') as typeof import('undici');
    expect(require('undici/lib/dispatcher/pool.js')).toBe(undici.Pool);
    expect(require('undici/lib/core/errors.js')).toBe(undici.errors);
    expect((undici.Pool.prototype as unknown as { request: unknown }).request).toBe(require('undici/lib/api/api-request.js'));
  });
});

describe('one exchange', () => {
  it('answers, and leaves no listener on the client signal once the body is read', async () => {
    const client = createUpstreamClient(upstream());
    const clientGone = new AbortController();
    const res = await client.send({ method: 'POST', path: '/chat/completions', body: chat(true), signal: clientGone.signal });
    expect(res.status).toBe(200);
    for await (const _ of res.body) void _;
    await sleep(10);
    expect(getEventListeners(clientGone.signal, 'abort')).toEqual([]);
    await client.close();
  });

  it('a finished exchange never reports a timeout later: its timer ends with the body', async () => {
    const client = createUpstreamClient(upstream({ totalTimeoutMs: 200 }));
    const res = await client.send({ method: 'POST', path: '/chat/completions', body: chat() });
    for await (const _ of res.body) void _;
    await sleep(300);
    expect(res.timedOut()).toBe(false);
    await client.close();
  });

  it('the total timeout still cuts a stream that outlasts it, and says so', async () => {
    fake.setStreamChunkDelay(150);
    try {
      const client = createUpstreamClient(upstream({ totalTimeoutMs: 400 }));
      const res = await client.send({ method: 'POST', path: '/chat/completions', body: chat(true) });
      await expect(async () => {
        for await (const _ of res.body) void _;
      }).rejects.toThrow();
      expect(res.timedOut()).toBe(true);
      await client.close();
    } finally {
      fake.setStreamChunkDelay(0);
    }
  });

  it('the client leaving aborts the upstream request at once', async () => {
    fake.setStreamChunkDelay(100);
    try {
      const client = createUpstreamClient(upstream());
      const clientGone = new AbortController();
      const res = await client.send({ method: 'POST', path: '/chat/completions', body: chat(true), signal: clientGone.signal });
      const reading = (async () => {
        for await (const _ of res.body) void _;
      })();
      await sleep(50);
      clientGone.abort();
      await expect(reading).rejects.toThrow();
      expect(res.timedOut()).toBe(false);
      expect(getEventListeners(clientGone.signal, 'abort')).toEqual([]);
      await client.close();
    } finally {
      fake.setStreamChunkDelay(0);
    }
  });

  it('a client already gone never reaches upstream', async () => {
    const client = createUpstreamClient(upstream());
    const before = fake.requests.length;
    const gone = new AbortController();
    gone.abort();
    const err = await client.send({ method: 'POST', path: '/chat/completions', body: chat(), signal: gone.signal }).catch((e: unknown) => e);
    expect(err).toBeDefined();
    expect(abandonedAfterSending(err)).toBe(false); // nothing for upstream to bill
    expect(fake.requests.length).toBe(before);
    await client.close();
  });
});

// What the pipeline charges a failed call depends on this: upstream bills a request it read.
describe('a failed exchange says whether upstream was left holding the request', () => {
  it('a first-byte timeout after the request was sent: yes', async () => {
    fake.hangNext(1);
    try {
      const client = createUpstreamClient(upstream({ headersTimeoutMs: 200 }));
      const err = await client.send({ method: 'POST', path: '/chat/completions', body: chat() }).catch((e: unknown) => e);
      expect(err).toMatchObject({ status: 504, code: 'upstream_timeout', headers: { 'x-should-retry': 'false' } });
      expect(abandonedAfterSending(err)).toBe(true);
      await client.close();
    } finally {
      fake.reset();
    }
  });

  it('the total timeout after the request was sent: yes', async () => {
    fake.hangNext(1);
    try {
      const client = createUpstreamClient(upstream({ totalTimeoutMs: 300 }));
      const err = await client.send({ method: 'POST', path: '/chat/completions', body: chat() }).catch((e: unknown) => e);
      expect(err).toMatchObject({ status: 504, code: 'upstream_timeout' });
      expect(abandonedAfterSending(err)).toBe(true);
      await client.close();
    } finally {
      fake.reset();
    }
  });

  it('the client leaving while its request still waits for a connection: no', async () => {
    fake.hangNext(1);
    try {
      const before = fake.requests.length;
      const client = createUpstreamClient(upstream({ maxConnections: 1 }));
      const holder = new AbortController();
      const holding = client.send({ method: 'POST', path: '/chat/completions', body: chat(), signal: holder.signal }).catch((e: unknown) => e);
      await sleep(50);
      const gone = new AbortController();
      const queued = client.send({ method: 'POST', path: '/chat/completions', body: chat(), signal: gone.signal }).catch((e: unknown) => e);
      await sleep(50);
      gone.abort(); // it gives up its place in the queue for a connection
      holder.abort();
      expect(abandonedAfterSending(await queued)).toBe(false);
      expect(abandonedAfterSending(await holding)).toBe(true); // this one upstream had
      expect(fake.requests.length).toBe(before + 1);
      await client.close();
    } finally {
      fake.reset();
    }
  });

  it('the client leaving while upstream works on it: yes', async () => {
    fake.hangNext(1);
    try {
      const client = createUpstreamClient(upstream());
      const gone = new AbortController();
      const pending = client.send({ method: 'POST', path: '/chat/completions', body: chat(), signal: gone.signal }).catch((e: unknown) => e);
      await sleep(100);
      gone.abort();
      expect(abandonedAfterSending(await pending)).toBe(true);
      await client.close();
    } finally {
      fake.reset();
    }
  });

  it('a refused connection: no, the request never left', async () => {
    const closed = await startFakeOpenAI();
    await closed.close();
    const client = createUpstreamClient(upstream({ baseUrl: closed.url }));
    const err = await client.send({ method: 'POST', path: '/chat/completions', body: chat() }).catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 502, code: 'upstream_unreachable' });
    expect(abandonedAfterSending(err)).toBe(false);
    await client.close();
  });
});

describe('connections shared among keys', () => {
  const tagged = (who: string) => JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: who }] });
  const whoSent = (r: { body: unknown }) => (r.body as { messages: { content: string }[] }).messages[0]!.content;

  it("a quiet key's request takes the next free connection, not a place behind a busy key's backlog", async () => {
    fake.setLatency(100);
    const before = fake.requests.length;
    const client = createUpstreamClient(upstream({ maxConnections: 2 }));
    try {
      const read = async (res: Promise<{ body: AsyncIterable<unknown> }>) => {
        for await (const _ of (await res).body) void _;
      };
      const busy = Array.from({ length: 12 }, () => read(client.send({ method: 'POST', path: '/chat/completions', body: tagged('busy'), tenant: 'busy' })));
      await sleep(20);
      const quiet = read(client.send({ method: 'POST', path: '/chat/completions', body: tagged('quiet'), tenant: 'quiet' }));
      await Promise.all([...busy, quiet]);
      const order = fake.requests.slice(before).map(whoSent);
      // First come, first served (undici's own queue) sent it 13th, after all twelve.
      expect(order.indexOf('quiet')).toBe(2);
      expect(client.connections()).toEqual({ held: 0, waiting: 0 });
    } finally {
      fake.setLatency(0);
      await client.close();
    }
  });

  it('spreads requests over the server keys while they wait for connections', async () => {
    const open = await startFakeOpenAI();
    const client = createUpstreamClient(upstream({ baseUrl: open.url, apiKey: 'sk-a', apiKeys: ['sk-a', 'sk-b'], maxConnections: 1 }));
    try {
      // Three callers, each sending its next request as soon as its last is answered: the pool is
      // always full, and a request is granted a connection as another arrives to wait for one.
      const caller = async () => {
        for (let i = 0; i < 10; i++) {
          const res = await client.send({ method: 'POST', path: '/chat/completions', body: chat(), tenant: 'a' });
          for await (const _ of res.body) void _;
        }
      };
      await Promise.all([caller(), caller(), caller()]);
      const used = { a: 0, b: 0 };
      for (const r of open.requests) used[r.headers.authorization === 'Bearer sk-a' ? 'a' : 'b']++;
      expect(used.a + used.b).toBe(30);
      expect(Math.abs(used.a - used.b)).toBeLessThanOrEqual(2);
    } finally {
      await client.close();
      await open.close();
    }
  });

  it('an attempt that failed, was retried or was dropped gives its connection back', async () => {
    const client = createUpstreamClient(upstream({ maxConnections: 1, maxRetries: 1 }));
    try {
      fake.failNext(1, 500);
      const retried = await client.send({ method: 'POST', path: '/chat/completions', body: chat(), tenant: 'a' });
      for await (const _ of retried.body) void _;
      fake.failNext(1, 400);
      const refused = await client.send({ method: 'POST', path: '/chat/completions', body: chat(), tenant: 'a' });
      refused.body.destroy();
      await sleep(10);
      fake.dropNext(2);
      const dropped = await client.send({ method: 'POST', path: '/chat/completions', body: chat(), tenant: 'a' }).catch((e: unknown) => e);
      expect(dropped).toMatchObject({ status: 502 });
      expect(client.connections()).toEqual({ held: 0, waiting: 0 });
      // And the one connection still serves.
      const ok = await client.send({ method: 'POST', path: '/chat/completions', body: chat(), tenant: 'b' });
      expect(ok.status).toBe(200);
      for await (const _ of ok.body) void _;
    } finally {
      fake.reset();
      await client.close();
    }
  });

  it('a large 429 passed on and dropped while upstream stalls mid-body gives its connection back at once', async () => {
    const { createServer } = await import('node:http');
    const stalling = createServer((_req, res) => {
      res.writeHead(429, { 'content-type': 'application/json' });
      res.write(`{"error":{"message":"${'x'.repeat(100_000)}`); // and never more
    });
    await new Promise<void>((resolve) => stalling.listen(0, '127.0.0.1', resolve));
    const port = (stalling.address() as { port: number }).port;
    const client = createUpstreamClient(upstream({ baseUrl: `http://127.0.0.1:${port}/v1`, maxConnections: 1, idleTimeoutMs: 10_000 }));
    try {
      const res = await client.send({ method: 'POST', path: '/chat/completions', body: chat(), tenant: 'a' });
      expect(res.status).toBe(429);
      await sleep(100); // what upstream sent is read; the rest never comes
      expect(client.connections()).toEqual({ held: 1, waiting: 0 });
      res.body.destroy();
      await sleep(100);
      expect(client.connections()).toEqual({ held: 0, waiting: 0 }); // was held until the idle timeout
    } finally {
      stalling.closeAllConnections();
      stalling.close();
      await client.close();
    }
  });

  it('a 429 read for its code (whole, or past the read limit) gives its connection back, retried or passed on', async () => {
    const client = createUpstreamClient(upstream({ maxConnections: 1, maxRetries: 1 }));
    const big = { error: { message: `Slow down. ${'x'.repeat(300_000)}`, type: 'requests', param: null, code: 'rate_limit_exceeded' } };
    try {
      for (const body of [big, undefined]) {
        fake.failNext(1, 429, body, { 'retry-after': '0' });
        const retried = await client.send({ method: 'POST', path: '/chat/completions', body: chat(), tenant: 'a' });
        expect(retried.status).toBe(200);
        for await (const _ of retried.body) void _;
        await sleep(10);
        expect(client.connections()).toEqual({ held: 0, waiting: 0 }); // was held: 1 for the big one, for good
        // Passed on (no retries left) and dropped before it is read.
        fake.failNext(2, 429, body, { 'retry-after': '0' });
        const passed = await client.send({ method: 'POST', path: '/chat/completions', body: chat(), tenant: 'a' });
        expect(passed.status).toBe(429);
        passed.body.destroy();
        await sleep(10);
        expect(client.connections()).toEqual({ held: 0, waiting: 0 });
      }
    } finally {
      fake.reset();
      await client.close();
    }
  });
});
