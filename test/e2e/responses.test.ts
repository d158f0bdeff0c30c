// The Responses API and moderations through Tollgate with the official openai SDK: creation (JSON and
// streams), ownership of stored responses, quotas, exact usage, the cache, and moderations.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import OpenAI from 'openai';
import { startGateway, type Gateway } from '../helpers/gateway.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';

let gw: Gateway;
let owner: { id: string; key: string };
let other: { id: string; key: string };
let client: OpenAI;
let otherClient: OpenAI;

beforeAll(async () => {
  gw = await startGateway({ env: { CACHE_ENABLED: 'true', REDIS_URL: testRedisUrl(), REDIS_PREFIX: uniquePrefix() } });
  owner = await gw.createKey({ name: 'resp-owner' });
  other = await gw.createKey({ name: 'resp-other' });
  client = gw.sdk(owner.key);
  otherClient = gw.sdk(other.key);
});
afterAll(() => gw.close());

const upstreamCalls = (path = '/v1/responses') => gw.fake.requests.filter((r) => r.method === 'POST' && r.path === path).length;
const unique = () => Math.random().toString(36).slice(2);

/** The request log lines of the gateway key, newest last. */
const lines = (keyId: string) => gw.logs.requests().filter((l) => l.keyId === keyId);

describe('creating responses', () => {
  it('creates a response as JSON, reading usage, recording it exactly', async () => {
    const key = await gw.createKey({ name: 'exact' });
    const before = gw.fake.usageTotals();
    const res = await gw.sdk(key.key).responses.create({ model: 'gpt-4o-mini', input: `Hello responses ${unique()}`, instructions: 'Be brief.' });
    expect(res.object).toBe('response');
    expect(res.status).toBe('completed');
    expect(res.output_text).toContain('Hello responses');
    const sent = gw.fake.requests.at(-1)!.body as Record<string, unknown>;
    expect(sent.stream_options).toBeUndefined();

    const stream = await gw.sdk(key.key).responses.create({ model: 'gpt-4o-mini', input: [{ role: 'user', content: `Stream it ${unique()}` }], stream: true });
    const types: string[] = [];
    let text = '';
    let completed: OpenAI.Responses.Response | undefined;
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === 'response.output_text.delta') text += event.delta;
      if (event.type === 'response.completed') completed = event.response;
    }
    expect(types[0]).toBe('response.created');
    expect(types.at(-1)).toBe('response.completed');
    expect(text).toContain('Stream it');
    expect(completed!.usage!.total_tokens).toBeGreaterThan(0);
    expect((gw.fake.requests.at(-1)!.body as Record<string, unknown>).stream_options).toBeUndefined();

    const after = gw.fake.usageTotals();
    await expect
      .poll(async () => (await gw.admin('GET', `/admin/usage?groupBy=key&keyId=${key.id}`)).body.totals)
      .toMatchObject({
        requests: 2,
        promptTokens: after.prompt_tokens - before.prompt_tokens,
        completionTokens: after.completion_tokens - before.completion_tokens,
        totalTokens: after.total_tokens - before.total_tokens,
      });
    const logged = lines(key.id);
    expect(logged.map((l) => l.endpoint)).toEqual(['responses', 'responses']);
    expect(logged.every((l) => (l.costMicros as number) > 0 && l.estimated === false && l.streamIncomplete === undefined)).toBe(true);
    expect(logged.map((l) => l.stream)).toEqual([false, true]);
  });

  it('streams with client.responses.stream(...).finalResponse()', async () => {
    const stream = client.responses.stream({ model: 'gpt-4o-mini', input: `Final please ${unique()}` });
    const deltas: string[] = [];
    stream.on('response.output_text.delta', (e) => deltas.push(e.delta));
    const final = await stream.finalResponse();
    expect(final.status).toBe('completed');
    expect(final.output_text).toBe(deltas.join(''));
    expect(final.usage!.output_tokens).toBe(deltas.length);
  });

  it('validates what the gateway acts on', async () => {
    const bad = async (body: Record<string, unknown>) => {
      const err = await client.responses.create(body as never).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.BadRequestError);
      return (err as InstanceType<typeof OpenAI.BadRequestError>).param;
    };
    expect(await bad({ model: 'gpt-4o-mini', input: 'x', max_output_tokens: 0 })).toBe('max_output_tokens');
    expect(await bad({ model: 'gpt-4o-mini', input: 'x', temperature: 3 })).toBe('temperature');
    expect(await bad({ model: 'gpt-4o-mini', input: 'x', top_p: 'high' })).toBe('top_p');
    expect(await bad({ model: 'gpt-4o-mini', input: 42 })).toBe('input');
    expect(await bad({ input: 'x' })).toBe('model');
  });

  it('refuses with 429 when the budget cannot hold the reservation', async () => {
    const tight = await gw.createKey({ name: 'tight', limits: { tokensPerDay: 100 } });
    const tightClient = gw.sdk(tight.key);
    const calls = upstreamCalls();
    const err = await tightClient.responses.create({ model: 'gpt-4o-mini', input: 'Too big', max_output_tokens: 500 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    expect(upstreamCalls()).toBe(calls);
    // Within budget: max_output_tokens is what is reserved.
    const ok = await tightClient.responses.create({ model: 'gpt-4o-mini', input: 'Small', max_output_tokens: 30 });
    expect(ok.usage!.total_tokens).toBeLessThanOrEqual(100);
  });
});

