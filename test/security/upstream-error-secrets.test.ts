// No server key in a relayed upstream error: OpenAI echoes the key it was sent in some errors, so
// every upstream error (any status, buffered or before or inside a stream, JSON or not) must reach
// the client, the SDK's error and the log with every key of the pool masked.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { APIError } from 'openai';
import { UPSTREAM_KEY, startGateway, type Gateway } from '../helpers/gateway.js';
import { startFakeOpenAI, type FakeOpenAI } from '../../src/fake-openai/server.js';
import { MASKED_KEY, createSecretMasker } from '../../src/upstream/redact.js';

/** The pool: an OpenAI key, a project key, and one that does not look like an OpenAI key at all. */
const POOL = [UPSTREAM_KEY, 'sk-proj-pool-second-secret-9f8e7d6c5b4a3210', 'azure-style-pool-secret-a1b2c3d4e5f60789'];
/** Not one of ours, but shaped like an OpenAI key: masked too. */
const STRAY = 'sk-svcacct-stray-key-shaped-text-5566778899';
const SECRETS = [...POOL, STRAY];

/** What OpenAI answers for a bad key, echoing every key (as a proxy in front of it might). */
const echoMessage = () => `Incorrect API key provided: ${POOL[0]}. Also tried: Bearer ${POOL[1]}, ${POOL[2]}; see ${STRAY}.`;
const echoError = (code = 'invalid_api_key') => ({
  error: { message: echoMessage(), type: 'invalid_request_error', param: null, code },
});

function expectNoSecret(text: string, label: string) {
  for (const secret of SECRETS) {
    expect(text, `${label} shows ${secret.slice(0, 8)}…`).not.toContain(secret);
    // Nor its tail, which a partial mask in OpenAI's style (sk-abc****6789) would leave.
    expect(text, `${label} shows the tail of ${secret.slice(0, 8)}…`).not.toContain(secret.slice(-12));
  }
}

const chat = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 5, ...extra });

async function call(gw: Gateway, key: string, path: string, body?: string) {
  const res = await fetch(gw.url + path, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body,
  });
  const text = await res.text();
  const headers = [...res.headers].map(([k, v]) => `${k}: ${v}`).join('\n');
  return { status: res.status, body: text, all: `${res.status}\n${headers}\n\n${text}` };
}

