// Security properties: constant-time credential checks, the admin API closed without its token,
// failed-auth limiting per address, security headers, and the error handlers for what Node refuses.
import { readFileSync } from 'node:fs';
import Fastify from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { safeEqual } from '../../src/auth/bearer.js';
import { clientErrorHandler, errorHandler, frameworkErrorHandler, notFoundHandler } from '../../src/errors.js';
import { ADMIN_TOKEN, startGateway, type Gateway } from '../helpers/gateway.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';
import { expectOpenAIError, rawRequest } from './raw-http.js';
import { createMemoryStore } from '../../src/store/memory-store.js';

const opened: { close(): Promise<void> }[] = [];
afterAll(async () => {
  for (const o of opened.reverse()) await o.close();
});

async function gateway(env: Record<string, string> = {}) {
  const gw = await startGateway({ env: { REDIS_URL: testRedisUrl(), REDIS_PREFIX: uniquePrefix(), ...env } });
  opened.push(gw);
  return gw;
}

/** Every admin route, with a method it answers to. */
function adminRoutes(id: string): [string, string][] {
  return [
    ['POST', '/admin/keys'],
    ['GET', '/admin/keys'],
    ['GET', `/admin/keys/${id}`],
    ['PATCH', `/admin/keys/${id}`],
    ['DELETE', `/admin/keys/${id}`],
    ['POST', `/admin/keys/${id}/rotate`],
    ['DELETE', '/admin/cache'],
    ['DELETE', `/admin/cache?keyId=${id}`],
    ['GET', '/admin/usage'],
    ['GET', '/admin/usage/events'],
    ['GET', '/admin/usage/events?format=csv'],
  ];
}
const ALL_METHODS = ['GET', 'POST', 'PATCH', 'PUT', 'DELETE', 'HEAD', 'OPTIONS'];

