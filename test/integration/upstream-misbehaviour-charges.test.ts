// What an upstream (or a proxy in front of it) that misbehaves after its 200 is charged and recorded
// as, over real HTTP and real Redis: a non-streamed 200 without usage is estimated as a stream that
// ended without usage is (prompt estimate + a count of the answer's text; the worst case when the
// body is not JSON) and never cached; a stream upstream breaks (an in-band error event, the
// connection lost) carries an error code in its usage event, log line and /admin/usage's errors;
// a stream whose first event is an error generated nothing and is released.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { UsageEvent } from '../../src/usage/event.js';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { brotliCompressSync, gzipSync } from 'node:zlib';
import type { AddressInfo } from 'node:net';
import { ADMIN_TOKEN, startGateway, UPSTREAM_KEY, type Gateway } from '../helpers/gateway.js';
import { createUpstreamClient } from '../../src/upstream/client.js';
import { loadConfig } from '../../src/config.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';
import { createRedisStore } from '../../src/store/redis-store.js';
import { startFakeOpenAI } from '../../src/fake-openai/server.js';
import { countCompletionTokens, estimatePromptTokens } from '../../src/openai/tokens.js';
import type { Endpoint } from '../../src/openai/endpoints.js';
import { KEPT_DATA_MAX_CHARS } from '../../src/openai/sse.js';
import type { Store } from '../../src/store/store.js';

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

