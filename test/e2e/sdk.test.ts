// The official openai npm SDK, pointed at Tollgate by baseURL and apiKey only, works end to end.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import OpenAI from 'openai';
import { startGateway, type Gateway } from '../helpers/gateway.js';

let gw: Gateway;
let client: OpenAI;

beforeAll(async () => {
  gw = await startGateway();
  const { key } = await gw.createKey({ name: 'sdk-app', models: ['gpt-4o-mini', 'gpt-3.5-turbo-instruct', 'text-embedding-3-small'] });
  client = gw.sdk(key);
});
afterAll(() => gw.close());

describe('openai SDK through Tollgate', () => {
  it('creates a chat completion', async () => {
    const res = await client.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'Hello there' }],
    });
    expect(res.object).toBe('chat.completion');
    expect(res.choices[0]!.message.content).toContain('Hello there');
    expect(res.usage!.total_tokens).toBeGreaterThan(0);
  });

  it('streams a chat completion and hides the usage chunk it did not ask for', async () => {
    const stream = await client.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'Stream please' }],
      stream: true,
    });
    let text = '';
    let chunks = 0;
    for await (const chunk of stream) {
      chunks++;
      expect(chunk.choices.length).toBeGreaterThan(0);
      // As OpenAI sends them to a client that did not ask for usage: no usage field at all.
      expect('usage' in chunk).toBe(false);
      text += chunk.choices[0]!.delta.content ?? '';
    }
    expect(chunks).toBeGreaterThan(5);
    expect(text).toContain('Stream please');
    // The gateway still asked upstream for usage.
    const sent = gw.fake.requests.at(-1)!.body as { stream_options?: { include_usage?: boolean } };
    expect(sent.stream_options?.include_usage).toBe(true);
  });

  it("gets a stream's headers as soon as upstream sends its own: an SDK timeout shorter than the wait for the first token holds", async () => {
    // The SDK's timeout runs until the response's headers arrive. They came with the first event,
    // after the model's first token: the call timed out (and the SDK retried, billed each time).
    gw.fake.setFirstEventDelay(1500);
    try {
      const before = gw.fake.requests.length;
      const stream = await client.chat.completions.create(
        { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Think first' }], stream: true },
        { timeout: 1000, maxRetries: 0 },
      );
      let text = '';
      for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
      expect(text).toContain('Think first');
      expect(gw.fake.requests.length).toBe(before + 1);
    } finally {
      gw.fake.setFirstEventDelay(0);
    }
  });

  it('streams with usage when the client asks for it', async () => {
    const stream = await client.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'Count me' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) if (chunk.usage) usage = chunk.usage;
    expect(usage?.completion_tokens).toBeGreaterThan(0);
  });

  it('creates a legacy completion', async () => {
    const res = await client.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: 'Say this is a test', max_tokens: 7 });
    expect(res.object).toBe('text_completion');
    expect(res.choices[0]!.text.length).toBeGreaterThan(0);
    expect(res.usage!.completion_tokens).toBeLessThanOrEqual(7);
  });

  it('creates embeddings with the SDK default base64 encoding', async () => {
    const res = await client.embeddings.create({ model: 'text-embedding-3-small', input: ['one', 'two'] });
    expect(gw.fake.requests.at(-1)!.body).toMatchObject({ encoding_format: 'base64' });
    expect(res.data).toHaveLength(2);
    expect(Array.isArray(res.data[0]!.embedding)).toBe(true);
    expect(res.data[0]!.embedding.every((x) => typeof x === 'number' && Number.isFinite(x))).toBe(true);
  });

  it('lists and retrieves only the models the key may use', async () => {
    const ids: string[] = [];
    for await (const m of client.models.list()) ids.push(m.id);
    expect(ids.sort()).toEqual(['gpt-3.5-turbo-instruct', 'gpt-4o-mini', 'text-embedding-3-small']);
    const model = await client.models.retrieve('gpt-4o-mini');
    expect(model.id).toBe('gpt-4o-mini');
    await expect(client.models.retrieve('gpt-4o')).rejects.toBeInstanceOf(OpenAI.NotFoundError);
  });

  it('raises the SDK typed errors', async () => {
    const bad = gw.sdk('tg-not-a-real-key');
    await expect(bad.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'x' }] })).rejects.toBeInstanceOf(
      OpenAI.AuthenticationError,
    );
    const err = await client.chat.completions
      .create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'x' }], temperature: 5 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('temperature');
    await expect(client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }] })).rejects.toMatchObject({
      status: 404,
      code: 'model_not_found',
    });
  });

  it('passes unknown parameters through untouched', async () => {
    await client.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'x' }],
      seed: 7,
      response_format: { type: 'json_object' },
      tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }],
      reasoning_effort: 'low',
      // @ts-expect-error a parameter OpenAI may add tomorrow
      brand_new_parameter: { nested: [1, 2] },
    });
    expect(gw.fake.requests.at(-1)!.body).toMatchObject({
      seed: 7,
      response_format: { type: 'json_object' },
      reasoning_effort: 'low',
      brand_new_parameter: { nested: [1, 2] },
    });
  });
});
