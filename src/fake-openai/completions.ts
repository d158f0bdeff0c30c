// POST /v1/completions: the legacy `text_completion` API, plain or streamed.
import { badRequest, missingParam } from './errors.js';
import {
  SSE_DONE,
  capWords,
  completionTokens,
  makeUsage,
  optionalPositiveInt,
  requireModel,
  requireObject,
  responseMeta,
  interleaveWords,
  sse,
  streamFlags,
  type GeneratedChoice,
  type HandlerResult,
  type JsonObject,
  type ResponseMeta,
  type StreamEvent,
  type Usage,
} from './common.js';
import { replyWords } from './text.js';
import { estimatePromptTokens } from '../openai/tokens.js';

// The legacy API's own default, which is why short prompts so often come back with finish_reason "length".
const DEFAULT_MAX_TOKENS = 16;

/** What a prompt's reply is derived from; its tokens are counted by the shared tokenizer. */
interface Prompt {
  seed: string;
}


export function completions(rawBody: unknown): HandlerResult {
  const body = requireObject(rawBody);
  const model = requireModel(body);
  const prompts = readPrompts(body);
  const n = optionalPositiveInt(body, 'n', 128) ?? 1;
  // 0 is allowed here (not on chat): echo + logprobs + max_tokens 0 scores a prompt, generating nothing.
  const maxTokens = optionalPositiveInt(body, 'max_tokens', Number.MAX_SAFE_INTEGER, 0) ?? DEFAULT_MAX_TOKENS;
  const { stream, includeUsage } = streamFlags(body);

  // OpenAI numbers choices prompt-major: prompt p, sample i -> index p * n + i.
  const choices = prompts.flatMap((p, pi) =>
    Array.from({ length: n }, (_, i) => capWords(pi * n + i, replyWords('This is a fake completion of:', p.seed, i), maxTokens)),
  );
  const usage = makeUsage(estimatePromptTokens('completions', body, model), completionTokens(choices));
  const meta = responseMeta('cmpl', model);

  if (stream) return { type: 'stream', events: completionChunks(meta, choices, usage, includeUsage), usage };
  return {
    type: 'json',
    status: 200,
    body: {
      id: meta.id,
      object: 'text_completion',
      created: meta.created,
      model: meta.model,
      system_fingerprint: meta.system_fingerprint,
      choices: choices.map((c) => ({ text: textOf(c.words), index: c.index, logprobs: null, finish_reason: c.finishReason })),
      usage,
    },
    usage,
  };
}

const isTokenArray = (v: unknown): v is number[] => Array.isArray(v) && v.every((t) => Number.isInteger(t));

/** prompt: string | string[] | number[] | number[][]. */
function readPrompts(body: JsonObject): Prompt[] {
  const prompt = body.prompt;
  if (prompt === undefined || prompt === null) throw missingParam('prompt');
  const fromText = (text: string): Prompt => ({ seed: text });
  const fromTokens = (ids: number[]): Prompt => ({ seed: ids.slice(0, 8).join(' ') });

  if (typeof prompt === 'string') return [fromText(prompt)];
  if (Array.isArray(prompt) && prompt.length > 0) {
    if (prompt.every((p) => typeof p === 'string')) return (prompt as string[]).map(fromText);
    if (isTokenArray(prompt)) return [fromTokens(prompt)];
    if (prompt.every(isTokenArray)) return (prompt as number[][]).map(fromTokens);
  }
  throw badRequest("Invalid 'prompt': expected a string, an array of strings, an array of tokens or an array of token arrays.", 'prompt', 'invalid_value');
}

/** Legacy completions text starts with a space before each word, so stream pieces concatenate to it. */
const textOf = (words: string[]) => words.map((w) => ` ${w}`).join('');

function completionChunks(meta: ResponseMeta, choices: GeneratedChoice[], usage: Usage, includeUsage: boolean): StreamEvent[] {
  const chunk = (choice: object) => ({
    id: meta.id,
    object: 'text_completion',
    created: meta.created,
    choices: [choice],
    model: meta.model,
    system_fingerprint: meta.system_fingerprint,
    ...(includeUsage ? { usage: null } : {}),
  });
  const events: StreamEvent[] = interleaveWords(choices, (c, word) =>
    sse(chunk({ text: ` ${word}`, index: c.index, logprobs: null, finish_reason: null }), 1),
  );
  for (const c of choices) {
    events.push(sse(chunk({ text: '', index: c.index, logprobs: null, finish_reason: c.finishReason })));
  }
  if (includeUsage) {
    events.push(
      sse({
        id: meta.id,
        object: 'text_completion',
        created: meta.created,
        choices: [],
        model: meta.model,
        system_fingerprint: meta.system_fingerprint,
        usage,
      }),
    );
  }
  events.push(SSE_DONE);
  return events;
}