/** An upstream whose every answer is `handler`'s, set per test. */
async function scriptedUpstream(): Promise<{ url: string; requests: () => number; set(h: Handler): void; close(): Promise<void> }> {
  let requests = 0;
  let handler: Handler = (_req, res) => res.writeHead(500).end();
  const server: Server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      requests++;
      handler(req, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/v1`,
    requests: () => requests,
    set: (h) => (handler = h),
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const json = (body: unknown, type = 'application/json'): Handler => (_req, res) => {
  res.writeHead(200, { 'content-type': type });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
};

/** A stream of `events` (already formatted); `then`: end the response, or destroy the socket. */
const sse = (events: string[], then: 'end' | 'drop' = 'end'): Handler => (_req, res) => {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.write(events.join(''), () => {
    if (then === 'end') res.end();
    else setTimeout(() => res.socket?.destroy(), 30);
  });
};
const data = (d: unknown) => `data: ${JSON.stringify(d)}\n\n`;
const typed = (d: { type: string } & Record<string, unknown>) => `event: ${d.type}\ndata: ${JSON.stringify(d)}\n\n`;

const chat = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Tell me about toll gates. '.repeat(20) }], max_tokens: 60 };
const completion = { model: 'gpt-3.5-turbo-instruct', prompt: 'Toll gates are '.repeat(20), max_tokens: 40 };
const responses = { model: 'gpt-4o-mini', input: 'Write about toll gates. '.repeat(20), max_output_tokens: 70 };
const embeddings = { model: 'text-embedding-3-small', input: 'A text to embed, about toll gates. '.repeat(20) };
const ANSWER = 'A toll gate is a barrier where a fee is collected before passage is allowed.';

const estimate = (endpoint: Endpoint['name'], body: { model: string }) => estimatePromptTokens(endpoint, body, body.model);
const counted = (text: string, model: string) => countCompletionTokens(text, model);

const opened: { close(): Promise<void> }[] = [];
let gw: Gateway;
let upstream: Awaited<ReturnType<typeof scriptedUpstream>>;

beforeAll(async () => {
  upstream = await scriptedUpstream();
  opened.push(upstream);
  const fake = await startFakeOpenAI();
  opened.push(fake);
  const store: Store = await createRedisStore({ url: testRedisUrl(), prefix: uniquePrefix() });
  opened.push(store);
  gw = await startGateway({ store, fake, env: { OPENAI_BASE_URL: upstream.url, USAGE_FLUSH_MS: '50', CACHE_ENABLED: 'true' } });
  opened.push(gw);
});
afterAll(async () => {
  for (const r of opened.reverse()) await r.close();
});

let keyId: string;
let key: string;
beforeEach(async () => {
  ({ id: keyId, key } = await gw.createKey({ name: 'misbehaviour', limits: { tokensPerDay: 1_000_000 } }));
});

function post(path: string, body: unknown) {
  return fetch(`${gw.url}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
}

/** The usage events of the key `id` so far. */
async function usageEvents(id: string): Promise<UsageEvent[]> {
  const raw = await fetch(`${gw.url}/admin/usage/events?since=2000-01-01T00:00:00Z`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  return (await raw.text()).split('\n').filter(Boolean).map((l) => JSON.parse(l) as UsageEvent).filter((e) => e.keyId === id);
}

/** The key's usage events once there are `n`, its day's token quota once settled, and its line(s) in the log. */
async function accounting(n = 1) {
  const events = () => usageEvents(keyId);
  await expect.poll(async () => (await events()).length, { timeout: 5000 }).toBe(n);
  const quota = async () => (await gw.admin('GET', `/admin/keys/${keyId}`)).body.quota.tokensPerDay as { used: number; reserved: number };
  await expect.poll(async () => (await quota()).reserved, { timeout: 5000 }).toBe(0);
  const lines = gw.logs.requests().filter((l) => l.keyId === keyId);
  return { events: await events(), used: (await quota()).used, lines };
}

/** The key's error count in /admin/usage (its aggregates). */
async function reportedErrors(): Promise<{ requests: number; errors: number }> {
  const report = async () => (await gw.admin('GET', `/admin/usage?keyId=${keyId}`)).body.totals as { requests: number; errors: number };
  await expect.poll(async () => (await report()).requests, { timeout: 5000 }).toBeGreaterThan(0);
  return report();
}

describe('a non-streamed 200 without usage is charged an estimate, marked estimated, and never cached', () => {
  it.each([
    [
      'chat: prompt + the message text',
      '/v1/chat/completions',
      chat,
      'chat.completions',
      { id: 'chatcmpl-1', object: 'chat.completion', model: 'gpt-4o-mini', choices: [{ index: 0, message: { role: 'assistant', content: ANSWER }, finish_reason: 'stop' }] },
      counted(ANSWER, chat.model),
    ],
    [
      'chat with a tool call: prompt + its name and arguments',
      '/v1/chat/completions',
      chat,
      'chat.completions',
      {
        id: 'chatcmpl-2',
        object: 'chat.completion',
        model: 'gpt-4o-mini',
        choices: [{ index: 0, message: { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'lookup_toll', arguments: '{"gate":"A4"}' } }] }, finish_reason: 'tool_calls' }],
      },
      counted('lookup_toll{"gate":"A4"}', chat.model),
    ],
    [
      'legacy completions: prompt + the text',
      '/v1/completions',
      completion,
      'completions',
      { id: 'cmpl-1', object: 'text_completion', model: completion.model, choices: [{ index: 0, text: ANSWER, finish_reason: 'stop' }] },
      counted(ANSWER, completion.model),
    ],
    [
      'responses: prompt + the output text',
      '/v1/responses',
      responses,
      'responses',
      {
        id: 'resp_nousage1',
        object: 'response',
        status: 'completed',
        model: 'gpt-4o-mini',
        error: null,
        output: [{ id: 'msg_1', type: 'message', role: 'assistant', content: [{ type: 'output_text', text: ANSWER, annotations: [] }] }],
      },
      counted(ANSWER, responses.model),
    ],
    [
      'embeddings: the prompt only',
      '/v1/embeddings',
      embeddings,
      'embeddings',
      { object: 'list', model: embeddings.model, data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2] }] },
      0,
    ],
  ] as const)('%s', async (_name, path, body, endpoint, answer, completionTokens) => {
    upstream.set(json(answer));
    const before = upstream.requests();
    const res = await post(path, body);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual(answer); // the client's bytes as they came
    const prompt = estimate(endpoint, body);
    expect(completionTokens === 0 || completionTokens > 5).toBe(true);
    const first = await accounting(1);
    expect(first.events[0]).toMatchObject({ status: 200, errorCode: null, promptTokens: prompt, completionTokens, totalTokens: prompt + completionTokens, estimated: true });
    expect(first.events[0]!.costMicros).toBeGreaterThan(0);
    expect(first.used).toBe(prompt + completionTokens);
    expect(first.lines.at(-1)).toMatchObject({ estimated: true, promptTokens: prompt, completionTokens });
    // Not stored: the same request goes upstream again.
    const again = await post(path, body);
    expect(again.headers.get('x-tollgate-cache')).toBe('MISS');
    await again.text();
    expect(upstream.requests()).toBe(before + 2);
    await accounting(2);
  });

  it('the estimate never passes the most output the request allowed (a legacy echo has its prompt in the text)', async () => {
    const body = { ...completion, echo: true, max_tokens: 5 };
    upstream.set(json({ id: 'cmpl-echo', object: 'text_completion', model: completion.model, choices: [{ index: 0, text: `${body.prompt} Yes.`, finish_reason: 'stop' }] }));
    await (await post('/v1/completions', body)).text();
    const prompt = estimate('completions', body);
    expect(counted(`${body.prompt} Yes.`, completion.model)).toBeGreaterThan(40); // was charged as output
    const { events } = await accounting(1);
    expect(events[0]).toMatchObject({ promptTokens: prompt, completionTokens: 5, estimated: true });
  });

  it.each(['queued', 'in_progress'])('a background response created (%s, usage to come at OpenAI) is recorded at 0 tokens, not estimated', async (status) => {
    upstream.set(json({ id: 'resp_bg1', object: 'response', status, background: true, model: 'gpt-4o-mini', error: null, output: [], usage: null }));
    // A key with a token or USD limit may not start one (400 background_not_metered).
    ({ key, id: keyId } = await gw.createKey({ name: 'background', limits: { rpm: 100 } }));
    await (await post('/v1/responses', { ...responses, background: true, store: true })).text();
    await expect.poll(async () => (await usageEvents(keyId)).length, { timeout: 5000 }).toBe(1);
    expect((await usageEvents(keyId))[0]).toMatchObject({ status: 200, promptTokens: 0, completionTokens: 0, costMicros: 0, estimated: false });
  });

  it('a charged request that ends in an error keeps the model it asked for (a dated snapshot here)', async () => {
    // Upstream answers 200, then its connection is lost mid-body: a 502, charged the worst case.
    upstream.set((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"id":"chatcmpl-cut","object":"chat.completion","model":"gpt-4o-mini-2024-07-18","choices":[', () => setTimeout(() => res.socket?.destroy(), 30));
    });
    const body = { ...chat, model: 'gpt-4o-mini-2024-07-18' };
    expect((await post('/v1/chat/completions', body)).status).toBe(502);
    const { events } = await accounting(1);
    expect(events[0]).toMatchObject({ status: 502, model: 'gpt-4o-mini-2024-07-18', estimated: true });
    expect(events[0]!.costMicros).toBeGreaterThan(0);
  });

  it('a body that is not JSON: the worst case (prompt + the most output allowed), estimated', async () => {
    upstream.set(json('<html>oops</html>', 'text/html'));
    const res = await post('/v1/chat/completions', chat);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('<html>oops</html>');
    const prompt = estimate('chat.completions', chat);
    const { events, used } = await accounting(1);
    expect(events[0]).toMatchObject({ status: 200, promptTokens: prompt, completionTokens: chat.max_tokens, estimated: true });
    expect(used).toBe(prompt + chat.max_tokens);
  });

  it('a 200 with usage is still charged exactly (not estimated) and cached', async () => {
    const answer = {
      id: 'chatcmpl-3',
      object: 'chat.completion',
      model: 'gpt-4o-mini',
      choices: [{ index: 0, message: { role: 'assistant', content: ANSWER }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 11, completion_tokens: 7, total_tokens: 18 },
    };
    upstream.set(json(answer));
    const body = { ...chat, messages: [{ role: 'user', content: 'A cacheable question about toll gates.' }] };
    await (await post('/v1/chat/completions', body)).text();
    const { events, used } = await accounting(1);
    expect(events[0]).toMatchObject({ promptTokens: 11, completionTokens: 7, estimated: false });
    expect(used).toBe(18);
    const hit = await post('/v1/chat/completions', body);
    expect(hit.headers.get('x-tollgate-cache')).toBe('HIT');
    await hit.text();
  });

  it('an answer its content filter cut, or a Responses object not completed, is charged but not cached (a retry may get it all)', async () => {
    const filtered = {
      id: 'chatcmpl-f',
      object: 'chat.completion',
      model: 'gpt-4o-mini',
      choices: [{ index: 0, message: { role: 'assistant', content: 'A toll' }, finish_reason: 'content_filter' }],
      usage: { prompt_tokens: 11, completion_tokens: 2, total_tokens: 13 },
    };
    const incomplete = { id: 'resp_i', object: 'response', status: 'incomplete', incomplete_details: { reason: 'content_filter' }, model: 'gpt-4o-mini', output: [], store: false, usage: { input_tokens: 11, output_tokens: 2, total_tokens: 13 } };
    const chatBody = { ...chat, messages: [{ role: 'user', content: 'A question the filter cuts.' }] };
    const responsesBody = { ...responses, input: 'A question the filter cuts.', store: false };
    for (const [path, body, answer] of [['/v1/chat/completions', chatBody, filtered], ['/v1/responses', responsesBody, incomplete]] as const) {
      upstream.set(json(answer));
      for (let i = 0; i < 2; i++) {
        const res = await post(path, body);
        await res.text();
        expect(res.headers.get('x-tollgate-cache'), path).toBe('MISS'); // the second was a HIT
      }
    }
    const { events } = await accounting(4);
    for (const e of events) expect(e).toMatchObject({ promptTokens: 11, completionTokens: 2, estimated: false });
    // Cut where the request asked (max_output_tokens, as chat's finish_reason length): its answer, kept.
    upstream.set(json({ ...incomplete, id: 'resp_m', incomplete_details: { reason: 'max_output_tokens' } }));
    const capped = { ...responsesBody, input: 'A question cut by its own limit.' };
    await (await post('/v1/responses', capped)).text();
    const again = await post('/v1/responses', capped);
    await again.text();
    expect(again.headers.get('x-tollgate-cache')).toBe('HIT');
  });
});

