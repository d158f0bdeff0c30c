// No secret in any response or log line: a broad traffic mix at LOG_LEVEL=trace, with LOG_BODIES off
// and on, an upstream that refuses the server key, and every key secret ever minted grepped for.
import { afterAll, describe, expect, it } from 'vitest';
import { ADMIN_TOKEN, UPSTREAM_KEY, startGateway, type Gateway } from '../helpers/gateway.js';
import { startFakeOpenAI } from '../../src/fake-openai/server.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';

const PROMPT = 'zebra-quartz-private-prompt-7731';
const WRONG_SERVER_KEY = 'sk-wrong-server-key-abcdefghijklmnop';

interface Seen {
  label: string;
  text: string;
  /** Secrets this response may show: the key it just minted. */
  mayShow: string[];
}

async function traffic(gw: Gateway, seen: Seen[], minted: string[]) {
  async function call(label: string, path: string, init: RequestInit = {}) {
    const res = await fetch(gw.url + path, init);
    const body = await res.text();
    const headers = [...res.headers].map(([k, v]) => `${k}: ${v}`).join('\n');
    const text = `${res.status}\n${headers}\n\n${body}`;
    let mayShow: string[] = [];
    try {
      const key = (JSON.parse(body) as { key?: unknown }).key;
      if (typeof key === 'string' && key.startsWith('tg-')) {
        minted.push(key);
        mayShow = [key];
      }
    } catch {
      // not JSON (streams, CSV)
    }
    seen.push({ label, text, mayShow });
    return { status: res.status, body };
  }
  const admin = (method: string, path: string, body?: unknown, token = ADMIN_TOKEN) =>
    call(`${method} ${path}`, path, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined && { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  const v1 = (path: string, key: string, body?: unknown, extra: Record<string, string> = {}) =>
    call(`v1 ${path}`, path, {
      method: body === undefined ? 'GET' : 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', cookie: 'sid=cookie-secret-99', ...extra },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });

  const created = JSON.parse((await admin('POST', '/admin/keys', { name: 'mix', limits: { rpm: 1000, usdPerDay: 10 } })).body) as { id: string; key: string };
  const other = JSON.parse((await admin('POST', '/admin/keys', { name: 'tiny', limits: { tokensPerDay: 1 } })).body) as { id: string; key: string };
  const { id, key } = created;
  const chat = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: PROMPT }], max_tokens: 5 };
  await v1('/v1/chat/completions', key, chat);
  await v1('/v1/chat/completions', key, { ...chat, stream: true });
  await v1('/v1/completions', key, { model: 'gpt-3.5-turbo-instruct', prompt: PROMPT, max_tokens: 5 });
  await v1('/v1/engines/gpt-3.5-turbo-instruct/completions', key, { prompt: PROMPT, max_tokens: 5 });
  await v1('/v1/embeddings', key, { model: 'text-embedding-3-small', input: PROMPT });
  await v1('/v1/models', key);
  await v1('/v1/models/gpt-4o-mini', key);
  await v1('/v1/chat/completions', key, `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"${PROMPT}"`); // bad JSON
  await v1('/v1/chat/completions', key, { ...chat, temperature: 9 }); // validation error
  await v1('/v1/chat/completions', other.key, chat); // over budget
  await v1('/v1/chat/completions', `${key}x`, chat); // wrong key, close to a real one
  await admin('GET', '/admin/keys', undefined, 'wrong-admin-token-000000');
  await admin('GET', '/admin/keys', undefined, `${ADMIN_TOKEN}x`);
  await admin('GET', '/admin/keys');
  await admin('GET', '/admin/keys?include=quota');
  await admin('GET', `/admin/keys/${id}`);
  await admin('PATCH', `/admin/keys/${id}`, { limits: { rpm: 5 } });
  await admin('POST', `/admin/keys/${id}/rotate`);
  await v1('/v1/chat/completions', key, chat); // the old secret, now refused
  await admin('DELETE', `/admin/keys/${id}`);
  await v1('/v1/chat/completions', minted.at(-1)!, chat); // the rotated secret, now revoked
  await admin('POST', `/admin/keys/${id}/rotate`); // 409
  await admin('DELETE', '/admin/cache');
  await admin('GET', '/admin/usage?groupBy=key,model');
  await admin('GET', '/admin/usage/events?since=0');
  await admin('GET', '/admin/usage/events?since=0&format=csv');
  await call('metrics', '/metrics');
  await call('readyz', '/readyz');
  await call('dashboard', '/dashboard');
}

function expectClean(gw: Gateway, seen: Seen[], minted: string[], promptsAllowed: boolean) {
  expect(minted.length).toBeGreaterThanOrEqual(3);
  const secrets = [UPSTREAM_KEY, WRONG_SERVER_KEY, ADMIN_TOKEN, 'cookie-secret-99', ...minted];
  for (const { label, text, mayShow } of seen) {
    for (const secret of secrets) if (!mayShow.includes(secret)) expect(text, `${label} shows ${secret.slice(0, 6)}…`).not.toContain(secret);
  }
  const log = gw.logs.text;
  expect(gw.logs.lines.length).toBeGreaterThan(30);
  for (const secret of secrets) expect(log, `log shows ${secret.slice(0, 6)}…`).not.toContain(secret);
  // The secret's sha256 is what the store indexes by: not for logs either.
  expect(log).not.toMatch(/"hash"/);
  if (!promptsAllowed) expect(log).not.toContain(PROMPT);
  else expect(log).toContain(PROMPT);
}

const opened: { close(): Promise<void> }[] = [];
afterAll(async () => {
  for (const o of opened.reverse()) await o.close();
});

describe('no secret in responses or logs', () => {
  for (const logBodies of [false, true]) {
    it(`LOG_LEVEL=trace, LOG_BODIES=${logBodies}`, async () => {
      const gw = await startGateway({
        env: { REDIS_URL: testRedisUrl(), REDIS_PREFIX: uniquePrefix(), LOG_LEVEL: 'trace', LOG_BODIES: String(logBodies), CACHE_ENABLED: 'true' },
      });
      const seen: Seen[] = [];
      const minted: string[] = [];
      try {
        await traffic(gw, seen, minted);
      } finally {
        await gw.close(); // flushes every log line
      }
      expectClean(gw, seen, minted, logBodies);
    }, 30_000);
  }

  it('upstream refusing the server key (401) shows neither that key nor ours', async () => {
    const fake = await startFakeOpenAI({ apiKey: UPSTREAM_KEY });
    opened.push(fake);
    const gw = await startGateway({
      fake,
      env: { REDIS_URL: testRedisUrl(), REDIS_PREFIX: uniquePrefix(), LOG_LEVEL: 'trace', OPENAI_API_KEY: WRONG_SERVER_KEY },
    });
    const seen: Seen[] = [];
    const minted: string[] = [];
    try {
      await traffic(gw, seen, minted);
      const refused = seen.find((s) => s.label === 'v1 /v1/chat/completions');
      expect(refused?.text.startsWith('401') || refused?.text.startsWith('502')).toBe(true);
    } finally {
      await gw.close();
    }
    expectClean(gw, seen, minted, false);
  }, 30_000);
});
