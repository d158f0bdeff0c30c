// The endpoint table: each OpenAI endpoint Tollgate serves is a row of data, not a code path.
import type { z } from 'zod';
import { invalidRequest } from '../errors.js';
import { chatCompletionSchema, completionSchema, embeddingSchema, moderationSchema, responseSchema } from './schemas.js';
import { fieldError } from './field-errors.js';
import {
  answerText,
  generatedText,
  readChunkUsage,
  readResponsesEventUsage,
  readResponsesUsage,
  readUsage,
  responsesAnswerText,
  responsesGeneratedText,
  type StreamEventInfo,
  type Usage,
} from './usage.js';
import { assembleStream, canSynthesize, synthesizeStream, type ConvertibleEndpoint } from './stream-convert.js';
import { assembleResponse, canSynthesizeResponse, synthesizeResponseStream } from './responses-convert.js';

type Json = Record<string, unknown>;

/** How an endpoint reports what it used. */
export interface UsageReader {
  /** Usage of a non-streamed 200 body. */
  body(json: unknown): Usage | undefined;
  /** Usage carried by one streamed event, and whether the event ends the stream. */
  event(data: string, event: string | undefined): StreamEventInfo | undefined;
  /** The text a stream generated so far, to bill a stream cut short before its usage. */
  generatedText(data: readonly string[]): string;
  /** The text a non-streamed 200 body generated, to bill one that reports no usage. */
  answerText(json: unknown): string;
  /**
   * Chat and completions report usage in a stream only when asked (`stream_options.include_usage`),
   * so the gateway asks and hides the chunk from clients that did not; the Responses API always does.
   */
  askInStream: boolean;
  /** A 200 body without usage is still complete (moderations: OpenAI reports none): cacheable, 0 tokens. */
  optional?: boolean;
  /**
   * A 200 body of work that is not done, whose usage OpenAI reports (and bills) later, elsewhere: a
   * background response's create call (`queued` or `in_progress`). 0 tokens, not cached.
   */
  unfinished?(json: unknown): boolean;
}

/** Turns a complete stream into the stored (non-streamed) body and a stored body into a stream. */
export interface StreamConverter {
  /** The non-streamed body equivalent to a complete stream (its events' data), or undefined. */
  assemble(data: readonly string[]): Json | undefined;
  canSynthesize(body: Json): boolean;
  /** The SSE events (terminator included) of a stream equivalent to `stored`, for the request `body`. */
  synthesize(stored: Json, body: Json): { event?: string; data: string }[];
}

/** Chat models that search the web whatever the request says. */
const SEARCH_MODEL = /-search-(preview|api)\b/i;

export interface Endpoint {
  /** Stable name used in logs, metrics and usage records. */
  name: 'chat.completions' | 'completions' | 'embeddings' | 'responses' | 'moderations';
  /** Path below the upstream base URL (which ends in /v1). */
  upstreamPath: string;
  schema: z.ZodType<{ model: string; stream?: boolean | null; stream_options?: { include_usage?: boolean | null } | null }>;
  streamable: boolean;
  cacheable: boolean;
  /** When set, a request is cacheable only if this says so (answers that depend on state held upstream). */
  cacheableRequest?: (body: Json) => boolean;
  usage: UsageReader;
  /** Streamed requests can share cache entries with non-streamed ones only with a converter. */
  convert?: StreamConverter;
  /** The answers are objects upstream keeps (`id`): record which gateway key created each. */
  recordsOwner?: boolean;
  /** Its stream's events are typed (`event:` lines, `type`, `sequence_number`): see RelayOptions.typedEvents. */
  typedEvents?: boolean;
  /**
   * The most tokens upstream generates per choice when a request states no maximum, where the API
   * has a documented default (legacy completions: `max_tokens` defaults to 16), so quotas reserve
   * exactly that. Without it the gateway reserves DEFAULT_MAX_OUTPUT_TOKENS.
   */
  defaultMaxOutputTokens?: number;
}

const chatLikeUsage: UsageReader = {
  body: readUsage,
  event: (data) => readChunkUsage(data),
  generatedText,
  answerText,
  askInStream: true,
};

const chatLikeConverter = (endpoint: ConvertibleEndpoint): StreamConverter => ({
  assemble: (data) => assembleStream(endpoint, data),
  canSynthesize: (body) => canSynthesize(endpoint, body),
  synthesize: (stored, body) => {
    const includeUsage = (body.stream_options as { include_usage?: unknown } | null | undefined)?.include_usage === true;
    return [...synthesizeStream(endpoint, stored, { includeUsage }).map((data) => ({ data })), { data: '[DONE]' }];
  },
});

const absent = (v: unknown) => v === undefined || v === null;

/** Tools the client runs itself (their results come back in the input): the answer depends on the request alone. */
const CLIENT_TOOLS = new Set(['function', 'custom', 'local_shell', 'shell', 'apply_patch', 'computer_use_preview']);

/**
 * A Responses request may be answered from the cache only when its answer cannot depend on state
 * held at OpenAI: no previous_response_id, no conversation, not in the background, and `store`
 * false or absent (as issue 8 states, although OpenAI's default for `store` is true: an absent
 * `store` still stores the original answer upstream, and a hit returns that answer's id). Nor a
 * stored prompt (`prompt`: its latest version can change), an input item that references a stored
 * item (`item_reference`), or a hosted tool (file search over a vector store that may have changed,
 * web search, a remote MCP server, a code interpreter's container...): what those read is not in
 * the request.
 */
