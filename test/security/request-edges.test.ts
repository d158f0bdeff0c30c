// What a client can send at the edges of HTTP: a stalled upload, no Host, an Expect header, long
// model ids in the path, JSON labelled text/plain, and a server secret pasted into X-Request-Id.
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_TOKEN, startGateway, type Gateway } from '../helpers/gateway.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';
import { expectOpenAIError, rawRequest } from './raw-http.js';
import { DEFAULT_MAX_BODY_NODES } from '../../src/openai/endpoints.js';

let gw: Gateway;
let key: string;

beforeAll(async () => {
  gw = await startGateway({
    env: { REDIS_URL: testRedisUrl(), REDIS_PREFIX: uniquePrefix(), CLIENT_REQUEST_TIMEOUT_MS: '1000', METRICS_TOKEN: 'metrics-token-0123456789' },
  });
  key = (await gw.createKey()).key;
});
afterAll(() => gw.close());

const chat = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hello edges' }] };

function post(path: string, body: unknown) {
  return fetch(`${gw.url}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
}

describe('large bodies', () => {
  it("holds OpenAI's bounds on a chat request's lists, in OpenAI's words: 2048 messages, 128 tools, 4 stop sequences", async () => {
    const before = gw.fake.requests.length;
    const message = { role: 'user', content: 'hi' };
    const tool = { type: 'function', function: { name: 'f', parameters: { type: 'object', properties: {} } } };
    for (const [body, param, max, length] of [
      [{ ...chat, messages: Array(2049).fill(message) }, 'messages', 2048, 2049],
      [{ ...chat, tools: Array(129).fill(tool) }, 'tools', 128, 129],
      [{ ...chat, stop: ['a', 'b', 'c', 'd', 'e', 'f'] }, 'stop', 4, 6],
    ] as const) {
      const res = await post('/v1/chat/completions', body);
      expect(res.status, param).toBe(400);
      expect(((await res.json()) as { error: unknown }).error).toEqual({
        type: 'invalid_request_error',
        param,
        code: 'array_above_max_length',
        message: `Invalid '${param}': array too long. Expected an array with maximum length ${max}, but got an array with length ${length} instead.`,
      });
    }
    expect(gw.fake.requests.length).toBe(before);
    const full = await post('/v1/chat/completions', { ...chat, max_tokens: 3, messages: Array(2048).fill(message), tools: Array(128).fill(tool), stop: ['a', 'b', 'c', 'd'] });
    expect(full.status).toBe(200);
  });

  it('refuses a body of more objects, arrays and fields than any real request holds, before the work they would cost', async () => {
    // 120,000 small objects in a pass-through field (~1.6 MB): each would cost validation, the
    // cache name and the log's walk, with every other request waiting.
    const res = await post('/v1/chat/completions', { ...chat, metadata_blob: Array.from({ length: 120_000 }, (_, i) => ({ i })) });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: unknown }).error).toMatchObject({
      type: 'invalid_request_error',
      code: 'invalid_value',
      message: `The request body holds too many objects, arrays and fields (at most ${DEFAULT_MAX_BODY_NODES}).`,
    });
    // Long lists of numbers are not counted: token ids (500,000 here) are real inputs.
    const tokens = await post('/v1/embeddings', { model: 'text-embedding-3-small', input: Array.from({ length: 1000 }, () => Array(500).fill(1)) });
    expect(tokens.status).toBe(200);
    // A large but real request passes: 2048 messages with a tool call each, and 128 tools.
    const call = { role: 'assistant', content: null, tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: '{}' } }] };
    const tool = { type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { a: { type: 'string' } }, required: ['a'] } } };
    const big = await post('/v1/chat/completions', { ...chat, max_tokens: 3, messages: [...Array(2047).fill(call), chat.messages[0]], tools: Array(128).fill(tool) });
    expect(big.status).toBe(200);
  });

  it('BODY_MAX_NODES sets the bound: larger for very large tool schemas, smaller for a tighter budget of work', async () => {
    const tight = await startGateway({ env: { BODY_MAX_NODES: '1000' } });
    try {
      const { key: tightKey } = await tight.createKey();
      const body = { ...chat, max_tokens: 3, messages: Array(400).fill(chat.messages[0]) }; // 1,203 nodes
      const send = (url: string, bearer: string) =>
        fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
      const refused = await send(tight.url, tightKey);
      expect(refused.status).toBe(400);
      expect(((await refused.json()) as { error: { message: string } }).error.message).toBe('The request body holds too many objects, arrays and fields (at most 1000).');
      expect((await send(gw.url, key)).status).toBe(200);
    } finally {
      await tight.close();
    }
  });

});

describe('a client that stops sending its request', () => {
  it('gets 408 in OpenAI shape and its connection closed, after CLIENT_REQUEST_TIMEOUT_MS', async () => {
    const { port } = new URL(gw.url);
    const socket = connect(Number(port), '127.0.0.1');
    const received: Buffer[] = [];
    socket.on('data', (d: Buffer) => received.push(d));
    socket.write(
      `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\n` +
        'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model":',
    );
    // Without the timeout the server waits for the other 991 bytes for ever, and this never closes.
    const closed = await new Promise<boolean>((resolve) => {
      const guard = setTimeout(() => resolve(false), 15_000);
      socket.on('close', () => {
        clearTimeout(guard);
        resolve(true);
      });
    });
    socket.destroy();
    expect(closed).toBe(true);
    const text = Buffer.concat(received).toString('utf8');
    expect(text).toMatch(/^HTTP\/1\.1 408 /);
    const body = text.slice(text.indexOf('\r\n\r\n') + 4);
    expectOpenAIError(body);
    expect(JSON.parse(body).error.code).toBe('request_timeout');
  });
});

describe('what Node itself would answer with an empty body', () => {
  it('a request without Host gets 400 in OpenAI shape, and is logged', async () => {
    const res = await rawRequest(gw.url, 'GET /v1/models HTTP/1.1');
    expect(res.status).toBe(400);
    expectOpenAIError(res.body);
    expect(JSON.parse(res.body).error.code).toBe('missing_host');
    await expect.poll(() => gw.logs.requests().some((l) => l.status === 400 && l.errorCode === 'missing_host')).toBe(true);
  });

  it('an Expect header other than 100-continue gets 417 in OpenAI shape', async () => {
    const res = await rawRequest(gw.url, 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 417-nope\r\nContent-Length: 2', '{}');
    expect(res.status).toBe(417);
    expectOpenAIError(res.body);
    expect(JSON.parse(res.body).error.code).toBe('expectation_failed');
  });
});

describe('model ids in the path', () => {
  it('takes fine-tuned ids longer than 100 characters, as it does in a body', async () => {
    const id = 'ft:gpt-4o-mini-2024-07-18:acme-corporation-research:customer-support-summarizer-v2-with-long-suffix:AbCdEf12';
    expect(id.length).toBeGreaterThan(100);
    const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
    const before = gw.fake.requests.length;
    const retrieved = await fetch(`${gw.url}/v1/models/${id}`, { headers });
    expect(retrieved.status).not.toBe(414);
    const legacy = await fetch(`${gw.url}/v1/engines/${id}/completions`, { method: 'POST', headers, body: JSON.stringify({ prompt: 'Hi', max_tokens: 5 }) });
    expect(legacy.status).not.toBe(414);
    // Both reached upstream, which alone judges whether the model exists.
    expect(gw.fake.requests.length).toBe(before + 2);
  });
});

describe('content types', () => {
  it('reads JSON sent as text/plain, as it does for every other content type', async () => {
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'text/plain' },
      body: JSON.stringify(chat),
    });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { object: string }).object).toBe('chat.completion');
  });
});

describe('Content-Type: application/json with an empty body', () => {
  const call = (method: string, path: string, headers: Record<string, string>, body?: string) =>
    fetch(`${gw.url}${path}`, { method, headers: { authorization: `Bearer ${ADMIN_TOKEN}`, ...headers }, body });
  const json = { 'content-type': 'application/json' };

  // Many clients send the header on every call: an empty body is no body.
  it('is no body on the routes that take none', async () => {
    const k = await gw.createKey();
    const rotate = await call('POST', `/admin/keys/${k.id}/rotate`, json, '');
    expect(rotate.status).toBe(200);
    expect(((await rotate.json()) as { key: string }).key).toMatch(/^tg-/);
    expect((await call('DELETE', '/admin/cache', json, '')).status).toBe(200);
    // fetch sends no Content-Length for a DELETE without a body: say it, as curl -X DELETE -H ... would.
    expect((await call('DELETE', `/admin/keys/${k.id}`, { ...json, 'content-length': '0' }, '')).status).toBe(200);
  });

  it('is reported, where a body is needed, as no body at all, and a malformed one is still invalid JSON', async () => {
    for (const [method, path, auth] of [
      ['POST', '/admin/keys', ADMIN_TOKEN],
      ['POST', '/v1/chat/completions', key],
    ] as const) {
      const headers = { authorization: `Bearer ${auth}` };
      const bare = await fetch(`${gw.url}${path}`, { method, headers: { ...headers, 'content-length': '0' } });
      const empty = await fetch(`${gw.url}${path}`, { method, headers: { ...headers, ...json }, body: '' });
      expect(empty.status, path).toBe(400);
      const [emptyBody, bareBody] = [await empty.text(), await bare.text()];
      expectOpenAIError(emptyBody);
      expect(JSON.parse(emptyBody), path).toEqual(JSON.parse(bareBody));
      // What the empty body is refused for: no body (a /v1 route says it must be a JSON object), not bad JSON.
      expect(JSON.parse(emptyBody).error.message, path).not.toMatch(/Unexpected end|empty|parse/i);
      const broken = await fetch(`${gw.url}${path}`, { method, headers: { ...headers, ...json }, body: '{"name":' });
      expect(broken.status, path).toBe(400);
      expect(((await broken.json()) as { error: { code: string } }).error.code, path).toBe('invalid_json');
    }
    const broken = await call('POST', `/admin/keys/${(await gw.createKey()).id}/rotate`, json, '{');
    expect(broken.status).toBe(400);
  });
});

describe('X-Request-Id', () => {
  it('is echoed when it is an id, never when it is the admin or metrics token', async () => {
    const idOf = async (given: string) => (await fetch(`${gw.url}/healthz`, { headers: { 'x-request-id': given } })).headers.get('x-request-id');
    expect(await idOf('trace-1234')).toBe('trace-1234');
    for (const secret of [ADMIN_TOKEN, 'metrics-token-0123456789']) {
      const id = await idOf(secret);
      expect(id).not.toBe(secret);
      expect(id).toMatch(/^[0-9a-f-]{36}$/);
    }
    expect(gw.logs.text).not.toContain(ADMIN_TOKEN);
  });
});
