// Property-based fuzz: hostile bodies, headers, methods and paths against every /v1 endpoint and the
// admin API of a real gateway on Redis. Never a 5xx, always OpenAI's error shape, no crash, no key or
// limit changed, no prototype polluted in this (the gateway's) process.
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_TOKEN, startGateway, type Gateway } from '../helpers/gateway.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';
import { expectNotServerError, expectOpenAIError, rawRequest, type RawResponse } from './raw-http.js';

const BODY_LIMIT = 256 * 1024;
// Bounded so the whole file stays well under a minute.
const RUNS = { v1Post: 250, v1Get: 120, admin: 250, adminAnonymous: 80 };

let gw: Gateway;
let fuzzKey: { id: string; key: string };
/** A key the admin fuzz may legitimately rotate, patch and revoke (with the token); never the fuzz key. */
let victim: { id: string; key: string };
let keySnapshot: unknown;
let protoSnapshot: string;
/** Whether app.ts wires clientErrorHandler and frameworkErrors (errors.ts): until then those answers are Fastify's shape. */

function prototypes() {
  return JSON.stringify(
    [Object.prototype, Array.prototype, Function.prototype, String.prototype, Number.prototype].map((p) =>
      Object.getOwnPropertyNames(p).sort(),
    ),
  );
}

function expectNoPollution() {
  expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  expect(([] as unknown as Record<string, unknown>).polluted).toBeUndefined();
  expect(Object.prototype.hasOwnProperty.call(Object.prototype, 'polluted')).toBe(false);
  expect(prototypes()).toBe(protoSnapshot);
}

/** Everything about the fuzz key an attacker holding it must not change: its record and its limits. */
async function snapshotOfKeys() {
  const list = await gw.admin('GET', '/admin/keys');
  const fuzz = await gw.admin('GET', `/admin/keys/${fuzzKey.id}`);
  const record = (list.body.data as { id: string }[]).find((k) => k.id === fuzzKey.id);
  const limits = Object.fromEntries(
    Object.entries((fuzz.body.quota ?? {}) as Record<string, { limit?: unknown; value?: unknown }>).map(([k, v]) => [
      k,
      v && typeof v === 'object' ? (v.limit ?? v.value) : v,
    ]),
  );
  return { record, limits };
}

/** Every key, following the list's pages: the fuzz with the token may create more than one page's worth. */
async function keyCount(): Promise<number> {
  let count = 0;
  for (let after = ''; ; ) {
    const { body } = await gw.admin('GET', `/admin/keys?limit=1000${after && `&after=${after}`}`);
    count += (body.data as unknown[]).length;
    if (!body.has_more) return count;
    after = body.last_id;
  }
}


function check(res: RawResponse, context: string, method = 'GET') {
  // Node hands CONNECT to a 'connect' listener; with none (Fastify adds none) it just closes the socket.
  if (method === 'CONNECT' && res.status === 0) return;
  expectNotServerError(res.status, context);
  const id = res.headers['x-request-id'];
  if (id !== undefined) expect(id, context).toMatch(/^[\w.:@-]{1,128}$/);
  if (res.status < 400 || method === 'HEAD') return;
  expectOpenAIError(res.body, context);
  expect(res.headers['content-type'], context).toMatch(/^application\/json/);
}

function send(method: string, path: string, headers: [string, string][], body?: Buffer) {
  const lines = [`${method} ${path} HTTP/1.1`, 'Host: 127.0.0.1', ...headers.map(([k, v]) => `${k}: ${v}`)];
  if (body !== undefined) lines.push(`Content-Length: ${body.length}`);
  const sent = rawRequest(gw.url, lines.join('\r\n'), body);
  return method === 'CONNECT' ? sent.catch((): RawResponse => ({ status: 0, headers: {}, body: '' })) : sent;
}

// ---- arbitraries -------------------------------------------------------------------------------

const deep = (levels: number) => '['.repeat(levels) + ']'.repeat(levels);
const deepObject = (levels: number) => '{"a":'.repeat(levels) + '1' + '}'.repeat(levels);