describe('upstream errors never show a server key', () => {
  let fake: FakeOpenAI;
  let gw: Gateway;
  let key: string;

  beforeAll(async () => {
    fake = await startFakeOpenAI(); // takes any key: every key of the pool is answered
    gw = await startGateway({
      fake,
      env: { OPENAI_API_KEYS: POOL.slice(1).join(','), LOG_LEVEL: 'trace', LOG_BODIES: 'true' },
    });
    key = (await gw.createKey()).key;
  });
  afterAll(async () => {
    await gw.close();
    await fake.close();
  });

  for (const status of [400, 403, 404, 422, 429, 500, 503]) {
    it(`a ${status} JSON error is relayed with its status and message, every key masked`, async () => {
      // A 429 moves the request to the next key of the pool (retries are off): one for each.
      fake.failNext(status === 429 ? POOL.length : 1, status, echoError());
      const res = await call(gw, key, '/v1/chat/completions', chat());
      expect(res.status).toBe(status);
      expectNoSecret(res.all, `${status}`);
      const error = (JSON.parse(res.body) as { error: { message: string; code: string; type: string } }).error;
      expect(error.code).toBe('invalid_api_key');
      expect(error.type).toBe('invalid_request_error');
      expect(error.message).toBe(
        `Incorrect API key provided: ${MASKED_KEY}. Also tried: Bearer ${MASKED_KEY}, ${MASKED_KEY}; see ${MASKED_KEY}.`,
      );
    });
  }

  it("the OpenAI SDK's error for a stream refused before it starts (400) shows no key", async () => {
    fake.failNext(1, 400, echoError());
    const err = await gw
      .sdk(key)
      .chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], stream: true })
      .then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(APIError);
    const apiError = err as APIError;
    expect(apiError.status).toBe(400);
    expect(apiError.code).toBe('invalid_api_key');
    expectNoSecret(`${apiError.message}\n${JSON.stringify(apiError.error)}\n${String(apiError.stack)}`, 'SDK error');
    expect(apiError.message).toContain(`Incorrect API key provided: ${MASKED_KEY}`);
  });

  it("the OpenAI SDK's error for a buffered 403 shows no key", async () => {
    fake.failNext(1, 403, echoError('unsupported_country_region_territory'));
    const err = await gw
      .sdk(key)
      .embeddings.create({ model: 'text-embedding-3-small', input: 'hi' })
      .then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(APIError);
    expect((err as APIError).status).toBe(403);
    expectNoSecret(`${(err as Error).message}\n${JSON.stringify((err as APIError).error)}`, 'SDK error');
  });

  it('a JSON error whose body does not parse, or an HTML page, is replaced and shows no key', async () => {
    fake.failNext(1, 400, `{"error": "Incorrect API key provided: ${POOL.join(', ')} ${STRAY}`, { 'content-type': 'application/json' });
    const cut = await call(gw, key, '/v1/chat/completions', chat());
    expect(cut.status).toBe(400);
    expectNoSecret(cut.all, 'cut JSON');
    fake.failNext(1, 502, `<html><body>bad gateway for ${POOL.join(' ')} ${STRAY}</body></html>`, { 'content-type': 'text/html' });
    const html = await call(gw, key, '/v1/chat/completions', chat());
    expect(html.status).toBe(502);
    expectNoSecret(html.all, 'HTML');
  });

  it('a non-JSON error relayed as it came (text/event-stream on GET /v1/responses/{id}?stream=true) shows no key', async () => {
    const created = await call(gw, key, '/v1/responses', JSON.stringify({ model: 'gpt-4o-mini', input: 'hi' }));
    expect(created.status).toBe(200);
    const id = (JSON.parse(created.body) as { id: string }).id;
    fake.failNext(1, 400, `event: error\ndata: ${echoMessage()}\n\n`, { 'content-type': 'text/event-stream' });
    const res = await call(gw, key, `/v1/responses/${id}?stream=true`);
    expect(res.status).toBe(400);
    expectNoSecret(res.all, 'event-stream error');
    expect(res.body).toContain(`Incorrect API key provided: ${MASKED_KEY}`);
  });

  it('a chat stream whose upstream sends an error chunk mid-stream shows no key; model output passes untouched', async () => {
    const said = 'Set OPENAI_API_KEY=sk-example-written-by-the-model-000111 in .env';
    const chunk = {
      id: 'chatcmpl-1',
      object: 'chat.completion.chunk',
      created: 1,
      model: 'gpt-4o-mini',
      choices: [{ index: 0, delta: { role: 'assistant', content: said }, finish_reason: null }],
    };
    const sse = `data: ${JSON.stringify(chunk)}\n\ndata: ${JSON.stringify(echoError())}\n\n`;
    fake.failNext(1, 200, sse, { 'content-type': 'text/event-stream; charset=utf-8' });
    const res = await call(gw, key, '/v1/chat/completions', chat({ stream: true }));
    expect(res.status).toBe(200);
    expectNoSecret(res.all, 'mid-stream error');
    expect(res.body).toContain(`Incorrect API key provided: ${MASKED_KEY}`);
    expect(res.body).toContain(JSON.stringify(said)); // a 2xx event that is not an error is never rewritten
  });

  it('a Responses stream with `event: error` mid-stream shows no key', async () => {
    const error = { type: 'error', code: 'invalid_api_key', message: echoMessage(), param: null, sequence_number: 1 };
    fake.failNext(1, 200, `event: error\ndata: ${JSON.stringify(error)}\n\n`, { 'content-type': 'text/event-stream; charset=utf-8' });
    const res = await call(gw, key, '/v1/responses', JSON.stringify({ model: 'gpt-4o-mini', input: 'hi', stream: true }));
    expect(res.status).toBe(200);
    expectNoSecret(res.all, 'event: error');
    expect(res.body).toContain('event: error');
    expect(res.body).toContain(`Incorrect API key provided: ${MASKED_KEY}`);
  });

  /** A non-streamed chat completion whose answer is `said`. */
  const completionSaying = (id: string, said: string) => ({
    id,
    object: 'chat.completion',
    created: 1,
    model: 'gpt-4o-mini',
    choices: [{ index: 0, message: { role: 'assistant', content: said }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
  });

  it('a 200 answer is never rewritten: key-shaped text written by a model passes untouched', async () => {
    const said = 'Your key looks like sk-example-written-by-the-model-000111.';
    const completion = completionSaying('chatcmpl-2', said);
    fake.failNext(1, 200, completion);
    const res = await call(gw, key, '/v1/chat/completions', chat());
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toEqual(completion);
  });

  /** A Responses object that failed, its error echoing every key (OpenAI answers these with a 200). */
  const failedResponse = (id = 'resp_failed_0001') => ({
    id,
    object: 'response',
    created_at: 1,
    status: 'failed',
    background: false,
    error: { code: 'server_error', message: echoMessage() },
    incomplete_details: null,
    model: 'gpt-4o-mini',
    output: [],
    usage: null,
  });

  async function createdResponseId(): Promise<string> {
    const created = await call(gw, key, '/v1/responses', JSON.stringify({ model: 'gpt-4o-mini', input: 'hi' }));
    expect(created.status).toBe(200);
    return (JSON.parse(created.body) as { id: string }).id;
  }

  it('GET /v1/responses/{id}?stream=true: a 200 replay whose events carry an error shows no key; other events pass untouched', async () => {
    const id = await createdResponseId();
    const said = 'Set OPENAI_API_KEY=sk-example-written-by-the-model-000111 in .env';
    const inProgress = { ...failedResponse(id), status: 'in_progress', error: null };
    const events = [
      ['response.created', { type: 'response.created', response: inProgress, sequence_number: 0 }],
      ['response.output_text.delta', { type: 'response.output_text.delta', item_id: 'msg_1', output_index: 0, content_index: 0, delta: said, sequence_number: 1 }],
      ['error', { type: 'error', code: 'invalid_api_key', message: echoMessage(), param: null, sequence_number: 2 }],
      ['response.failed', { type: 'response.failed', response: failedResponse(id), sequence_number: 3 }],
    ] as const;
    const sse = events.map(([event, data]) => `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`).join('');
    fake.failNext(1, 200, sse, { 'content-type': 'text/event-stream; charset=utf-8' });
    const res = await call(gw, key, `/v1/responses/${id}?stream=true`);
    expect(res.status).toBe(200);
    expect(fake.requests.at(-1)?.url).toBe(`/v1/responses/${id}?stream=true`);
    expectNoSecret(res.all, 'replayed stream');
    expect(res.body.split(`Incorrect API key provided: ${MASKED_KEY}`)).toHaveLength(3); // the error event and response.failed
    // Events that carry no error are relayed as they came, model output included.
    expect(res.body).toContain(`event: response.created\ndata: ${JSON.stringify(events[0][1])}\n\n`);
    expect(res.body).toContain(`event: response.output_text.delta\ndata: ${JSON.stringify(events[1][1])}\n\n`);
  });

  /** Every route that relays a 2xx upstream body, with a request it accepts. */
  const routes: { name: string; path: string | (() => Promise<string>); body?: string }[] = [
    { name: 'chat completions', path: '/v1/chat/completions', body: chat() },
    { name: 'completions', path: '/v1/completions', body: JSON.stringify({ model: 'gpt-3.5-turbo-instruct', prompt: 'hi', max_tokens: 5 }) },
    { name: 'legacy engines completions', path: '/v1/engines/gpt-3.5-turbo-instruct/completions', body: JSON.stringify({ prompt: 'hi', max_tokens: 5 }) },
    { name: 'embeddings', path: '/v1/embeddings', body: JSON.stringify({ model: 'text-embedding-3-small', input: 'hi' }) },
    { name: 'moderations', path: '/v1/moderations', body: JSON.stringify({ model: 'omni-moderation-latest', input: 'hi' }) },
    { name: 'responses create', path: '/v1/responses', body: JSON.stringify({ model: 'gpt-4o-mini', input: 'hi' }) },
    { name: 'responses retrieve', path: async () => `/v1/responses/${await createdResponseId()}` },
  ];
  for (const route of routes) {
    it(`${route.name}: a 200 body that carries an error object shows no key`, async () => {
      const path = typeof route.path === 'string' ? route.path : await route.path();
      const answer = route.name.startsWith('responses') ? failedResponse() : echoError();
      fake.failNext(1, 200, answer);
      const res = await call(gw, key, path, route.body);
      expect(res.status).toBe(200);
      expectNoSecret(res.all, `${route.name} 200 with an error`);
      const error = (JSON.parse(res.body) as { error: { message: string; code: string } }).error;
      expect(error.code).toBe(answer.error.code);
      expect(error.message).toBe(`Incorrect API key provided: ${MASKED_KEY}. Also tried: Bearer ${MASKED_KEY}, ${MASKED_KEY}; see ${MASKED_KEY}.`);
    });
  }

  it('a chat stream whose chunk carries an error after other members shows no key', async () => {
    const chunk = { id: 'chatcmpl-3', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o-mini', choices: [], ...echoError() };
    fake.failNext(1, 200, `data: ${JSON.stringify(chunk)}\n\ndata: [DONE]\n\n`, { 'content-type': 'text/event-stream; charset=utf-8' });
    const res = await call(gw, key, '/v1/chat/completions', chat({ stream: true }));
    expect(res.status).toBe(200);
    expectNoSecret(res.all, 'error chunk');
    expect(res.body).toContain(`Incorrect API key provided: ${MASKED_KEY}`);
  });

  it('a server key itself never reaches the client, even in a 2xx answer without an error; key-shaped model text stays', async () => {
    const said = `Your key is ${POOL[1]}, not sk-example-written-by-the-model-000111.`;
    const completion = completionSaying('chatcmpl-4', said);
    fake.failNext(1, 200, completion);
    const json = await call(gw, key, '/v1/chat/completions', chat());
    expect(json.status).toBe(200);
    expect(json.body).not.toContain(POOL[1]);
    expect(JSON.parse(json.body)).toEqual({
      ...completion,
      choices: [{ ...completion.choices[0], message: { role: 'assistant', content: `Your key is ${MASKED_KEY}, not sk-example-written-by-the-model-000111.` } }],
    });
    const chunk = { id: 'chatcmpl-5', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o-mini', choices: [{ index: 0, delta: { content: said }, finish_reason: null }] };
    fake.failNext(1, 200, `data: ${JSON.stringify(chunk)}\n\ndata: [DONE]\n\n`, { 'content-type': 'text/event-stream; charset=utf-8' });
    const stream = await call(gw, key, '/v1/chat/completions', chat({ stream: true }));
    expect(stream.status).toBe(200);
    expect(stream.body).not.toContain(POOL[1]);
    expect(stream.body).toContain('sk-example-written-by-the-model-000111');
  });

  // Last in this block: it closes the gateway, so every log line of the tests above is written.
  it('headers upstream echoes a key in (its request id, openai-model...) reach neither the client nor the log with it', async () => {
    const answer = { id: 'chatcmpl-h', object: 'chat.completion', created: 1, model: 'gpt-4o-mini', choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }], usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } };
    const echoing = { 'x-request-id': `req_Bearer ${POOL[0]}`, 'openai-model': `m-${POOL[2]}`, 'openai-processing-ms': `Bearer ${STRAY}` };
    for (const [status, body] of [[200, answer], [400, echoError()]] as const) {
      fake.failNext(1, status, body, echoing);
      const res = await call(gw, key, '/v1/chat/completions', chat({ messages: [{ role: 'user', content: `headers ${status}` }] }));
      expect(res.status).toBe(status);
      expectNoSecret(res.all, `headers of a ${status}`);
      expect(res.all).toContain(`x-upstream-request-id: req_Bearer ${MASKED_KEY}`);
    }
  });

  it('a stream event whose id or event field echoes a key shows no key', async () => {
    const chunk = { id: 'chatcmpl-i', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o-mini', choices: [{ index: 0, delta: { content: 'hi' }, finish_reason: null }] };
    const sse = `event: ping\nid: Bearer ${POOL[0]}\ndata: {}\n\nevent: ${POOL[2]}\ndata: ${JSON.stringify(chunk)}\n\ndata: [DONE]\n\n`;
    fake.failNext(1, 200, sse, { 'content-type': 'text/event-stream; charset=utf-8' });
    const res = await call(gw, key, '/v1/chat/completions', chat({ stream: true }));
    expect(res.status).toBe(200);
    expectNoSecret(res.all, 'event fields');
    expect(res.body).toContain(`id: Bearer ${MASKED_KEY}`);
  });

  it('the log (LOG_LEVEL=trace, LOG_BODIES=true) holds no key after all the errors above', async () => {
    await gw.close();
    expect(gw.logs.lines.length).toBeGreaterThan(10);
    expectNoSecret(gw.logs.text, 'log');
  });
});

