// Token estimates: encodings per model, known counts, OpenAI's chat formula, prompt shapes, long input.
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import {
  IMAGE_PART_TOKENS,
  LOW_DETAIL_IMAGE_PART_TOKENS,
  countCompletionTokens,
  countMemoStats,
  countTokens,
  EXACT_PROMPT_CHARS,
  encodingFor,
  estimatePromptTokens,
  loadedEncodings,
} from '../../src/openai/tokens.js';

// gpt-tokenizer's own chat encoder, as an independent check of the chat formula.
const require = createRequire(import.meta.url);
const gpt4o = require('gpt-tokenizer/model/gpt-4o') as { encodeChat(chat: { role: 'user' | 'system' | 'assistant'; content: string }[], model: 'gpt-4o'): number[] };
const o200k = require('gpt-tokenizer/encoding/o200k_base') as { countTokens(text: string): number };

const chat = (body: object, model = 'gpt-4o') => estimatePromptTokens('chat.completions', body, model);

describe('loading', () => {
  // First in the file: the file runs in its own process, so nothing has loaded an encoding yet.
  it('loads an encoding only when a count first needs it', () => {
    expect(loadedEncodings()).toEqual([]);
    expect(countTokens('', 'gpt-4o')).toBe(0);
    expect(loadedEncodings()).toEqual([]);
    expect(countTokens('hello world', 'gpt-4')).toBe(2);
    expect(loadedEncodings()).toEqual(['cl100k_base']);
  });
});

describe('encodingFor', () => {
  it.each([
    ['gpt-4o', 'o200k_base'],
    ['gpt-4o-mini-2024-07-18', 'o200k_base'],
    ['gpt-4.1-nano', 'o200k_base'],
    ['gpt-5', 'o200k_base'],
    ['gpt-5-mini', 'o200k_base'],
    ['o1', 'o200k_base'],
    ['o3-mini', 'o200k_base'],
    ['o4-mini-2025-04-16', 'o200k_base'],
    ['chatgpt-4o-latest', 'o200k_base'],
    ['ft:gpt-4o-mini:acme::abc123', 'o200k_base'],
    ['gpt-4', 'cl100k_base'],
    ['gpt-4-0613', 'cl100k_base'],
    ['gpt-4-turbo', 'cl100k_base'],
    ['gpt-3.5-turbo', 'cl100k_base'],
    ['gpt-3.5-turbo-instruct', 'cl100k_base'],
    ['ft:gpt-3.5-turbo-0125:acme::x', 'cl100k_base'],
    ['text-embedding-3-small', 'cl100k_base'],
    ['text-embedding-ada-002', 'cl100k_base'],
    // tiktoken's table: the -002 base models are cl100k; only text-davinci-* is p50k
    ['davinci-002', 'cl100k_base'],
    ['babbage-002', 'cl100k_base'],
    ['text-davinci-003', 'p50k_base'],
    ['text-davinci-002', 'p50k_base'],
    ['some-future-model', 'o200k_base'],
  ])('%s -> %s', (model, encoding) => {
    expect(encodingFor(model)).toBe(encoding);
  });
});