/** `inner` wrapped in `depth` levels of objects and arrays. */
function nestAt(depth: number, inner: string) {
  let out = inner;
  for (let i = 0; i < depth; i++) out = i % 2 ? `[${out}]` : `{"k${i}":${out}}`;
  return out;
}

const pollution = fc.constantFrom(
  '{"__proto__":{"polluted":"yes"}}',
  '{"constructor":{"prototype":{"polluted":"yes"}}}',
  '{"prototype":{"polluted":"yes"}}',
  '{"__proto__":"yes"}',
  '{"constructor":"yes","__proto__":[1]}',
  '[{"__proto__":{"polluted":"yes","max_tokens":1}}]',
);

/** A JSON text with a prototype-polluting key at some depth. */
const pollutingJson = fc
  .tuple(fc.nat({ max: 8 }), pollution)
  .map(([depth, inner]) => nestAt(depth, inner));

const hostileValue: fc.Arbitrary<string> = fc.oneof(
  fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v)),
  fc.string({ unit: 'binary', maxLength: 64 }).map((s) => JSON.stringify(s)),
  fc.constantFrom('null', 'true', '-1', '0', '1e308', '-1e308', '9007199254740993', '1.5', '""', '[]', '{}', '[null]', '{"":""}'),
  fc.constantFrom(100, 129, 1000, 10_000).map(deep),
  fc.constantFrom(129, 2000).map(deepObject),
  pollutingJson,
  fc.constant(JSON.stringify('x'.repeat(50_000))),
  fc.constant(JSON.stringify(Array.from({ length: 5000 }, () => 'y'))),
);

const modelValue = fc.oneof(
  fc.constantFrom('"gpt-4o-mini"', '"gpt-3.5-turbo-instruct"', '"text-embedding-3-small"', '"gpt-4o"', '"o1-mini"', '"unknown-model"', '"__proto__"', '"../admin"'),
  hostileValue,
);
const messagesValue = fc.oneof(
  fc.constant('[{"role":"user","content":"hello"}]'),
  fc.tuple(fc.constantFrom('content', 'name', 'tool_calls', 'role'), hostileValue).map(([k, v]) =>
    k === 'role' ? `[{"role":${v},"content":"hi"}]` : `[{"role":"user",${JSON.stringify(k)}:${v}}]`,
  ),
  hostileValue,
);
const FIELDS = ['max_tokens', 'max_completion_tokens', 'n', 'stream', 'stream_options', 'logit_bias', 'temperature', 'stop', 'tools', 'user', 'prompt', 'input', 'dimensions', 'encoding_format', 'response_format', 'metadata', 'constructor', '__proto__', 'prototype'];

/** An object body: a plausible request with hostile values in some of its fields. */
const mutatedBody = fc
  .tuple(
    fc.option(modelValue, { nil: undefined }),
    fc.option(messagesValue, { nil: undefined }),
    fc.array(fc.tuple(fc.constantFrom(...FIELDS), hostileValue), { maxLength: 4 }),
  )
  .map(([model, messages, extra]) => {
    const parts: string[] = [];
    if (model !== undefined) parts.push(`"model":${model}`);
    if (messages !== undefined) parts.push(`"messages":${messages}`);
    for (const [k, v] of extra) parts.push(`${JSON.stringify(k)}:${v}`);
    return `{${parts.join(',')}}`;
  });

const validChat = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hello' }], max_tokens: 5 });

