// The Responses API's usage reader and stream <-> body conversion, for the relay and the cache.
import { describe, expect, it } from 'vitest';
import { assembleResponse, canSynthesizeResponse, synthesizeResponseStream } from '../../src/openai/responses-convert.js';
import { readResponsesEventUsage, readResponsesUsage, responsesGeneratedText } from '../../src/openai/usage.js';
import { responseIsCacheable } from '../../src/openai/endpoints.js';
import { createFakeResponses } from '../../src/fake-openai/responses.js';

const usage = {
  input_tokens: 120,
  input_tokens_details: { cached_tokens: 100 },
  output_tokens: 30,
  output_tokens_details: { reasoning_tokens: 12 },
  total_tokens: 150,
};

/** The data of every event of a fake upstream stream, as the relay keeps them. */
function fakeStream(body: Record<string, unknown>): string[] {
  const result = createFakeResponses().create({ model: 'gpt-4o-mini', stream: true, ...body });
  if (result.type !== 'stream') throw new Error('expected a stream');
  return result.events.map((e) => /\ndata: (.*)\n\n$/s.exec(e.data)![1]!);
}

describe('usage', () => {
  it('reads input, cached, output, reasoning and total tokens', () => {
    expect(readResponsesUsage({ usage })).toEqual({ promptTokens: 120, cachedPromptTokens: 100, completionTokens: 30, reasoningTokens: 12, totalTokens: 150 });
    expect(readResponsesUsage({ usage: null })).toBeUndefined();
  });

  it('finds usage and the end of the stream in completed, incomplete and failed events only', () => {
    for (const type of ['response.completed', 'response.incomplete', 'response.failed']) {
      const info = readResponsesEventUsage(JSON.stringify({ type, sequence_number: 9, response: { model: 'gpt-4o-mini', usage } }), type);
      expect(info).toMatchObject({ final: true, model: 'gpt-4o-mini', usage: { promptTokens: 120 } });
    }
    expect(readResponsesEventUsage(JSON.stringify({ type: 'response.created', response: { usage } }), 'response.created')).toBeUndefined();
    expect(readResponsesEventUsage('{"type":"response.output_text.delta","delta":"response.completed"}', 'response.output_text.delta')).toBeUndefined();
  });

  it('counts the text a stream generated, for a stream cut short', () => {
    const data = fakeStream({ input: 'one two three' });
    const done = JSON.parse(data.find((d) => d.includes('"response.output_text.done"'))!) as { text: string };
    expect(responsesGeneratedText(data)).toBe(done.text);
  });
});