describe('priced as the model that answered, which OpenAI bills', () => {
  const MILLION = 1_000_000;
  const answer = (model: string) => ({
    id: 'chatcmpl-4',
    object: 'chat.completion',
    model,
    choices: [{ index: 0, message: { role: 'assistant', content: ANSWER }, finish_reason: 'stop' }],
    usage: { prompt_tokens: MILLION, completion_tokens: MILLION, total_tokens: 2 * MILLION },
  });

  it.each([
    // gpt-4o asked, its first snapshot answered: $5 / $15 per 1M, not gpt-4o's $2.50 / $10.
    ['a snapshot with its own price', 'gpt-4o-2024-05-13', 20_000_000],
    // A dated snapshot without an entry of its own is priced as its model.
    ['a snapshot priced as its model', 'gpt-4o-2024-08-06', 12_500_000],
    // A name the price table does not know (a deployment name from a proxy): the model asked for.
    ['a name the price table does not know', 'my-gpt4o-deployment', 12_500_000],
    // Another model (a proxy's fallback, a renaming): the model asked for, never the other's price.
    ['another, cheaper model', 'gpt-4o-mini', 12_500_000],
    ['another, dearer model', 'o1', 12_500_000],
  ])('%s', async (_what, answered, costMicros) => {
    upstream.set(json(answer(answered)));
    await (await post('/v1/chat/completions', { ...chat, model: 'gpt-4o', messages: [{ role: 'user', content: `Priced ${answered}` }] })).text();
    const { events } = await accounting(1);
    expect(events[0]).toMatchObject({ model: 'gpt-4o', modelAnswered: answered, costMicros });
  });
});

