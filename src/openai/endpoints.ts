// The endpoint table: each OpenAI endpoint Tollgate serves is a row of data, not a code path.
import type { z } from 'zod';
import { invalidRequest } from '../errors.js';
import { chatCompletionSchema, completionSchema, embeddingSchema, paramPath } from './schemas.js';

export interface Endpoint {
  /** Stable name used in logs, metrics and usage records. */
  name: 'chat.completions' | 'completions' | 'embeddings';
  /** Path below the upstream base URL (which ends in /v1). */
  upstreamPath: string;
  schema: z.ZodType<{ model: string; stream?: boolean | null; stream_options?: { include_usage?: boolean | null } | null }>;
  streamable: boolean;
  cacheable: boolean;
}

export const endpoints = {
  chat: {
    name: 'chat.completions',
    upstreamPath: '/chat/completions',
    schema: chatCompletionSchema,
    streamable: true,
    cacheable: true,
  },
  completions: {
    name: 'completions',
    upstreamPath: '/completions',
    schema: completionSchema,
    streamable: true,
    cacheable: true,
  },
  embeddings: {
    name: 'embeddings',
    upstreamPath: '/embeddings',
    schema: embeddingSchema,
    streamable: false,
    cacheable: true,
  },
} satisfies Record<string, Endpoint>;

const ISSUE_CODES: Record<string, string> = {
  invalid_type: 'invalid_type',
  too_big: 'value_above_maximum',
  too_small: 'value_below_minimum',
  invalid_value: 'invalid_value',
  invalid_union: 'invalid_type',
};

/**
 * The deepest nesting a body may have (the body itself is level 1). Real requests, tool schemas
 * included, stay far below; a deeper one (`[[[[...]]]]` 10,000 levels down in a pass-through field)
 * would exhaust the stack of every recursive walk after validation (cache key, token count, logs).
 */
export const MAX_BODY_DEPTH = 128;

/** Whether any array or object in `value` sits deeper than `max`. Iterative: it must not overflow itself. */
function nestedDeeperThan(value: unknown, max: number): boolean {
  const stack: [unknown, number][] = [[value, 1]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (depth > max) return true;
    for (const child of Array.isArray(v) ? v : Object.values(v as object)) {
      if (child !== null && typeof child === 'object') stack.push([child, depth + 1]);
    }
  }
  return false;
}

/** Validates a request body against the endpoint's schema; throws OpenAI's 400 naming the first bad field. */
export function validateBody<T>(schema: z.ZodType<T>, body: unknown): T {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw invalidRequest('The request body must be a JSON object.', null, 'invalid_json');
  }
  if (nestedDeeperThan(body, MAX_BODY_DEPTH)) {
    throw invalidRequest(`The request body is nested too deeply (at most ${MAX_BODY_DEPTH} levels).`, null, 'invalid_value');
  }
  const result = schema.safeParse(body, { reportInput: true });
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const param = paramPath(issue.path);
  const missing = issue.code === 'invalid_type' && issue.input === undefined;
  if (missing) {
    throw invalidRequest(`Missing required parameter: '${param}'.`, param, 'missing_required_parameter');
  }
  throw invalidRequest(`Invalid '${param ?? 'body'}': ${issue.message}.`, param, ISSUE_CODES[issue.code] ?? 'invalid_value');
}
