// Stream <-> body conversion for the response cache: against the fake upstream over HTTP, on
// hand-written OpenAI-shaped chunks, and read back through the official openai SDK's stream parser.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import OpenAI from 'openai';
import { startFakeOpenAI, type FakeOpenAI } from '../../src/fake-openai/server.js';
import {
  assembleStream,
  canSynthesize,
  synthesizeStream,
  textPieces,
  type ConvertibleEndpoint,
} from '../../src/openai/stream-convert.js';

type Json = Record<string, any>;

let fake: FakeOpenAI;
/** A tiny SSE server that replays `replay` (data payloads) then [DONE], for the SDK to parse. */
let replay: string[] = [];
let replayServer: Server;
let replayClient: OpenAI;

beforeAll(async () => {
  fake = await startFakeOpenAI();
  replayServer = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      res.end(replay.map((data) => `data: ${data}\n\n`).join('') + 'data: [DONE]\n\n');
    });
  });
  await new Promise<void>((resolve) => replayServer.listen(0, '127.0.0.1', resolve));
  const { port } = replayServer.address() as AddressInfo;
  replayClient = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'x', maxRetries: 0 });
});
afterAll(async () => {
  await fake.close();
  await new Promise<void>((resolve) => replayServer.close(() => resolve()));
});

async function post(path: string, body: Json): Promise<Response> {
  const res = await fetch(`${fake.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  expect(res.status).toBe(200);
  return res;
}

/** The data payloads of an SSE body, [DONE] excluded (checked to be last). */
function sseData(text: string): string[] {
  const data = text
    .split('\n\n')
    .filter((event) => event !== '')
    .map((event) => {
      expect(event.startsWith('data: ')).toBe(true);
      return event.slice('data: '.length);
    });
  expect(data.pop()).toBe('[DONE]');
  return data;
}

/** Fetches the same request non-streamed and streamed (with usage) from the fake. */
async function bothForms(path: string, request: Json): Promise<{ body: Json; data: string[] }> {
  const body = (await (await post(path, request)).json()) as Json;
  const data = sseData(await (await post(path, { ...request, stream: true, stream_options: { include_usage: true } })).text());
  return { body, data };
}

const withoutIdentity = ({ id: _id, created: _created, ...rest }: Json) => rest;

// --- hand-written chunks, in OpenAI's real shapes ---

const META = { id: 'chatcmpl-abc', object: 'chat.completion.chunk', created: 1_700_000_000, model: 'gpt-4o-mini', service_tier: 'default', system_fingerprint: 'fp_1' };
const USAGE = { prompt_tokens: 20, completion_tokens: 9, total_tokens: 29 };
const chatChunk = (choices: Json[], extra: Json = {}) => JSON.stringify({ ...META, choices, usage: null, ...extra });
const delta = (index: number, d: Json, finish_reason: string | null = null) => ({ index, delta: d, logprobs: null, finish_reason });
const usageChunk = JSON.stringify({ ...META, choices: [], usage: USAGE });

const toolCallStream = [
  chatChunk([delta(0, { role: 'assistant', content: null, tool_calls: [{ index: 0, id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '' } }], refusal: null })]),
  chatChunk([delta(0, { tool_calls: [{ index: 0, function: { arguments: '{"loc' } }] })]),
  chatChunk([delta(0, { tool_calls: [{ index: 0, function: { arguments: 'ation":"Paris"}' } }] })]),
  chatChunk([delta(0, { tool_calls: [{ index: 1, id: 'call_2', type: 'function', function: { name: 'get_time', arguments: '' } }] })]),
  chatChunk([delta(0, { tool_calls: [{ index: 1, function: { arguments: '{"tz":"CET"}' } }] })]),
  chatChunk([delta(0, {}, 'tool_calls')]),
  usageChunk,
];

const toolCallBody = {
  id: 'chatcmpl-abc',
  object: 'chat.completion',
  created: 1_700_000_000,
  model: 'gpt-4o-mini',
  choices: [
    {
      index: 0,
      message: {
        role: 'assistant',
        content: null,
        tool_calls: [
          { id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"location":"Paris"}' } },
          { id: 'call_2', type: 'function', function: { name: 'get_time', arguments: '{"tz":"CET"}' } },
        ],
        refusal: null,
        annotations: [],
      },
      logprobs: null,
      finish_reason: 'tool_calls',
    },
  ],
  usage: USAGE,
  service_tier: 'default',
  system_fingerprint: 'fp_1',
};

const refusalBody = {
  ...toolCallBody,
  choices: [
    {
      index: 0,
      message: { role: 'assistant', content: null, refusal: "I'm sorry, I can't help with that request.", annotations: [] },
      logprobs: null,
      finish_reason: 'stop',
    },
  ],
};

const longText = 'One two three four five six seven eight nine ten eleven twelve thirteen fourteen.\n\nA second paragraph  with  odd spacing. ';
const annotations = [{ type: 'url_citation', url_citation: { start_index: 0, end_index: 3, url: 'https://example.com', title: 'Example' } }];
const twoChoiceBody = {
  ...toolCallBody,
  choices: [
    { index: 0, message: { role: 'assistant', content: longText, refusal: null, annotations }, logprobs: null, finish_reason: 'stop' },
    { index: 1, message: { role: 'assistant', content: 'Short.', refusal: null, annotations: [] }, logprobs: null, finish_reason: 'length' },
  ],
  usage: { ...USAGE, prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 }, completion_tokens_details: { reasoning_tokens: 0 } },
};

const textBody = {
  id: 'cmpl-xyz',
  object: 'text_completion',
  created: 1_700_000_000,
  model: 'gpt-3.5-turbo-instruct',
  system_fingerprint: 'fp_2',
  choices: [
    { text: ' the first completion, long enough to come in several pieces of text', index: 0, logprobs: null, finish_reason: 'length' },
    { text: '\n\nThe second one.', index: 1, logprobs: null, finish_reason: 'stop' },
  ],
  usage: USAGE,
};

describe('assembleStream against the fake upstream', () => {
  const chatRequest = (extra: Json = {}) => ({
    model: 'gpt-4o-mini',
    messages: [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'Tell me about caching streamed responses' },
    ],
    ...extra,
  });

  it.each([
    ['n=1', {}],
    ['n=2', { n: 2 }],
    ['n=2 cut by max_tokens', { n: 2, max_tokens: 5 }],
    ['cut by max_completion_tokens', { max_completion_tokens: 3 }],
  ])('chat %s: the assembled stream equals the non-streamed body', async (_name, extra) => {
    const { body, data } = await bothForms('/chat/completions', chatRequest(extra));
    const assembled = assembleStream('chat.completions', data);
    expect(assembled).toBeDefined();
    expect(assembled!.id).toBe(JSON.parse(data[0]!).id);
    expect(withoutIdentity(assembled!)).toEqual(withoutIdentity(body));
    // Same key order as the upstream's own non-streamed body, so a cached body reads naturally.
    expect(Object.keys(assembled!)).toEqual(Object.keys(body));
    expect(Object.keys((assembled!.choices as Json[])[0]!.message)).toEqual(Object.keys(body.choices[0].message));
    if ('max_tokens' in extra || 'max_completion_tokens' in extra) {
      expect((assembled!.choices as Json[]).map((c) => c.finish_reason)).toEqual(body.choices.map(() => 'length'));
    }
    // The fake's body survives body -> stream -> body exactly.
    expect(assembleStream('chat.completions', synthesizeStream('chat.completions', body, { includeUsage: true }))).toEqual(body);
  });

  it.each([
    ['n=1', { prompt: 'Once upon a time', max_tokens: 50 }, 'stop'],
    ['n=2 with the default max_tokens cut', { prompt: 'Once upon a time', n: 2 }, 'length'],
    ['two prompts, n=2', { prompt: ['First prompt', 'Second prompt'], n: 2, max_tokens: 4 }, 'length'],
  ])('completions %s: the assembled stream equals the non-streamed body', async (_name, extra, finishReason) => {
    const { body, data } = await bothForms('/completions', { model: 'gpt-3.5-turbo-instruct', ...extra });
    const assembled = assembleStream('completions', data);
    expect(assembled).toBeDefined();
    expect(withoutIdentity(assembled!)).toEqual(withoutIdentity(body));
    expect(Object.keys(assembled!)).toEqual(Object.keys(body));
    expect((assembled!.choices as Json[]).map((c) => c.finish_reason)).toEqual(body.choices.map(() => finishReason));
    expect(assembleStream('completions', synthesizeStream('completions', body, { includeUsage: true }))).toEqual(body);
  });

  it('a fake stream without include_usage cannot be assembled (no usage to bill)', async () => {
    const res = await post('/chat/completions', { ...chatRequest(), stream: true });
    expect(assembleStream('chat.completions', sseData(await res.text()))).toBeUndefined();
  });

  it('a fake stream cut short (no finish chunks) cannot be assembled', async () => {
    const { data } = await bothForms('/chat/completions', chatRequest({ n: 2 }));
    const finishAt = data.findIndex((d) => JSON.parse(d).choices[0]?.finish_reason);
    expect(assembleStream('chat.completions', data.slice(0, finishAt))).toBeUndefined();
    expect(assembleStream('chat.completions', data.slice(0, finishAt + 1).concat(data.slice(-1)))).toBeUndefined();
  });
});

describe('assembleStream on hand-written chunks', () => {
  it('merges tool calls split over chunks by tool-call index', () => {
    expect(assembleStream('chat.completions', toolCallStream)).toEqual(toolCallBody);
  });

  it('concatenates a refusal; content is null', () => {
    const data = [
      chatChunk([delta(0, { role: 'assistant', content: '', refusal: null })]),
      chatChunk([delta(0, { refusal: "I'm sorry, " })]),
      chatChunk([delta(0, { refusal: "I can't help with that request." })]),
      chatChunk([delta(0, {}, 'stop')]),
      usageChunk,
    ];
    expect(assembleStream('chat.completions', data)).toEqual(refusalBody);
  });

  it('interleaved choices are split by index and sorted; annotations are concatenated', () => {
    const data = [
      chatChunk([delta(1, { role: 'assistant', content: '' })]),
      chatChunk([delta(0, { role: 'assistant', content: '' })]),
      chatChunk([delta(1, { content: 'Sh' })]),
      chatChunk([delta(0, { content: longText.slice(0, 10) })]),
      chatChunk([delta(1, { content: 'ort.' }, 'length')]),
      chatChunk([delta(0, { content: longText.slice(10) })]),
      chatChunk([delta(0, { annotations })]),
      chatChunk([delta(0, {}, 'stop')]),
      JSON.stringify({ ...META, choices: [], usage: twoChoiceBody.usage }),
    ];
    expect(assembleStream('chat.completions', data)).toEqual(twoChoiceBody);
  });

  it('ignores OpenAI stream padding (obfuscation) and a trailing [DONE]', () => {
    const padded = toolCallStream.map((d) => JSON.stringify({ ...JSON.parse(d), obfuscation: 'x1y2' }));
    expect(assembleStream('chat.completions', [...padded, '[DONE]'])).toEqual(toolCallBody);
  });

  it('keeps content when there are no tool calls, even if empty', () => {
    const data = [chatChunk([delta(0, { role: 'assistant', content: '' })]), chatChunk([delta(0, {}, 'stop')]), usageChunk];
    expect((assembleStream('chat.completions', data)!.choices as Json[])[0]!.message.content).toBe('');
  });

  it('assembles legacy completions', () => {
    const chunk = (choices: Json[], usage: Json | null = null) =>
      JSON.stringify({ id: 'cmpl-xyz', object: 'text_completion', created: 1_700_000_000, choices, model: 'gpt-3.5-turbo-instruct', system_fingerprint: 'fp_2', usage });
    const data = [
      chunk([{ text: ' the first completion,', index: 0, logprobs: null, finish_reason: null }]),
      chunk([{ text: '\n\nThe second one.', index: 1, logprobs: null, finish_reason: null }]),
      chunk([{ text: ' long enough to come in several pieces of text', index: 0, logprobs: null, finish_reason: null }]),
      chunk([{ text: '', index: 1, logprobs: null, finish_reason: 'stop' }]),
      chunk([{ text: '', index: 0, logprobs: null, finish_reason: 'length' }]),
      chunk([], USAGE),
    ];
    expect(assembleStream('completions', data)).toEqual(textBody);
    expect(assembleStream('chat.completions', data)).toBeUndefined(); // wrong endpoint: wrong object
  });

  describe('returns undefined when it cannot be faithful', () => {
    const finished = [chatChunk([delta(0, { role: 'assistant', content: 'Hi' })]), chatChunk([delta(0, {}, 'stop')])];
    it.each<[string, string[]]>([
      ['a choice without finish_reason', [chatChunk([delta(0, { role: 'assistant', content: 'Hi' })]), usageChunk]],
      ['one of two choices without finish_reason', [...finished, chatChunk([delta(1, { role: 'assistant', content: 'Yo' })]), usageChunk]],
      ['a gap in choice indices', [...finished, chatChunk([delta(2, { role: 'assistant', content: 'Yo' }, 'stop')]), usageChunk]],
      ['no usage chunk', finished],
      ['an error event', [...finished, JSON.stringify({ error: { message: 'boom', type: 'server_error', param: null, code: null } })]],
      ['only an error event', [JSON.stringify({ error: { message: 'boom', type: 'server_error', param: null, code: null } })]],
      ['garbage data', [...finished, 'not json', usageChunk]],
      ['a JSON non-object', [...finished, '[1,2]', usageChunk]],
      ['no data at all', []],
      ['logprobs', [chatChunk([{ ...delta(0, { role: 'assistant', content: 'Hi' }), logprobs: { content: [{ token: 'Hi', logprob: -0.1, bytes: [72, 105], top_logprobs: [] }], refusal: null } }]), chatChunk([delta(0, {}, 'stop')]), usageChunk]],
      ['an audio delta', [chatChunk([delta(0, { role: 'assistant', audio: { id: 'a', data: 'AAA' } })]), chatChunk([delta(0, {}, 'stop')]), usageChunk]],
      ['a legacy function_call delta', [chatChunk([delta(0, { role: 'assistant', function_call: { name: 'f', arguments: '{}' } })]), chatChunk([delta(0, {}, 'function_call')]), usageChunk]],
      ['an unknown choice field', [chatChunk([{ ...delta(0, { role: 'assistant', content: 'Hi' }, 'stop'), content_filter_results: {} }]), usageChunk]],
      ['an unknown top-level field', [...finished, JSON.stringify({ ...META, choices: [], usage: USAGE, prompt_filter_results: [] })]],
      ['a tool call without id', [chatChunk([delta(0, { role: 'assistant', tool_calls: [{ index: 0, type: 'function', function: { name: 'f', arguments: '{}' } }] }, 'tool_calls')]), usageChunk]],
      ['a custom tool call', [chatChunk([delta(0, { role: 'assistant', tool_calls: [{ index: 0, id: 'c', type: 'custom', custom: { name: 'f', input: 'x' } }] }, 'tool_calls')]), usageChunk]],
      ['no role', [chatChunk([delta(0, { content: 'Hi' }, 'stop')]), usageChunk]],
      ['chunks of two different responses', [...finished, JSON.stringify({ ...META, id: 'chatcmpl-other', choices: [], usage: USAGE })]],
      ['a wrong object', [...finished, JSON.stringify({ ...META, object: 'chat.completion', choices: [], usage: USAGE })]],
    ])('%s', (_name, data) => {
      expect(assembleStream('chat.completions', data)).toBeUndefined();
    });

    it('completions: missing finish_reason, logprobs, garbage', () => {
      const chunk = (choice: Json | null, usage: Json | null = null) =>
        JSON.stringify({ id: 'cmpl-1', object: 'text_completion', created: 1, model: 'gpt-3.5-turbo-instruct', choices: choice ? [choice] : [], usage });
      const usage = chunk(null, USAGE);
      expect(assembleStream('completions', [chunk({ text: ' hi', index: 0, logprobs: null, finish_reason: null }), usage])).toBeUndefined();
      expect(assembleStream('completions', [chunk({ text: ' hi', index: 0, logprobs: null, finish_reason: 'stop' })])).toBeUndefined();
      const logprobs = { tokens: [' hi'], token_logprobs: [-0.1], top_logprobs: null, text_offset: [0] };
      expect(assembleStream('completions', [chunk({ text: ' hi', index: 0, logprobs, finish_reason: 'stop' }), usage])).toBeUndefined();
      expect(assembleStream('completions', ['{"id":', usage])).toBeUndefined();
      expect(assembleStream('completions', [chunk({ text: ' hi', index: 0, logprobs: null, finish_reason: 'stop' }), usage])).toMatchObject({
        choices: [{ text: ' hi', index: 0, logprobs: null, finish_reason: 'stop' }],
        usage: USAGE,
      });
    });
  });
});

describe('synthesizeStream', () => {
  const parse = (data: string[]) => data.map((d) => JSON.parse(d) as Json);

  it('splits text into pieces of about four words that concatenate back exactly', () => {
    for (const text of [longText, '', ' ', 'one', '  lead and trail  ', 'a\n\nb\tc d e f g h i', 'émoji 🎉 ok 👍🏽 fine']) {
      const pieces = textPieces(text);
      expect(pieces.join('')).toBe(text);
      for (const piece of pieces) expect(piece.split(/\s+/).filter(Boolean).length).toBeLessThanOrEqual(4);
    }
    expect(textPieces(longText).length).toBeGreaterThan(3);
  });

  it('chat: role chunks, content pieces, finish chunks, then the usage chunk', () => {
    const chunks = parse(synthesizeStream('chat.completions', twoChoiceBody, { includeUsage: true }));
    for (const c of chunks) {
      expect(c).toMatchObject({ id: 'chatcmpl-abc', object: 'chat.completion.chunk', created: 1_700_000_000, model: 'gpt-4o-mini', service_tier: 'default', system_fingerprint: 'fp_1' });
    }
    expect(chunks.slice(0, 2).map((c) => c.choices)).toEqual([
      [{ index: 0, delta: { role: 'assistant', content: '', refusal: null }, logprobs: null, finish_reason: null }],
      [{ index: 1, delta: { role: 'assistant', content: '', refusal: null }, logprobs: null, finish_reason: null }],
    ]);
    const last = chunks.pop()!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual(twoChoiceBody.usage);
    for (const c of chunks) {
      expect(c.usage).toBeNull();
      expect(c.choices).toHaveLength(1);
    }
    expect(chunks.slice(-2).map((c) => c.choices[0])).toEqual([
      { index: 0, delta: {}, logprobs: null, finish_reason: 'stop' },
      { index: 1, delta: {}, logprobs: null, finish_reason: 'length' },
    ]);
    const content0 = chunks.map((c) => c.choices[0]).filter((c) => c.index === 0 && typeof c.delta.content === 'string' && c.delta.content !== '');
    expect(content0.length).toBeGreaterThan(3);
    expect(content0.map((c) => c.delta.content).join('')).toBe(longText);
    // Every content chunk is in the middle of the stream, with finish_reason null.
    for (const c of chunks.slice(0, -2)) expect(c.choices[0].finish_reason).toBeNull();
  });

  it('without includeUsage there is no usage anywhere', () => {
    for (const [endpoint, body] of [['chat.completions', twoChoiceBody], ['completions', textBody]] as const) {
      const data = synthesizeStream(endpoint, body, { includeUsage: false });
      for (const c of parse(data)) {
        expect('usage' in c).toBe(false);
        expect(c.choices).toHaveLength(1);
      }
      expect(data.join('')).not.toContain('usage');
      // Without usage the stream is complete but not cacheable again: the gateway always asks for usage.
      expect(assembleStream(endpoint, data)).toBeUndefined();
    }
  });

  it('tool calls: first delta with id, type, name and empty arguments, then the arguments', () => {
    const chunks = parse(synthesizeStream('chat.completions', toolCallBody, { includeUsage: false }));
    const toolDeltas = chunks.flatMap((c) => c.choices[0].delta.tool_calls ?? []);
    expect(toolDeltas[0]).toEqual({ index: 0, id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '' } });
    const first = toolDeltas.filter((t: Json) => t.index === 0);
    expect(first.slice(1).every((t: Json) => Object.keys(t).join() === 'index,function' && Object.keys(t.function).join() === 'arguments')).toBe(true);
    expect(first.map((t: Json) => t.function.arguments).join('')).toBe('{"location":"Paris"}');
    expect(chunks[0]!.choices[0].delta).toEqual({ role: 'assistant', content: null, refusal: null });
    expect(chunks.at(-1)!.choices[0]).toEqual({ index: 0, delta: {}, logprobs: null, finish_reason: 'tool_calls' });
  });

  it.each([
    ['chat, two choices with annotations', 'chat.completions', twoChoiceBody],
    ['chat, tool calls', 'chat.completions', toolCallBody],
    ['chat, refusal', 'chat.completions', refusalBody],
    ['completions, two choices', 'completions', textBody],
  ] as const)('round trip: %s', (_name, endpoint, body) => {
    expect(assembleStream(endpoint, synthesizeStream(endpoint, body, { includeUsage: true }))).toEqual(body);
  });

  it('round trip adds annotations: [] to a chat body without them (documented)', () => {
    const { annotations: _a, ...message } = refusalBody.choices[0]!.message;
    const body = { ...refusalBody, choices: [{ ...refusalBody.choices[0]!, message }] };
    expect(assembleStream('chat.completions', synthesizeStream('chat.completions', body, { includeUsage: true }))).toEqual(refusalBody);
  });

  it('refuses bodies it cannot stream faithfully', () => {
    const chatWith = (choice: Json): Json => ({ ...toolCallBody, choices: [{ ...toolCallBody.choices[0], ...choice }] });
    const message = toolCallBody.choices[0]!.message;
    const bad: [ConvertibleEndpoint, Json][] = [
      ['chat.completions', textBody],
      ['completions', toolCallBody],
      ['chat.completions', chatWith({ logprobs: { content: [], refusal: null } })],
      ['chat.completions', chatWith({ message: { ...message, audio: { id: 'a', data: 'x', transcript: 't', expires_at: 1 } } })],
      ['chat.completions', chatWith({ message: { ...message, tool_calls: [{ id: 'c', type: 'custom', custom: { name: 'f', input: 'x' } }] } })],
      ['chat.completions', chatWith({ finish_reason: null })],
      ['chat.completions', chatWith({ index: 1 })],
      ['chat.completions', { ...toolCallBody, usage: undefined }],
      ['chat.completions', { ...toolCallBody, prompt_filter_results: [] }],
      ['completions', { ...textBody, choices: [{ ...textBody.choices[0], logprobs: { tokens: [] } }] }],
    ];
    for (const [endpoint, body] of bad) {
      expect(canSynthesize(endpoint, body)).toBe(false);
      expect(() => synthesizeStream(endpoint, body, { includeUsage: true })).toThrow(/Cannot synthesize/);
    }
    // Fields with a null value stream as nothing and are tolerated.
    expect(canSynthesize('chat.completions', chatWith({ message: { ...message, audio: null, function_call: null } }))).toBe(true);
  });
});

describe('synthesized streams read by the official openai SDK', () => {
  const chatParams = { model: 'gpt-4o-mini', messages: [{ role: 'user' as const, content: 'hi' }] };

  it.each([
    ['two choices', twoChoiceBody],
    ['tool calls', toolCallBody],
    ['refusal', refusalBody],
  ] as const)('chat (%s): create({stream: true}) yields every chunk; stream().finalChatCompletion() rebuilds the body', async (_name, body) => {
    replay = synthesizeStream('chat.completions', body, { includeUsage: true });
    const chunks: Json[] = [];
    for await (const chunk of await replayClient.chat.completions.create({ ...chatParams, stream: true, stream_options: { include_usage: true } })) {
      chunks.push(chunk);
    }
    expect(chunks).toEqual(replay.map((d) => JSON.parse(d)));

    const final = await replayClient.chat.completions.stream({ ...chatParams, stream_options: { include_usage: true } }).finalChatCompletion();
    expect(final).toMatchObject({ id: body.id, object: 'chat.completion', created: body.created, model: body.model, usage: body.usage, system_fingerprint: 'fp_1' });
    expect(final.choices).toHaveLength(body.choices.length);
    body.choices.forEach((expected: Json, i: number) => {
      const got = final.choices[i]!;
      expect(got.index).toBe(expected.index);
      expect(got.finish_reason).toBe(expected.finish_reason);
      expect(got.message.role).toBe('assistant');
      expect(got.message.content).toBe(expected.message.content);
      expect(got.message.refusal).toBe(expected.message.refusal);
      expect(got.message.tool_calls).toEqual(expected.message.tool_calls);
      // The SDK keeps annotations only when a delta carried them (we stream them only when non-empty).
      expect(got.message.annotations ?? []).toEqual(expected.message.annotations);
    });
  });

  it('chat without includeUsage: the SDK sees no usage', async () => {
    replay = synthesizeStream('chat.completions', twoChoiceBody, { includeUsage: false });
    const final = await replayClient.chat.completions.stream(chatParams).finalChatCompletion();
    expect(final.usage).toBeUndefined();
    expect(final.choices.map((c) => c.message.content)).toEqual([longText, 'Short.']);
  });

  it('completions: the SDK yields every chunk and the text reassembles', async () => {
    for (const includeUsage of [true, false]) {
      replay = synthesizeStream('completions', textBody, { includeUsage });
      const texts = ['', ''];
      const finish: (string | null)[] = [null, null];
      let usage: unknown;
      let count = 0;
      const stream = await replayClient.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: 'x', n: 2, stream: true });
      for await (const chunk of stream) {
        count++;
        expect(chunk.object).toBe('text_completion');
        for (const c of chunk.choices) {
          texts[c.index] += c.text;
          if (c.finish_reason) finish[c.index] = c.finish_reason;
        }
        if (chunk.usage) usage = chunk.usage;
      }
      expect(count).toBe(replay.length);
      expect(texts).toEqual(textBody.choices.map((c) => c.text));
      expect(finish).toEqual(['length', 'stop']);
      expect(usage).toEqual(includeUsage ? USAGE : undefined);
    }
  });

  it('a stream synthesized from a fake body reads back through the SDK like the fake own stream', async () => {
    const request = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'compare me' }], n: 2, max_tokens: 6 };
    const { body, data } = await bothForms('/chat/completions', request);
    const fromFake = assembleStream('chat.completions', data)!;
    replay = synthesizeStream('chat.completions', body, { includeUsage: true });
    const final = await replayClient.chat.completions.stream({ ...chatParams, stream_options: { include_usage: true } }).finalChatCompletion();
    expect(final.usage).toEqual(fromFake.usage);
    expect(final.choices.map((c) => [c.message.content, c.finish_reason])).toEqual(
      (fromFake.choices as Json[]).map((c) => [c.message.content, c.finish_reason]),
    );
  });
});