const chunk = (content: string) => data({ id: 'chatcmpl-s', object: 'chat.completion.chunk', model: 'gpt-4o-mini', choices: [{ index: 0, delta: { content }, finish_reason: null }] });
const chatError = data({ error: { message: 'The server had an error while processing your request.', type: 'server_error', param: null, code: null } });
const created = typed({ type: 'response.created', sequence_number: 0, response: { id: 'resp_stream1', object: 'response', status: 'in_progress', model: 'gpt-4o-mini', output: [] } });
const delta = (text: string, n: number) => typed({ type: 'response.output_text.delta', sequence_number: n, item_id: 'msg_1', output_index: 0, content_index: 0, delta: text });
const chatStream = { ...chat, stream: true };
const responsesError = (n: number) => typed({ type: 'error', code: 'server_error', message: 'The server had an error.', param: null, sequence_number: n });

describe('a large answer (an embeddings batch) is not parsed whole', () => {
  it('its usage and model are read from its last members; the client gets it byte for byte', async () => {
    const vector = Array.from({ length: 3072 }, (_, i) => Math.sin(i) / 7);
    const answer = {
      object: 'list',
      data: Array.from({ length: 200 }, (_, index) => ({ object: 'embedding', index, embedding: vector })),
      model: 'text-embedding-3-small',
      usage: { prompt_tokens: 4321, total_tokens: 4321 },
    };
    const text = JSON.stringify(answer);
    expect(text.length).toBeGreaterThan(8_000_000);
    upstream.set(json(text));
    const parse = JSON.parse;
    let largest = 0;
    JSON.parse = ((source: string, reviver?: Parameters<typeof parse>[1]) => {
      largest = Math.max(largest, source.length);
      return parse(source, reviver);
    }) as typeof JSON.parse;
    let received: string;
    try {
      const res = await post('/v1/embeddings', embeddings);
      received = await res.text();
    } finally {
      JSON.parse = parse;
    }
    expect(received === text).toBe(true);
    const { events } = await accounting(1);
    expect(events[0]).toMatchObject({ status: 200, promptTokens: 4321, totalTokens: 4321, modelAnswered: 'text-embedding-3-small', estimated: false });
    // Was the whole answer (a ~0.9 s stall of the event loop for 85 MB).
    expect(largest).toBeLessThan(100_000);
  });

  it("a large chat answer (logprobs) is read the same way, its model from its head, where chat writes it", async () => {
    const logprobs = { content: Array.from({ length: 6000 }, (_, i) => ({ token: `t${i}`, logprob: -0.5, bytes: [116], top_logprobs: Array.from({ length: 5 }, () => ({ token: 'x', logprob: -1.25, bytes: [120] })) })) };
    const answer = (usage: unknown) => ({
      id: 'chatcmpl-big',
      object: 'chat.completion',
      created: 1,
      model: 'gpt-4o-mini-2024-07-18',
      choices: [{ index: 0, message: { role: 'assistant', content: 'Yes.' }, logprobs, finish_reason: 'stop' }],
      usage,
    });
    upstream.set(json(answer({ prompt_tokens: 30, completion_tokens: 6000, total_tokens: 6030 })));
    expect(JSON.stringify(answer(null)).length).toBeGreaterThan(1024 * 1024);
    await (await post('/v1/chat/completions', chat)).text();
    const first = await accounting(1);
    expect(first.events[0]).toMatchObject({ promptTokens: 30, completionTokens: 6000, modelAnswered: 'gpt-4o-mini-2024-07-18', estimated: false });
    // usage null: not usable, so parsed whole and estimated from the answer's text, as a small one is.
    upstream.set(json(answer(null)));
    await (await post('/v1/chat/completions', chat)).text();
    const second = await accounting(2);
    expect(second.events.at(-1)).toMatchObject({ promptTokens: estimate('chat.completions', chat), completionTokens: counted('Yes.', chat.model), estimated: true });
  });

  it('is still cached when CACHE_MAX_ENTRY_BYTES lets it be', async () => {
    const roomy = await startGateway({ env: { OPENAI_BASE_URL: upstream.url, CACHE_ENABLED: 'true', CACHE_MAX_ENTRY_BYTES: String(20 * 1024 * 1024) } });
    try {
      const { key: k } = await roomy.createKey({ name: 'roomy' });
      const answer = { object: 'list', data: [{ object: 'embedding', index: 0, embedding: Array(300_000).fill(0.25) }], model: 'text-embedding-3-small', usage: { prompt_tokens: 7, total_tokens: 7 } };
      upstream.set(json(answer));
      const ask = () =>
        fetch(`${roomy.url}/v1/embeddings`, { method: 'POST', headers: { authorization: `Bearer ${k}`, 'content-type': 'application/json' }, body: JSON.stringify(embeddings) });
      const first = await ask();
      expect(first.headers.get('x-tollgate-cache')).toBe('MISS');
      const body = await first.text();
      expect(body.length).toBeGreaterThan(1024 * 1024);
      await expect.poll(async () => {
        const again = await ask();
        return [again.headers.get('x-tollgate-cache'), (await again.text()) === body];
      }).toEqual(['HIT', true]);
    } finally {
      await roomy.close();
    }
  });

  it('one whose last members hold no usage is parsed whole after all, and estimated as before', async () => {
    const answer = { object: 'list', data: Array.from({ length: 50 }, (_, index) => ({ object: 'embedding', index, embedding: Array(3072).fill(0.5) })), model: 'text-embedding-3-small' };
    upstream.set(json(answer));
    await (await post('/v1/embeddings', embeddings)).text();
    const { events } = await accounting(1);
    expect(events[0]).toMatchObject({ status: 200, promptTokens: estimate('embeddings', embeddings), completionTokens: 0, estimated: true });
  });
});