describe('constant-time comparisons', () => {
  it('safeEqual is right on equal, different, prefix, empty and non-ASCII inputs', () => {
    expect(safeEqual(ADMIN_TOKEN, ADMIN_TOKEN)).toBe(true);
    expect(safeEqual(ADMIN_TOKEN, `${ADMIN_TOKEN}x`)).toBe(false);
    expect(safeEqual(ADMIN_TOKEN, ADMIN_TOKEN.slice(0, -1))).toBe(false);
    expect(safeEqual('', '')).toBe(true);
    expect(safeEqual('', 'a')).toBe(false);
    expect(safeEqual('é', 'e\u0301')).toBe(false);
    expect(safeEqual('ключ', 'ключ')).toBe(true);
    // Different lengths never throw (timingSafeEqual would on unequal buffers): both sides are hashed first.
    expect(() => safeEqual('a', 'a'.repeat(10_000))).not.toThrow();
  });

  it('the admin and metrics tokens go through safeEqual; gateway keys are found by their hash, never compared', () => {
    const src = (p: string) => readFileSync(new URL(`../../src/${p}`, import.meta.url), 'utf8');
    const admin = src('routes/admin.ts');
    const metrics = src('routes/metrics.ts');
    expect(admin).toMatch(/safeEqual\(token, opts\.adminToken\)/);
    expect(metrics).toMatch(/safeEqual\(given \?\? '', token\)/);
    for (const [name, text] of [['admin.ts', admin], ['metrics.ts', metrics]] as const) {
      // No plain comparison with a token anywhere (=== / !== / startsWith / includes on it).
      expect(text, name).not.toMatch(/(===|!==|==|!=)\s*(opts\.)?adminToken\b/);
      expect(text, name).not.toMatch(/\badminToken\s*(===|!==|==|!=)/);
      expect(text, name).not.toMatch(/\b(given|token)\s*(===|!==|==|!=)\s*(given|token)\b/);
      expect(text, name).not.toMatch(/(adminToken|token)\.(startsWith|includes|localeCompare)\(/);
    }
    const v1 = src('routes/v1.ts');
    expect(v1).toMatch(/const hash = hashSecret\(secret\)/);
    expect(v1).toMatch(/keyResolver\.cached\(hash\)/);
    expect(v1).toMatch(/keyResolver\.lookup\(hash\)/);
    expect(v1).not.toMatch(/secret\s*(===|!==)/);
    // The resolver compares hashes (sha256 of a 256-bit secret): learning one by timing reveals nothing.
    expect(src('auth/key-resolver.ts')).toMatch(/record\.hash !== hash/);
  });
});

describe('the admin API without its token', () => {
  let gw: Gateway;
  let id: string;
  beforeAll(async () => {
    // The failure limit is off here: this test sends many wrong tokens on purpose (it has its own test).
    gw = await gateway({ AUTH_FAILURES_PER_MINUTE: '0' });
    ({ id } = await gw.createKey({ name: 'target', limits: { rpm: 5 } }));
  });

  it('answers 401 on every route and method, for no token, a wrong one, a gateway key or another scheme', async () => {
    const { key } = await gw.createKey({ name: 'not-admin' });
    const before = await gw.admin('GET', `/admin/keys/${id}`);
    const credentials: (string | undefined)[] = [
      undefined,
      'Bearer not-the-admin-token',
      `Bearer ${key}`,
      `Basic ${Buffer.from(`:${ADMIN_TOKEN}`).toString('base64')}`,
      `Bearer ${ADMIN_TOKEN}x`,
    ];
    const paths = [...new Set(adminRoutes(id).map(([, p]) => p))];
    for (const path of paths) {
      for (const method of ALL_METHODS) {
        for (const authorization of credentials) {
          const res = await fetch(gw.url + path, {
            method,
            headers: { ...(authorization && { authorization }), 'content-type': 'application/json' },
            body: method === 'POST' || method === 'PATCH' || method === 'PUT' ? JSON.stringify({ name: 'x', limits: { rpm: 1_000_000 } }) : undefined,
          });
          const context = `${method} ${path} ${authorization?.slice(0, 12)}`;
          expect(res.status, context).toBe(401);
          if (method !== 'HEAD') expect(await res.json(), context).toMatchObject({ error: { code: 'invalid_admin_token', type: 'invalid_request_error' } });
          else await res.arrayBuffer();
        }
      }
    }
    expect(await gw.admin('GET', `/admin/keys/${id}`)).toEqual({ ...before, body: { ...before.body, quota: expect.anything() } });
    expect((await gw.admin('GET', `/admin/keys/${id}`)).body.limits).toEqual({ rpm: 5 });
  });

  it('answers 404 on every admin route and the dashboard when ADMIN_TOKEN is unset', async () => {
    const closed = await gateway({ ADMIN_TOKEN: '' });
    for (const [, path] of [...adminRoutes('key_x'), ['GET', '/dashboard'], ['GET', '/dashboard/assets/app.js']] as [string, string][]) {
      for (const method of ALL_METHODS) {
        for (const authorization of [undefined, `Bearer ${ADMIN_TOKEN}`]) {
          const res = await fetch(closed.url + path, { method, headers: authorization ? { authorization } : {} });
          expect(res.status, `${method} ${path}`).toBe(404);
          if (method !== 'HEAD') expectOpenAIError(await res.text());
          else await res.arrayBuffer();
        }
      }
    }
  });
});

describe('failed authentication limits', () => {
  const chat = (gw: Gateway, key: string, headers: Record<string, string> = {}) =>
    fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 }),
    });
  const adminCall = (gw: Gateway, token: string, headers: Record<string, string> = {}) =>
    fetch(`${gw.url}/admin/keys`, { headers: { authorization: `Bearer ${token}`, ...headers } });

  it('wrong admin tokens are limited per address; then even the right token is refused there, not elsewhere', async () => {
    const gw = await gateway({ AUTH_FAILURES_PER_MINUTE: '3', TRUST_PROXY: 'loopback' });
    const a = { 'x-forwarded-for': '203.0.113.10' };
    const b = { 'x-forwarded-for': '203.0.113.11' };
    for (let i = 0; i < 3; i++) expect((await adminCall(gw, `guess-${i}-0123456789`, a)).status).toBe(401);
    const blocked = await adminCall(gw, 'guess-4-0123456789', a);
    expect(blocked.status).toBe(429);
    expect(blocked.headers.get('retry-after')).toBeTruthy();
    expect(blocked.headers.get('x-should-retry')).toBe('false');
    expect(await blocked.json()).toMatchObject({ error: { code: 'too_many_failed_attempts' } });
    expect((await adminCall(gw, ADMIN_TOKEN, a)).status).toBe(429);
    expect((await adminCall(gw, ADMIN_TOKEN, b)).status).toBe(200);
    // A missing token is not a guess: it does not count (nor unblock).
    expect((await fetch(`${gw.url}/admin/keys`, { headers: b })).status).toBe(401);
    expect((await adminCall(gw, ADMIN_TOKEN, b)).status).toBe(200);
  });

  it('with TRUST_PROXY, distinct client addresses are counted apart', async () => {
    const gw = await gateway({ AUTH_FAILURES_PER_MINUTE: '3', TRUST_PROXY: 'loopback' });
    const { key } = await gw.createKey();
    for (let ip = 1; ip <= 5; ip++) {
      const from = { 'x-forwarded-for': `198.51.100.${ip}` };
      for (let i = 0; i < 3; i++) expect((await chat(gw, `tg-guess-${ip}-${i}`, from)).status).toBe(401);
      expect((await chat(gw, key, from)).status).toBe(200);
    }
    expect((await chat(gw, 'tg-guess-x', { 'x-forwarded-for': '198.51.100.1' })).status).toBe(429);
    expect((await chat(gw, key, { 'x-forwarded-for': '198.51.100.9' })).status).toBe(200);
  });

  it('wrong keys from an address over the limit cost the store nothing more, but a read per distinct key', async () => {
    const store = createMemoryStore();
    const calls = { getKeyByHash: 0, hit: 0 };
    const counted = new Proxy(store, {
      get(target, prop) {
        const value: unknown = Reflect.get(target, prop);
        if (typeof value !== 'function') return value;
        if (prop === 'getKeyByHash' || prop === 'hit') {
          return (...args: unknown[]) => {
            calls[prop]++;
            return (value as (...a: unknown[]) => unknown).apply(target, args);
          };
        }
        return value.bind(target);
      },
    });
    const gw = await startGateway({ store: counted, env: { AUTH_FAILURES_PER_MINUTE: '3' } });
    opened.push(gw);
    const { key } = await gw.createKey();
    // The same revoked key, retried in a loop: looked up once, counted until over the limit, then refused here.
    for (let i = 0; i < 20; i++) await chat(gw, 'tg-revoked-key-retried-in-a-loop');
    expect(calls).toEqual({ getKeyByHash: 1, hit: 4 });
    // Distinct wrong keys from there: one read each, no more counting; a valid key still passes.
    for (let i = 0; i < 10; i++) expect((await chat(gw, `tg-sprayed-${i}`)).status).toBe(429);
    expect(calls).toEqual({ getKeyByHash: 11, hit: 4 });
    expect((await chat(gw, key)).status).toBe(200);
  });

  it("with TRUST_PROXY listing the proxies, the client's address is the last hop they saw: a written one buys nothing", async () => {
    // The test's connections come from loopback: loopback is the proxy, which appends the address it saw.
    const gw = await gateway({ AUTH_FAILURES_PER_MINUTE: '3', TRUST_PROXY: 'loopback' });
    const statuses: number[] = [];
    for (let i = 1; i <= 5; i++) statuses.push((await chat(gw, `tg-guess-${i}`, { 'x-forwarded-for': `10.9.9.${i}, 198.51.100.7` })).status);
    expect(statuses).toEqual([401, 401, 401, 429, 429]);
    // Nor can a written entry lock out the address it names: 198.51.100.8 itself is untouched.
    expect((await adminCall(gw, ADMIN_TOKEN, { 'x-forwarded-for': '198.51.100.8' })).status).toBe(200);
    for (let i = 0; i < 4; i++) await adminCall(gw, `guess-admin-${i}-0123456789`, { 'x-forwarded-for': '198.51.100.8, 198.51.100.9' });
    expect((await adminCall(gw, ADMIN_TOKEN, { 'x-forwarded-for': '198.51.100.8' })).status).toBe(200);
    expect((await adminCall(gw, ADMIN_TOKEN, { 'x-forwarded-for': '198.51.100.9' })).status).toBe(429);
  });

  it('without TRUST_PROXY, a spoofed x-forwarded-for does not buy new attempts', async () => {
    const gw = await gateway({ AUTH_FAILURES_PER_MINUTE: '3' });
    for (let i = 0; i < 3; i++) expect((await chat(gw, `tg-guess-${i}`, { 'x-forwarded-for': `192.0.2.${i}` })).status).toBe(401);
    expect((await chat(gw, 'tg-guess-3', { 'x-forwarded-for': '192.0.2.200' })).status).toBe(429);
    for (let i = 0; i < 3; i++) expect((await adminCall(gw, `wrong-admin-token-00${i}`, { 'x-forwarded-for': `192.0.2.${i}` })).status).toBe(401);
    expect((await adminCall(gw, 'wrong-admin-token-003', { 'x-forwarded-for': '192.0.2.201' })).status).toBe(429);
  });

  it('apps and operators sharing an address cannot lock each other out', async () => {
    // One address for everyone, as behind a NAT or a proxy without TRUST_PROXY.
    const gw = await gateway({ AUTH_FAILURES_PER_MINUTE: '3' });
    const { key } = await gw.createKey();
    // An app retrying with a revoked key: its wrong keys are refused with 429 once over the limit...
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) statuses.push((await chat(gw, 'tg-revoked-key-retried-in-a-loop')).status);
    expect(statuses).toEqual([401, 401, 401, 429, 429]);
    // ...but the other apps' valid keys and the operators' token still work from there.
    expect((await chat(gw, key)).status).toBe(200);
    expect((await adminCall(gw, ADMIN_TOKEN)).status).toBe(200);
    // Someone guessing the admin token locks the operators' token out there (guessing stops), not the apps.
    for (let i = 0; i < 4; i++) await adminCall(gw, `guess-admin-${i}-0123456789`);
    expect((await adminCall(gw, ADMIN_TOKEN)).status).toBe(429);
    expect((await chat(gw, key)).status).toBe(200);
  });
});

