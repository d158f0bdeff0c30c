// Admin API input (a body, or a query string's parameters) read with a zod schema.
import type { z } from 'zod';
import { invalidRequest } from '../errors.js';
import { paramPath } from '../openai/schemas.js';

/** `input` as `schema` reads it, or an OpenAI-shaped 400 naming the first thing wrong (the parameter, else the whole). */
export function parseInput<T>(schema: z.ZodType<T>, input: unknown, whole: 'body' | 'query' = 'body'): T {
  const result = schema.safeParse(input ?? {});
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  if (issue.code === 'unrecognized_keys' && whole === 'query') {
    // A mistyped parameter (from= as form=) is refused, not quietly left at its default.
    const name = paramPath([...issue.path, issue.keys[0]!]);
    throw invalidRequest(`Unrecognized query parameter: '${name}'.`, name, 'unknown_parameter');
  }
  const param = paramPath(issue.path);
  throw invalidRequest(`Invalid '${param ?? whole}': ${issue.message}.`, param, 'invalid_value');
}
