// Calendar windows on an injected clock (UTC and another time zone), limit changes seen by every
// instance at once, and the failed-authentication limit per client address.
import { afterAll, describe, expect, it } from 'vitest';
import { request as httpRequest } from 'node:http';
import { ADMIN_TOKEN, startGateway, UPSTREAM_KEY, type Gateway } from '../helpers/gateway.js';
import { createRedisStore } from '../../src/store/redis-store.js';
import { startFakeOpenAI } from '../../src/fake-openai/server.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';

const opened: { close(): Promise<void> }[] = [];
afterAll(async () => {
  for (const r of opened.reverse()) await r.close();
});

function chat(gw: Gateway, key: string, maxTokens = 10, headers: Record<string, string> = {}) {
  return fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: maxTokens }),
  });
}

async function gatewayAt(start: string, env: Record<string, string> = {}) {
  let now = Date.parse(start);
  const gw = await startGateway({ clock: () => now, env: { REDIS_URL: testRedisUrl(), REDIS_PREFIX: uniquePrefix(), ...env } });
  opened.push(gw);
  return { gw, setTime: (iso: string) => (now = Date.parse(iso)) };
}

/** A chat whose body is still arriving when `meanwhile` runs (a slow upload across midnight, say). */
function uploadedPastMidnight(gw: Gateway, key: string, maxTokens: number, meanwhile: () => void): Promise<{ status: number; text: string; headers: NodeJS.Dict<string | string[]> }> {
  const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: maxTokens });
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
    });
    req.on('response', (r) => {
      let text = '';
      r.on('data', (d: Buffer) => (text += d));
      r.on('end', () => resolve({ status: r.statusCode!, text, headers: r.headers }));
    });
    req.on('error', reject);
    req.write(body.slice(0, 10));
    setTimeout(() => {
      meanwhile();
      req.end(body.slice(10));
    }, 200);
  });
}

async function spendUntilRefused(gw: Gateway, key: string) {
  for (let i = 0; i < 50; i++) {
    const res = await chat(gw, key);
    if (res.status === 429) return res;
    expect(res.status).toBe(200);
  }
  throw new Error('never refused');
}

describe('calendar windows', () => {
  it('a daily budget resets at midnight UTC; a monthly one at the month end', async () => {
    const { gw, setTime } = await gatewayAt('2026-11-30T10:00:00Z');
    const { key } = await gw.createKey({ limits: { tokensPerDay: 150, tokensPerMonth: 400 } });
    const refused = await spendUntilRefused(gw, key);
    expect(((await refused.json()) as { error: { message: string } }).error.message).toContain('2026-12-01T00:00:00.000Z');

    setTime('2026-11-30T23:59:59Z');
    expect((await chat(gw, key)).status).toBe(429);
    setTime('2026-12-01T00:00:01Z'); // a new day and a new month
    const again = await spendUntilRefused(gw, key);
    expect(again.status).toBe(429);
    setTime('2026-12-02T00:00:01Z');
    const dayTwo = await spendUntilRefused(gw, key);
    setTime('2026-12-03T00:00:01Z');
    // Eventually the month budget, not the day's, is what refuses.
    let last = dayTwo;
    for (let day = 3; day < 10 && last.status === 429; day++) {
      setTime(`2026-12-0${day}T12:00:00Z`);
      const res = await chat(gw, key);
      if (res.status === 429) {
        last = res;
        break;
      }
    }
    const body = (await last.json()) as { error: { message: string } };
    expect(body.error.message).toMatch(/monthly token budget/);
    expect(body.error.message).toContain('2027-01-01T00:00:00.000Z');
  });

  it('a request counts on the day it arrived, in its budget and in the usage report, though admitted after midnight', async () => {
    const { gw, setTime } = await gatewayAt('2026-11-30T23:59:59.500Z', { USAGE_FLUSH_MS: '50' });
    const { id, key } = await gw.createKey({ limits: { tokensPerDay: 100_000 } });
    // The body is still arriving at midnight (a slow upload): admitted at 00:00:01.
    const res = await uploadedPastMidnight(gw, key, 10, () => setTime('2026-12-01T00:00:01Z'));
    expect(res.status).toBe(200);
    const report = async () => (await gw.admin('GET', `/admin/usage?groupBy=day&keyId=${id}&from=2026-11-30T00:00:00Z&to=2026-12-02T00:00:00Z`)).body.data as { day: string; totalTokens: number }[];
    await expect.poll(report).toHaveLength(1);
    const [row] = await report();
    expect(row!.day).toBe('2026-11-30');
    // Today's budget (Dec 1) has none of it; Nov 30's has all of it (was the other way round).
    const used = async () => ((await gw.admin('GET', `/admin/keys/${id}`)).body.quota.tokensPerDay as { used: number }).used;
    expect(await used()).toBe(0);
    setTime('2026-11-30T23:59:59.900Z');
    expect(await used()).toBe(row!.totalTokens);
  });

  it("a budget refusal of such a request names the reset of the day it arrived, and says to retry: it has passed", async () => {
    const { gw, setTime } = await gatewayAt('2026-11-30T23:59:59.000Z');
    const { key } = await gw.createKey({ limits: { tokensPerDay: 100 } });
    expect((await chat(gw, key, 10)).status).toBe(200);
    setTime('2026-11-30T23:59:59.500Z');
    const refused = await uploadedPastMidnight(gw, key, 90, () => setTime('2026-12-01T00:00:01Z'));
    expect(refused.status).toBe(429);
    // Was 2026-12-02: the reset of the day it was admitted in, not of the budget that refused it.
    expect(refused.text).toContain('It has reset since, at 2026-12-01T00:00:00.000Z. Please try again in 1s.');
    expect(refused.text).toContain('"code":"rate_limit_exceeded"');
  });

  it("but names a month budget that refuses it too, and its reset at the month's end: a retry would be refused again", async () => {
    const { gw, setTime } = await gatewayAt('2026-11-29T23:59:59.000Z');
    const { key } = await gw.createKey({ limits: { tokensPerDay: 100, tokensPerMonth: 100 } });
    expect((await chat(gw, key, 10)).status).toBe(200);
    setTime('2026-11-29T23:59:59.500Z');
    const refused = await uploadedPastMidnight(gw, key, 90, () => setTime('2026-11-30T00:00:01Z'));
    expect(refused.status).toBe(429);
    // Was "daily token budget ... It has reset since ... Please try again in 1s.", and the retry refused by the month.
    expect(refused.text).toContain('"code":"insufficient_quota"');
    expect(refused.text).toContain('monthly token budget of 100 tokens. It resets at 2026-12-01T00:00:00.000Z.');
    expect(refused.headers['x-should-retry']).toBe('false');
  });

  it('follows the configured time zone', async () => {
    const { gw, setTime } = await gatewayAt('2026-11-30T20:00:00Z', { QUOTA_TIME_ZONE: 'America/New_York' });
    const { key } = await gw.createKey({ limits: { tokensPerDay: 150 } });
    const refused = await spendUntilRefused(gw, key);
    // Midnight in New York is 05:00 UTC in winter.
    expect(((await refused.json()) as { error: { message: string } }).error.message).toContain('2026-12-01T05:00:00.000Z');
    setTime('2026-12-01T04:59:00Z'); // after midnight UTC, still Nov 30 in New York
    expect((await chat(gw, key)).status).toBe(429);
    setTime('2026-12-01T05:00:30Z');
    expect((await chat(gw, key)).status).toBe(200);
  });

  it('rpm is a rolling minute', async () => {
    const { gw, setTime } = await gatewayAt('2026-11-30T10:00:00Z');
    const { key } = await gw.createKey({ limits: { rpm: 2 } });
    expect((await chat(gw, key)).status).toBe(200);
    setTime('2026-11-30T10:00:40Z');
    expect((await chat(gw, key)).status).toBe(200);
    const refused = await chat(gw, key);
    expect(refused.status).toBe(429);
    expect(refused.headers.get('retry-after')).toBe('20');
    setTime('2026-11-30T10:01:01Z'); // the first request left the window; the second has not
    expect((await chat(gw, key)).status).toBe(200);
    expect((await chat(gw, key)).status).toBe(429);
  });
});