describe('upstream errors after retries are exhausted never show a server key', () => {
  let fake: FakeOpenAI;
  let gw: Gateway;
  let key: string;

  beforeAll(async () => {
    fake = await startFakeOpenAI();
    gw = await startGateway({
      fake,
      env: {
        OPENAI_API_KEYS: POOL.slice(1).join(','),
        LOG_LEVEL: 'trace',
        UPSTREAM_MAX_RETRIES: '2',
        UPSTREAM_RETRY_BASE_DELAY_MS: '1',
        UPSTREAM_RETRY_MAX_DELAY_MS: '1',
      },
    });
    key = (await gw.createKey()).key;
  });
  afterAll(async () => {
    await gw.close();
    await fake.close();
  });

  for (const status of [429, 500]) {
    it(`${status} on every attempt (every key of the pool, every retry): the last one shows no key`, async () => {
      fake.reset();
      fake.failNext(20, status, echoError('rate_limit_exceeded'));
      const res = await call(gw, key, '/v1/chat/completions', chat());
      expect(res.status).toBe(status);
      expect(fake.requests.length).toBeGreaterThanOrEqual(3); // retried (and, for 429, moved across keys)
      expectNoSecret(res.all, `${status} after retries`);
      expect(res.body).toContain(`Incorrect API key provided: ${MASKED_KEY}`);
      fake.reset();
    });
  }

  it('the log holds no key', async () => {
    await gw.close();
    expect(gw.logs.text).toContain('retrying');
    expectNoSecret(gw.logs.text, 'log');
  });
});