describe('countTokens', () => {
  it('gives known counts in each encoding', () => {
    expect(countTokens('hello world', 'gpt-4o')).toBe(2); // o200k_base
    expect(countTokens('hello world', 'gpt-4')).toBe(2); // cl100k_base
    expect(countTokens('hello world', 'text-davinci-003')).toBe(2); // p50k_base
    expect(countTokens('Say this is a test', 'gpt-4o-mini')).toBe(5);
    // Encodings differ: o200k has whole-word tokens cl100k splits.
    const text = 'Tollgate counts tokens like OpenAI: naïve café, 12345 €, 東京.';
    expect(countTokens(text, 'gpt-4o')).not.toBe(countTokens(text, 'gpt-3.5-turbo'));
    expect(loadedEncodings().sort()).toEqual(['cl100k_base', 'o200k_base', 'p50k_base']);
  });

  it('counts special-token look-alikes as plain text instead of throwing', () => {
    expect(countTokens('<|endoftext|>', 'gpt-4o')).toBeGreaterThan(1);
    expect(countTokens('a <|im_start|> b', 'gpt-4')).toBeGreaterThan(3);
  });

  it('is exact on long text, which it counts in segments', () => {
    const words = ['gateway', 'tokens', 'budget', 'the', 'of', 'Redis', '  spaced', 'line\n', 'tab\t', '12345', '—', 'naïve', '東京'];
    let text = '';
    for (let i = 0; text.length < 50_000; i++) text += `${words[(i * 7) % words.length]!}${i % 11 === 0 ? '. ' : ' '}`;
    expect(countTokens(text, 'gpt-4o')).toBe(o200k.countTokens(text));
  });

  it('stays linear on one huge word (BPE alone is quadratic there), at worst overestimating', () => {
    const started = performance.now();
    const count = countTokens('a'.repeat(100_000), 'gpt-4o');
    expect(performance.now() - started).toBeLessThan(2000); // unsegmented: ~10 s
    expect(count).toBeGreaterThanOrEqual(12_500); // exact count: 8 a's per token
    expect(count).toBeLessThan(12_700);
    const emoji = 'x😀'.repeat(1500); // segment cuts must not split a surrogate pair
    const exact = o200k.countTokens(emoji);
    expect(countTokens(emoji, 'gpt-4o')).toBeGreaterThanOrEqual(exact);
    expect(countTokens(emoji, 'gpt-4o')).toBeLessThan(exact * 1.02);
  });

  it('remembers the count of a long prompt text, and gives the same count from memory', () => {
    const system = 'You are a careful assistant for the finance team. Answer in plain English. '.repeat(4) + 'memo test';
    const before = countMemoStats().o200k_base ?? { hits: 0, misses: 0 };
    const first = countTokens(system, 'gpt-4o');
    const again = countTokens(JSON.parse(JSON.stringify(system)) as string, 'gpt-4o-mini');
    expect(again).toBe(first);
    expect(first).toBe(o200k.countTokens(system));
    const after = countMemoStats().o200k_base!;
    expect(after.misses - before.misses).toBe(1);
    expect(after.hits - before.hits).toBe(1);
  });

  it('does not memoize generated text (it is unique)', () => {
    const generated = 'The quarter closed with revenue up twelve percent and margins wider than a year ago. '.repeat(5);
    countTokens('loads the encoding', 'gpt-4o');
    const before = countMemoStats().o200k_base!;
    expect(countCompletionTokens(generated, 'gpt-4o')).toBe(o200k.countTokens(generated));
    expect(countMemoStats().o200k_base).toEqual(before);
  });

  it('counts generated text for a stream cut short', () => {
    expect(countCompletionTokens('This is a fake reply', 'gpt-4o-mini')).toBe(5);
    expect(countCompletionTokens('', 'gpt-4o-mini')).toBe(0);
  });
});

