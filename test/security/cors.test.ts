// CORS: off by default on the gateway (no access-control-* header anywhere, no preflight grant);
// the plugin (src/plugins/cors.ts) grants only configured origins.
import Fastify, { type FastifyInstance } from 'fastify';
import { afterAll, describe, expect, it } from 'vitest';
import { corsPlugin } from '../../src/plugins/cors.js';
import { errorHandler, GatewayError, notFoundHandler } from '../../src/errors.js';
import { ADMIN_TOKEN, startGateway } from '../helpers/gateway.js';

const opened: { close(): Promise<void> }[] = [];
afterAll(async () => {
  for (const o of opened.reverse()) await o.close();
});

const ORIGIN = 'https://app.example.com';
const accessControl = (res: Response) => [...res.headers.keys()].filter((h) => h.startsWith('access-control-'));
const preflight = (url: string, origin = ORIGIN) =>
  fetch(url, { method: 'OPTIONS', headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type' } });

describe('CORS on the gateway by default', () => {
  it('sends no access-control-* header on any response, and grants no preflight', async () => {
    const gw = await startGateway();
    opened.push(gw);
    const { key } = await gw.createKey();
    const requests: [string, RequestInit][] = [
      ['/v1/models', { headers: { origin: ORIGIN, authorization: `Bearer ${key}` } }],
      ['/v1/models', { headers: { origin: ORIGIN } }],
      ['/v1/chat/completions', { method: 'POST', headers: { origin: ORIGIN, authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] }) }],
      ['/admin/keys', { headers: { origin: ORIGIN, authorization: `Bearer ${ADMIN_TOKEN}` } }],
      ['/healthz', { headers: { origin: ORIGIN } }],
      ['/dashboard', { headers: { origin: ORIGIN } }],
      ['/nope', { headers: { origin: 'null' } }],
    ];
    for (const [path, init] of requests) {
      const res = await fetch(gw.url + path, init);
      await res.arrayBuffer();
      expect(accessControl(res), path).toEqual([]);
    }
    for (const path of ['/v1/chat/completions', '/v1/models', '/admin/keys', '/healthz']) {
      const res = await preflight(gw.url + path);
      await res.arrayBuffer();
      expect(res.status, path).toBeGreaterThanOrEqual(400);
      expect(accessControl(res), path).toEqual([]);
    }
  });
});

/** A tiny app shaped like the gateway: the error funnel, and an auth hook inside a prefixed scope. */
async function appWith(origins: string[]): Promise<string> {
  const app: FastifyInstance = Fastify();
  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler(notFoundHandler);
  await app.register(corsPlugin, { origins });
  await app.register(
    async (v1) => {
      v1.addHook('onRequest', async (request) => {
        if (request.headers.authorization !== 'Bearer ok') throw new GatewayError(401, 'no', 'invalid_request_error', 'invalid_api_key');
      });
      v1.get('/models', async () => ({ object: 'list', data: [] }));
      v1.post('/chat/completions', async (_req, reply) => reply.header('x-request-id', 'r1').send({ ok: true }));
    },
    { prefix: '/v1' },
  );
  const url = await app.listen({ port: 0, host: '127.0.0.1' });
  opened.push(app);
  return url;
}