describe('a stream upstream breaks carries an error code (usage event, log line, /admin/usage errors)', () => {
  it('chat: an in-band error event mid-stream: upstream_stream_error, charged prompt + what was generated', async () => {
    const events = [chunk('A toll gate '), chunk('is a barrier.'), chatError];
    upstream.set(sse(events));
    const res = await post('/v1/chat/completions', { ...chat, stream: true });
    expect(res.status).toBe(200);
    expect(await res.text()).toBe(events.join('')); // unchanged
    const prompt = estimate('chat.completions', chatStream);
    const completion = counted('A toll gate is a barrier.', chat.model);
    const { events: recorded, used, lines } = await accounting(1);
    expect(recorded[0]).toMatchObject({ status: 200, errorCode: 'upstream_stream_error', promptTokens: prompt, completionTokens: completion, estimated: true });
    expect(used).toBe(prompt + completion);
    expect(lines.at(-1)).toMatchObject({ status: 200, errorCode: 'upstream_stream_error', streamIncomplete: true });
    expect(await reportedErrors()).toMatchObject({ requests: 1, errors: 1 });
  });

  it('chat: the connection lost mid-stream: upstream_stream_cut; the client still gets the in-band error', async () => {
    upstream.set(sse([chunk('A toll gate '), chunk('is a barrier.')], 'drop'));
    const res = await post('/v1/chat/completions', { ...chat, stream: true });
    const text = await res.text();
    expect(text.startsWith(chunk('A toll gate ') + chunk('is a barrier.'))).toBe(true);
    expect(text).toContain('"upstream_stream_error"');
    const prompt = estimate('chat.completions', chatStream);
    const completion = counted('A toll gate is a barrier.', chat.model);
    const { events, lines } = await accounting(1);
    expect(events[0]).toMatchObject({ status: 200, errorCode: 'upstream_stream_cut', promptTokens: prompt, completionTokens: completion, estimated: true });
    expect(lines.at(-1)).toMatchObject({ errorCode: 'upstream_stream_cut', streamIncomplete: true });
    expect(await reportedErrors()).toMatchObject({ requests: 1, errors: 1 });
  });

  it('chat: a long generation (past the events a stream keeps: KEPT_DATA_MAX_CHARS) lost mid-stream: charged all it generated', async () => {
    const pieces = Array.from({ length: 40_000 }, (_, i) => `gate${i} `); // ~5 MB of events
    upstream.set(sse(pieces.map(chunk), 'drop'));
    const body = { ...chat, max_tokens: 500_000, stream: true };
    const res = await post('/v1/chat/completions', body);
    expect((await res.text()).length).toBeGreaterThan(KEPT_DATA_MAX_CHARS);
    const { events } = await accounting(1);
    expect(events[0]).toMatchObject({
      errorCode: 'upstream_stream_cut',
      promptTokens: estimate('chat.completions', body),
      completionTokens: counted(pieces.join(''), chat.model),
      estimated: true,
    });
  });

  it('responses: a typed error event mid-stream: upstream_stream_error', async () => {
    const events = [created, delta('A toll gate ', 1), delta('is a barrier.', 2), responsesError(3)];
    upstream.set(sse(events));
    const body = { ...responses, stream: true };
    const res = await post('/v1/responses', body);
    expect(await res.text()).toBe(events.join(''));
    const prompt = estimate('responses', body);
    const completion = counted('A toll gate is a barrier.', responses.model);
    const { events: recorded } = await accounting(1);
    expect(recorded[0]).toMatchObject({ status: 200, errorCode: 'upstream_stream_error', promptTokens: prompt, completionTokens: completion, estimated: true });
    expect(await reportedErrors()).toMatchObject({ requests: 1, errors: 1 });
  });

  it('responses that failed (response.failed, or a 200 whose error is set): billed, and counted as errors with their code', async () => {
    const failedResponse = {
      id: 'resp_failed1',
      object: 'response',
      status: 'failed',
      model: 'gpt-4o-mini',
      error: { code: 'server_error', message: 'The model failed to generate a response.' },
      output: [],
      usage: { input_tokens: 40, output_tokens: 3, total_tokens: 43 },
    };
    const body = { ...responses, stream: true };
    upstream.set(sse([created, delta('A toll', 1), typed({ type: 'response.failed', sequence_number: 2, response: failedResponse })]));
    await (await post('/v1/responses', body)).text();
    upstream.set(json(failedResponse));
    await (await post('/v1/responses', responses)).text();
    const { events: recorded } = await accounting(2);
    for (const e of recorded) expect(e).toMatchObject({ status: 200, errorCode: 'server_error', promptTokens: 40, completionTokens: 3, estimated: false });
    // Was 0: a failed response counted as a success.
    expect(await reportedErrors()).toMatchObject({ requests: 2, errors: 2 });
  });

  it('a stream that completes normally has no error code and counts no error', async () => {
    upstream.set(sse([chunk('Fine.'), data({ id: 'chatcmpl-s', object: 'chat.completion.chunk', model: 'gpt-4o-mini', choices: [], usage: { prompt_tokens: 9, completion_tokens: 2, total_tokens: 11 } }), 'data: [DONE]\n\n']));
    await (await post('/v1/chat/completions', { ...chat, stream: true })).text();
    const { events } = await accounting(1);
    expect(events[0]).toMatchObject({ status: 200, errorCode: null, promptTokens: 9, completionTokens: 2, estimated: false });
    expect(await reportedErrors()).toMatchObject({ requests: 1, errors: 0 });
  });
});