describe('security headers', () => {
  let gw: Gateway;
  beforeAll(async () => {
    gw = await gateway();
  });

  it('the dashboard sends CSP, nosniff, frame and referrer policies, on its page, assets and errors', async () => {
    for (const path of ['/dashboard', '/dashboard/', '/dashboard/assets/app.js', '/dashboard/assets/nope.js']) {
      const res = await fetch(gw.url + path);
      await res.arrayBuffer();
      const csp = res.headers.get('content-security-policy') ?? '';
      expect(csp, path).toContain("default-src 'self'");
      expect(csp, path).toContain("frame-ancestors 'none'");
      expect(csp, path).not.toContain('unsafe-inline');
      expect(csp, path).not.toContain('unsafe-eval');
      expect(res.headers.get('x-content-type-options'), path).toBe('nosniff');
      expect(res.headers.get('x-frame-options'), path).toBe('DENY');
      expect(res.headers.get('referrer-policy'), path).toBe('no-referrer');
    }
  });

  it('JSON errors of the API carry x-content-type-options: nosniff', async () => {
    const { key } = await gw.createKey();
    const cases: [string, RequestInit][] = [
      ['/v1/models', {}],
      ['/v1/chat/completions', { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: '{bad' }],
      ['/v1/chat/completions', { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: '{}' }],
      ['/no/such/route', {}],
      ['/admin/keys', {}],
      ['/admin/keys/key_missing', { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } }],
    ];
    for (const [path, init] of cases) {
      const res = await fetch(gw.url + path, init);
      expect(res.status, path).toBeGreaterThanOrEqual(400);
      expect(res.headers.get('x-content-type-options'), path).toBe('nosniff');
      expectOpenAIError(await res.text(), path);
    }
  });
});