describe('continuing a stored response (previous_response_id)', () => {
  // OpenAI bills the whole conversation again as input: a continuation is reserved with it, or a
  // key whose budget fits only the new message could run far past it (a probe settled 5,115 of 1,000).
  it.each([{ stream: false }, { stream: true }])('reserves the conversation it carries, refusing what the budget cannot hold (stream: $stream)', async ({ stream }) => {
    const key = await gw.createKey({ name: `carry-${String(stream)}`, limits: { tokensPerDay: 1_000 } });
    const sdk = gw.sdk(key.key);
    const long = { model: 'gpt-4o-mini', input: `${unique()} ${'context '.repeat(580)}`, max_output_tokens: 50 };
    const first = stream ? await sdk.responses.stream(long).finalResponse() : await sdk.responses.create(long);
    const context = first.usage!.input_tokens + first.usage!.output_tokens;
    expect(context).toBeGreaterThan(550);
    const calls = upstreamCalls();
    // Its own body is ~5 tokens + 100 out: it fits what is left (~370) only if the ~600 carried are forgotten.
    const err = await sdk.responses
      .create({ model: 'gpt-4o-mini', input: 'And then?', previous_response_id: first.id, max_output_tokens: 100 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    expect((err as { code?: string }).code).toBe('insufficient_quota');
    expect(upstreamCalls()).toBe(calls);
    // A key with room continues it as usual.
    const roomy = await gw.createKey({ name: `carry-roomy-${String(stream)}`, limits: { tokensPerDay: 100_000 } });
    const base = await gw.sdk(roomy.key).responses.create(long);
    const next = await gw.sdk(roomy.key).responses.create({ model: 'gpt-4o-mini', input: 'And then?', previous_response_id: base.id, max_output_tokens: 100 });
    expect(next.status).toBe('completed');
  });
});

describe('stored responses belong to the key that created them', () => {
  it('lets a request name (item_reference) only the output items of its own key\'s responses', async () => {
    const created = await client.responses.create({ model: 'gpt-4o-mini', input: `Remember me ${unique()}` });
    const streamed = await client.responses.stream({ model: 'gpt-4o-mini', input: `Me too ${unique()}` }).finalResponse();
    for (const id of [created.output[0]!.id!, streamed.output[0]!.id!]) {
      const follow = (c: OpenAI, input: OpenAI.Responses.ResponseInput) => c.responses.create({ model: 'gpt-4o-mini', input });
      // Its own: passed on.
      expect((await follow(client, [{ type: 'item_reference', id }, { role: 'user', content: 'go on' }])).status).toBe('completed');
      // Another key's, in either form: OpenAI's 400 for an unknown item, and upstream never asked.
      const before = upstreamCalls();
      for (const input of [[{ type: 'item_reference' as const, id }], [{ id } as unknown as OpenAI.Responses.ResponseInputItem]]) {
        const err = await follow(otherClient, input).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(OpenAI.BadRequestError);
        expect(err).toMatchObject({ status: 400, param: 'input', code: 'item_not_found' });
        expect((err as Error).message).toContain(`Item with id '${id}' not found.`);
      }
      expect(upstreamCalls()).toBe(before);
    }
    // An id nobody recorded is nobody's.
    const err = await client.responses.create({ model: 'gpt-4o-mini', input: [{ type: 'item_reference', id: 'msg_never_made' }] }).catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 400, code: 'item_not_found' });
    // A reasoning item without its encrypted content is looked up by id too.
    const reasoning = { type: 'reasoning', id: created.output[0]!.id!, summary: [] } as unknown as OpenAI.Responses.ResponseInputItem;
    expect(await otherClient.responses.create({ model: 'gpt-4o-mini', input: [reasoning] }).catch((e: unknown) => e)).toMatchObject({ status: 400, code: 'item_not_found' });
    // Bounded: one request may not send the store thousands of lookups.
    const many = Array.from({ length: 101 }, (_, i) => ({ type: 'item_reference' as const, id: `msg_${i}` }));
    expect(await client.responses.create({ model: 'gpt-4o-mini', input: many }).catch((e: unknown) => e)).toMatchObject({ status: 400, code: 'too_many_item_references' });
  });

  it("records a background response's items when it is read back, for its owner", async () => {
    const queued = await client.responses.create({ model: 'gpt-4o-mini', input: `Later ${unique()}`, background: true });
    expect(queued.output).toEqual([]);
    expect(gw.fake.runBackground()).toBeGreaterThanOrEqual(1);
    const done = await client.responses.retrieve(queued.id);
    const id = done.output[0]!.id!;
    expect((await client.responses.create({ model: 'gpt-4o-mini', input: [{ type: 'item_reference', id }] })).status).toBe('completed');
    expect(await otherClient.responses.create({ model: 'gpt-4o-mini', input: [{ type: 'item_reference', id }] }).catch((e: unknown) => e)).toMatchObject({ status: 400, code: 'item_not_found' });
  });

  it("pages through input items with the SDK's auto-paging (the query passes through; the demo's fake pages too)", async () => {
    const input = ['one', 'two', 'three'].map((word) => ({ role: 'user' as const, content: `${word} ${unique()}` }));
    const created = await client.responses.create({ model: 'gpt-4o-mini', input });
    const seen: string[] = [];
    for await (const item of client.responses.inputItems.list(created.id, { limit: 1, order: 'asc' })) {
      seen.push(((item as { content: { text: string }[] }).content[0]!.text));
      if (seen.length > 10) break; // it used to page forever
    }
    expect(seen).toEqual(input.map((m) => m.content));
  });

  it('lets the owner retrieve, list input items and delete; other keys get 404 without an upstream call', async () => {
    const created = await client.responses.create({ model: 'gpt-4o-mini', input: `Keep me ${unique()}` });
    const streamed = await client.responses.stream({ model: 'gpt-4o-mini', input: `Keep me too ${unique()}` }).finalResponse();

    for (const id of [created.id, streamed.id]) {
      expect((await client.responses.retrieve(id)).id).toBe(id);
      const items: OpenAI.Responses.ResponseItem[] = [];
      for await (const item of client.responses.inputItems.list(id)) items.push(item);
      expect(items).toHaveLength(1);

      const before = gw.fake.requests.length;
      const notFound = async (p: Promise<unknown>) => {
        const err = await p.catch((e: unknown) => e);
        expect(err).toBeInstanceOf(OpenAI.NotFoundError);
        expect((err as Error).message).toContain(`Response with id '${id}' not found.`);
      };
      await notFound(otherClient.responses.retrieve(id));
      await notFound(otherClient.responses.delete(id));
      await notFound(otherClient.responses.cancel(id));
      await notFound(otherClient.responses.inputItems.list(id));
      expect(gw.fake.requests.length).toBe(before);
    }
    await client.responses.delete(created.id);
    await expect(client.responses.retrieve(created.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    await expect(client.responses.retrieve('resp_never_made')).rejects.toBeInstanceOf(OpenAI.NotFoundError);
  });

  it('answers an empty response id with the 404 of an unknown id, never a 503, without asking upstream', async () => {
    const headers = { authorization: `Bearer ${owner.key}` };
    const unknown = await fetch(`${gw.url}/v1/responses/resp_never_made`, { headers });
    expect(unknown.status).toBe(404);
    const unknownError = ((await unknown.json()) as { error: Record<string, unknown> }).error;
    // OpenAI's words and shape for an id it does not know.
    expect(unknownError).toEqual({ message: "Response with id 'resp_never_made' not found.", type: 'invalid_request_error', param: null, code: null });
    const before = gw.fake.requests.length;
    for (const [method, path] of [
      ['GET', '/v1/responses/'],
      ['DELETE', '/v1/responses/'],
      ['POST', '/v1/responses//cancel'],
      ['GET', '/v1/responses//input_items'],
    ] as const) {
      const res = await fetch(`${gw.url}${path}`, { method, headers });
      expect(res.status, `${method} ${path}`).toBe(404);
      // The same answer as for an id that does not exist (or is another key's), its id aside.
      expect(await res.json(), `${method} ${path}`).toEqual({
        error: { ...unknownError, message: "Response with id '' not found." },
      });
    }
    // The pipeline's answer for a previous response this key did not create.
    const previous = await fetch(`${gw.url}/v1/responses`, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o-mini', input: 'Go on', previous_response_id: '' }),
    });
    expect(previous.status).toBe(400);
    expect(await previous.json()).toEqual({
      error: {
        message: "Previous response with id '' not found.",
        type: 'invalid_request_error',
        param: 'previous_response_id',
        code: 'previous_response_not_found',
      },
    });
    // Through the SDK as well: a BadRequestError, as OpenAI's own (apps resend the transcript on it).
    const err = await client.responses
      .create({ model: 'gpt-4o-mini', input: 'Go on', previous_response_id: '' })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect(gw.fake.requests.length).toBe(before);
    expect(gw.logs.lines.filter((l) => l.msg === 'response owner lookup failed')).toEqual([]);
  });

  it('cancels a background response for its owner only; background responses are not cached', async () => {
    const input = `In the background ${unique()}`;
    const calls = upstreamCalls();
    const queued = await client.responses.create({ model: 'gpt-4o-mini', input, background: true });
    await client.responses.create({ model: 'gpt-4o-mini', input, background: true });
    expect(upstreamCalls()).toBe(calls + 2);
    expect(queued.status).toBe('queued');
    await expect(otherClient.responses.cancel(queued.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    expect((await client.responses.cancel(queued.id)).status).toBe('cancelled');
  });
});

describe('background responses and budgets', () => {
  // OpenAI bills a background response when it finishes, after the create call was answered: its
  // usage never passes the gateway, so 30 such calls on a spent key used to run up unmetered work.
  it.each([
    { limit: 'tpm', limits: { tpm: 100_000 } },
    { limit: 'tokensPerDay', limits: { tokensPerDay: 100_000 } },
    { limit: 'tokensPerMonth', limits: { tokensPerMonth: 100_000 } },
    { limit: 'usdPerDay', limits: { usdPerDay: 10 } },
    { limit: 'usdPerMonth', limits: { usdPerMonth: 10 } },
  ])('refuses background: true for a key with a $limit limit, before upstream, in OpenAI shape', async ({ limit, limits }) => {
    const key = await gw.createKey({ name: `bg-${limit}`, limits });
    const calls = upstreamCalls();
    const err = await gw
      .sdk(key.key)
      .responses.create({ model: 'gpt-4o-mini', input: `Think about it ${unique()}`, background: true, max_output_tokens: 100 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect(err).toMatchObject({ status: 400, code: 'background_not_metered', param: 'background', type: 'invalid_request_error' });
    expect(upstreamCalls()).toBe(calls);
    // The same request in the foreground is metered as usual.
    const fg = await gw.sdk(key.key).responses.create({ model: 'gpt-4o-mini', input: `Think about it ${unique()}`, max_output_tokens: 100 });
    expect(fg.status).toBe('completed');
  });

  it('refuses a conversation (its input cannot be counted) for a key with a token or USD limit, before upstream', async () => {
    const metered = await gw.createKey({ name: 'conv-metered', limits: { tokensPerDay: 100_000 } });
    const calls = upstreamCalls();
    for (const conversation of ['conv_abc123', { id: 'conv_abc123' }]) {
      const err = await gw
        .sdk(metered.key)
        .responses.create({ model: 'gpt-4o-mini', input: 'And then?', conversation } as never)
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.BadRequestError);
      expect(err).toMatchObject({ status: 400, code: 'conversation_not_metered', param: 'conversation' });
    }
    expect(upstreamCalls()).toBe(calls);
    // A key counting only requests is not held to tokens or dollars: it passes (upstream has the final word).
    const requestsOnly = await gw.createKey({ name: 'conv-requests-only', limits: { rpm: 100 } });
    const res = await fetch(`${gw.url}/v1/responses`, {
      method: 'POST',
      headers: { authorization: `Bearer ${requestsOnly.key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o-mini', input: 'And then?', conversation: 'conv_abc123' }),
    });
    expect(res.status).not.toBe(400);
    await res.arrayBuffer();
  });

  it('refuses hosted tools OpenAI bills per call (web search, file search, ...) for a key with a USD limit, before upstream', async () => {
    const usd = await gw.createKey({ name: 'tools-usd', limits: { usdPerDay: 10 } });
    const calls = upstreamCalls();
    for (const tools of [[{ type: 'web_search' }], [{ type: 'web_search_preview' }], [{ type: 'file_search', vector_store_ids: ['vs_1'] }], [{ type: 'code_interpreter', container: { type: 'auto' } }], [{ type: 'image_generation' }]]) {
      const err = await gw
        .sdk(usd.key)
        .responses.create({ model: 'gpt-4o-mini', input: `Look it up ${unique()}`, tools } as never)
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.BadRequestError);
      expect(err).toMatchObject({ status: 400, code: 'hosted_tool_not_priced', param: 'tools' });
      expect((err as Error).message).toContain(`'${tools[0]!.type}' tool is billed by OpenAI per call`);
    }
    expect(upstreamCalls()).toBe(calls);
    // Tools the client runs cost tokens only; a key with a token limit alone pays no dollars.
    const fn = { type: 'function' as const, name: 'lookup', parameters: { type: 'object', properties: {} }, strict: false };
    expect((await gw.sdk(usd.key).responses.create({ model: 'gpt-4o-mini', input: `Call it ${unique()}`, tools: [fn] })).status).toBe('completed');
    const tokensOnly = await gw.createKey({ name: 'tools-tokens', limits: { tokensPerDay: 100_000 } });
    expect((await gw.sdk(tokensOnly.key).responses.create({ model: 'gpt-4o-mini', input: `Look it up ${unique()}`, tools: [{ type: 'web_search' }] } as never)).status).toBe('completed');
  });

  it('allows background: true for a key whose limits count only requests (rpm, maxConcurrent)', async () => {
    const key = await gw.createKey({ name: 'bg-requests-only', limits: { rpm: 100, maxConcurrent: 5 } });
    const queued = await gw.sdk(key.key).responses.create({ model: 'gpt-4o-mini', input: `Later ${unique()}`, background: true });
    expect(queued.status).toBe('queued');
  });
});

describe('reading stored responses back', () => {
  it('counts every read against the key\'s rpm, as any request, and says so in the rate-limit headers', async () => {
    const key = await gw.createKey({ name: 'poller', limits: { rpm: 3 } });
    const created = await gw.sdk(key.key).responses.create({ model: 'gpt-4o-mini', input: `Poll me ${unique()}` });
    const get = () => fetch(`${gw.url}/v1/responses/${created.id}`, { headers: { authorization: `Bearer ${key.key}` } });
    const first = await get();
    expect(first.status).toBe(200);
    expect(first.headers.get('x-ratelimit-remaining-requests')).toBe('1');
    await first.arrayBuffer();
    expect((await get()).status).toBe(200);
    // A polling loop used the shared server key's rate limit without bound: the fourth request is refused.
    const before = gw.fake.requests.length;
    const refused = await get();
    expect(refused.status).toBe(429);
    expect(await refused.json()).toMatchObject({ error: { code: 'rate_limit_exceeded' } });
    expect(refused.headers.get('retry-after')).not.toBeNull();
    expect(gw.fake.requests.length).toBe(before);
    // Stopping a response is never refused by a limit: cancel and delete still go through.
    const auth = { authorization: `Bearer ${key.key}` };
    const deleted = await fetch(`${gw.url}/v1/responses/${created.id}`, { method: 'DELETE', headers: auth });
    expect(deleted.status).toBe(200);
    await deleted.arrayBuffer();
  });

  it('records no tokens: retrieving or cancelling a response is not another use of them', async () => {
    const key = await gw.createKey({ name: 'reader' });
    const reader = gw.sdk(key.key);
    const created = await reader.responses.create({ model: 'gpt-4o-mini', input: `Read me back ${unique()}` });
    const queued = await reader.responses.create({ model: 'gpt-4o-mini', input: `Cancel me ${unique()}`, background: true });
    const usageTotals = async () => (await gw.admin('GET', `/admin/usage?groupBy=key&keyId=${key.id}`)).body.totals;
    await expect.poll(usageTotals).toMatchObject({ requests: 2 });
    const created2 = await usageTotals();
    expect(created2.totalTokens).toBeGreaterThan(0);

    // The answers carry the response's usage, as OpenAI's do: it must not be counted again.
    expect((await reader.responses.retrieve(created.id)).usage!.total_tokens).toBeGreaterThan(0);
    await reader.responses.cancel(queued.id);
    await expect.poll(usageTotals).toMatchObject({
      requests: 4,
      promptTokens: created2.promptTokens,
      completionTokens: created2.completionTokens,
      totalTokens: created2.totalTokens,
    });
    const reads = lines(key.id).filter((l) => l.endpoint === 'responses.retrieve' || l.endpoint === 'responses.cancel');
    expect(reads.map((l) => l.totalTokens)).toEqual([0, 0]);
  });
});

describe('the cache', () => {
  const raw = (key: string, body: Record<string, unknown>, on: Gateway = gw) =>
    fetch(`${on.url}/v1/responses`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });

  it('keeps an answer its own max_output_tokens cut, streamed or not, and streams it back ending in response.incomplete', async () => {
    const body = { model: 'gpt-4o-mini', input: `Cut me short, please, after a few words ${unique()}`, max_output_tokens: 3, store: false, stream: true };
    const calls = upstreamCalls();
    const first = await raw(owner.key, body);
    expect(first.headers.get('x-tollgate-cache')).toBe('MISS');
    const firstText = await first.text();
    expect(firstText).toContain('event: response.incomplete');
    // Streamed again: a hit (every streamed request went upstream), ending as the original did.
    const again = await raw(owner.key, body);
    expect(again.headers.get('x-tollgate-cache')).toBe('HIT');
    const againText = await again.text();
    expect(againText.trim().split('\n\n').at(-1)).toMatch(/^event: response\.incomplete\ndata: /);
    // And as JSON.
    const json = await raw(owner.key, { ...body, stream: false });
    expect(json.headers.get('x-tollgate-cache')).toBe('HIT');
    expect(await json.json()).toMatchObject({ status: 'incomplete', incomplete_details: { reason: 'max_output_tokens' } });
    expect(upstreamCalls()).toBe(calls + 1);
  });

  it('serves a stateless response from the cache as JSON and as a stream, with the same id', async () => {
    const body = { model: 'gpt-4o-mini', input: `Cache me ${unique()}`, store: false };
    const calls = upstreamCalls();
    const first = await client.responses.create(body);
    const miss = lines(owner.id).at(-1)!;
    expect(miss.cache).toBe('MISS');

    const res = await raw(owner.key, body);
    expect(res.headers.get('x-tollgate-cache')).toBe('HIT');
    const hit = (await res.json()) as OpenAI.Responses.Response;
    expect(hit.id).toBe(first.id);
    expect(hit.output).toEqual(first.output);
    expect(hit.usage).toEqual(first.usage);

    const final = await client.responses.stream(body).finalResponse();
    expect(final.id).toBe(first.id);
    expect(final.output_text).toBe(first.output_text);
    expect(final.usage).toEqual(first.usage);
    const types: string[] = [];
    for await (const e of await client.responses.create({ ...body, stream: true })) types.push(e.type);
    expect(types.slice(0, 2)).toEqual(['response.created', 'response.in_progress']);
    expect(types.at(-1)).toBe('response.completed');
    expect(upstreamCalls()).toBe(calls + 1);
    // A hit costs nothing.
    expect(lines(owner.id).slice(-3).every((l) => l.cache === 'HIT')).toBe(true);
  });

  it('a streamed miss is stored and later served as JSON', async () => {
    const body = { model: 'gpt-4o-mini', input: `Stream first ${unique()}` };
    const calls = upstreamCalls();
    const streamed = await client.responses.stream(body).finalResponse();
    const json = await gw.sdk(owner.key).responses.create(body);
    expect(upstreamCalls()).toBe(calls + 1);
    expect(json.id).toBe(streamed.id);
    expect(json.output_text).toBe(streamed.output_text);
  });

  it('lets a response continue only a conversation its own key created', async () => {
    const base = await client.responses.create({ model: 'gpt-4o-mini', input: `Mine ${unique()}` });
    const calls = upstreamCalls();
    const err = await otherClient.responses
      .create({ model: 'gpt-4o-mini', input: 'What did I say before?', previous_response_id: base.id })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as { code?: string }).code).toBe('previous_response_not_found');
    expect(upstreamCalls()).toBe(calls);
    const own = await client.responses.create({ model: 'gpt-4o-mini', input: 'And then?', previous_response_id: base.id });
    expect(own.status).toBe('completed');
  });

  it('serves a cached stored response only while it exists: after a delete the same request gets a new one', async () => {
    const body = { model: 'gpt-4o-mini', input: `Remember me ${unique()}` }; // store absent: OpenAI stores it
    const first = await client.responses.create(body);
    await expect.poll(async () => (await raw(owner.key, body)).headers.get('x-tollgate-cache')).toBe('HIT');
    const calls = upstreamCalls();
    expect((await client.responses.create(body)).id).toBe(first.id); // a hit, the original id

    await client.responses.delete(first.id);
    const again = await raw(owner.key, body);
    expect(again.headers.get('x-tollgate-cache')).toBe('MISS');
    const fresh = (await again.json()) as { id: string };
    expect(fresh.id).not.toBe(first.id);
    expect(upstreamCalls()).toBe(calls + 1);
    // The new one is usable as any stored response, and it is what the cache serves from now on.
    expect((await client.responses.retrieve(fresh.id)).id).toBe(fresh.id);
    await expect.poll(async () => (await client.responses.create(body)).id).toBe(fresh.id);
    // The deleted one is gone for its owner too, without asking upstream.
    const before = gw.fake.requests.length;
    expect(await client.responses.retrieve(first.id).catch((e: unknown) => e)).toBeInstanceOf(OpenAI.NotFoundError);
    expect(gw.fake.requests.length).toBe(before);
  });

  it('a request whose cached stored response was deleted counts once against rpm, not as a hit and again as a miss', async () => {
    const limited = await gw.createKey({ name: 'resp-rpm', limits: { rpm: 50 } });
    const body = { model: 'gpt-4o-mini', input: `Count me once ${unique()}` };
    const first = await gw.sdk(limited.key).responses.create(body);
    let hit: Response;
    await expect.poll(async () => (hit = await raw(limited.key, body)).headers.get('x-tollgate-cache')).toBe('HIT');
    const remaining = () => Number(hit.headers.get('x-ratelimit-remaining-requests'));
    const deleted = await fetch(`${gw.url}/v1/responses/${first.id}`, { method: 'DELETE', headers: { authorization: `Bearer ${limited.key}` } });
    expect(deleted.status).toBe(200);
    const afterDelete = Number(deleted.headers.get('x-ratelimit-remaining-requests') ?? remaining());

    const again = await raw(limited.key, body);
    expect(again.status).toBe(200);
    expect(again.headers.get('x-tollgate-cache')).toBe('MISS');
    // Found in the cache (a hit's count), then sent upstream (a full admission): one request, one count.
    expect(Number(again.headers.get('x-ratelimit-remaining-requests'))).toBe(afterDelete - 1);
    expect((await gw.admin('GET', `/admin/keys/${limited.id}`)).body.quota.rpm.used).toBe(50 - afterDelete + 1);
  });

  it('with CACHE_SCOPE=global, a stored response cached for one key is not handed to another', async () => {
    const shared = await startGateway({ env: { CACHE_ENABLED: 'true', CACHE_SCOPE: 'global', REDIS_URL: testRedisUrl(), REDIS_PREFIX: uniquePrefix() } });
    try {
      const [a, b] = [await shared.createKey({ name: 'global-a' }), await shared.createKey({ name: 'global-b' })];
      const body = { model: 'gpt-4o-mini', input: `Shared question ${unique()}` };
      const ofA = await shared.sdk(a.key).responses.create(body);
      const ofB = await shared.sdk(b.key).responses.create(body);
      expect(ofB.id).not.toBe(ofA.id);
      expect((await shared.sdk(b.key).responses.retrieve(ofB.id)).id).toBe(ofB.id);
      // Not stored upstream (store: false): nothing ties the answer to a key, so it is shared.
      const unstored = { ...body, input: `Unstored ${unique()}`, store: false };
      await shared.sdk(a.key).responses.create(unstored);
      await expect.poll(async () => (await raw(b.key, unstored, shared)).headers.get('x-tollgate-cache')).toBe('HIT');
    } finally {
      await shared.close();
    }
  });

  it('never caches requests that depend on upstream state', async () => {
    const base = await client.responses.create({ model: 'gpt-4o-mini', input: `Base ${unique()}` });
    for (const extra of [{ previous_response_id: base.id }, { store: true }, { conversation: 'conv_123' }]) {
      const body = { model: 'gpt-4o-mini', input: `Stateful ${unique()}`, ...extra };
      const calls = upstreamCalls();
      for (let i = 0; i < 2; i++) {
        const res = await raw(owner.key, body);
        expect(res.headers.get('x-tollgate-cache')).toBe('BYPASS');
        await res.arrayBuffer();
      }
      expect(upstreamCalls()).toBe(calls + 2);
    }
  });
});

describe('moderations', () => {
  it('moderates through the SDK, counts the request with 0 tokens, and caches', async () => {
    const key = await gw.createKey({ name: 'moderator', limits: { usdPerDay: 1 } });
    const mod = gw.sdk(key.key);
    const input = `I will kill this process ${unique()}`;
    const res = await mod.moderations.create({ input });
    expect(res.results[0]!.flagged).toBe(true);
    expect(res.results[0]!.categories.violence).toBe(true);
    const again = await mod.moderations.create({ input });
    expect(again.id).toBe(res.id);
    const many = await mod.moderations.create({ model: 'omni-moderation-latest', input: ['hello', 'fine'] });
    expect(many.results).toHaveLength(2);
    expect(upstreamCalls('/v1/moderations')).toBe(2);
    await expect
      .poll(async () => (await gw.admin('GET', `/admin/usage?groupBy=key&keyId=${key.id}`)).body.totals)
      .toMatchObject({ requests: 3, totalTokens: 0, cacheHits: 1 });
    expect(lines(key.id).map((l) => l.endpoint)).toEqual(['moderations', 'moderations', 'moderations']);
  });
});
