// Token counts as OpenAI bills them, from a real BPE tokenizer (gpt-tokenizer's data and counting
// rules, in the compact form of bpe.ts), each encoding loaded on first use.
import type { Endpoint } from './endpoints.js';
import { loadBpe, type BpeCounter, type BpeEncodingName } from './bpe.js';
import { CountMemo, type CountMemoStats } from './count-memo.js';

export type EncodingName = BpeEncodingName;

// Models whose id starts with one of these use o200k_base (tiktoken's table, plus gpt-oss and gpt-4.5).
const O200K_PREFIXES = ['gpt-4o', 'gpt-4.1', 'gpt-4.5', 'gpt-5', 'o1', 'o3', 'o4', 'chatgpt-', 'gpt-oss'];

/**
 * The encoding a model tokenizes with, following tiktoken's model table. Fine-tuned ids
 * (`ft:gpt-4o-mini:org::id`) use their base model's. davinci-002 and babbage-002 are cl100k_base
 * (tiktoken and gpt-tokenizer agree); only the retired text-davinci-* / code-* models are p50k_base.
 * Unknown models get o200k_base, the encoding of every current model.
 */
export function encodingFor(model: string): EncodingName {
  const id = model.startsWith('ft:') ? (model.slice(3).split(':')[0] ?? '') : model;
  if (O200K_PREFIXES.some((p) => id.startsWith(p))) return 'o200k_base';
  if (id === 'gpt-4' || id.startsWith('gpt-4-')) return 'cl100k_base';
  if (id.startsWith('gpt-3.5') || id.startsWith('gpt-35-')) return 'cl100k_base';
  if (id.startsWith('text-embedding-') || id === 'davinci-002' || id === 'babbage-002') return 'cl100k_base';
  if (id.startsWith('text-davinci-') || id.startsWith('code-davinci-') || id.startsWith('code-cushman-')) return 'p50k_base';
  return 'o200k_base';
}

// Loaded synchronously, so counting stays synchronous. Each table is read from gpt-tokenizer's
// `.tiktoken` file into typed arrays (bpe.ts): o200k_base ~105 ms and 4.1 MB, cl100k_base ~30 ms and
// 2 MB, p50k_base ~15 ms and 1 MB. gpt-tokenizer's own JS tables took ~350, ~125 and ~50 ms, and
// o200k_base alone added ~55-70 MB of RSS (18 MB of live heap). An encoding no model in use needs is
// never loaded.
const loaded = new Map<EncodingName, { counter: BpeCounter; memo: CountMemo }>();

/**
 * Counts of recent texts, per encoding (count-memo.ts says why). 256K characters a generation keeps
 * at most ~0.5 MB of one-byte text per encoding: room for thousands of system prompts and earlier
 * turns of a conversation, small next to the heap. Under 200 characters a count costs ~5 us.
 */
const MEMO_CHARS = 256 * 1024;
const MEMO_MIN_LENGTH = 200;

function encoding(name: EncodingName): { counter: BpeCounter; memo: CountMemo } {
  let enc = loaded.get(name);
  if (!enc) {
    enc = { counter: loadBpe(name), memo: new CountMemo(MEMO_CHARS, MEMO_MIN_LENGTH) };
    loaded.set(name, enc);
  }
  return enc;
}

/**
 * Loads encodings ahead of the first request that needs them, e.g. before the server listens.
 * Optional: every count loads what it needs. The default is o200k_base only, the encoding of every
 * current model (and of unknown ones); older models' encodings load on their first request.
 */
export function preloadEncodings(names: readonly EncodingName[] = ['o200k_base']): void {
  for (const name of names) encoding(name);
}

/** The encodings loaded so far (for tests and diagnostics). */
export function loadedEncodings(): EncodingName[] {
  return [...loaded.keys()];
}

// Text that looks like a special token (`<|endoftext|>`) is plain text when it arrives in a request,
// as it is for OpenAI: BpeCounter.count never treats it as special.

/**
 * BPE cost grows with the square of a pre-token's length (100 KB of "aaaa..." takes ~10 s in one
 * piece), so text is counted in segments of at most this many UTF-16 units. Segments end just
 * before a space followed by a non-space, which is always a pre-token boundary in the o200k,
 * cl100k and p50k split patterns, so the sum is exact. Only a run with no such boundary in a whole
 * segment (a 500-char word, a long run of whitespace) is cut blindly, which may add a token or two
 * per cut: an overestimate, at linear cost.
 */
const SEGMENT = 500;

function countSegmented(text: string, enc: BpeCounter): number {
  if (text.length <= SEGMENT) return enc.count(text);
  let total = 0;
  let start = 0;
  while (text.length - start > SEGMENT) {
    let cut = start + SEGMENT;
    let boundary = -1;
    for (let i = cut; i > start; i--) {
      if (text.charCodeAt(i) === 0x20 && i + 1 < text.length && !/\s/.test(text[i + 1]!)) {
        boundary = i;
        break;
      }
    }
    if (boundary > start) cut = boundary;
    else if (isLowSurrogate(text.charCodeAt(cut))) cut -= 1; // never split a surrogate pair
    total += enc.count(text.slice(start, cut));
    start = cut;
  }
  return total + enc.count(text.slice(start));
}