describe('the CORS plugin', () => {
  it('with no origins configured, adds nothing at all', async () => {
    const url = await appWith([]);
    const res = await fetch(`${url}/v1/models`, { headers: { origin: ORIGIN, authorization: 'Bearer ok' } });
    expect(res.status).toBe(200);
    expect(accessControl(res)).toEqual([]);
    const pre = await preflight(`${url}/v1/chat/completions`);
    expect(pre.status).toBe(404);
    expect(accessControl(pre)).toEqual([]);
  });

  it('grants a configured origin: requests, errors and preflights (answered before auth)', async () => {
    const url = await appWith([`${ORIGIN}/`, 'https://other.example.com']);
    const ok = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { origin: ORIGIN, authorization: 'Bearer ok' } });
    expect(ok.headers.get('access-control-allow-origin')).toBe(ORIGIN);
    const exposed = ok.headers.get('access-control-expose-headers')!.split(',').map((h) => h.trim());
    // What the openai SDK reads to pace its retries, besides the ids and rate limits.
    expect(exposed).toEqual(expect.arrayContaining(['x-request-id', 'retry-after', 'retry-after-ms', 'x-should-retry']));
    expect(ok.headers.get('access-control-allow-credentials')).toBeNull();
    expect(ok.headers.get('vary')).toMatch(/origin/i);
    // An error still carries the grant, so the browser lets the script read the OpenAI error body.
    const denied = await fetch(`${url}/v1/models`, { headers: { origin: ORIGIN } });
    expect(denied.status).toBe(401);
    expect(denied.headers.get('access-control-allow-origin')).toBe(ORIGIN);
    const pre = await preflight(`${url}/v1/chat/completions`);
    expect(pre.status).toBe(204);
    expect(pre.headers.get('access-control-allow-origin')).toBe(ORIGIN);
    expect(pre.headers.get('access-control-allow-methods')).toContain('POST');
    expect(pre.headers.get('access-control-allow-headers')).toMatch(/authorization/);
    expect(pre.headers.get('access-control-max-age')).toBe('600');
  });

  it('grants nothing to other origins, look-alikes, null or requests without Origin', async () => {
    const url = await appWith([ORIGIN]);
    for (const origin of ['https://evil.example.com', `${ORIGIN}.evil.com`, 'http://app.example.com', 'null', `${ORIGIN}:8443`, 'HTTPS://APP.EXAMPLE.COM']) {
      const res = await fetch(`${url}/v1/models`, { headers: { origin, authorization: 'Bearer ok' } });
      expect(res.status, origin).toBe(200);
      expect(accessControl(res), origin).toEqual([]);
      const pre = await preflight(`${url}/v1/chat/completions`, origin);
      expect(pre.status, origin).toBe(404);
      expect(accessControl(pre), origin).toEqual([]);
    }
    const none = await fetch(`${url}/v1/models`, { headers: { authorization: 'Bearer ok' } });
    expect(accessControl(none)).toEqual([]);
  });

  it("'*' allows any origin, still without credentials", async () => {
    const url = await appWith(['*']);
    const res = await fetch(`${url}/v1/models`, { headers: { origin: 'https://anyone.example', authorization: 'Bearer ok' } });
    expect(res.headers.get('access-control-allow-origin')).toBe('*');
    expect(res.headers.get('access-control-allow-credentials')).toBeNull();
  });
});

describe('preflights on the gateway', () => {
  it('are not metered: no usage event, no request counted, whether the origin is allowed or not', async () => {
    const gw = await startGateway({ env: { CORS_ORIGINS: ORIGIN } });
    opened.push(gw);
    const { key } = await gw.createKey();
    const models = async () => (await fetch(`${gw.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } })).arrayBuffer();
    await models();
    for (const origin of [ORIGIN, 'https://evil.example']) {
      const res = await preflight(`${gw.url}/v1/chat/completions`, origin);
      await res.arrayBuffer();
      expect(res.status).toBe(origin === ORIGIN ? 204 : 404);
    }
    await models();
    // Usage lags by USAGE_FLUSH_MS, in order: once the second models call is counted, the preflights
    // between the two would have been too.
    await expect.poll(async () => (await gw.admin('GET', '/admin/usage')).body.totals.requests).toBeGreaterThanOrEqual(2);
    expect((await gw.admin('GET', '/admin/usage')).body.totals.requests).toBe(2);
    const events = await fetch(`${gw.url}/admin/usage/events?since=1970-01-01T00:00:00Z`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    const statuses = (await events.text()).trim().split('\n').map((line) => (JSON.parse(line) as { status: number }).status);
    expect(statuses).toEqual([200, 200]);
    const metrics = await (await fetch(`${gw.url}/metrics`)).text();
    expect(metrics).not.toMatch(/tollgate_requests_total\{[^}]*status="(204|404)"/);
  });
});
