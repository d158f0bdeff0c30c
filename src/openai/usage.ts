// Reading token usage out of OpenAI responses, streamed or not.

export interface Usage {
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
  /** Prompt tokens served from OpenAI's prompt cache (billed at the cached-input price). */
  cachedPromptTokens: number;
  reasoningTokens: number;
}

// Upstream's numbers are not ours to trust: a fraction or an absurd value must not break the
// integer accounting downstream, so counts become whole, safe integers.
const count = (v: unknown): number =>
  typeof v === 'number' && Number.isFinite(v) && v >= 0 ? Math.min(Math.floor(v), Number.MAX_SAFE_INTEGER) : 0;

/** What a `usage` object calls its fields: chat-style and Responses-style names differ. */
interface UsageFields {
  prompt: string;
  completion: string;
  promptDetails: string;
  completionDetails: string;
}

/** A reader of `body.usage` under the given field names; undefined when absent or null. */
function usageReader(f: UsageFields): (body: unknown) => Usage | undefined {
  return (body) => {
    if (typeof body !== 'object' || body === null) return undefined;
    const u = (body as { usage?: unknown }).usage;
    if (typeof u !== 'object' || u === null) return undefined;
    const usage = u as Record<string, unknown>;
    const promptTokens = count(usage[f.prompt]);
    const completionTokens = count(usage[f.completion]);
    const promptDetails = (usage[f.promptDetails] ?? {}) as Record<string, unknown>;
    const completionDetails = (usage[f.completionDetails] ?? {}) as Record<string, unknown>;
    return {
      promptTokens,
      completionTokens,
      totalTokens: count(usage.total_tokens) || promptTokens + completionTokens,
      cachedPromptTokens: count(promptDetails?.cached_tokens),
      reasoningTokens: count(completionDetails?.reasoning_tokens),
    };
  };
}

/** `usage` as chat, completions and embeddings report it; undefined when absent or null. */
export const readUsage = usageReader({
  prompt: 'prompt_tokens',
  completion: 'completion_tokens',
  promptDetails: 'prompt_tokens_details',
  completionDetails: 'completion_tokens_details',
});