describe('a 200 that carries an error is never stored in the cache, nor served from it', () => {
  let fake: FakeOpenAI;
  let gw: Gateway;
  let key: string;

  beforeAll(async () => {
    fake = await startFakeOpenAI();
    gw = await startGateway({ fake, env: { OPENAI_API_KEYS: POOL.slice(1).join(','), CACHE_ENABLED: 'true' } });
    key = (await gw.createKey()).key;
  });
  afterAll(async () => {
    await gw.close();
    await fake.close();
  });

  it('identical requests answered by a 200 with usage and an error all go upstream, and none shows a key', async () => {
    // Usage makes it look cacheable; the error says it did not complete normally.
    const answer = { ...echoError('server_error'), object: 'chat.completion', model: 'gpt-4o-mini', choices: [], usage: { prompt_tokens: 1, completion_tokens: 0, total_tokens: 1 } };
    const rounds = 4;
    fake.failNext(rounds, 200, answer);
    for (let i = 0; i < rounds; i++) {
      const res = await call(gw, key, '/v1/chat/completions', chat({ seed: 4242 }));
      expect(res.status).toBe(200);
      expectNoSecret(res.all, `round ${i}`);
      expect(res.body).toContain(`Incorrect API key provided: ${MASKED_KEY}`);
    }
    expect(fake.requests).toHaveLength(rounds);
  });
});