describe('a stream framed in ways the SSE spec allows is relayed whole and charged exactly', () => {
  const usageChunk = data({ id: 'chatcmpl-s', object: 'chat.completion.chunk', model: 'gpt-4o-mini', choices: [], usage: { prompt_tokens: 9, completion_tokens: 2, total_tokens: 11 } });

  it('lines ended with CR alone: the last event (response.completed, with the usage) reaches the client and the bill', async () => {
    const completed = typed({ type: 'response.completed', sequence_number: 2, response: { id: 'resp_stream1', object: 'response', status: 'completed', model: 'gpt-4o-mini', output: [], usage: { input_tokens: 21, output_tokens: 9, total_tokens: 30 } } });
    const cr = (event: string) => event.replaceAll('\n', '\r');
    upstream.set(sse([created, delta('Fine.', 1), completed].map(cr)));
    const res = await post('/v1/responses', { ...responses, stream: true });
    const text = await res.text();
    // Was missing: the final CR waited for an LF that never came, and the stream was billed a guess.
    expect(text).toContain('"response.completed"');
    const { events } = await accounting(1);
    expect(events[0]).toMatchObject({ status: 200, errorCode: null, promptTokens: 21, completionTokens: 9, estimated: false });
  });

  it.each(['gzip', 'br'] as const)('a body upstream %s-encoded though asked for identity (a proxy): decoded, relayed and charged exactly', async (encoding) => {
    const encode = (text: string) => (encoding === 'gzip' ? gzipSync(text) : brotliCompressSync(text));
    const events = [chunk('Fine.'), usageChunk, 'data: [DONE]\n\n'].join('');
    upstream.set((_req, res) => res.writeHead(200, { 'content-type': 'text/event-stream', 'content-encoding': encoding }).end(encode(events)));
    const streamed = await post('/v1/chat/completions', { ...chat, stream: true, stream_options: { include_usage: true } });
    // Was an empty 200 stream, charged nothing.
    expect(await streamed.text()).toBe(events);
    const answer = { id: 'chatcmpl-z', object: 'chat.completion', model: 'gpt-4o-mini', choices: [{ index: 0, message: { role: 'assistant', content: ANSWER }, finish_reason: 'stop' }], usage: { prompt_tokens: 9, completion_tokens: 5, total_tokens: 14 } };
    upstream.set((_req, res) => res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': encoding }).end(encode(JSON.stringify(answer))));
    const buffered = await post('/v1/chat/completions', chat);
    expect(await buffered.json()).toEqual(answer);
    const { events: recorded } = await accounting(2);
    expect(recorded.map((e) => [e.promptTokens, e.completionTokens, e.estimated])).toEqual([
      [9, 2, false],
      [9, 5, false],
    ]);
  });

  it('a compressed body that is empty, cut short or not what it says: the status kept, cut short as a lost connection, a 502 for the undecodable', async () => {
    upstream.set((_req, res) => res.writeHead(400, { 'content-type': 'application/json', 'content-encoding': 'gzip' }).end());
    const empty = await post('/v1/chat/completions', chat);
    expect(empty.status).toBe(400); // was a 502 upstream_unreachable ("Please retry")
    expect(await empty.json()).toMatchObject({ error: { code: 'upstream_error' } });
    // Cut short mid-data: an interrupted stream, said so in-band, as for a lost connection.
    const events = Array.from({ length: 40 }, (_, i) => chunk(`word${i} `)).join('');
    const zipped = gzipSync(events);
    upstream.set((_req, res) => res.writeHead(200, { 'content-type': 'text/event-stream', 'content-encoding': 'gzip' }).end(zipped.subarray(0, zipped.length >> 1)));
    const cut = await (await post('/v1/chat/completions', { ...chat, stream: true })).text();
    expect(cut).toContain('"upstream_stream_error"');
    // Not compressed as it says: a 502 that says so (brotli's errors were taken for a lost connection).
    for (const encoding of ['gzip', 'br']) {
      upstream.set((_req, res) => res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': encoding }).end('not compressed at all'));
      const garbage = await post('/v1/chat/completions', chat);
      expect(garbage.status, encoding).toBe(502);
      expect(await garbage.json()).toMatchObject({ error: { code: 'upstream_invalid_response' } });
    }
    expect((await fetch(`${gw.url}/healthz`)).status).toBe(200);
  });

  it('ends at [DONE] though upstream holds its connection open after it, and relays nothing that follows', async () => {
    const events = [chunk('Fine.'), usageChunk, 'data: [DONE]\n\n'].join('');
    let held: ServerResponse | undefined;
    upstream.set((_req, res) => {
      held = res;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(events + 'data: {"after":"done"}\n\n'); // and never ends
    });
    try {
      const res = await post('/v1/chat/completions', { ...chat, stream: true, stream_options: { include_usage: true } });
      // Was: the client waited for UPSTREAM_TOTAL_TIMEOUT_MS, then got an in-band error after [DONE].
      const text = await Promise.race([res.text(), new Promise<string>((resolve) => setTimeout(() => resolve('still open after 5 s'), 5000))]);
      expect(text).toBe(events);
      const { events: recorded } = await accounting(1);
      expect(recorded[0]).toMatchObject({ status: 200, errorCode: null, promptTokens: 9, completionTokens: 2, estimated: false });
    } finally {
      held?.end();
    }
  });

  it('a content type in capitals (media types are case-insensitive) is still a stream, not a body charged its worst case', async () => {
    upstream.set((_req, res) => {
      res.writeHead(200, { 'content-type': 'Text/Event-Stream; charset=utf-8' });
      res.end([chunk('Fine.'), usageChunk, 'data: [DONE]\n\n'].join(''));
    });
    const res = await post('/v1/chat/completions', { ...chat, stream: true, stream_options: { include_usage: true } });
    expect(await res.text()).toBe([chunk('Fine.'), usageChunk, 'data: [DONE]\n\n'].join(''));
    const { events } = await accounting(1);
    expect(events[0]).toMatchObject({ status: 200, errorCode: null, promptTokens: 9, completionTokens: 2, estimated: false });
  });
});

describe("a stream's headers go out as upstream's arrive, not with its first event", () => {
  /**
   * An upstream that sends its stream's headers, then `event` once the client has had them (the
   * test says so), or after 5 s if it never does: then the headers were held back for the event.
   */
  function eventAfterHeaders(event: string) {
    let release!: () => void;
    const released = new Promise<'after the headers'>((resolve) => (release = () => resolve('after the headers')));
    let sentEvent: Promise<string> = Promise.resolve('never');
    upstream.set((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.flushHeaders();
      sentEvent = Promise.race([released, new Promise<string>((resolve) => setTimeout(() => resolve('with the headers'), 5000))]).then((when) => {
        res.end(event);
        return when;
      });
    });
    return async (send: () => Promise<Response>) => {
      const res = await send(); // resolves with the headers
      release();
      await res.text();
      return { status: res.status, eventSent: await sentEvent };
    };
  }

  it('a chat stream, and a stored response replayed (GET /v1/responses/{id}?stream=true)', async () => {
    const created = { id: 'resp_replay1', object: 'response', status: 'queued', background: true, model: 'gpt-4o-mini', output: [], usage: null };
    upstream.set(json(created));
    // Background responses are for keys without token or USD limits.
    const unmetered = await gw.createKey({ name: 'background' });
    const auth = { authorization: `Bearer ${unmetered.key}` };
    const create = await fetch(`${gw.url}/v1/responses`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ ...responses, background: true }) });
    expect(create.status).toBe(200);
    const completed = typed({ type: 'response.completed', sequence_number: 1, response: { ...created, status: 'completed' } });
    // The replay's headers came with its first event.
    expect(await eventAfterHeaders(completed)(() => fetch(`${gw.url}/v1/responses/resp_replay1?stream=true`, { headers: auth }))).toEqual({ status: 200, eventSent: 'after the headers' });
    expect(await eventAfterHeaders('data: [DONE]\n\n')(() => post('/v1/chat/completions', { ...chat, stream: true }))).toEqual({ status: 200, eventSent: 'after the headers' });
  });
});