describe('estimatePromptTokens: chat.completions', () => {
  it('one user message "Hello" is 3 + role + content + 3 priming = 8, as OpenAI reports', () => {
    const messages = [{ role: 'user' as const, content: 'Hello' }];
    expect(countTokens('user', 'gpt-4o')).toBe(1);
    expect(countTokens('Hello', 'gpt-4o')).toBe(1);
    expect(chat({ model: 'gpt-4o', messages })).toBe(3 + 1 + 1 + 3);
    // gpt-tokenizer's chat encoding: <|im_start|>user<|im_sep|>Hello<|im_end|><|im_start|>assistant<|im_sep|>
    expect(gpt4o.encodeChat(messages, 'gpt-4o')).toHaveLength(8);
  });

  it('agrees with gpt-tokenizer on a longer conversation', () => {
    const messages = [
      { role: 'system' as const, content: 'You are a terse assistant.' },
      { role: 'user' as const, content: 'What does a toll gate do?' },
      { role: 'assistant' as const, content: 'It charges for passage.' },
      { role: 'user' as const, content: 'And a gateway for an API?' },
    ];
    expect(chat({ messages })).toBe(gpt4o.encodeChat(messages, 'gpt-4o').length);
  });

  it('adds 1 per name, and counts every string field', () => {
    const base = chat({ messages: [{ role: 'user', content: 'Hi there' }] });
    expect(chat({ messages: [{ role: 'user', content: 'Hi there', name: 'alice' }] })).toBe(base + countTokens('alice', 'gpt-4o') + 1);
    const tool = { role: 'tool', tool_call_id: 'call_abc123', content: '{"temperature": 21}' };
    expect(chat({ messages: [tool] })).toBe(
      3 + countTokens('tool', 'gpt-4o') + countTokens('call_abc123', 'gpt-4o') + countTokens('{"temperature": 21}', 'gpt-4o') + 3,
    );
  });

  it('counts the text parts of a content array and a fixed size per image', () => {
    const parts = [
      { type: 'text', text: 'What is in this image?' },
      { type: 'image_url', image_url: { url: 'https://example.com/a.png' } },
      { type: 'image_url', image_url: { url: 'https://example.com/b.png', detail: 'low' } },
      { type: 'text', text: 'Be brief.' },
    ];
    const text = countTokens('What is in this image?', 'gpt-4o') + countTokens('Be brief.', 'gpt-4o');
    expect(IMAGE_PART_TOKENS).toBe(765);
    expect(LOW_DETAIL_IMAGE_PART_TOKENS).toBe(85);
    expect(chat({ messages: [{ role: 'user', content: parts }] })).toBe(3 + 1 + text + 765 + 85 + 3);
  });

  it('counts tool calls, tools, functions and response_format as JSON', () => {
    const toolCalls = [{ id: 'call_1', type: 'function', function: { name: 'weather', arguments: '{"city":"Paris"}' } }];
    const withCalls = chat({ messages: [{ role: 'assistant', content: null, tool_calls: toolCalls }] });
    expect(withCalls).toBe(3 + countTokens('assistant', 'gpt-4o') + countTokens(JSON.stringify(toolCalls), 'gpt-4o') + 3);

    const messages = [{ role: 'user', content: 'Weather in Paris?' }];
    const tools = [{ type: 'function', function: { name: 'weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } } }];
    const responseFormat = { type: 'json_schema', json_schema: { name: 'w', schema: { type: 'object' } } };
    const json = (v: unknown) => countTokens(JSON.stringify(v), 'gpt-4o');
    expect(chat({ messages, tools })).toBe(chat({ messages }) + json(tools));
    expect(chat({ messages, functions: tools })).toBe(chat({ messages }) + json(tools));
    expect(chat({ messages, tools, response_format: responseFormat })).toBe(chat({ messages }) + json(tools) + json(responseFormat));
    expect(chat({ messages, tools: null })).toBe(chat({ messages }));
  });

  it('bills the prompt once whatever n is, and ignores malformed parts', () => {
    const messages = [{ role: 'user', content: 'Hello' }];
    expect(chat({ messages, n: 5 })).toBe(8);
    expect(chat({ messages: [null, 'x', { role: 'user', content: 'Hello' }] })).toBe(8);
    expect(chat({})).toBe(3);
    expect(estimatePromptTokens('chat.completions', 'not an object', 'gpt-4o')).toBe(0);
  });
});

describe('estimatePromptTokens: very long prompts', () => {
  const english = 'The quarterly report shows revenue growth of 12% year over year, with cash at 48.2M. ';
  const longEnglish = (chars: number) => english.repeat(Math.ceil(chars / english.length)).slice(0, chars);
  /** Unspaced CJK text: the slow case for BPE, ~2 us a character. */
  const cjk = (chars: number) => Array.from({ length: chars }, (_, i) => String.fromCharCode(0x4e00 + ((i * 7919) % 20000))).join('');

  it('counts a request exactly up to EXACT_PROMPT_CHARS, then at the rate of what was counted', () => {
    const head = longEnglish(EXACT_PROMPT_CHARS - 1000);
    const tail = longEnglish(2000) + cjk(500_000);
    const inside = estimatePromptTokens('embeddings', { input: [head] }, 'text-embedding-3-small');
    const both = estimatePromptTokens('embeddings', { input: [head, tail] }, 'text-embedding-3-small');
    // The first 1,000 characters of the second text are counted; the other 501,000 (CJK at ~2
    // tokens a character, counted exactly) are priced at the English rate of the counted ones.
    const counted = inside + countTokens(tail.slice(0, 1000), 'gpt-4');
    const rate = counted / EXACT_PROMPT_CHARS;
    expect(both).toBe(counted + Math.ceil((tail.length - 1000) * rate));
    expect(both).toBeLessThan(inside + countTokens(tail, 'gpt-4'));
  });

  it('is close to the exact count for uniform text', () => {
    const text = longEnglish(4 * EXACT_PROMPT_CHARS);
    const estimate = estimatePromptTokens('chat.completions', { messages: [{ role: 'user', content: text }] }, 'gpt-4o');
    const exact = countTokens(text, 'gpt-4o') + 7; // the message and priming overhead, as for "Hello"
    expect(Math.abs(estimate - exact) / exact).toBeLessThan(0.001);
  });
});

describe('estimatePromptTokens: completions and embeddings', () => {
  const completion = (prompt: unknown, extra: object = {}) =>
    estimatePromptTokens('completions', { prompt, ...extra }, 'gpt-3.5-turbo-instruct');
  const embedding = (input: unknown) => estimatePromptTokens('embeddings', { input }, 'text-embedding-3-small');

  it('counts a prompt string, an array of strings, token ids and arrays of token ids', () => {
    expect(completion('Say this is a test')).toBe(5);
    expect(completion(['Say this is a test', 'hello world'])).toBe(7);
    expect(completion([1, 2, 3, 4])).toBe(4);
    expect(completion([[1, 2, 3], [4, 5]])).toBe(5);
    expect(completion('Say this is a test', { suffix: 'hello world' })).toBe(7);
    expect(completion(undefined)).toBe(0);
  });

  it('counts embeddings input of the same shapes', () => {
    expect(embedding('hello world')).toBe(2);
    expect(embedding(['hello world', 'bye'])).toBe(3);
    expect(embedding([101, 102])).toBe(2);
    expect(embedding([[101, 102], [103]])).toBe(3);
  });

  it('uses the encoding of the model', () => {
    const text = 'Tollgate counts tokens like OpenAI: naïve café, 東京.';
    expect(estimatePromptTokens('embeddings', { input: text }, 'text-embedding-3-large')).toBe(countTokens(text, 'gpt-4'));
    expect(estimatePromptTokens('completions', { prompt: text }, 'text-davinci-003')).toBe(countTokens(text, 'text-davinci-002'));
  });
});