const bodyBytes: fc.Arbitrary<Buffer | undefined> = fc.oneof(
  { weight: 4, arbitrary: mutatedBody.map((s) => Buffer.from(s)) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 2048 }).map((a) => Buffer.from(a)) },
  { weight: 1, arbitrary: hostileValue.map((s) => Buffer.from(s)) },
  { weight: 1, arbitrary: pollutingJson.map((p) => Buffer.from(validChat.replace('"max_tokens"', `"x":${p},"max_tokens"`))) },
  {
    weight: 1,
    arbitrary: fc.uint8Array({ minLength: 1, maxLength: 8 }).map((bad) =>
      // Invalid UTF-8 inside a string of an otherwise valid request.
      Buffer.concat([Buffer.from(validChat.slice(0, validChat.indexOf('hello'))), Buffer.from([0xff, 0xc3, ...bad]), Buffer.from(validChat.slice(validChat.indexOf('hello')))]),
    ),
  },
  { weight: 1, arbitrary: fc.constant(Buffer.from(validChat, 'utf16le')) },
  { weight: 1, arbitrary: fc.constantFrom(BODY_LIMIT + 1, BODY_LIMIT * 2).map((n) => Buffer.alloc(n, 0x61)) },
  { weight: 1, arbitrary: fc.constant(Buffer.from(JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'z'.repeat(BODY_LIMIT - 200) }], max_tokens: 1 }))) },
  { weight: 1, arbitrary: fc.constant(undefined) },
);

const contentType = fc.constantFrom(
  'application/json',
  'application/json; charset=utf-8',
  'application/json; charset=utf-16',
  'application/json; charset=latin1',
  'text/plain',
  'multipart/form-data; boundary=----tollgate',
  'application/x-www-form-urlencoded',
  'application/octet-stream',
  'application/json, text/plain',
  ';;',
  undefined,
);

/** Header values fetch would refuse but a socket can send; no CR/LF (that would end the request: tested apart). */
const headerValue = fc.oneof(
  fc.string({ maxLength: 40 }).map((s) => s.replace(/[\r\n\0]/g, '')),
  fc.string({ unit: 'binary', maxLength: 40 }).map((s) => Buffer.from(s.replace(/[\r\n\0]/g, ''), 'utf8').toString('latin1')),
  fc.constantFrom('x'.repeat(129), 'a'.repeat(8000), '../../etc/passwd', '<script>', '%0d%0aset-cookie: a=b', '\t'),
);

type Auth = 'valid' | 'none' | 'wrong' | 'basic' | 'duplicate' | 'duplicateValidFirst' | 'lowercase' | 'garbage';
const auth = fc.constantFrom<Auth>('valid', 'valid', 'valid', 'valid', 'none', 'wrong', 'basic', 'duplicate', 'duplicateValidFirst', 'lowercase', 'garbage');

function authHeaders(kind: Auth, secret: string, garbage: string): [string, string][] {
  switch (kind) {
    case 'valid':
      return [['Authorization', `Bearer ${secret}`]];
    case 'none':
      return [];
    case 'wrong':
      return [['Authorization', 'Bearer tg-not-a-real-key']];
    case 'basic':
      return [['Authorization', `Basic ${Buffer.from(`x:${secret}`).toString('base64')}`]];
    case 'duplicate':
      return [['Authorization', 'Bearer tg-not-a-real-key'], ['Authorization', `Bearer ${secret}`]];
    case 'duplicateValidFirst':
      return [['Authorization', `Bearer ${secret}`], ['Authorization', 'Bearer tg-not-a-real-key']];
    case 'lowercase':
      return [['authorization', `bearer ${secret} trailing`]];
    case 'garbage':
      return [['Authorization', garbage]];
  }
}

const query = fc.oneof(
  fc.constant(''),
  fc.string({ maxLength: 30 }).map((s) => `?${encodeURIComponent(s)}`),
  fc.constantFrom('?__proto__[polluted]=yes', '?constructor[prototype][polluted]=yes', '?a=1&a=2&a=3', '?%zz', '?x=%E0%A4%A', `?${'q='.repeat(500)}`),
);

const pathSegment = fc.oneof(
  fc.string({ maxLength: 40 }).map(encodeURIComponent),
  fc.constantFrom('..', '%2e%2e', '.%2e', '%2e%2e%2fadmin%2fkeys', '%zz', '%E0%A4%A', '%00', 'a'.repeat(150), '__proto__', 'constructor', ''),
);

const method = fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS', 'TRACE', 'PROPFIND', 'CONNECT');

// ---- setup -------------------------------------------------------------------------------------

