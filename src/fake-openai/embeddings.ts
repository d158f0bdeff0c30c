// POST /v1/embeddings: deterministic unit vectors, as float arrays or base64 float32 like the real API.
import { FakeHttpError, badRequest, errorBody, missingParam } from './errors.js';
import { makeUsage, optionalPositiveInt, requireModel, requireObject, type HandlerResult, type JsonObject } from './common.js';
import { embeddingVector, float32Base64 } from './text.js';
import { estimatePromptTokens } from '../openai/tokens.js';

// Small on purpose: real models return 1536+ floats, which would only bloat test traffic.
const DEFAULT_DIMENSIONS = 8;
const MAX_DIMENSIONS = 3072;

/** What an input's vector is derived from; its tokens are counted by the shared tokenizer. */
interface Input {
  key: string;
}

export function embeddings(rawBody: unknown): HandlerResult {
  const body = requireObject(rawBody);
  const model = requireModel(body);
  const inputs = readInputs(body);
  const format = readEncodingFormat(body);
  const requested = optionalPositiveInt(body, 'dimensions', MAX_DIMENSIONS);
  if (requested !== undefined && model.startsWith('text-embedding-ada-002')) {
    // The real API refuses this for the older model; gateways that rewrite requests should see it.
    throw new FakeHttpError(400, errorBody('This model does not support specifying dimensions.', 'invalid_request_error', null, null));
  }
  const dimensions = requested ?? DEFAULT_DIMENSIONS;

  const promptTokens = estimatePromptTokens('embeddings', body, model);
  const usage = makeUsage(promptTokens, 0);
  return {
    type: 'json',
    status: 200,
    body: {
      object: 'list',
      data: inputs.map((input, index) => {
        const vector = embeddingVector(input.key, dimensions);
        return { object: 'embedding', index, embedding: format === 'base64' ? float32Base64(vector) : vector };
      }),
      model,
      usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
    },
    usage,
  };
}

const isTokenArray = (v: unknown): v is number[] => Array.isArray(v) && v.length > 0 && v.every((t) => Number.isInteger(t));

/** input: string | string[] | number[] | number[][]. */
function readInputs(body: JsonObject): Input[] {
  const input = body.input;
  if (input === undefined || input === null) throw missingParam('input');
  const fromText = (text: string): Input => ({ key: `text:${text}` });
  const fromTokens = (ids: number[]): Input => ({ key: `ids:${ids.join(',')}` });

  if (typeof input === 'string' && input.length > 0) return [fromText(input)];
  if (Array.isArray(input) && input.length > 0) {
    if (input.every((i) => typeof i === 'string' && i.length > 0)) return (input as string[]).map(fromText);
    if (isTokenArray(input)) return [fromTokens(input)];
    if (input.every(isTokenArray)) return (input as number[][]).map(fromTokens);
  }
  throw badRequest("'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.");
}

function readEncodingFormat(body: JsonObject): 'float' | 'base64' {
  const format = body.encoding_format ?? 'float';
  if (format !== 'float' && format !== 'base64') {
    throw badRequest(`'${String(format)}' is not one of ['float', 'base64'] - 'encoding_format'`, 'encoding_format', 'invalid_value');
  }
  return format;
}
