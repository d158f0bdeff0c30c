// OpenAI's words for a request field it refuses, made from a zod issue: an app sees the same message
// and code whether the gateway refused its request or OpenAI would have (zod's own "Too big:
// expected number to be <=2" and its codes are not what OpenAI's SDK users branch on).
import type { z } from 'zod';
import { invalidRequest, type GatewayError } from '../errors.js';
import { paramPath } from './schemas.js';

/** Fields OpenAI types as integers: their bounds are "integer" ones, every other number's "decimal". */
const INTEGER_FIELDS = new Set(['n', 'max_tokens', 'max_completion_tokens', 'max_output_tokens', 'top_logprobs', 'logprobs', 'best_of', 'dimensions']);

const EXPECTED: Record<string, string> = {
  int: 'an integer',
  number: 'a number',
  string: 'a string',
  boolean: 'a boolean',
  array: 'an array',
  object: 'an object',
};

/** Codes of the issues worded by zod itself (unions, enums, refinements). */
const ISSUE_CODES: Record<string, string> = {
  invalid_type: 'invalid_type',
  invalid_union: 'invalid_type',
  invalid_value: 'invalid_value',
};

function valueAt(body: unknown, path: readonly PropertyKey[]): unknown {
  let value = body;
  for (const part of path) {
    if (value === null || typeof value !== 'object') return undefined;
    value = (value as Record<PropertyKey, unknown>)[part];
  }
  return value;
}

/** What a value is, as OpenAI's messages name it: "a string", "an integer", "null"... */
function kindOf(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'number') return Number.isInteger(value) ? 'an integer' : 'a decimal';
  if (typeof value === 'object') return 'an object';
  return `a ${typeof value}`;
}

/** The 400 for the first thing wrong in `body`, as OpenAI words it. */
export function fieldError(issue: z.core.$ZodIssue, body: unknown): GatewayError {
  const param = paramPath(issue.path);
  const name = param ?? 'body';
  const value = valueAt(body, issue.path);
  if (value === undefined && (issue.code === 'invalid_type' || issue.code === 'invalid_union')) {
    return invalidRequest(`Missing required parameter: '${name}'.`, param, 'missing_required_parameter');
  }
  if ((issue.code === 'too_big' || issue.code === 'too_small') && issue.origin === 'number') {
    const above = issue.code === 'too_big';
    const integer = INTEGER_FIELDS.has(String(issue.path.at(-1)));
    let bound = Number(above ? issue.maximum : issue.minimum);
    let op = above ? '<=' : '>=';
    // An exclusive bound (positive(): > 0) is, for an integer, the next integer inclusive (>= 1).
    if (issue.inclusive === false) {
      if (integer) bound += above ? -1 : 1;
      else op = above ? '<' : '>';
    }
    const kind = integer ? 'integer' : 'decimal';
    return invalidRequest(
      `Invalid '${name}': ${kind} ${above ? 'above maximum' : 'below minimum'} value. Expected a value ${op} ${bound}, but got ${String(value)} instead.`,
      param,
      `${kind}_${above ? 'above_max' : 'below_min'}_value`,
    );
  }
  if (issue.code === 'too_big' && issue.origin === 'array') {
    return invalidRequest(`Invalid '${name}': ${issue.message}.`, param, 'array_above_max_length'); // schemas.ts words these
  }
  if (issue.code === 'too_small' && issue.origin === 'array') {
    const length = Array.isArray(value) ? value.length : 0;
    const got = length === 0 ? 'an empty array' : `an array with length ${length}`;
    return invalidRequest(
      `Invalid '${name}': ${length === 0 ? 'empty array' : 'array too short'}. Expected an array with minimum length ${String(issue.minimum)}, but got ${got} instead.`,
      param,
      length === 0 ? 'empty_array' : 'array_below_min_length',
    );
  }
  if ((issue.code === 'too_big' || issue.code === 'too_small') && issue.origin === 'string') {
    const above = issue.code === 'too_big';
    const length = typeof value === 'string' ? value.length : 0;
    const got = length === 0 ? 'an empty string' : `a string with length ${length}`;
    return invalidRequest(
      `Invalid '${name}': string too ${above ? 'long' : 'short'}. Expected a string with ${above ? 'maximum' : 'minimum'} length ${String(above ? issue.maximum : issue.minimum)}, but got ${got} instead.`,
      param,
      above ? 'string_above_max_length' : length === 0 ? 'empty_string' : 'string_below_min_length',
    );
  }
  if (issue.code === 'invalid_value' && issue.values.length > 0 && (typeof value === 'string' || typeof value === 'number')) {
    // OpenAI's words for an enum: "Invalid value: 'int8'. Supported values are: 'float' and 'base64'."
    const quoted = issue.values.map((v) => `'${String(v)}'`);
    const list = quoted.length === 1 ? quoted[0] : `${quoted.slice(0, -1).join(', ')}${quoted.length > 2 ? ',' : ''} and ${quoted.at(-1)}`;
    // The client's value is echoed, cut short: an error must not grow with what was sent (3 KB for 3,000 characters).
    const given = String(value);
    const shown = given.length > 100 ? `${given.slice(0, 100)}...` : given;
    return invalidRequest(`Invalid value: '${shown}'. Supported values are: ${list}.`, param, 'invalid_value');
  }
  if (issue.code === 'invalid_union' && Array.isArray(value) && value.length === 0) {
    // An input or prompt that may be a string or a list of several kinds: an empty list is none of them.
    return invalidRequest(`Invalid '${name}': empty array. Expected an array with minimum length 1, but got an empty array instead.`, param, 'empty_array');
  }
  if (issue.code === 'invalid_union' && issue.path.length === 1) {
    // OpenAI's words for an input (or prompt) of no kind it takes.
    return invalidRequest(`'$.${name}' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.`, param, 'invalid_type');
  }
  if (issue.code === 'invalid_type' && issue.expected in EXPECTED) {
    const expected = issue.expected === 'number' && INTEGER_FIELDS.has(String(issue.path.at(-1))) ? 'an integer' : EXPECTED[issue.expected];
    return invalidRequest(`Invalid type for '${name}': expected ${expected}, but got ${kindOf(value)} instead.`, param, 'invalid_type');
  }
  return invalidRequest(`Invalid '${name}': ${issue.message}.`, param, ISSUE_CODES[issue.code] ?? 'invalid_value');
}