// Cheap pre-check so only the one chunk that carries usage is JSON-parsed twice (chunks say `"usage":null`).
const USAGE_OBJECT = /"usage"\s*:\s*\{/;

/** Usage carried by one streamed chat/completions chunk, if any. */
export function readChunkUsage(data: string): { usage: Usage; usageOnly: boolean; model?: string } | undefined {
  if (!USAGE_OBJECT.test(data)) return undefined;
  let chunk: unknown;
  try {
    chunk = JSON.parse(data);
  } catch {
    return undefined;
  }
  const usage = readUsage(chunk);
  if (!usage) return undefined;
  const { choices, model } = chunk as { choices?: unknown; model?: unknown };
  return { usage, usageOnly: Array.isArray(choices) && choices.length === 0, model: typeof model === 'string' ? model : undefined };
}

/**
 * The text a chat/completions stream generated, from its chunks' data: message content, legacy
 * text, refusals and tool-call arguments of every choice. Used to bill a stream cut short.
 */
export function generatedText(chunks: readonly string[]): string {
  let text = '';
  for (const data of chunks) {
    let chunk: unknown;
    try {
      chunk = JSON.parse(data);
    } catch {
      continue;
    }
    text += answerText(chunk);
  }
  return text;
}

/**
 * The text of a chat/completions answer (a non-streamed body, or one streamed chunk): each choice's
 * legacy text, and its message's (or delta's) content, refusal and tool calls. Used to bill a 200
 * that reports no usage; an answer without choices (embeddings) generated none.
 */
export function answerText(answer: unknown): string {
  const choices = (answer as { choices?: unknown } | null | undefined)?.choices;
  if (!Array.isArray(choices)) return '';
  let text = '';
  for (const choice of choices as Record<string, any>[]) {
    if (typeof choice?.text === 'string') text += choice.text;
    const part = choice?.delta ?? choice?.message;
    if (typeof part !== 'object' || part === null) continue;
    if (typeof part.content === 'string') text += part.content;
    if (typeof part.refusal === 'string') text += part.refusal;
    if (Array.isArray(part.tool_calls)) {
      for (const call of part.tool_calls) {
        if (typeof call?.function?.name === 'string') text += call.function.name;
        if (typeof call?.function?.arguments === 'string') text += call.function.arguments;
      }
    }
  }
  return text;
}

// ---------------------------------------------------------------------------------------------------
// The Responses API: `usage` names its fields differently, and a stream reports it once, inside the
// `response` of its terminal event (response.completed / response.incomplete / response.failed).

/** `usage` of a Responses API `response` object; undefined when absent or null. */
export const readResponsesUsage = usageReader({
  prompt: 'input_tokens',
  completion: 'output_tokens',
  promptDetails: 'input_tokens_details',
  completionDetails: 'output_tokens_details',
});

/** The events that end a Responses stream; each carries the final `response` with its usage. */
export const RESPONSES_TERMINAL_EVENTS = new Set(['response.completed', 'response.incomplete', 'response.failed']);
const TERMINAL_TYPE = /"type"\s*:\s*"response\.(completed|incomplete|failed)"/;

/** What one streamed event tells the relay: usage, and whether it ends the stream normally. */
export interface StreamEventInfo {
  usage?: Usage;
  /** The chunk carries nothing but usage (chat's include_usage chunk): droppable. */
  usageOnly?: boolean;
  model?: string;
  /** The stream's protocol-level end (a Responses terminal event; chat and completions end with [DONE]). */
  final?: boolean;
  /** The end says the work failed (`response.failed`): its error's code, or `response_failed`. */
  failure?: string;
}

/** The code of an error object as OpenAI writes one (`code`, else `type`), or `fallback`. */
export function errorCodeOf(error: unknown, fallback: string): string {
  const { code, type } = (error ?? {}) as { code?: unknown; type?: unknown };
  return typeof code === 'string' ? code : typeof type === 'string' ? type : fallback;
}

/** Usage (and the end) of a Responses stream, from its terminal event; undefined for every other event. */
export function readResponsesEventUsage(data: string, event?: string): StreamEventInfo | undefined {
  if (event !== undefined && event !== '' && !RESPONSES_TERMINAL_EVENTS.has(event)) return undefined;
  if (!TERMINAL_TYPE.test(data)) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(data);
  } catch {
    return undefined;
  }
  const { type, response } = (parsed ?? {}) as { type?: unknown; response?: { model?: unknown; error?: unknown } };
  if (typeof type !== 'string' || !RESPONSES_TERMINAL_EVENTS.has(type)) return undefined;
  const model = typeof response?.model === 'string' ? response.model : undefined;
  const info: StreamEventInfo = { usage: readResponsesUsage(response), model, final: true };
  if (type === 'response.failed') info.failure = errorCodeOf(response?.error, 'response_failed');
  return info;
}

/** The text a Responses stream generated (output text, refusal and function-call argument deltas). */
export function responsesGeneratedText(events: readonly string[]): string {
  let text = '';
  for (const data of events) {
    if (!data.includes('.delta"')) continue;
    let e: unknown;
    try {
      e = JSON.parse(data);
    } catch {
      continue;
    }
    const { type, delta } = e as { type?: unknown; delta?: unknown };
    if (typeof delta !== 'string' || typeof type !== 'string') continue;
    if (type === 'response.output_text.delta' || type === 'response.refusal.delta' || type === 'response.function_call_arguments.delta' || type.startsWith('response.reasoning')) {
      text += delta;
    }
  }
  return text;
}

/**
 * The text of a non-streamed Responses answer (a `response` object), what its stream's deltas carry:
 * output text, refusals, function-call arguments and reasoning text. Used to bill a 200 that reports
 * no usage.
 */
export function responsesAnswerText(response: unknown): string {
  const output = (response as { output?: unknown } | null | undefined)?.output;
  if (!Array.isArray(output)) return '';
  let text = '';
  const parts = (list: unknown) => {
    if (!Array.isArray(list)) return;
    for (const part of list as Record<string, unknown>[]) {
      if (typeof part?.text === 'string') text += part.text;
      if (typeof part?.refusal === 'string') text += part.refusal;
    }
  };
  for (const item of output as Record<string, unknown>[]) {
    if (typeof item !== 'object' || item === null) continue;
    if (typeof item.arguments === 'string') text += item.arguments;
    parts(item.content);
    parts(item.summary);
  }
  return text;
}
