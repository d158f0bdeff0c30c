// POST /v1/chat/completions: a `chat.completion` body or a `chat.completion.chunk` SSE stream.
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

export function chatCompletions(rawBody: unknown): HandlerResult {
  const body = requireObject(rawBody);
  const model = requireModel(body);
  const messages = requireMessages(body);
  const n = optionalPositiveInt(body, 'n', 128) ?? 1;
  // max_completion_tokens is the current name; max_tokens the deprecated one still widely sent.
  const maxTokens = optionalPositiveInt(body, 'max_completion_tokens') ?? optionalPositiveInt(body, 'max_tokens');
  const { stream, includeUsage } = streamFlags(body);

  const seed = messageText(lastUserMessage(messages));
  const choices = Array.from({ length: n }, (_, i) =>
    capWords(i, replyWords('This is a fake reply to:', seed, i), maxTokens),
  );
  // Prompt tokens as OpenAI counts them (real tokenizer, documented per-message framing).
  const usage = makeUsage(estimatePromptTokens('chat.completions', body, model), completionTokens(choices));
  const meta = responseMeta('chatcmpl', model);

  if (stream) return { type: 'stream', events: chatChunks(meta, choices, usage, includeUsage), usage };
  return { type: 'json', status: 200, body: chatCompletion(meta, choices, usage), usage };
}

function requireMessages(body: JsonObject): JsonObject[] {
  const messages = body.messages;
  if (messages === undefined || messages === null) throw missingParam('messages');
  if (!Array.isArray(messages)) {
    throw badRequest(`Invalid type for 'messages': expected an array, but got ${typeof messages} instead.`, 'messages', 'invalid_type');
  }
  if (messages.length === 0) throw badRequest("Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.", 'messages', 'empty_array');
  messages.forEach((m: unknown, i) => {
    if (typeof m !== 'object' || m === null || typeof (m as JsonObject).role !== 'string') {
      throw badRequest(`Missing required parameter: 'messages[${i}].role'.`, `messages[${i}].role`, 'missing_required_parameter');
    }
  });
  return messages as JsonObject[];
}

function lastUserMessage(messages: JsonObject[]): JsonObject {
  for (let i = messages.length - 1; i >= 0; i--) {
    const m = messages[i];
    if (m?.role === 'user') return m;
  }
  return messages[messages.length - 1] ?? {};
}

/** The text of a message: a string, or the text parts of a content array. */
function messageText(message: JsonObject): string {
  const content = message.content;
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  return content
    .map((part: unknown) => {
      const text = (part as { text?: unknown } | null)?.text;
      return typeof text === 'string' ? text : '';
    })
    .join(' ');
}

/** Chat usage carries the detail objects current models return; the gateway may read cached_tokens. */
function chatUsage(usage: Usage) {
  return {
    ...usage,
    prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
    completion_tokens_details: {
      reasoning_tokens: 0,
      audio_tokens: 0,
      accepted_prediction_tokens: 0,
      rejected_prediction_tokens: 0,
    },
  };
}

function chatCompletion(meta: ResponseMeta, choices: GeneratedChoice[], usage: Usage) {
  return {
    id: meta.id,
    object: 'chat.completion',
    created: meta.created,
    model: meta.model,
    choices: choices.map((c) => ({
      index: c.index,
      message: { role: 'assistant', content: c.words.join(' '), refusal: null, annotations: [] },
      logprobs: null,
      finish_reason: c.finishReason,
    })),
    usage: chatUsage(usage),
    service_tier: 'default',
    system_fingerprint: meta.system_fingerprint,
  };
}

/**
 * Role chunk, one chunk per word (choices interleaved, as OpenAI does for n>1), finish chunks,
 * then the usage chunk only when asked for. With include_usage every other chunk has usage: null.
 */
function chatChunks(meta: ResponseMeta, choices: GeneratedChoice[], usage: Usage, includeUsage: boolean): StreamEvent[] {
  const chunk = (choice: object) => ({
    id: meta.id,
    object: 'chat.completion.chunk',
    created: meta.created,
    model: meta.model,
    service_tier: 'default',
    system_fingerprint: meta.system_fingerprint,
    choices: [choice],
    ...(includeUsage ? { usage: null } : {}),
  });
  const events: StreamEvent[] = choices.map((c) =>
    sse(chunk({ index: c.index, delta: { role: 'assistant', content: '', refusal: null }, logprobs: null, finish_reason: null })),
  );
  events.push(
    ...interleaveWords(choices, (c, word, w) =>
      sse(chunk({ index: c.index, delta: { content: w === 0 ? word : ` ${word}` }, logprobs: null, finish_reason: null }), 1),
    ),
  );
  for (const c of choices) {
    events.push(sse(chunk({ index: c.index, delta: {}, logprobs: null, finish_reason: c.finishReason })));
  }
  if (includeUsage) {
    events.push(
      sse({
        id: meta.id,
        object: 'chat.completion.chunk',
        created: meta.created,
        model: meta.model,
        service_tier: 'default',
        system_fingerprint: meta.system_fingerprint,
        choices: [],
        usage: chatUsage(usage),
      }),
    );
  }
  events.push(SSE_DONE);
  return events;
}