describe('conversion', () => {
  it('assembles the body from response.completed, or from response.incomplete cut by its max_output_tokens, and from nothing else', () => {
    const data = fakeStream({ input: 'assemble me' });
    const body = assembleResponse(data)!;
    expect(body).toEqual((JSON.parse(data.at(-1)!) as { response: unknown }).response);
    expect(assembleResponse(data.slice(0, -1))).toBeUndefined();
    // Cut by its own max_output_tokens: the answer it asked for, kept as a chat answer cut by max_tokens is.
    const incomplete = fakeStream({ input: 'long enough to be cut', max_output_tokens: 2 });
    const last = JSON.parse(incomplete.at(-1)!) as { type: string; response: Record<string, unknown> };
    expect(last).toMatchObject({ type: 'response.incomplete', response: { status: 'incomplete', incomplete_details: { reason: 'max_output_tokens' } } });
    const cut = assembleResponse(incomplete)!;
    expect(cut).toEqual(last.response);
    // ...and it streams back ending as it did.
    const replayed = synthesizeResponseStream(cut);
    expect(replayed.at(-1)!.event).toBe('response.incomplete');
    // While in progress it was not incomplete yet: OpenAI sends null there.
    expect(JSON.parse(replayed[0]!.data)).toMatchObject({ type: 'response.created', response: { status: 'in_progress', incomplete_details: null } });
    expect(assembleResponse(replayed.map((e) => e.data))).toEqual(cut);
    // Stopped by the content filter: not kept.
    const filtered = { ...last, response: { ...last.response, incomplete_details: { reason: 'content_filter' } } };
    expect(assembleResponse([...incomplete.slice(0, -1), JSON.stringify(filtered)])).toBeUndefined();
    expect(canSynthesizeResponse(filtered.response)).toBe(false);
  });

  it('synthesizes a typed stream that assembles back to the same body, sequence numbers counting up', () => {
    const body = assembleResponse(fakeStream({ input: 'round trip please' }))!;
    const events = synthesizeResponseStream(body);
    const data = events.map((e) => JSON.parse(e.data) as { type: string; sequence_number: number });
    expect(events.every((e, i) => e.event === data[i]!.type && data[i]!.sequence_number === i)).toBe(true);
    expect(data.map((d) => d.type).filter((t) => !t.endsWith('.delta'))).toEqual([
      'response.created',
      'response.in_progress',
      'response.output_item.added',
      'response.content_part.added',
      'response.output_text.done',
      'response.content_part.done',
      'response.output_item.done',
      'response.completed',
    ]);
    expect(assembleResponse(events.map((e) => e.data))).toEqual(body);
  });

  it('streams only what it can reproduce', () => {
    const body = assembleResponse(fakeStream({ input: 'x' }))!;
    expect(canSynthesizeResponse(body)).toBe(true);
    expect(canSynthesizeResponse({ ...body, status: 'incomplete' })).toBe(false);
    expect(canSynthesizeResponse({ ...body, output: [{ id: 'ws_1', type: 'web_search_call', status: 'completed' }] })).toBe(false);
    expect(canSynthesizeResponse({ ...body, output: [{ id: 'fc_1', type: 'function_call', call_id: 'c', name: 'f', arguments: '{"a":1}' }] })).toBe(true);
    // Text whose stream would carry logprobs in every delta, or citations in events of their own.
    const message = (part: Record<string, unknown>) => ({ ...body, output: [{ id: 'msg_1', type: 'message', role: 'assistant', status: 'completed', content: [{ type: 'output_text', text: 'Hi there', ...part }] }] });
    expect(canSynthesizeResponse(message({ annotations: [], logprobs: [] }))).toBe(true);
    expect(canSynthesizeResponse(message({ annotations: [], logprobs: [{ token: 'Hi', logprob: -0.1, bytes: [72, 105], top_logprobs: [] }] }))).toBe(false);
    expect(canSynthesizeResponse(message({ annotations: [{ type: 'url_citation', url: 'https://example.com', title: 'x', start_index: 0, end_index: 2 }] }))).toBe(false);
  });

  it('caches only requests that cannot depend on state held upstream', () => {
    expect(responseIsCacheable({ model: 'm', input: 'x' })).toBe(true);
    expect(responseIsCacheable({ model: 'm', input: 'x', store: false })).toBe(true);
    expect(responseIsCacheable({ model: 'm', input: 'x', store: true })).toBe(false);
    expect(responseIsCacheable({ model: 'm', input: 'x', previous_response_id: 'resp_1' })).toBe(false);
    expect(responseIsCacheable({ model: 'm', input: 'x', conversation: 'conv_1' })).toBe(false);
    expect(responseIsCacheable({ model: 'm', input: 'x', background: true })).toBe(false);
    // A stored prompt, a stored item, a hosted tool: what they read is not in the request.
    expect(responseIsCacheable({ model: 'm', store: false, prompt: { id: 'pmpt_1', variables: { city: 'Paris' } } })).toBe(false);
    expect(responseIsCacheable({ model: 'm', store: false, input: [{ type: 'item_reference', id: 'msg_1' }] })).toBe(false);
    expect(responseIsCacheable({ model: 'm', store: false, input: [{ id: 'msg_1' }] })).toBe(false); // the type may be left out
    expect(responseIsCacheable({ model: 'm', store: false, input: [{ id: 'msg_1', role: 'user', content: 'x' }] })).toBe(true); // a message with its id
    for (const type of ['file_search', 'web_search', 'web_search_preview', 'mcp', 'code_interpreter', 'image_generation']) {
      expect(responseIsCacheable({ model: 'm', input: 'x', store: false, tools: [{ type: 'function', name: 'f' }, { type }] }), type).toBe(false);
    }
    // Tools the client runs are part of the request.
    expect(responseIsCacheable({ model: 'm', input: [{ role: 'user', content: 'x' }], store: false, tools: [{ type: 'function', name: 'f' }, { type: 'custom', name: 'g' }] })).toBe(true);
    expect(responseIsCacheable({ model: 'm', input: 'x', store: false, tools: [{ type: 'local_shell' }, { type: 'computer_use_preview', display_width: 1024 }] })).toBe(true);
  });
});