export function responseIsCacheable(body: Json): boolean {
  if (!absent(body.previous_response_id) || !absent(body.conversation) || body.background === true || body.store === true) return false;
  if (!absent(body.prompt)) return false;
  if (Array.isArray(body.tools) && body.tools.some((tool) => !CLIENT_TOOLS.has((tool as { type?: unknown } | null)?.type as string))) return false;
  return !(Array.isArray(body.input) && body.input.some((item) => storedItemNamed(item) !== undefined));
}

/**
 * The id of the stored item an input item makes OpenAI read, or undefined: `type: 'item_reference'`,
 * an id alone (type left out, as OpenAI allows), or a reasoning item without its
 * `encrypted_content` (OpenAI then looks its content up by id).
 */
export function storedItemNamed(item: unknown): string | undefined {
  if (item === null || typeof item !== 'object') return undefined;
  const { type, id, role, content, encrypted_content } = item as Record<string, unknown>;
  if (typeof id !== 'string') return undefined;
  if (type === 'item_reference' || (absent(type) && role === undefined && content === undefined)) return id;
  return type === 'reasoning' && absent(encrypted_content) ? id : undefined;
}

export const endpoints = {
  chat: {
    name: 'chat.completions',
    upstreamPath: '/chat/completions',
    schema: chatCompletionSchema,
    streamable: true,
    cacheable: true,
    // `store: true` asks OpenAI to keep this completion (evals, distillation): a hit would keep none.
    // store: OpenAI is asked to keep each one. web_search_options, or a search model
    // (gpt-4o-search-preview, gpt-5-search-api: they search with or without it): the answer reads
    // the live web, as a Responses web_search tool does (not cached either).
    cacheableRequest: (body: Json) => body.store !== true && absent(body.web_search_options) && !SEARCH_MODEL.test(String(body.model)),
    usage: chatLikeUsage,
    convert: chatLikeConverter('chat.completions'),
  },
  completions: {
    name: 'completions',
    upstreamPath: '/completions',
    schema: completionSchema,
    streamable: true,
    cacheable: true,
    usage: chatLikeUsage,
    convert: chatLikeConverter('completions'),
    // OpenAI's API reference: max_tokens "Defaults to 16" on /v1/completions.
    defaultMaxOutputTokens: 16,
  },
  embeddings: {
    name: 'embeddings',
    upstreamPath: '/embeddings',
    schema: embeddingSchema,
    streamable: false,
    cacheable: true,
    usage: chatLikeUsage,
  },
  responses: {
    name: 'responses',
    upstreamPath: '/responses',
    schema: responseSchema,
    streamable: true,
    cacheable: true,
    cacheableRequest: responseIsCacheable,
    usage: {
      body: readResponsesUsage,
      event: readResponsesEventUsage,
      generatedText: responsesGeneratedText,
      answerText: responsesAnswerText,
      askInStream: false,
      unfinished: (json) => {
        const status = (json as { status?: unknown } | null)?.status;
        return status === 'queued' || status === 'in_progress';
      },
    },
    convert: {
      assemble: assembleResponse,
      canSynthesize: canSynthesizeResponse,
      synthesize: (stored) => synthesizeResponseStream(stored),
    },
    recordsOwner: true,
    typedEvents: true,
  },
  // OpenAI reports no usage for moderations (they are free): requests are counted, tokens are 0
  // unless a body ever carries a usage object.
  moderations: {
    name: 'moderations',
    upstreamPath: '/moderations',
    schema: moderationSchema,
    streamable: false,
    cacheable: true,
    usage: { ...chatLikeUsage, optional: true },
  },
} satisfies Record<string, Endpoint>;

/**
 * The deepest nesting a body may have (the body itself is level 1). Real requests, tool schemas
 * included, stay far below; a deeper one (`[[[[...]]]]` 10,000 levels down in a pass-through field)
 * would exhaust the stack of every recursive walk after validation (cache key, token count, logs).
 */
export const MAX_BODY_DEPTH = 128;

/**
 * The most objects, arrays and object fields a body may hold by default (BODY_MAX_NODES). Most
 * requests stay far below (2048 messages with a tool call each, plus 128 tools: ~40,000); each
 * node costs synchronous work before the request goes upstream (parse, validation, cache name,
 * token count) while every other request waits, and pass-through fields have no other bound: a
 * 7 MB body of 200,000 small objects held the event loop ~0.65 s.
 */
export const DEFAULT_MAX_BODY_NODES = 100_000;

/** What is wrong with the shape of `body` (too deep, too many nodes), or null. Iterative: it must not overflow itself. */
function shapeProblem(body: object, maxNodes: number): string | null {
  const stack: [unknown, number][] = [[body, 1]];
  let nodes = 0;
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (depth > MAX_BODY_DEPTH) return `The request body is nested too deeply (at most ${MAX_BODY_DEPTH} levels).`;
    const children = Array.isArray(v) ? v : Object.values(v as object);
    // An array's numbers and strings are not counted (token-id inputs are long lists of numbers):
    // they cost little more than their parse.
    nodes += Array.isArray(v) ? 1 : 1 + children.length;
    if (nodes > maxNodes) return `The request body holds too many objects, arrays and fields (at most ${maxNodes}).`;
    for (const child of children) {
      if (child !== null && typeof child === 'object') stack.push([child, depth + 1]);
    }
  }
  return null;
}

/** Validates a request body against the endpoint's schema; throws OpenAI's 400 naming the first bad field. */
export function validateBody<T>(schema: z.ZodType<T>, body: unknown, maxNodes = DEFAULT_MAX_BODY_NODES): T {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw invalidRequest('The request body must be a JSON object.', null, 'invalid_json');
  }
  const problem = shapeProblem(body, maxNodes);
  if (problem) throw invalidRequest(problem, null, 'invalid_value');
  const result = schema.safeParse(body);
  if (result.success) return result.data;
  throw fieldError(result.error.issues[0]!, body);
}