describe('limit changes', () => {
  it('take effect on the next request on every instance', async () => {
    const prefix = uniquePrefix();
    const fake = await startFakeOpenAI({ apiKey: UPSTREAM_KEY });
    const stores = [await createRedisStore({ url: testRedisUrl(), prefix }), await createRedisStore({ url: testRedisUrl(), prefix })];
    const a = await startGateway({ store: stores[0], fake, env: { AUTH_CACHE_TTL_MS: '60000' } });
    const b = await startGateway({ store: stores[1], fake, env: { AUTH_CACHE_TTL_MS: '60000' } });
    opened.push(fake, ...stores, a, b);
    const { id, key } = await a.createKey({ limits: { rpm: 100 } });
    expect((await chat(b, key)).status).toBe(200); // cached on B with rpm 100
    await a.admin('PATCH', `/admin/keys/${id}`, { limits: { rpm: 2 } });
    await expect.poll(async () => (await chat(b, key)).headers.get('x-ratelimit-limit-requests'), { timeout: 1000, interval: 20 }).toBe('2');
    expect((await chat(b, key)).status).toBe(429);
  });
});

describe('failed authentication', () => {
  it('wrong keys are limited per client address; a valid key still works from there, and operators are counted apart', async () => {
    const { gw, setTime } = await gatewayAt('2026-11-30T10:00:00Z', { AUTH_FAILURES_PER_MINUTE: '3', TRUST_PROXY: 'loopback' });
    const { key } = await gw.createKey();
    const attacker = { 'x-forwarded-for': '203.0.113.7' };
    for (let i = 0; i < 3; i++) expect((await chat(gw, `tg-guess-${i}`, 10, attacker)).status).toBe(401);
    const blocked = await chat(gw, 'tg-guess-4', 10, attacker);
    expect(blocked.status).toBe(429);
    expect(blocked.headers.get('retry-after')).toBeTruthy();
    expect(await blocked.json()).toMatchObject({ error: { code: 'too_many_failed_attempts' } });
    // A valid key is never refused there (apps sharing the address, a NAT or a proxy, keep working)...
    expect((await chat(gw, key, 10, attacker)).status).toBe(200);
    expect((await chat(gw, key, 10, { 'x-forwarded-for': '198.51.100.2' })).status).toBe(200);
    // ...and wrong keys have not used up the operators' attempts: the admin token is counted apart.
    const admin = await fetch(`${gw.url}/admin/keys`, { headers: { authorization: 'Bearer not-the-admin-token', ...attacker } });
    expect(admin.status).toBe(401);
    expect((await gw.admin('GET', '/admin/keys')).status).toBe(200);
    // Operators over their limit: refused there, the right token included, until the minute is over.
    const adminFrom = (token: string) => fetch(`${gw.url}/admin/keys`, { headers: { authorization: `Bearer ${token}`, ...attacker } });
    for (let i = 0; i < 3; i++) await adminFrom(`not-the-admin-token-${i}`);
    expect((await adminFrom(ADMIN_TOKEN)).status).toBe(429);
    setTime('2026-11-30T10:01:05Z');
    expect((await adminFrom(ADMIN_TOKEN)).status).toBe(200);
  });
});
