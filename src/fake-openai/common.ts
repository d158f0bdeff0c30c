// Types and request-field validation shared by the fake endpoints.
import { randomBytes } from 'node:crypto';
import { badRequest, malformedJson } from './errors.js';
import { hash32 } from './text.js';
import { requireKnownModel } from './models.js';

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** One SSE event and how many completion tokens it carries (for counting what an aborted stream sent). */
export interface StreamEvent {
  data: string;
  completionTokens: number;
}

/** What an endpoint produces; the server owns writing it, latency, streaming and accounting. */
export type HandlerResult =
  | { type: 'json'; status: number; body: unknown; usage?: Usage }
  | { type: 'stream'; events: StreamEvent[]; usage: Usage };

export type JsonObject = Record<string, unknown>;

export function requireObject(body: unknown): JsonObject {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw malformedJson();
  return body as JsonObject;
}

export function requireModel(body: JsonObject): string {
  const model = body.model;
  if (model === undefined || model === null || model === '') {
    throw badRequest('you must provide a model parameter');
  }
  if (typeof model !== 'string') {
    throw badRequest(`Invalid type for 'model': expected a string, but got ${typeof model} instead.`, 'model', 'invalid_type');
  }
  requireKnownModel(model);
  return model;
}

/**
 * An optional positive integer field (n, max_tokens...), with OpenAI's wording when it is out of
 * range; `min` 0 for the few that take 0 (legacy completions' max_tokens).
 */
export function optionalPositiveInt(body: JsonObject, field: string, max = Number.MAX_SAFE_INTEGER, min = 1): number | undefined {
  const value = body[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw badRequest(`Invalid type for '${field}': expected an integer, but got ${typeof value} instead.`, field, 'invalid_type');
  }
  if (value < min) throw badRequest(`Invalid '${field}': integer below minimum value. Expected a value >= ${min}, but got ${value} instead.`, field, 'integer_below_min_value');
  if (value > max) throw badRequest(`Invalid '${field}': integer above maximum value. Expected a value <= ${max}, but got ${value} instead.`, field, 'integer_above_max_value');
  return value;
}

export interface StreamFlags {
  stream: boolean;
  includeUsage: boolean;
}

/** stream / stream_options, rejecting stream_options without stream exactly as OpenAI does. */
export function streamFlags(body: JsonObject): StreamFlags {
  const stream = body.stream === true;
  const options = body.stream_options;
  if (options !== undefined && options !== null) {
    if (!stream) {
      throw badRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.", 'stream_options', 'invalid_value');
    }
    if (typeof options !== 'object') throw badRequest("Invalid type for 'stream_options'.", 'stream_options', 'invalid_type');
  }
  const includeUsage = stream && (options as { include_usage?: unknown } | null | undefined)?.include_usage === true;
  return { stream, includeUsage };
}

export function makeUsage(prompt: number, completion: number): Usage {
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

/** OpenAI ids: a prefix and 29 random alphanumerics (chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG). */
export function makeId(prefix: string): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const bytes = randomBytes(29);
  let id = '';
  for (const b of bytes) id += alphabet[b % alphabet.length];
  return `${prefix}-${id}`;
}

/** Stable per model, like a real deployment's fingerprint. */
export function fingerprint(model: string): string {
  return `fp_${hash32(model).toString(16).padStart(8, '0')}${(hash32(`${model}!`) & 0xff).toString(16).padStart(2, '0')}`;
}

export function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

export const sse = (payload: unknown, completionTokens = 0): StreamEvent => ({
  data: `data: ${JSON.stringify(payload)}\n\n`,
  completionTokens,
});

export const SSE_DONE: StreamEvent = { data: 'data: [DONE]\n\n', completionTokens: 0 };

/** A generated choice: its words (one token each) after the max-tokens cap, and why it stopped. */
export interface GeneratedChoice {
  index: number;
  words: string[];
  finishReason: 'stop' | 'length';
}

export function capWords(index: number, all: string[], maxTokens: number | undefined): GeneratedChoice {
  if (maxTokens !== undefined && all.length > maxTokens) {
    return { index, words: all.slice(0, maxTokens), finishReason: 'length' };
  }
  return { index, words: all, finishReason: 'stop' };
}

export const completionTokens = (choices: GeneratedChoice[]) => choices.reduce((sum, c) => sum + c.words.length, 0);

/** The fields every chunk of one response shares. */
export interface ResponseMeta {
  id: string;
  created: number;
  model: string;
  system_fingerprint: string;
}

export function responseMeta(idPrefix: string, model: string): ResponseMeta {
  return { id: makeId(idPrefix), created: nowSeconds(), model, system_fingerprint: fingerprint(model) };
}

/** Word w of every choice before word w+1 of any choice: how OpenAI interleaves n>1 streams. */
export function interleaveWords<T>(choices: GeneratedChoice[], make: (choice: GeneratedChoice, word: string, position: number) => T): T[] {
  const out: T[] = [];
  const longest = Math.max(0, ...choices.map((c) => c.words.length));
  for (let w = 0; w < longest; w++) {
    for (const c of choices) {
      const word = c.words[w];
      if (word !== undefined) out.push(make(c, word, w));
    }
  }
  return out;
}
