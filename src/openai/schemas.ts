// zod schemas of the request fields Tollgate acts on. Loose objects: every other field passes through
// untouched, so new OpenAI parameters work without a gateway release.
import { z } from 'zod';

// Python clients send explicit nulls for unset arguments (openai 0.x sends `stop: null`): accept them.
const opt = <T extends z.ZodType>(schema: T) => schema.nullish();

/** OpenAI's words for a list past its bound (its code is array_above_max_length). */
function arrayTooLong(max: number, length: number): string {
  return `array too long. Expected an array with maximum length ${max}, but got an array with length ${length} instead`;
}

/** An array of at most `max` items, refused in OpenAI's words. */
const boundedArray = <T extends z.ZodType>(item: T, max: number) =>
  z.array(item).max(max, { error: (issue) => arrayTooLong(max, Array.isArray(issue.input) ? issue.input.length : max + 1) });

/**
 * A union with an array among its forms, whose array may hold at most `max` items: checked after
 * the union, so the 400 names the bound instead of the union's "Invalid input". `counted` says
 * which arrays are lists (one array of numbers is a single prompt of token ids, not a batch).
 */
const unionWithBoundedArray = <T extends z.ZodType>(union: T, max: number, counted: (value: unknown[]) => boolean = () => true) =>
  union.superRefine((value, ctx) => {
    if (!Array.isArray(value) || value.length <= max || !counted(value)) return;
    ctx.addIssue({ code: 'too_big', origin: 'array', maximum: max, inclusive: true, input: value, message: arrayTooLong(max, value.length) });
  });

/** The longest model name a body may carry (fine-tuned ids run long). */
export const MODEL_MAX_LENGTH = 256;
const model = z.string().min(1).max(MODEL_MAX_LENGTH);
// Bounded: no model generates 2^31 tokens, and an unbounded count times n would overflow the
// integer arithmetic of the reservation (a 500 for a request that is only silly).
const tokenCount = z.number().int().positive().max(2 ** 31 - 1);

const stop = unionWithBoundedArray(z.union([z.string(), z.array(z.string())]), 4);
const streamOptions = z.looseObject({ include_usage: opt(z.boolean()) });

/** Sampling fields shared by chat and legacy completions, with OpenAI's documented ranges. */
const sampling = {
  temperature: opt(z.number().min(0).max(2)),
  top_p: opt(z.number().min(0).max(1)),
  n: opt(z.number().int().min(1).max(128)),
  presence_penalty: opt(z.number().min(-2).max(2)),
  frequency_penalty: opt(z.number().min(-2).max(2)),
  // Any integer: clients pick random 64-bit seeds, and zod's int() stops at 2^53 - 1. JSON.parse
  // rounds such a seed; its exact digits are read back from the raw body where it matters (big-seed.ts).
  seed: opt(z.number().refine(Number.isInteger, 'Expected an integer')),
  stop: opt(stop),
  logit_bias: opt(z.record(z.string(), z.number().min(-100).max(100))),
  stream: opt(z.boolean()),
  stream_options: opt(streamOptions),
  max_tokens: opt(tokenCount),
  user: opt(z.string()),
};

const message = z.looseObject({
  role: z.string().min(1),
});

/**
 * OpenAI's bounds on a chat request's lists (its 400s say so). They also bound the work done
 * synchronously on a body before it goes upstream (validation, cache name, token count): a 7 MB
 * body of 200,000 one-word messages held the event loop ~0.65 s.
 */
const MAX_CHAT_MESSAGES = 2048;
const MAX_TOOLS = 128;

/**
 * OpenAI refuses `stream_options` on a request that does not stream (400). Checked here too: the
 * cache name leaves both fields out, so a hit would otherwise answer 200 what a miss answers 400.
 */
const streamOptionsNeedStream = (body: { stream?: boolean | null; stream_options?: unknown }, ctx: z.RefinementCtx) => {
  if (body.stream_options != null && body.stream !== true) {
    ctx.addIssue({ code: 'custom', path: ['stream_options'], message: "only allowed when 'stream' is true" });
  }
};