beforeAll(async () => {
  protoSnapshot = prototypes();
  gw = await startGateway({
    env: {
      REDIS_URL: testRedisUrl(),
      REDIS_PREFIX: uniquePrefix(),
      BODY_LIMIT_BYTES: String(BODY_LIMIT),
      // The fuzz sends wrong keys on purpose; the failed-auth guard has its own tests.
      AUTH_FAILURES_PER_MINUTE: '0',
      CACHE_ENABLED: 'true',
    },
  });
  fuzzKey = await gw.createKey({
    name: 'fuzz',
    models: ['gpt-4o*', 'gpt-3.5-turbo-instruct', 'text-embedding-3-*', 'o1-mini'],
    limits: { rpm: 1_000_000, tokensPerDay: 10_000_000_000, usdPerDay: 100_000 },
    metadata: { team: 'fuzz' },
  });
  victim = await gw.createKey({ name: 'victim', limits: { rpm: 10 } });
  keySnapshot = await snapshotOfKeys();
});

afterAll(async () => {
  await gw?.close();
});

async function expectStillHealthy() {
  const health = await fetch(`${gw.url}/healthz`);
  expect(health.status).toBe(200);
  expect(await snapshotOfKeys()).toEqual(keySnapshot);
  expectNoPollution();
}

describe('fuzz: /v1', () => {
  it('POST endpoints survive hostile bodies, content types and headers', async () => {
    const path = fc.oneof(
      fc.constantFrom('/v1/chat/completions', '/v1/completions', '/v1/embeddings'),
      pathSegment.map((e) => `/v1/engines/${e}/completions`),
    );
    await fc.assert(
      fc.asyncProperty(path, query, bodyBytes, contentType, auth, headerValue, headerValue, async (p, q, body, ct, who, garbage, requestId) => {
        const headers = authHeaders(who, fuzzKey.key, garbage);
        if (ct !== undefined) headers.push(['Content-Type', ct]);
        headers.push(['X-Request-Id', requestId]);
        const res = await send('POST', p + q, headers, body);
        check(res, `POST ${p + q} ct=${ct} auth=${who} body=${body?.subarray(0, 120).toString('latin1')}`, 'POST');
      }),
      { numRuns: RUNS.v1Post, interruptAfterTimeLimit: 25_000 },
    );
    await expectStillHealthy();
  }, 40_000);

  it('GET endpoints and other methods survive hostile paths, queries and headers', async () => {
    const path = fc.oneof(fc.constant('/v1/models'), pathSegment.map((id) => `/v1/models/${id}`), pathSegment.map((s) => `/v1/${s}`), fc.constantFrom('/v1/../admin/keys', '/v1/%2e%2e/admin/keys', '/v1//models', '//v1/models', '/V1/MODELS', '/v1/models/'));
    await fc.assert(
      fc.asyncProperty(method, path, query, auth, headerValue, async (m, p, q, who, garbage) => {
        const res = await send(m, p + q, authHeaders(who, fuzzKey.key, garbage));
        check(res, `${m} ${p + q} auth=${who}`, m);
        // Path tricks never reach the admin API with a gateway key.
        if (res.status === 200 && m === 'GET') expect(res.body, `${m} ${p + q}`).not.toContain('"object":"key"');
      }),
      { numRuns: RUNS.v1Get, interruptAfterTimeLimit: 10_000 },
    );
    await expectStillHealthy();
  }, 20_000);

  it('connection-level attacks: CR/LF and huge headers, bad methods, short bodies, bad URL encoding', async () => {
    const cases: [string, Buffer | undefined][] = [
      [`GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${fuzzKey.key}\r\nX-Request-Id: a\rset-cookie: b`, undefined],
      [`GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${fuzzKey.key}\r\nX-Request-Id: a\nx-injected: b`, undefined],
      [`GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${fuzzKey.key}\r\nX-Request-Id: ${'a'.repeat(20_000)}`, undefined],
      [`GET /v1/models HTTP/1.1\r\nHost: x\r\n${Array.from({ length: 3000 }, (_, i) => `x-h${i}: v`).join('\r\n')}`, undefined],
      [`GET /v1/models?${'a'.repeat(70_000)} HTTP/1.1\r\nHost: x`, undefined],
      [`FOO /v1/models HTTP/1.1\r\nHost: x`, undefined],
      [`GET /v1/models HTTP/9.9\r\nHost: x`, undefined],
      [`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${fuzzKey.key}\r\nContent-Type: application/json\r\nContent-Length: 500`, Buffer.from('{}')],
      [`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${fuzzKey.key}\r\nContent-Length: 2\r\nContent-Length: 3`, Buffer.from('{}')],
      [`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${fuzzKey.key}\r\nTransfer-Encoding: chunked\r\nContent-Length: 2`, Buffer.from('{}')],
      [`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${fuzzKey.key}\r\nTransfer-Encoding: chunked`, Buffer.from('zz\r\n{}\r\n0\r\n\r\n')],
      [`GET /v1/models/%zz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${fuzzKey.key}`, undefined],
      [`GET /admin/keys/%E0%A4%A HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN_TOKEN}`, undefined],
      [`GET /v1/models/${'m'.repeat(500)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${fuzzKey.key}`, undefined],
      [`GET /admin/keys/${'k'.repeat(500)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN_TOKEN}`, undefined],
    ];
    for (const [head, body] of cases) {
      const res = await rawRequest(gw.url, head, body, true);
      expect(res.headers['set-cookie']).toBeUndefined();
      expect(res.headers['x-injected']).toBeUndefined();
      check(res, head.slice(0, 100));
    }
    await expectStillHealthy();
  });

  it('connection-level and router errors are OpenAI-shaped', async () => {
    for (const head of [`GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\rb`, 'GET /v1/models/%zz HTTP/1.1\r\nHost: x', `GET /v1/models HTTP/1.1\r\nHost: x\r\nx-big: ${'b'.repeat(20_000)}`]) {
      const res = await rawRequest(gw.url, head);
      expect(res.status).toBeGreaterThanOrEqual(400);
      expectOpenAIError(res.body, head.slice(0, 60));
    }
  });

  it('deep nesting in a pass-through field is refused with a 400, not a stack overflow', async () => {
    for (const [field, levels] of [['content', 10_000], ['tools', 10_000], ['name', 1000], ['metadata', 129]] as const) {
      const body = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],${JSON.stringify(field === 'content' ? 'x' : field)}:${deep(levels)}}`;
      const res = await send('POST', '/v1/chat/completions', [['Authorization', `Bearer ${fuzzKey.key}`], ['Content-Type', 'application/json']], Buffer.from(field === 'content' ? `{"model":"gpt-4o-mini","messages":[{"role":"user","content":${deep(levels)}}]}` : body));
      expect(res.status, field).toBe(400);
      expectOpenAIError(res.body);
    }
    // A reasonably deep tool schema still passes.
    const ok = await send('POST', '/v1/chat/completions', [['Authorization', `Bearer ${fuzzKey.key}`], ['Content-Type', 'application/json']], Buffer.from(`{"model":"gpt-4o-mini","max_tokens":3,"messages":[{"role":"user","content":"hi"}],"tools":${nestAt(40, '1')}}`));
    expect(ok.status).toBe(200);
  });
});

describe('fuzz: admin API', () => {
  const adminPath = (ids: fc.Arbitrary<string>) =>
    fc.oneof(
      fc.constant('/admin/keys'),
      ids.map((id) => `/admin/keys/${id}`),
      ids.map((id) => `/admin/keys/${id}/rotate`),
      fc.constant('/admin/cache'),
      fc.constant('/admin/usage'),
      fc.constant('/admin/usage/events'),
      pathSegment.map((s) => `/admin/${s}`),
      fc.constantFrom('/admin', '/admin/', '/admin/keys/', '/admin//keys', '/v1/../admin/keys', '/admin/%6beys'),
    );
  const adminQuery = fc.oneof(
    query,
    fc.constantFrom('?include=quota', '?keyId=__proto__', '?from=0&to=99999999999999', '?from=2020-01-01&to=2020-01-02', '?groupBy=day,hour', '?groupBy=constructor', '?format=csv&limit=5', '?format=xml', '?limit=0', '?limit=-1', '?since=abc', '?limit=1e3', '?after=__proto__', '?after=key_%7B%7D', '?limit=2&after=key_missing'),
    fc.tuple(fc.constantFrom('from', 'to', 'keyId', 'model', 'groupBy', 'since', 'format', 'limit', 'include', 'after'), fc.string({ maxLength: 20 })).map(([k, v]) => `?${k}=${encodeURIComponent(v)}`),
  );
  const adminBody = fc.oneof(
    bodyBytes,
    fc
      .tuple(fc.constantFrom('name', 'models', 'limits', 'cache', 'metadata', '__proto__', 'constructor', 'hash', 'id', 'revokedAt'), hostileValue)
      .map(([k, v]) => Buffer.from(`{"name":"fuzzed",${JSON.stringify(k)}:${v}}`)),
    fc.constantFrom('{"limits":{"__proto__":{"rpm":1}}}', '{"limits":{"rpm":-1}}', '{"limits":{"rpm":1e400}}', '{"limits":{"usdPerDay":"1"}}', '{"models":[""]}', '{"metadata":{"__proto__":"x"}}', '{"name":"x","hash":"0000"}', '{"name":"   "}').map((s) => Buffer.from(s)),
  );

  it('with the admin token: hostile bodies, paths and queries never break it, nor touch the fuzz key', async () => {
    // With the token, mutating routes only ever name the victim key (or ids that do not exist).
    const ids = fc.oneof(fc.constant(victim.id), pathSegment);
    await fc.assert(
      fc.asyncProperty(method, adminPath(ids), adminQuery, adminBody, contentType, async (m, p, q, body, ct) => {
        const headers: [string, string][] = [['Authorization', `Bearer ${ADMIN_TOKEN}`]];
        if (ct !== undefined) headers.push(['Content-Type', ct]);
        const withBody = m === 'POST' || m === 'PATCH' || m === 'PUT';
        const res = await send(m, p + q, headers, withBody ? body : undefined);
        check(res, `${m} ${p + q} ct=${ct} body=${body?.subarray(0, 120).toString('latin1')}`, m);
        // Never a secret hash in any answer.
        expect(res.body).not.toMatch(/"hash"/);
      }),
      { numRuns: RUNS.admin, interruptAfterTimeLimit: 20_000 },
    );
    await expectStillHealthy();
  }, 30_000);

  it('without the token, every route and method is refused, whatever the key id, body or query', async () => {
    const ids = fc.oneof(fc.constant(fuzzKey.id), fc.constant(victim.id), pathSegment);
    const badAuth = fc.constantFrom<Auth>('none', 'wrong', 'basic', 'lowercase', 'garbage', 'valid');
    // With the token a fuzzed body may legitimately create a key; without it, none may appear.
    const keysBefore = await keyCount();
    await fc.assert(
      fc.asyncProperty(fc.constantFrom('GET', 'POST', 'PATCH', 'DELETE', 'PUT'), adminPath(ids), adminQuery, adminBody, badAuth, headerValue, async (m, p, q, body, who, garbage) => {
        // 'valid' here is the fuzz key: a gateway key is no admin token.
        const res = await send(m, p + q, [...authHeaders(who, fuzzKey.key, garbage), ['Content-Type', 'application/json']], m === 'GET' || m === 'DELETE' ? undefined : body);
        check(res, `${m} ${p + q} auth=${who}`, m);
        expect(res.status, `${m} ${p + q}`).not.toBe(200);
        expect(res.status, `${m} ${p + q}`).not.toBe(201);
      }),
      { numRuns: RUNS.adminAnonymous, interruptAfterTimeLimit: 8_000 },
    );
    expect(await keyCount()).toBe(keysBefore);
    await expectStillHealthy();
  }, 15_000);
});

describe('after the fuzz', () => {
  it('the gateway still serves a normal request, and nothing was polluted', async () => {
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${fuzzKey.key}`, 'content-type': 'application/json' },
      body: validChat,
    });
    expect(res.status).toBe(200);
    await expectStillHealthy();
    const errors = gw.logs.lines.filter((l) => (l.level as number) >= 50);
    expect(errors.map((l) => l.msg)).toEqual([]);
  });
});