describe('a stream that ends normally without usage or visible output is still charged its prompt', () => {
  it('chat: a role chunk, then [DONE] (a proxy dropped the usage; the output was all reasoning)', async () => {
    const role = data({ id: 'chatcmpl-s', object: 'chat.completion.chunk', model: 'gpt-4o-mini', choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] });
    upstream.set(sse([role, 'data: [DONE]\n\n']));
    const body = { ...chat, stream: true };
    await (await post('/v1/chat/completions', body)).text();
    const { events: recorded } = await accounting(1);
    // Served, so billed (13999eb released it in full: no output shown).
    expect(recorded[0]).toMatchObject({ status: 200, errorCode: null, promptTokens: estimate('chat.completions', body), completionTokens: 0, estimated: true });
  });
});

describe('a stream whose first event is an error (upstream refused it before generating anything) is released', () => {
  it.each([
    ['chat, after its role chunk', '/v1/chat/completions', { ...chat, stream: true }, [data({ id: 'chatcmpl-s', object: 'chat.completion.chunk', model: 'gpt-4o-mini', choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] })]],
    ['responses, after response.created', '/v1/responses', { ...responses, stream: true }, [created]],
  ] as const)('%s: cut by upstream before any token, it is released too', async (_name, path, body, events) => {
    upstream.set(sse([...events], 'drop'));
    await (await post(path, body)).text();
    const { events: recorded, used } = await accounting(1);
    expect(recorded[0]).toMatchObject({ status: 200, errorCode: 'upstream_stream_cut', promptTokens: 0, completionTokens: 0, estimated: false });
    expect(used).toBe(0);
  });

  it.each([
    ['chat', '/v1/chat/completions', { ...chat, stream: true }, [chatError]],
    ['responses', '/v1/responses', { ...responses, stream: true }, [responsesError(0)]],
  ] as const)('%s: nothing charged, not estimated, upstream_stream_error', async (_name, path, body, events) => {
    upstream.set(sse([...events]));
    const res = await post(path, body);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe(events.join(''));
    const { events: recorded, used } = await accounting(1);
    expect(recorded[0]).toMatchObject({ status: 200, errorCode: 'upstream_stream_error', promptTokens: 0, completionTokens: 0, costMicros: 0, estimated: false });
    expect(used).toBe(0);
  });
});