const isLowSurrogate = (code: number) => code >= 0xdc00 && code <= 0xdfff;

/** Tokens of `text` in the model's encoding; prompt text (memoized). */
export function countTokens(text: string, model: string): number {
  if (text.length === 0) return 0;
  const { counter, memo } = encoding(encodingFor(model));
  let tokens = memo.get(text);
  if (tokens === undefined) {
    tokens = countSegmented(text, counter);
    memo.set(text, tokens);
  }
  return tokens;
}

/** The count memo of each loaded encoding (for tests and diagnostics). */
export function countMemoStats(): Partial<Record<EncodingName, CountMemoStats>> {
  return Object.fromEntries([...loaded].map(([name, { memo }]) => [name, memo.stats()]));
}

/**
 * Completion tokens of generated text, for billing a stream cut short before upstream sent usage.
 * Hidden reasoning tokens are not in the text, so for reasoning models this is a floor.
 */
export function countCompletionTokens(text: string, model: string): number {
  // Not through the memo: generated text does not come back (if it does, as the next turn's
  // history, that count is memoized then).
  return countUnmemoized(text, model);
}

/** Tokens of a text that will not come back, so not worth a place in the memo. */
function countUnmemoized(text: string, model: string): number {
  if (text.length === 0) return 0;
  return countSegmented(text, encoding(encodingFor(model)).counter);
}

// OpenAI's documented chat accounting (the cookbook's "How to count tokens with tiktoken", for
// gpt-3.5-turbo-0613 onwards and every gpt-4/4o/4.1/5/o-series model): each message costs 3 tokens of
// framing plus the tokens of each of its string fields, a name 1 more, and every reply is primed
// with 3 (<|start|>assistant<|message|>).
const TOKENS_PER_MESSAGE = 3;
const TOKENS_PER_NAME = 1;
const REPLY_PRIMING_TOKENS = 3;
/**
 * An image's tokens depend on its size, which the gateway does not fetch. 765 is a 1024x1024 image at
 * high detail (85 base + 4 tiles x 170), the common case and what `detail: "auto"` usually costs;
 * `detail: "low"` is always exactly 85. Larger images cost more: the estimate is only an estimate.
 */
export const IMAGE_PART_TOKENS = 765;
export const LOW_DETAIL_IMAGE_PART_TOKENS = 85;
/** Request fields whose JSON the model sees as prompt (tool and output schemas). */
const CHAT_SCHEMA_FIELDS = ['tools', 'functions', 'response_format'] as const;

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

function contentPartTokens(part: unknown, count: (text: string) => number): number {
  if (!isObject(part)) return 0;
  if (part.type === 'image_url') {
    const detail = isObject(part.image_url) ? part.image_url.detail : undefined;
    return detail === 'low' ? LOW_DETAIL_IMAGE_PART_TOKENS : IMAGE_PART_TOKENS;
  }
  // text parts, and refusal parts of assistant messages. Audio and file parts are not estimated:
  // their size is not text, and upstream's usage settles what they really cost.
  if (typeof part.text === 'string') return count(part.text);
  if (typeof part.refusal === 'string') return count(part.refusal);
  return 0;
}

function chatPromptTokens(body: Json, count: (text: string) => number): number {
  let tokens = REPLY_PRIMING_TOKENS;
  const messages = Array.isArray(body.messages) ? body.messages : [];
  for (const message of messages) {
    if (!isObject(message)) continue;
    tokens += TOKENS_PER_MESSAGE;
    for (const [key, value] of Object.entries(message)) {
      if (typeof value === 'string') {
        tokens += count(value);
        if (key === 'name') tokens += TOKENS_PER_NAME;
      } else if (key === 'content' && Array.isArray(value)) {
        for (const part of value) tokens += contentPartTokens(part, count);
      } else if (typeof value === 'object' && value !== null) {
        // tool_calls, function_call...: the model reads them back as JSON text.
        tokens += count(JSON.stringify(value));
      }
    }
  }
  for (const field of CHAT_SCHEMA_FIELDS) {
    const value = body[field];
    if (value !== undefined && value !== null) tokens += count(JSON.stringify(value));
  }
  return tokens;
}

/** prompt / input: a string, strings (summed), token ids (counted), or arrays of token ids. */
function promptLikeTokens(value: unknown, count: (text: string) => number): number {
  if (typeof value === 'string') return count(value);
  if (!Array.isArray(value)) return 0;
  let tokens = 0;
  for (const item of value) {
    if (typeof item === 'string') tokens += count(item);
    else if (typeof item === 'number') tokens += 1;
    else if (Array.isArray(item)) tokens += item.length;
  }
  return tokens;
}

/** Request fields of the Responses API whose JSON the model sees as prompt. */
const RESPONSES_SCHEMA_FIELDS = ['tools', 'text', 'tool_choice'] as const;

