// One structured log line per request, and no secret or prompt in the log unless configured.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setTimeout } from 'node:timers/promises';
import { startGateway, ADMIN_TOKEN, UPSTREAM_KEY, type Gateway } from '../helpers/gateway.js';
import { createMemoryStore } from '../../src/store/memory-store.js';
import type { Store } from '../../src/store/store.js';

const PROMPT = 'my-very-private-prompt-text';

async function traffic(gw: Gateway) {
  const { id, key } = await gw.createKey({ name: 'logged-app' });
  const client = gw.sdk(key);
  await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: PROMPT }] });
  const stream = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: PROMPT }], stream: true });
  for await (const _ of stream) void _;
  await gw.sdk('tg-wrong-key-that-must-not-be-logged').models.list().catch(() => undefined);
  await gw.admin('POST', `/admin/keys/${id}/rotate`);
  await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, cookie: 'sid=secret-cookie' },
    body: '{bad json',
  });
  return { id, key };
}

describe('request log', () => {
  let gw: Gateway;
  let created: { id: string; key: string };
  beforeAll(async () => {
    gw = await startGateway();
    created = await traffic(gw);
    await gw.close(); // flushes every line
  });

  it('writes one line per request with id, key id, endpoint, model, status and latency', () => {
    const lines = gw.logs.requests().filter((l) => l.endpoint === 'chat.completions');
    expect(lines).toHaveLength(2);
    for (const line of lines) {
      expect(line).toMatchObject({ keyId: created.id, model: 'gpt-4o-mini', status: 200, level: 30 });
      expect(typeof line.reqId).toBe('string');
      expect(typeof line.latencyMs).toBe('number');
      expect(line.totalTokens as number).toBeGreaterThan(0);
      expect(line.costUsd as number).toBeGreaterThan(0);
    }
    expect(lines.map((l) => l.stream)).toEqual([false, true]);
    const rejected = gw.logs.requests().find((l) => l.status === 401);
    expect(rejected).toMatchObject({ path: '/v1/models' });
  });

  it('starts with a warning when its store is the in-memory one outside the demo (a REDIS_URL misspelt, say)', () => {
    expect(gw.logs.lines.find((l) => String(l.msg).startsWith('using the in-memory store'))).toMatchObject({ level: 40, store: 'memory' });
  });

  it('never contains a secret, a cookie or a prompt', () => {
    const text = gw.logs.text;
    expect(text.length).toBeGreaterThan(0);
    for (const secret of [created.key, UPSTREAM_KEY, ADMIN_TOKEN, 'tg-wrong-key-that-must-not-be-logged', 'secret-cookie', PROMPT]) {
      expect(text).not.toContain(secret);
    }
  });
});

describe('LOG_BODIES', () => {
  it('logs prompts and completions only when turned on', async () => {
    const gw = await startGateway({ env: { LOG_BODIES: 'true' } });
    const { key } = await gw.createKey();
    await gw.sdk(key).chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: PROMPT }] });
    await gw.close();
    const line = gw.logs.requests().find((l) => l.endpoint === 'chat.completions')!;
    expect(JSON.stringify(line.requestBody)).toContain(PROMPT);
    expect(JSON.stringify(line.responseBody)).toContain('chat.completion');
    expect(gw.logs.text).not.toContain(key);
  });

  it('logs the body of a request refused as invalid too: the one most worth reading', async () => {
    const gw = await startGateway({ env: { LOG_BODIES: 'true' } });
    const { key } = await gw.createKey();
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: PROMPT }], temperature: 'warm' }),
    });
    expect(res.status).toBe(400);
    await gw.close();
    const line = gw.logs.requests().find((l) => l.status === 400)!;
    expect(line.requestBody).toMatchObject({ temperature: 'warm' });
    expect(JSON.stringify(line.requestBody)).toContain(PROMPT);
  });
});