describe('errors Node and the router raise before any route (errors.ts handlers, standalone)', () => {
  it('answer in OpenAI shape once wired as clientErrorHandler and frameworkErrors', async () => {
    const app = Fastify({ clientErrorHandler, frameworkErrors: frameworkErrorHandler });
    app.setErrorHandler(errorHandler);
    app.setNotFoundHandler(notFoundHandler);
    app.get('/v1/models/:id', async () => ({ ok: true }));
    const url = await app.listen({ port: 0, host: '127.0.0.1' });
    opened.push(app);
    const cases: [string, number][] = [
      ['GET /v1/models/x HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\rb', 400],
      [`GET /v1/models/x HTTP/1.1\r\nHost: x\r\nx-big: ${'b'.repeat(20_000)}`, 431],
      ['FOO /v1/models/x HTTP/1.1\r\nHost: x', 400],
      ['GET /v1/models/%zz HTTP/1.1\r\nHost: x', 400],
      [`GET /v1/models/${'m'.repeat(500)} HTTP/1.1\r\nHost: x`, 414],
    ];
    for (const [head, status] of cases) {
      const res = await rawRequest(url, head, '', true);
      expect(res.status, head.slice(0, 40)).toBe(status);
      expect(res.headers['x-content-type-options']).toBe('nosniff');
      expectOpenAIError(res.body, head.slice(0, 40));
    }
    expect((await fetch(`${url}/v1/models/x`)).status).toBe(200);
  });
});