describe('an answer the pipeline cannot relay gives the reservation and the concurrency lease back at once', () => {
  /** A key allowed one request at a time, and how much of its day its requests in flight hold. */
  async function oneAtATime(on: Gateway) {
    const created = await on.createKey({ name: 'one-at-a-time', limits: { maxConcurrent: 1, tokensPerDay: 1_000_000 } });
    const send = () =>
      fetch(`${on.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${created.key}`, 'content-type': 'application/json' }, body: JSON.stringify(chat) });
    const reserved = async () => ((await on.admin('GET', `/admin/keys/${created.id}`)).body.quota.tokensPerDay as { reserved: number }).reserved;
    return { send, reserved };
  }
  const answer = { id: 'chatcmpl-ok', object: 'chat.completion', model: 'gpt-4o-mini', choices: [{ index: 0, message: { role: 'assistant', content: ANSWER }, finish_reason: 'stop' }], usage: { prompt_tokens: 9, completion_tokens: 5, total_tokens: 14 } };

  it('a status HTTP has no place for (a broken proxy\'s 700) is a 502 upstream_invalid_response, not a 500', async () => {
    upstream.set((_req, res) => res.writeHead(700, { 'content-type': 'application/json' }).end('{}'));
    const { send, reserved } = await oneAtATime(gw);
    const refused = await send();
    expect(refused.status).toBe(502);
    expect(await refused.json()).toMatchObject({ error: { type: 'server_error', code: 'upstream_invalid_response' } });
    // Held for as long as the instance ran: the renewal timer kept the lease alive.
    expect(await reserved()).toBe(0);
    upstream.set(json(answer));
    expect((await send()).status).toBe(200);
  });

  it('whatever fails after admission (here an upstream client that passed such a status on) ends the request: nothing is kept', async () => {
    const env = { OPENAI_API_KEY: UPSTREAM_KEY, OPENAI_BASE_URL: upstream.url };
    const client = createUpstreamClient(loadConfig(env).upstream);
    const send = client.send;
    client.send = async (req) => ({ ...(await send(req)), status: 1000 }); // Fastify refuses to send it: it throws
    const broken = await startGateway({ upstream: client, env: { ...env, REDIS_URL: testRedisUrl(), REDIS_PREFIX: uniquePrefix() } });
    opened.push(broken);
    upstream.set(json(answer));
    const key = await oneAtATime(broken);
    expect((await key.send()).status).toBe(500);
    expect(await key.reserved()).toBe(0);
    client.send = send;
    expect((await key.send()).status).toBe(200);
  });
});