describe('storeMs', () => {
  const STORE_DELAY_MS = 25;
  /** A memory store whose calls on a request's critical path each take STORE_DELAY_MS longer. */
  function slowStore(): Store {
    const store = createMemoryStore();
    const slow = new Set(['getKeyByHash', 'admit', 'admitAndLookup', 'cacheLookup']);
    return new Proxy(store, {
      get(target, prop) {
        const value = Reflect.get(target, prop, target) as unknown;
        if (typeof value !== 'function') return value;
        const method = (value as (...args: unknown[]) => unknown).bind(target);
        if (!slow.has(String(prop))) return method;
        return async (...args: unknown[]) => {
          await setTimeout(STORE_DELAY_MS);
          return method(...args);
        };
      },
    });
  }

  it('is the time a request waited on the store before it was forwarded or answered', async () => {
    const gw = await startGateway({ store: slowStore(), env: { CACHE_ENABLED: 'true' } });
    const { key } = await gw.createKey();
    const client = gw.sdk(key);
    const ask = () => client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'same question' }] });
    await ask(); // key lookup + admission joined with the lookup: a miss
    await ask(); // key cached; admission joined with the lookup: a hit
    await gw.close();

    const [miss, hit] = gw.logs.requests().filter((l) => l.endpoint === 'chat.completions');
    expect(miss).toMatchObject({ cache: 'MISS' });
    expect(hit).toMatchObject({ cache: 'HIT' });
    // Timers never fire early by more than their millisecond rounding.
    expect(miss!.storeMs as number).toBeGreaterThanOrEqual(2 * STORE_DELAY_MS - 2);
    expect(hit!.storeMs as number).toBeGreaterThanOrEqual(STORE_DELAY_MS - 1);
    for (const line of [miss!, hit!]) {
      // Part of the overhead, itself part of the latency (each rounded to 0.01 ms).
      expect(line.storeMs as number).toBeLessThanOrEqual((line.overheadMs as number) + 0.02);
      expect(line.overheadMs as number).toBeLessThanOrEqual((line.latencyMs as number) + 0.02);
    }
  });
});

describe('an unknown route', () => {
  it("is logged with its reason (unknown_url; the client gets OpenAI's code null), in the one line of the request", async () => {
    const gw = await startGateway();
    const { key } = await gw.createKey();
    const res = await fetch(`${gw.url}/v1/nope`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: '{}',
    });
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: { code: string | null } }).error.code).toBeNull(); // OpenAI's body
    await gw.close();
    const lines = gw.logs.lines.filter((l) => l.reqId !== undefined && gw.logs.requests().some((r) => r.reqId === l.reqId && r.status === 404));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ msg: 'request', status: 404, errorCode: 'unknown_url' });
  });
});

describe('a key lookup that fails for another reason than an outage', () => {
  it('is logged at error each time, not folded into the throttled outage warning', async () => {
    const store = createMemoryStore();
    const broken = new Proxy(store, {
      get(target, prop, receiver) {
        if (prop === 'getKeyByHash') return async () => Promise.reject(new Error('the key record could not be read'));
        const value = Reflect.get(target, prop, receiver) as unknown;
        return typeof value === 'function' ? value.bind(target) : value;
      },
    }) as Store;
    const gw = await startGateway({ store: broken });
    try {
      for (let i = 0; i < 3; i++) {
        const res = await fetch(`${gw.url}/v1/models`, { headers: { authorization: `Bearer tg-unknown-key-${i}-0123456789abcdef` } });
        expect(res.status).toBe(503);
        await res.arrayBuffer();
      }
      const errors = gw.logs.lines.filter((l) => l.level === 50 && l.msg === 'key lookup failed');
      expect(errors).toHaveLength(3);
    } finally {
      await gw.close();
      await store.close();
    }
  });
});

describe('admin request lines', () => {
  it('carry the error code the client was told, as /v1 lines do', async () => {
    const gw = await startGateway();
    try {
      const res = await gw.admin('GET', '/admin/keys/key_missing');
      expect(res.status).toBe(404);
      await expect
        .poll(() => gw.logs.lines.find((l) => l.msg === 'request' && l.path === '/admin/keys/:id'))
        .toMatchObject({ status: 404, errorCode: 'key_not_found' });
    } finally {
      await gw.close();
    }
  });
});
