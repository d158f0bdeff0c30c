// The fake OpenAI upstream, exercised over real HTTP with fetch and the official openai SDK.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import OpenAI from 'openai';
import type { ChatCompletionCreateParamsNonStreaming } from 'openai/resources/chat/completions';
import { startFakeOpenAI, type FakeOpenAI } from '../../src/fake-openai/server.js';

type ChatParams = ChatCompletionCreateParamsNonStreaming;

let fake: FakeOpenAI;
let client: OpenAI;

beforeAll(async () => {
  fake = await startFakeOpenAI();
  // No retries: failNext/dropNext tests count requests exactly.
  client = new OpenAI({ baseURL: fake.url, apiKey: 'x', maxRetries: 0 });
});
afterAll(async () => {
  await fake.close();
});
beforeEach(() => fake.reset());

const post = (path: string, body: unknown, init: RequestInit = {}) =>
  fetch(`${fake.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    ...init,
  });

const chatBody = (content: string, extra: Partial<ChatParams> = {}): ChatParams => ({
  model: 'gpt-4o-mini',
  messages: [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content },
  ],
  ...extra,
});

/** Splits an SSE body into its data payloads, checking every event is `data: ...\n\n`. */
function sseData(text: string): string[] {
  expect(text.endsWith('\n\n')).toBe(true);
  return text
    .slice(0, -2)
    .split('\n\n')
    .map((event) => {
      expect(event.startsWith('data: ')).toBe(true);
      return event.slice('data: '.length);
    });
}

async function waitFor(check: () => boolean, timeoutMs = 1000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('models and headers', () => {
  it('lists and retrieves models like OpenAI', async () => {
    const page = await client.models.list();
    const ids = page.data.map((m) => m.id);
    expect(ids).toEqual(
      expect.arrayContaining(['gpt-4o', 'gpt-4o-mini', 'gpt-4.1-nano', 'o3-mini', 'gpt-3.5-turbo-instruct', 'text-embedding-3-small']),
    );
    for (const m of page.data) {
      expect(m).toEqual({ id: expect.any(String), object: 'model', created: expect.any(Number), owned_by: expect.any(String) });
    }
    expect(await client.models.retrieve('gpt-4.1')).toMatchObject({ id: 'gpt-4.1', object: 'model' });

    const missing = await fetch(`${fake.url}/models/gpt-9`);
    expect(missing.status).toBe(404);
    expect(await missing.json()).toEqual({
      error: { message: "The model 'gpt-9' does not exist", type: 'invalid_request_error', param: 'model', code: 'model_not_found' },
    });
  });

  it('sends OpenAI response headers on every response, errors included', async () => {
    for (const res of [await fetch(`${fake.url}/models`), await fetch(`${fake.url}/nope`)]) {
      expect(res.headers.get('x-request-id')).toMatch(/^req_[0-9a-f]{32}$/);
      expect(res.headers.get('openai-organization')).toBe('fake-org');
      expect(res.headers.get('openai-version')).toBe('2020-10-01');
      expect(Number(res.headers.get('openai-processing-ms'))).toBeGreaterThan(0);
      expect(res.headers.get('x-ratelimit-limit-requests')).toBe('10000');
      expect(res.headers.get('x-ratelimit-remaining-tokens')).toMatch(/^\d+$/);
    }
  });
});

describe('chat completions', () => {
  it('answers a deterministic chat.completion with consistent usage', async () => {
    const a = await client.chat.completions.create(chatBody('Tell me about toll gates please'));
    const b = await client.chat.completions.create(chatBody('Tell me about toll gates please'));
    expect(a.id).toMatch(/^chatcmpl-[A-Za-z0-9]{29}$/);
    expect(a.object).toBe('chat.completion');
    expect(a.model).toBe('gpt-4o-mini');
    expect(a.system_fingerprint).toMatch(/^fp_[0-9a-f]{10}$/);
    expect(a.created).toBeCloseTo(Date.now() / 1000, -1);
    expect(a.choices).toHaveLength(1);
    const choice = a.choices[0]!;
    expect(choice).toMatchObject({ index: 0, logprobs: null, finish_reason: 'stop', message: { role: 'assistant', refusal: null } });
    expect(choice.message.content).toMatch(/^This is a fake reply to: Tell me about toll gates please - /);
    expect(b.choices[0]!.message.content).toBe(choice.message.content);
    expect(b.id).not.toBe(a.id);

    const words = choice.message.content!.split(' ').length;
    // OpenAI's counting (o200k_base for gpt-4o-mini): 3 per message + its role and content tokens,
    // + 3 priming the reply. system: 3 + "system" 1 + "You are terse." 4; user: 3 + "user" 1 +
    // "Tell me about toll gates please" 6.
    expect(a.usage).toEqual({
      prompt_tokens: 8 + 10 + 3,
      completion_tokens: words,
      total_tokens: 21 + words,
      prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
      completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 },
    });
    expect(fake.usageTotals()).toEqual({ prompt_tokens: 42, completion_tokens: 2 * words, total_tokens: 2 * (21 + words), requests: 2 });
  });

  it('honours n and the max tokens cap', async () => {
    const res = await client.chat.completions.create(chatBody('hi', { n: 3, max_completion_tokens: 4 }));
    expect(res.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    for (const c of res.choices) {
      expect(c.finish_reason).toBe('length');
      expect(c.message.content).toBe('This is a fake');
    }
    expect(res.usage!.completion_tokens).toBe(12);

    const legacy = await client.chat.completions.create(chatBody('hi', { max_tokens: 2 }));
    expect(legacy.choices[0]!.message.content).toBe('This is');
    expect(legacy.usage!.completion_tokens).toBe(2);
  });

  it('streams chunks with include_usage through the SDK', async () => {
    const full = await client.chat.completions.create(chatBody('stream me something'));
    fake.reset();
    const stream = await client.chat.completions.create({ ...chatBody('stream me something'), stream: true, stream_options: { include_usage: true } });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);

    const content = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
    expect(content).toBe(full.choices[0]!.message.content);
    expect(chunks.length).toBeGreaterThanOrEqual(12);
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
    expect(chunks[0]!.choices[0]!.delta).toEqual({ role: 'assistant', content: '', refusal: null });
    for (const c of chunks.slice(0, -1)) {
      expect(c.object).toBe('chat.completion.chunk');
      expect(c.usage).toBeNull();
      expect(c.choices).toHaveLength(1);
    }
    expect(chunks.at(-2)!.choices[0]).toMatchObject({ delta: {}, finish_reason: 'stop' });
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toMatchObject(full.usage!);
    expect(fake.usageTotals()).toEqual({ ...pick(full.usage!), requests: 1 });
    expect(fake.activeStreams()).toBe(0);
    expect(fake.abortedStreams()).toBe(0);
  });

  it('streams without usage when not asked, but still accounts for it', async () => {
    const res = await post('/chat/completions', { ...chatBody('count me anyway'), stream: true, max_tokens: 12 });
    expect(res.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
    const data = sseData(await res.text());
    expect(data.at(-1)).toBe('[DONE]');
    const chunks = data.slice(0, -1).map((d) => JSON.parse(d) as Record<string, unknown>);
    for (const c of chunks) expect(c).not.toHaveProperty('usage');
    // role chunk + 12 words + finish chunk
    expect(chunks).toHaveLength(14);
    expect(fake.usageTotals()).toMatchObject({ completion_tokens: 12, requests: 1 });
    expect(fake.usageTotals().prompt_tokens).toBeGreaterThan(0);
  });

  it('counts a client abort mid-stream and bills only what was written', async () => {
    fake.setStreamChunkDelay(25);
    const controller = new AbortController();
    const res = await post('/chat/completions', { ...chatBody('abort me'), stream: true }, { signal: controller.signal });
    const reader = res.body!.getReader();
    await reader.read();
    await waitFor(() => fake.activeStreams() === 1);
    controller.abort();
    await waitFor(() => fake.abortedStreams() === 1);
    expect(fake.activeStreams()).toBe(0);
    const totals = fake.usageTotals();
    expect(totals.requests).toBe(1);
    // the full reply is ~20 words; at 25 ms per chunk only the first few went out
    expect(totals.completion_tokens).toBeLessThan(10);
  });

  it('rejects bad requests with OpenAI-shaped errors', async () => {
    const malformed = await post('/chat/completions', '{"model": ');
    expect(malformed.status).toBe(400);
    expect(((await malformed.json()) as { error: { type: string } }).error.type).toBe('invalid_request_error');

    const noModel = await post('/chat/completions', { messages: [{ role: 'user', content: 'x' }] });
    expect(noModel.status).toBe(400);
    expect(await noModel.json()).toEqual({
      error: { message: 'you must provide a model parameter', type: 'invalid_request_error', param: null, code: null },
    });

    const unknown = await post('/chat/completions', { ...chatBody('x'), model: 'gpt-9' });
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as { error: { code: string } }).error.code).toBe('model_not_found');

    const snapshot = await post('/chat/completions', { ...chatBody('x'), model: 'gpt-4o-2024-08-06' });
    expect(snapshot.status).toBe(200);

    const badPath = await post('/chat/completion', chatBody('x'));
    expect(badPath.status).toBe(404);
    expect(await badPath.json()).toEqual({
      error: { message: 'Invalid URL (POST /v1/chat/completion)', type: 'invalid_request_error', param: null, code: null },
    });

    const optsNoStream = await post('/chat/completions', chatBody('x', { stream_options: { include_usage: true } }));
    expect(optsNoStream.status).toBe(400);
    expect(fake.usageTotals().requests).toBe(1);
  });
});

describe('legacy completions', () => {
  it('defaults max_tokens to 16 and numbers choices prompt-major', async () => {
    const one = await client.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: 'Say this is a test' });
    expect(one.id).toMatch(/^cmpl-/);
    expect(one.object).toBe('text_completion');
    expect(one.choices[0]).toMatchObject({ index: 0, logprobs: null, finish_reason: 'length' });
    expect(one.choices[0]!.text).toMatch(/^ This is a fake completion of: Say this is a test/);
    // "Say this is a test" is 5 tokens in cl100k_base; legacy completions add no framing.
    expect(one.usage).toEqual({ prompt_tokens: 5, completion_tokens: 16, total_tokens: 21 });

    const many = await client.completions.create({ model: 'text-davinci-002', prompt: ['a', 'b'], n: 2, max_tokens: 3 });
    expect(many.choices.map((c) => c.index)).toEqual([0, 1, 2, 3]);
    expect(many.usage).toEqual({ prompt_tokens: 1 + 1, completion_tokens: 12, total_tokens: 14 });

    const tokens = await client.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: [[1, 2, 3], [4, 5]], max_tokens: 40 });
    expect(tokens.usage!.prompt_tokens).toBe(5);
    expect(tokens.choices.every((c) => c.finish_reason === 'stop')).toBe(true);
    expect(fake.usageTotals()).toEqual({
      prompt_tokens: 5 + 2 + 5,
      completion_tokens: 16 + 12 + tokens.usage!.completion_tokens,
      total_tokens: 21 + many.usage!.total_tokens + tokens.usage!.total_tokens,
      requests: 3,
    });
  });

  it('takes max_tokens 0 (a prompt scored, nothing generated), as OpenAI does; chat still needs 1', async () => {
    const scored = await client.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: 'Say this is a test', max_tokens: 0, echo: true, logprobs: 0 });
    expect(scored.choices[0]).toMatchObject({ text: '', finish_reason: 'length' });
    expect(scored.usage).toEqual({ prompt_tokens: 5, completion_tokens: 0, total_tokens: 5 });

    const chat = await post('/chat/completions', chatBody('x', { max_tokens: 0 }));
    expect(chat.status).toBe(400);
    expect(await chat.json()).toMatchObject({ error: { param: 'max_tokens', code: 'integer_below_min_value' } });
  });

  it('streams text chunks and a final usage chunk', async () => {
    const stream = await client.completions.create({
      model: 'gpt-3.5-turbo-instruct',
      prompt: 'Once upon a time',
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(chunks.map((c) => c.choices[0]?.text ?? '').join('').split(' ').length).toBe(17); // leading space + 16 words
    expect(chunks.at(-2)!.choices[0]!.finish_reason).toBe('length');
    expect(chunks.at(-1)!.choices).toEqual([]);
    expect(chunks.at(-1)!.usage).toEqual({ prompt_tokens: 4, completion_tokens: 16, total_tokens: 20 });
    expect(fake.usageTotals()).toEqual({ prompt_tokens: 4, completion_tokens: 16, total_tokens: 20, requests: 1 });
  });
});

describe('embeddings', () => {
  it('decodes the SDK default base64 to the same vectors as encoding_format float', async () => {
    const viaSdk = await client.embeddings.create({ model: 'text-embedding-3-small', input: ['hello world', 'bye'] });
    expect(JSON.parse(fake.requests[0]!.rawBody)).toMatchObject({ encoding_format: 'base64' });
    const res = await post('/embeddings', { model: 'text-embedding-3-small', input: ['hello world', 'bye'] });
    const asFloat = (await res.json()) as typeof viaSdk;

    expect(asFloat.object).toBe('list');
    expect(asFloat.data.map((d) => d.embedding)).toEqual(viaSdk.data.map((d) => d.embedding));
    for (const d of viaSdk.data) {
      expect(d.object).toBe('embedding');
      expect(d.embedding).toHaveLength(8);
      expect(Math.hypot(...d.embedding)).toBeCloseTo(1, 5);
    }
    expect(viaSdk.data[0]!.embedding).not.toEqual(viaSdk.data[1]!.embedding);
    // "hello world" 2 + "bye" 1 (cl100k_base)
    expect(viaSdk.usage).toEqual({ prompt_tokens: 2 + 1, total_tokens: 3 });
    expect(fake.usageTotals()).toEqual({ prompt_tokens: 6, completion_tokens: 0, total_tokens: 6, requests: 2 });
  });

  it('accepts token inputs and dimensions', async () => {
    const res = await client.embeddings.create({ model: 'text-embedding-3-large', input: [[1, 2, 3], [4]], dimensions: 4, encoding_format: 'float' });
    expect(res.data.map((d) => d.embedding.length)).toEqual([4, 4]);
    expect(res.usage.prompt_tokens).toBe(4);
    const bad = await post('/embeddings', { model: 'text-embedding-3-small' });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { param: string } }).error.param).toBe('input');
  });
});

describe('failure modes', () => {
  it('failNext answers the given errors, then recovers', async () => {
    fake.failNext(2, 429, undefined, { 'retry-after': '1' });
    for (let i = 0; i < 2; i++) {
      const res = await post('/chat/completions', chatBody('x'));
      expect(res.status).toBe(429);
      expect(res.headers.get('retry-after')).toBe('1');
      expect(res.headers.get('x-request-id')).toMatch(/^req_/);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('rate_limit_exceeded');
    }
    fake.failNext(1, 500, { error: { message: 'boom', type: 'server_error', param: null, code: null } });
    await expect(client.chat.completions.create(chatBody('x'))).rejects.toMatchObject({ status: 500, message: expect.stringContaining('boom') });
    expect((await post('/chat/completions', chatBody('x'))).status).toBe(200);
    expect(fake.requests).toHaveLength(4);
    expect(fake.usageTotals().requests).toBe(1);
  });

  it('dropNext destroys the socket without an answer', async () => {
    fake.dropNext(1);
    await expect(post('/chat/completions', chatBody('x'))).rejects.toThrow();
    await expect(client.chat.completions.create(chatBody('x'))).resolves.toMatchObject({ object: 'chat.completion' });
    expect(fake.requests).toHaveLength(2);
  });

  it('hangNext never answers, and close() still ends the hung request', async () => {
    const other = await startFakeOpenAI();
    other.hangNext(1);
    await expect(
      fetch(`${other.url}/models`, { signal: AbortSignal.timeout(50) }),
    ).rejects.toThrow();
    other.hangNext(1);
    const pending = fetch(`${other.url}/models`).then(
      () => 'answered',
      () => 'failed',
    );
    await waitFor(() => other.requests.length === 2);
    await other.close();
    expect(await pending).toBe('failed');
  });

  it('applies latency before headers', async () => {
    fake.setLatency(60);
    const started = Date.now();
    const res = await fetch(`${fake.url}/models`);
    expect(Date.now() - started).toBeGreaterThanOrEqual(55);
    expect(Number(res.headers.get('openai-processing-ms'))).toBeGreaterThanOrEqual(55);
    await res.arrayBuffer();
  });

  it('checks the API key when one is configured', async () => {
    const logged: object[] = [];
    const guarded = await startFakeOpenAI({ apiKey: 'sk-right', logger: { info: (obj) => logged.push(obj) } });
    try {
      const none = await fetch(`${guarded.url}/models`);
      expect(none.status).toBe(401);
      const wrong = await fetch(`${guarded.url}/models`, { headers: { authorization: 'Bearer sk-wrong-key-123456' } });
      expect(wrong.status).toBe(401);
      expect(await wrong.json()).toMatchObject({ error: { code: 'invalid_api_key', type: 'invalid_request_error' } });
      const ok = new OpenAI({ baseURL: guarded.url, apiKey: 'sk-right', maxRetries: 0 });
      expect((await ok.models.list()).data.length).toBeGreaterThan(5);
      await waitFor(() => logged.length === 3);
      expect(logged[0]).toMatchObject({ method: 'GET', path: '/v1/models', status: 401 });
    } finally {
      await guarded.close();
    }
  });
});

describe('recording and reset', () => {
  it('records every request and reset clears everything', async () => {
    await post('/embeddings?trace=1', { model: 'text-embedding-ada-002', input: 'x' }, { headers: { 'content-type': 'application/json', 'x-test': 'yes' } });
    expect(fake.requests).toEqual([
      {
        method: 'POST',
        path: '/v1/embeddings',
        url: '/v1/embeddings?trace=1',
        headers: expect.objectContaining({ 'x-test': 'yes' }),
        body: { model: 'text-embedding-ada-002', input: 'x' },
        rawBody: '{"model":"text-embedding-ada-002","input":"x"}',
      },
    ]);
    fake.failNext(1, 500);
    fake.reset();
    expect(fake.requests).toEqual([]);
    expect(fake.usageTotals()).toEqual({ prompt_tokens: 0, completion_tokens: 0, total_tokens: 0, requests: 0 });
    expect((await fetch(`${fake.url}/models`)).status).toBe(200);
  });
});

function pick(u: { prompt_tokens: number; completion_tokens: number; total_tokens: number }) {
  return { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens, total_tokens: u.total_tokens };
}