export const chatCompletionSchema = z
  .looseObject({
    model,
    messages: boundedArray(message, MAX_CHAT_MESSAGES).min(1),
    tools: opt(boundedArray(z.unknown(), MAX_TOOLS)),
    ...sampling,
    max_completion_tokens: opt(tokenCount),
    logprobs: opt(z.boolean()),
    top_logprobs: opt(z.number().int().min(0).max(20)),
  })
  .superRefine(streamOptionsNeedStream);

/**
 * The most inputs one request may batch: OpenAI documents 2048 for embeddings ("any array must be
 * 2048 dimensions or less"); its API reference states no bound for the prompts of a legacy
 * completion, so the same one is held there. Without a bound, prompts x n x max_tokens had no
 * limit but the body size (40,000 empty prompts fit in 120 KB).
 */
export const MAX_BATCH_INPUTS = 2048;

const tokenIds = z.array(z.number().int().nonnegative());

/** A batch (an array of strings or of token arrays) of at most MAX_BATCH_INPUTS. */
const batchOf = <T extends z.ZodType>(schema: T) =>
  unionWithBoundedArray(schema, MAX_BATCH_INPUTS, (value) => !value.every((item) => typeof item === 'number'));

const promptLike = batchOf(z.union([z.string(), z.array(z.string()), tokenIds, z.array(tokenIds)]));

export const completionSchema = z.looseObject({
  model,
  prompt: promptLike,
  ...sampling,
  // OpenAI's legacy API takes 0 (with echo and logprobs, the prompt's own logprobs and nothing
  // generated: how prompt-scoring tools use it); chat's max_tokens stays >= 1, as OpenAI's does.
  max_tokens: opt(z.number().int().nonnegative().max(2 ** 31 - 1)),
  best_of: opt(z.number().int().min(1).max(20)),
  logprobs: opt(z.number().int().min(0).max(5)),
  echo: opt(z.boolean()),
  suffix: opt(z.string()),
}).superRefine(streamOptionsNeedStream);

export const embeddingSchema = z.looseObject({
  model,
  input: batchOf(z.union([z.string(), z.array(z.string()).min(1), tokenIds.min(1), z.array(tokenIds).min(1)])),
  encoding_format: opt(z.enum(['float', 'base64'])),
  dimensions: opt(z.number().int().positive().max(100_000)),
  user: opt(z.string()),
});

// The Responses API. `input` is a string or a list of items (messages, function outputs, item
// references...): only its outer shape is checked, the items pass through.
export const responseSchema = z.looseObject({
  model,
  input: opt(z.union([z.string(), z.array(z.looseObject({}))])),
  instructions: opt(z.string()),
  stream: opt(z.boolean()),
  max_output_tokens: opt(tokenCount),
  temperature: opt(z.number().min(0).max(2)),
  top_p: opt(z.number().min(0).max(1)),
  store: opt(z.boolean()),
  background: opt(z.boolean()),
  previous_response_id: opt(z.string()),
  user: opt(z.string()),
});

// `model` is optional for moderations: the default is upstream's, named here so the allow-list and
// the price table see the model that will answer (the body forwarded upstream is left as sent).
export const moderationSchema = z.looseObject({
  model: model.default('omni-moderation-latest'),
  input: z.union([z.string(), z.array(z.string()).min(1), z.array(z.looseObject({ type: z.string() })).min(1)]),
});

export type ChatCompletionRequest = z.infer<typeof chatCompletionSchema>;
export type CompletionRequest = z.infer<typeof completionSchema>;
export type EmbeddingRequest = z.infer<typeof embeddingSchema>;
export type ResponseRequest = z.infer<typeof responseSchema>;
export type ModerationRequest = z.infer<typeof moderationSchema>;

/** `['messages', 0, 'role']` -> `messages[0].role`, the way OpenAI names a parameter. */
export function paramPath(path: readonly PropertyKey[]): string | null {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out ? `.${String(part)}` : String(part);
  }
  return out || null;
}
