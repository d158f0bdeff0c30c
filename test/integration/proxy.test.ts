// Validation, forwarding, streaming and failure mapping, over real HTTP to the fake upstream.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { startGateway, UPSTREAM_KEY, type Gateway } from '../helpers/gateway.js';

let gw: Gateway;
let key: string;

beforeAll(async () => {
  gw = await startGateway({
    env: { BODY_LIMIT_BYTES: '4096', OPENAI_ORGANIZATION: 'org-acme', OPENAI_PROJECT: 'proj_42', UPSTREAM_HEADERS_TIMEOUT_MS: '400' },
  });
  ({ key } = await gw.createKey({ name: 'proxy-tests' }));
});
afterAll(() => gw.close());
afterEach(() => {
  gw.fake.reset();
  gw.fake.setStreamChunkDelay(0);
});

function post(path: string, body: unknown, headers: Record<string, string> = {}) {
  return fetch(`${gw.url}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

const chat = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] };

describe('validation', () => {
  it.each([
    [{ messages: chat.messages }, 'model', 'missing_required_parameter'],
    [{ model: 'gpt-4o-mini' }, 'messages', 'missing_required_parameter'],
    [{ ...chat, messages: [{ content: 'no role' }] }, 'messages[0].role', 'missing_required_parameter'],
    [{ ...chat, temperature: 2.5 }, 'temperature', 'decimal_above_max_value'],
    [{ ...chat, top_p: -1 }, 'top_p', 'decimal_below_min_value'],
    [{ ...chat, n: 0 }, 'n', 'integer_below_min_value'],
    [{ ...chat, max_tokens: 'many' }, 'max_tokens', 'invalid_type'],
    [{ ...chat, max_completion_tokens: 1.5 }, 'max_completion_tokens', 'invalid_type'],
    [{ ...chat, stream: 'yes' }, 'stream', 'invalid_type'],
    [{ ...chat, max_tokens: Number.MAX_SAFE_INTEGER, n: 2 }, 'max_tokens', 'integer_above_max_value'],
    [{ ...chat, messages: [] }, 'messages', 'empty_array'],
    [{ ...chat, model: '' }, 'model', 'empty_string'],
    [{ ...chat, stream_options: { include_usage: 'yes' } }, 'stream_options.include_usage', 'invalid_type'],
    // As OpenAI: stream_options only with stream (a cache hit would otherwise answer 200 what a miss answers 400).
    [{ ...chat, stream_options: { include_usage: true } }, 'stream_options', 'invalid_value'],
    [{ ...chat, stream: false, stream_options: { include_usage: true } }, 'stream_options', 'invalid_value'],
    [{ ...chat, stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop', 'array_above_max_length'],
    [{ ...chat, tools: { type: 'function' } }, 'tools', 'invalid_type'],
  ])('rejects %j naming %s', async (body, param, code) => {
    const res = await post('/v1/chat/completions', body);
    expect(res.status).toBe(400);
    const json = (await res.json()) as { error: Record<string, unknown> };
    expect(json.error).toMatchObject({ type: 'invalid_request_error', param, code });
    expect(typeof json.error.message).toBe('string');
  });

  it("words a refused field as OpenAI does, not as the validator does", async () => {
    const cases: [unknown, string, string, string][] = [
      [{ ...chat, temperature: 3 }, 'temperature', 'decimal_above_max_value', "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 3 instead."],
      [{ ...chat, n: 0 }, 'n', 'integer_below_min_value', "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead."],
      [{ ...chat, max_tokens: 0 }, 'max_tokens', 'integer_below_min_value', "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got 0 instead."],
      [{ ...chat, n: '2' }, 'n', 'invalid_type', "Invalid type for 'n': expected an integer, but got a string instead."],
      [{ ...chat, messages: [] }, 'messages', 'empty_array', "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead."],
      [{ model: 'gpt-3.5-turbo-instruct' }, 'prompt', 'missing_required_parameter', "Missing required parameter: 'prompt'."],
    ];
    for (const [body, param, code, message] of cases) {
      const path = (body as { prompt?: unknown; messages?: unknown }).messages === undefined ? '/v1/completions' : '/v1/chat/completions';
      const res = await post(path, body);
      expect(res.status, message).toBe(400);
      expect(((await res.json()) as { error: unknown }).error).toEqual({ type: 'invalid_request_error', param, code, message });
    }
    const embedding = await post('/v1/embeddings', { model: 'text-embedding-3-small' });
    expect(((await embedding.json()) as { error: unknown }).error).toMatchObject({ param: 'input', code: 'missing_required_parameter' });

    // Enums and unions were zod's words ("Invalid option: expected one of ...", "Invalid input").
    const embeddingCases: [unknown, string, string, string][] = [
      [{ encoding_format: 'int8' }, 'encoding_format', 'invalid_value', "Invalid value: 'int8'. Supported values are: 'float' and 'base64'."],
      [{ input: 5 }, 'input', 'invalid_type', "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."],
      [{ input: [] }, 'input', 'empty_array', "Invalid 'input': empty array. Expected an array with minimum length 1, but got an empty array instead."],
    ];
    const long = 'Z'.repeat(3000);
    embeddingCases.push([{ encoding_format: long }, 'encoding_format', 'invalid_value', `Invalid value: '${'Z'.repeat(100)}...'. Supported values are: 'float' and 'base64'.`]);
    for (const [extra, param, code, message] of embeddingCases) {
      const res = await post('/v1/embeddings', { model: 'text-embedding-3-small', input: 'x', ...(extra as object) });
      expect(res.status, message).toBe(400);
      expect(((await res.json()) as { error: unknown }).error).toEqual({ type: 'invalid_request_error', param, code, message });
    }
  });

  it('validates completions and embeddings too', async () => {
    expect((await post('/v1/completions', { model: 'gpt-3.5-turbo-instruct', prompt: 42 })).status).toBe(400);
    const unstreamed = await post('/v1/completions', { model: 'gpt-3.5-turbo-instruct', prompt: 'x', stream_options: { include_usage: true } });
    expect(unstreamed.status).toBe(400);
    expect(((await unstreamed.json()) as { error: { param: string } }).error.param).toBe('stream_options');
    expect((await post('/v1/completions', { model: 'gpt-3.5-turbo-instruct', prompt: 'x', stream: true, stream_options: { include_usage: true } })).status).toBe(200);
    const res = await post('/v1/embeddings', { model: 'text-embedding-3-small', input: [] });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { param: string } }).error.param).toBe('input');
  });

  it('answers malformed JSON with 400', async () => {
    const res = await post('/v1/chat/completions', '{"model": "gpt-4o-mini", ');
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ error: { type: 'invalid_request_error', code: 'invalid_json' } });
  });

  it('answers a body that is not an object with 400', async () => {
    const res = await post('/v1/chat/completions', '[1,2,3]');
    expect(res.status).toBe(400);
    // The engines path too: the engine's model was spread into the array, a 400 for a missing prompt.
    const engines = await post('/v1/engines/gpt-3.5-turbo-instruct/completions', '["Say hi", 5]');
    expect(engines.status).toBe(400);
    expect(await engines.json()).toMatchObject({ error: { code: 'invalid_json', message: 'The request body must be a JSON object.' } });
  });

  it('records a request refused as invalid against its endpoint and the model it named', async () => {
    const before = gw.logs.requests().length;
    expect((await post('/v1/completions', { model: 'gpt-3.5-turbo-instruct' })).status).toBe(400);
    expect((await post('/v1/engines/gpt-3.5-turbo-instruct/completions', '[1]')).status).toBe(400);
    expect((await post('/v1/engines/gpt-3.5-turbo-instruct/completions', { prompt: 'x', temperature: 9 })).status).toBe(400);
    expect((await post('/v1/embeddings', { model: 'text-embedding-3-small' })).status).toBe(400);
    expect((await post('/v1/chat/completions', { ...chat, temperature: 5 })).status).toBe(400);
    // A name the price table does not know is recorded as none (the log line keeps it apart).
    expect((await post('/v1/chat/completions', { ...chat, model: 'my-own-model', temperature: 5 })).status).toBe(400);
    await expect.poll(() => gw.logs.requests().length).toBe(before + 6);
    const lines = gw.logs.requests().slice(before);
    expect(lines.map((l) => [l.endpoint, l.model, l.status])).toEqual([
      ['completions', 'gpt-3.5-turbo-instruct', 400],
      ['completions', null, 400],
      ['completions', 'gpt-3.5-turbo-instruct', 400],
      ['embeddings', 'text-embedding-3-small', 400],
      ['chat.completions', 'gpt-4o-mini', 400],
      ['chat.completions', null, 400],
    ]);
    expect(lines.at(-1)).toMatchObject({ modelRefused: 'my-own-model' });
  });

  it('answers a body over the limit with 413', async () => {
    const res = await post('/v1/chat/completions', { ...chat, messages: [{ role: 'user', content: 'x'.repeat(5000) }] });
    expect(res.status).toBe(413);
    expect(await res.json()).toMatchObject({ error: { type: 'invalid_request_error', code: 'request_too_large' } });
  });

  it('answers an unknown route with 404 before reading its body, however large', async () => {
    // BODY_LIMIT_BYTES is 4096 here: a file upload to /v1/files was told 413, shrink it.
    const upload = await post('/v1/files', 'A'.repeat(100_000), { 'content-type': 'multipart/form-data; boundary=x' });
    expect(upload.status).toBe(404);
    expect(await upload.json()).toMatchObject({ error: { message: 'Invalid URL (POST /v1/files)', type: 'invalid_request_error' } });
    const json = await post('/v1/batches', { input_file_id: 'x'.repeat(10_000) });
    expect(json.status).toBe(404);
    // /admin refuses a caller without its token first, unknown URL or not: no map of its routes.
    const admin = await fetch(`${gw.url}/admin/nope`, { method: 'POST', body: 'A'.repeat(100_000) });
    expect(admin.status).toBe(401);
    // The connection is still good for the next request.
    expect((await post('/v1/chat/completions', chat)).status).toBe(200);
  });

  it('closes the connection of a request answered before its body came: a 404, or a 401 for a bad key', async () => {
    // Kept alive, Node read and threw away whatever the client went on sending (2^40 bytes declared).
    const answered = (path: string, authorization: string) =>
      new Promise<{ head: string; closed: boolean }>((resolve, reject) => {
        const { hostname, port } = new URL(gw.url);
        const socket = connect(Number(port), hostname);
        let head = '';
        let timer: NodeJS.Timeout | undefined;
        socket.on('data', (d: Buffer) => {
          head += d.toString('latin1');
          // The answer is in: give the server a moment to close, as it should.
          timer ??= setTimeout(() => {
            socket.destroy();
            resolve({ head, closed: false });
          }, 1500);
        });
        socket.on('error', reject);
        socket.on('close', () => {
          clearTimeout(timer);
          resolve({ head, closed: true });
        });
        socket.write(`POST ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: ${authorization}\r\nContent-Type: application/json\r\nContent-Length: ${2 ** 40}\r\n\r\n`);
        socket.write('x'.repeat(1024));
      });
    for (const [path, authorization, status] of [
      ['/v1/files', `Bearer ${key}`, 404],
      ['/v1/chat/completions', 'Bearer tg-not-a-key', 401],
    ] as const) {
      const { head, closed } = await answered(path, authorization);
      expect(head.split('\r\n')[0], path).toBe(`HTTP/1.1 ${status} ${status === 404 ? 'Not Found' : 'Unauthorized'}`);
      expect(head.toLowerCase(), path).toContain('connection: close');
      expect(closed, path).toBe(true);
    }
  });

  it('answers an unknown route with 404 in the same shape', async () => {
    const res = await post('/v1/no/such/thing', chat);
    expect(res.status).toBe(404);
    // OpenAI's body: code null.
    expect(await res.json()).toEqual({ error: { message: 'Invalid URL (POST /v1/no/such/thing)', type: 'invalid_request_error', code: null, param: null } });
    // Whatever its body: an upload to an endpoint the gateway does not route is a 404, not a 400 for bad JSON.
    const form = new FormData();
    form.append('purpose', 'batch');
    form.append('file', new Blob(['{}']), 'a.jsonl');
    for (const path of ['/v1/files', '/v1/audio/transcriptions']) {
      const upload = await fetch(`${gw.url}${path}`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: form });
      expect(upload.status, path).toBe(404);
      expect(((await upload.json()) as { error: { message: string } }).error.message).toBe(`Invalid URL (POST ${path})`);
    }
    const broken = await post('/v1/files', '{"not json');
    expect(broken.status).toBe(404);
  });

  it('accepts JSON sent without a JSON content type (curl -d)', async () => {
    const res = await post('/v1/chat/completions', chat, { 'content-type': 'application/x-www-form-urlencoded' });
    expect(res.status).toBe(200);
    gw.fake.reset();
  });

  it('never calls upstream for any of these', () => {
    // afterEach resets between tests; every test above that expected a 4xx left the log empty.
    expect(gw.fake.requests).toHaveLength(0);
  });
});

describe('rejected requests never reach upstream', () => {
  it('sends nothing upstream for 400, 413, 404 and 401', async () => {
    await post('/v1/chat/completions', { ...chat, temperature: 9 });
    await post('/v1/chat/completions', '{oops');
    await post('/v1/chat/completions', { ...chat, messages: [{ role: 'user', content: 'x'.repeat(5000) }] });
    await post('/v1/unknown', chat);
    await post('/v1/chat/completions', chat, { authorization: 'Bearer tg-wrong' });
    expect(gw.fake.requests).toHaveLength(0);
  });
});

describe('forwarding', () => {
  it('uses the server key and configured org/project, never the client key or cookies', async () => {
    const res = await post('/v1/chat/completions', chat, { cookie: 'session=abc', 'x-forwarded-for': '10.0.0.1' });
    expect(res.status).toBe(200);
    const sent = gw.fake.requests[0]!;
    expect(sent.headers.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
    expect(sent.headers['openai-organization']).toBe('org-acme');
    expect(sent.headers['openai-project']).toBe('proj_42');
    expect(sent.headers.cookie).toBeUndefined();
    expect(sent.headers['x-forwarded-for']).toBeUndefined();
    expect(JSON.stringify(sent.headers)).not.toContain(key);
  });

  it('forwards the body byte for byte', async () => {
    const raw = '{ "messages":[{"role":"user","content":"caf\\u00e9 ☕"}],  "model":"gpt-4o-mini", "seed": 1 }';
    await post('/v1/chat/completions', raw);
    expect(gw.fake.requests[0]!.rawBody).toBe(raw);
  });

  it('takes any integer seed, 64-bit ones too, and forwards its exact digits', async () => {
    const raw = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"seed":18446744073709551615}';
    const res = await post('/v1/chat/completions', raw);
    expect(res.status).toBe(200);
    expect(gw.fake.requests[0]!.rawBody).toBe(raw);
    // Where the gateway re-serialises the body (a stream it asks usage for, an engine path naming the
    // model), the digits survive too: JSON.parse alone would send 18446744073709552000.
    await (await post('/v1/chat/completions', `${raw.slice(0, -1)},"stream":true}`)).text();
    const streamed = gw.fake.requests.at(-1)!.rawBody;
    expect(streamed).toContain('"seed":18446744073709551615');
    expect(streamed).toContain('"include_usage":true');
    await post('/v1/engines/gpt-3.5-turbo-instruct/completions', '{"prompt":"x","max_tokens":1,"seed":-9223372036854775808}');
    expect(gw.fake.requests.at(-1)!.rawBody).toContain('"seed":-9223372036854775808');
    const fractional = await post('/v1/chat/completions', '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"seed":1.5}');
    expect(fractional.status).toBe(400);
    expect(((await fractional.json()) as { error: { param: string } }).error.param).toBe('seed');
  });

  it('returns upstream status, body and useful headers, and hides the org and its rate limits', async () => {
    const res = await post('/v1/chat/completions', chat);
    expect(res.headers.get('openai-processing-ms')).toMatch(/^\d+$/);
    expect(res.headers.get('x-upstream-request-id')).toMatch(/^req_/);
    expect(res.headers.get('openai-organization')).toBeNull();
    expect(res.headers.get('x-ratelimit-limit-requests')).toBeNull();
    expect(res.headers.get('content-type')).toContain('application/json');
  });

  it('keeps upstream errors as they are', async () => {
    const body = { error: { message: 'Rate limit reached for requests', type: 'requests', param: null, code: 'rate_limit_exceeded' } };
    gw.fake.failNext(1, 429, body, { 'retry-after': '7' });
    const res = await post('/v1/chat/completions', chat);
    expect(res.status).toBe(429);
    expect(res.headers.get('retry-after')).toBe('7');
    expect(await res.json()).toEqual(body);
  });

  it('survives an upstream that reports nonsense usage (fractions, huge numbers)', async () => {
    gw.fake.failNext(1, 200, {
      id: 'chatcmpl-odd',
      object: 'chat.completion',
      created: 1,
      model: 'gpt-4o-mini',
      choices: [{ index: 0, message: { role: 'assistant', content: 'odd' }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 2.5, completion_tokens: 1e300, total_tokens: -1 },
    });
    const res = await post('/v1/chat/completions', chat);
    expect(res.status).toBe(200);
    expect((await fetch(`${gw.url}/healthz`)).status).toBe(200);
  });

  it('answers 502 when upstream drops the connection', async () => {
    gw.fake.dropNext(1);
    const res = await post('/v1/chat/completions', chat);
    expect(res.status).toBe(502);
    expect(await res.json()).toMatchObject({ error: { type: 'server_error', code: 'upstream_unreachable' } });
  });

  it('answers 504 when upstream does not answer in time', async () => {
    gw.fake.hangNext(1);
    const res = await post('/v1/chat/completions', chat);
    expect(res.status).toBe(504);
    expect(await res.json()).toMatchObject({ error: { type: 'server_error', code: 'upstream_timeout' } });
  });

  it('serves the legacy engines path of openai-python 0.x as /v1/completions', async () => {
    // What openai.Completion.create(engine="text-davinci-002", prompt=..., max_tokens=100, n=1,
    // stop=None, temperature=0.5) sends.
    const body = { prompt: 'Once upon a time', max_tokens: 100, n: 1, stop: null, temperature: 0.5 };
    const res = await post('/v1/engines/text-davinci-002/completions', body);
    expect(res.status).toBe(200);
    const json = (await res.json()) as { object: string; model: string; choices: { text: string }[] };
    expect(json.object).toBe('text_completion');
    expect(json.choices).toHaveLength(1);
    const sent = gw.fake.requests[0]!;
    expect(sent.path).toBe('/v1/completions');
    expect(sent.body).toEqual({ ...body, model: 'text-davinci-002' });
  });

  it('serves the engines path of openai-python 0.x embeddings as /v1/embeddings', async () => {
    // What openai.Embedding.create(engine="text-embedding-ada-002", input=["a", "b"]) sends.
    const body = { input: ['a', 'b'], encoding_format: 'base64' };
    const res = await post('/v1/engines/text-embedding-ada-002/embeddings', body);
    expect(res.status).toBe(200);
    expect(((await res.json()) as { data: unknown[] }).data).toHaveLength(2);
    const sent = gw.fake.requests[0]!;
    expect(sent.path).toBe('/v1/embeddings');
    expect(sent.body).toEqual({ ...body, model: 'text-embedding-ada-002' });
    await expect.poll(() => gw.logs.requests().at(-1)).toMatchObject({ endpoint: 'embeddings', model: 'text-embedding-ada-002', status: 200 });
  });

  it('takes max_tokens 0 on legacy completions, as OpenAI does (echo + logprobs score a prompt); chat still needs 1', async () => {
    const scored = await gw.sdk(key).completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: 'Say this is a test', max_tokens: 0, echo: true, logprobs: 0 });
    expect(scored.usage).toMatchObject({ completion_tokens: 0 });
    const body = { prompt: 'Say this is a test', max_tokens: 0, echo: true, logprobs: 0 };
    const engines = await post('/v1/engines/gpt-3.5-turbo-instruct/completions', body);
    expect(engines.status).toBe(200);
    expect(gw.fake.requests.map((r) => (r.body as { max_tokens: number }).max_tokens)).toEqual([0, 0]);

    const chatZero = await post('/v1/chat/completions', { ...chat, max_tokens: 0 });
    expect(chatZero.status).toBe(400);
    expect(await chatZero.json()).toMatchObject({ error: { type: 'invalid_request_error', param: 'max_tokens', code: 'integer_below_min_value' } });
    expect(gw.fake.requests).toHaveLength(2);
  });
});

describe('model list of a key with an allow-list', () => {
  let limited: string;
  beforeAll(async () => {
    ({ key: limited } = await gw.createKey({ name: 'models-allow-list', models: ['gpt-4o-mini', 'text-embedding-3-*'] }));
  });
  const list = () => fetch(`${gw.url}/v1/models`, { headers: { authorization: `Bearer ${limited}` } });

  it('lists only the allowed models', async () => {
    const res = await list();
    expect(res.status).toBe(200);
    const ids = ((await res.json()) as { data: { id: string }[] }).data.map((m) => m.id);
    expect(ids).toContain('gpt-4o-mini');
    expect(ids).toContain('text-embedding-3-small');
    expect(ids).not.toContain('gpt-4o');
    expect(ids.every((id) => id === 'gpt-4o-mini' || id.startsWith('text-embedding-3-'))).toBe(true);
  });

  it('answers 502 when upstream sends a 200 that is not a model list', async () => {
    const bodies: [unknown, Record<string, string>][] = [
      ['<html><body>Bad gateway</body></html>', { 'content-type': 'text/html' }],
      ['{"data":[', { 'content-type': 'application/json' }],
      [{ object: 'list', data: {} }, {}],
      [null, {}],
    ];
    for (const [body, headers] of bodies) {
      gw.fake.failNext(1, 200, body, headers);
      const res = await list();
      expect(res.status, JSON.stringify(body)).toBe(502);
      expect(await res.json()).toMatchObject({ error: { type: 'server_error', code: 'upstream_unreachable' } });
    }
  });

  it('drops entries that are not models with a string id', async () => {
    gw.fake.failNext(1, 200, { object: 'list', data: [null] });
    let res = await list();
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ object: 'list', data: [] });

    const good = { id: 'gpt-4o-mini', object: 'model', created: 1, owned_by: 'system' };
    gw.fake.failNext(1, 200, { object: 'list', data: [null, 'gpt-4o-mini', { id: 7 }, { object: 'model' }, [good], good, { id: 'gpt-4o' }] });
    res = await list();
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ object: 'list', data: [good] });
  });
});

/** Reads an SSE response event by event. */
async function* sseEvents(res: Response): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    let end: number;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      yield buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
    }
  }
}

describe('streaming', () => {
  it('relays each event while upstream is still streaming', async () => {
    gw.fake.setStreamChunkDelay(30);
    const res = await post('/v1/chat/completions', { ...chat, stream: true });
    expect(res.headers.get('content-type')).toContain('text/event-stream');
    const events: string[] = [];
    let activeAtFirstEvent = -1;
    for await (const e of sseEvents(res)) {
      if (events.length === 0) activeAtFirstEvent = gw.fake.activeStreams();
      events.push(e);
    }
    // The first event reached us while upstream still had the rest to send: nothing was buffered.
    expect(activeAtFirstEvent).toBe(1);
    expect(events.at(-1)).toBe('data: [DONE]');
    // No usage chunk: the client did not ask for one, though the gateway did.
    expect(events.some((e) => e.includes('"usage":{'))).toBe(false);
    expect((gw.fake.requests[0]!.body as Record<string, any>).stream_options).toEqual({ include_usage: true });
  });

  it('keeps the usage chunk when the client asked for it', async () => {
    const res = await post('/v1/chat/completions', { ...chat, stream: true, stream_options: { include_usage: true } });
    const events: string[] = [];
    for await (const e of sseEvents(res)) events.push(e);
    expect(events.at(-2)).toContain('"usage":{');
    // The client's own body went through unchanged.
    expect(gw.fake.requests[0]!.rawBody).toBe(JSON.stringify({ ...chat, stream: true, stream_options: { include_usage: true } }));
  });

  it('streams legacy completions', async () => {
    const res = await post('/v1/completions', { model: 'gpt-3.5-turbo-instruct', prompt: 'Hello', stream: true });
    const events: string[] = [];
    for await (const e of sseEvents(res)) events.push(e);
    expect(events.at(-1)).toBe('data: [DONE]');
    expect(events.some((e) => e.includes('"usage":{'))).toBe(false);
  });

  it('aborts the upstream request as soon as the client disconnects', async () => {
    gw.fake.setStreamChunkDelay(50);
    await new Promise<void>((resolve, reject) => {
      const req = httpRequest(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      });
      req.on('response', (res) => {
        res.once('data', () => {
          req.destroy(); // the client walks away after the first event
          resolve();
        });
      });
      req.on('error', (err) => (err.message.includes('socket hang up') ? undefined : reject(err)));
      req.end(JSON.stringify({ ...chat, stream: true }));
    });
    await expect.poll(() => gw.fake.abortedStreams(), { timeout: 2000 }).toBe(1);
    expect(gw.fake.activeStreams()).toBe(0);
  });
});

describe('request ids', () => {
  it('echoes a client x-request-id and makes one otherwise', async () => {
    const mine = await post('/v1/chat/completions', chat, { 'x-request-id': 'my-trace-123' });
    expect(mine.headers.get('x-request-id')).toBe('my-trace-123');
    const made = await fetch(`${gw.url}/v1/nope`);
    expect(made.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('replaces an unsafe x-request-id instead of echoing it', async () => {
    const res = await post('/v1/chat/completions', chat, { 'x-request-id': 'a b"c<script>' });
    expect(res.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
  });
});