describe('createSecretMasker', () => {
  const mask = createSecretMasker(POOL);

  it('masks every key of the pool, whatever its shape, and anything shaped like an OpenAI key', () => {
    expect(mask(`a ${POOL[2]} b ${POOL[1]}c ${STRAY} sk-proj-*****************abcd`)).toBe(
      `a ${MASKED_KEY} b ${MASKED_KEY}c ${MASKED_KEY} ${MASKED_KEY}`,
    );
  });

  it("masks the account's organization and project ids in error text, not in model output", () => {
    const limit = 'Rate limit reached for gpt-4o in organization org-AbCdEf0123456789xyZ on tokens per min (TPM); project proj_Z9y8X7w6V5u4T3 (org-short and org-restructuring stay)';
    expect(mask(limit)).toBe('Rate limit reached for gpt-4o in organization org-**** on tokens per min (TPM); project proj_**** (org-short and org-restructuring stay)');
    expect(mask(mask(limit))).toBe(mask(limit));
    expect(mask.maskServerKeys(limit)).toBe(limit);
  });

  it('leaves other text alone, returns it as it came when there is nothing to mask, and is idempotent', () => {
    const text = 'task-force-members ask-me-anything sk-short sk-';
    expect(mask(text)).toBe(text);
    const once = mask(echoMessage());
    expect(mask(once)).toBe(once);
  });
});