/** One Responses input content part: input_text / output_text text, images at a fixed size. */
function responsesPartTokens(part: unknown, count: (text: string) => number): number {
  if (!isObject(part)) return 0;
  if (part.type === 'input_image') return part.detail === 'low' ? LOW_DETAIL_IMAGE_PART_TOKENS : IMAGE_PART_TOKENS;
  if (typeof part.text === 'string') return count(part.text);
  if (typeof part.refusal === 'string') return count(part.refusal);
  return 0; // files and audio: upstream's usage settles them
}

/**
 * A Responses request's prompt: `instructions` as a system message, `input` as one user message
 * (a string) or its items (messages by the chat formula; function calls and their outputs, and any
 * other item, as JSON text), plus tools and text format as JSON.
 */
function responsesPromptTokens(body: Json, count: (text: string) => number): number {
  let tokens = REPLY_PRIMING_TOKENS;
  if (typeof body.instructions === 'string') tokens += TOKENS_PER_MESSAGE + count(body.instructions);
  const input = body.input;
  if (typeof input === 'string') tokens += TOKENS_PER_MESSAGE + count(input);
  else if (Array.isArray(input)) {
    for (const item of input) {
      if (!isObject(item)) continue;
      tokens += TOKENS_PER_MESSAGE;
      if (item.type === undefined || item.type === 'message') {
        if (typeof item.content === 'string') tokens += count(item.content);
        else if (Array.isArray(item.content)) for (const part of item.content) tokens += responsesPartTokens(part, count);
      } else if (item.type === 'function_call_output' && typeof item.output === 'string') {
        tokens += count(item.output);
      } else {
        tokens += count(JSON.stringify(item));
      }
    }
  }
  for (const field of RESPONSES_SCHEMA_FIELDS) {
    const value = body[field];
    if (value !== undefined && value !== null && typeof value === 'object') tokens += count(JSON.stringify(value));
  }
  return tokens;
}

/** Moderation input: a string, strings, or multimodal parts (text counted, images at a fixed size). */
function moderationTokens(input: unknown, count: (text: string) => number): number {
  if (!Array.isArray(input)) return promptLikeTokens(input, count);
  let tokens = 0;
  for (const item of input) {
    if (typeof item === 'string') tokens += count(item);
    else if (isObject(item)) tokens += item.type === 'image_url' ? IMAGE_PART_TOKENS : typeof item.text === 'string' ? count(item.text) : 0;
  }
  return tokens;
}

/**
 * Characters of one request's prompt counted exactly; past them, the rest is estimated at the rate
 * (tokens per character) of what was counted. Counting is synchronous, and a 10 MB body of CJK text
 * took ~6.5 s (unspaced text is BPE's slow case: ~2 us a character), with every other request
 * waiting; this bounds that to ~0.5 s. 256K characters are ~64K tokens of English, more than most
 * prompts; and the estimate only sizes the reservation, which upstream's usage then settles.
 */
export const EXACT_PROMPT_CHARS = 256 * 1024;

/** Counts a request's texts in turn, exactly up to EXACT_PROMPT_CHARS in all, then by rate. */
function boundedCounter(model: string): (text: string) => number {
  let left = EXACT_PROMPT_CHARS;
  let countedChars = 0;
  let countedTokens = 0;
  return (text) => {
    if (text.length <= left) {
      const tokens = countTokens(text, model);
      left -= text.length;
      countedChars += text.length;
      countedTokens += tokens;
      return tokens;
    }
    let cut = left;
    if (cut > 0 && isLowSurrogate(text.charCodeAt(cut))) cut -= 1; // never split a surrogate pair
    // Not through the memo: a head cut at the budget does not come back as it is.
    const head = countUnmemoized(text.slice(0, cut), model);
    left = 0;
    countedChars += cut;
    countedTokens += head;
    // No counted text at all (cannot happen with a positive budget): one token a character, high.
    const rate = countedChars > 0 ? countedTokens / countedChars : 1;
    return head + Math.ceil((text.length - cut) * rate);
  };
}

/**
 * The prompt tokens OpenAI will bill for a request body (validated or not: malformed parts count 0).
 * chat.completions: messages by the documented formula, images at a fixed size, plus tools /
 * functions / response_format as JSON. completions: prompt (+ suffix). embeddings: input.
 * responses: instructions + input items + tools. moderations: input.
 * Prompts are billed once whatever `n` is.
 */
export function estimatePromptTokens(endpoint: Endpoint['name'], body: unknown, model: string): number {
  if (!isObject(body)) return 0;
  const count = boundedCounter(model);
  switch (endpoint) {
    case 'chat.completions':
      return chatPromptTokens(body, count);
    case 'completions':
      return promptLikeTokens(body.prompt, count) + (typeof body.suffix === 'string' ? count(body.suffix) : 0);
    case 'embeddings':
      return promptLikeTokens(body.input, count);
    case 'responses':
      return responsesPromptTokens(body, count);
    case 'moderations':
      return moderationTokens(body.input, count);
  }
}
