// Converts between streamed and non-streamed Responses API answers, for the response cache.
//
// Assembling is easy: the `response` inside a stream's `response.completed` event IS the body OpenAI
// returns without `stream`. Synthesizing goes the other way: from a stored `response` object, the
// typed event stream OpenAI would have sent (response.created, response.in_progress, per output item
// output_item.added / content_part.added / *.delta / *.done / output_item.done, response.completed),
// with sequence_number counting up from 0, as the openai SDK's ResponseStream accumulates it.
//
// Strict like stream-convert.ts: only a `completed` response (or one its max_output_tokens cut,
// which ends with response.incomplete instead) whose output items are all messages
// (output_text and refusal parts), function calls, or reasoning items without visible text can be
// streamed; anything else makes canSynthesizeResponse false and a streamed request a cache miss.
import { textPieces } from './stream-convert.js';

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Whether a response is an answer the cache keeps: completed, or stopped by its own
 * max_output_tokens (the answer that request asked for, as a chat answer cut by max_tokens is).
 * Not one the content filter stopped, nor a failed, cancelled or unfinished one.
 */
export function isKeptAnswer(response: Json): boolean {
  if (response.status === 'completed') return true;
  return response.status === 'incomplete' && isObject(response.incomplete_details) && response.incomplete_details.reason === 'max_output_tokens';
}

/** The terminal event of a response's stream: response.completed, or response.incomplete. */
const terminalEventOf = (response: Json) => (response.status === 'completed' ? 'response.completed' : 'response.incomplete');

/** The non-streamed body of a stream that ended with an answer the cache keeps (isKeptAnswer), or undefined. */
export function assembleResponse(data: readonly string[]): Json | undefined {
  const last = data.at(-1);
  if (last === undefined) return undefined;
  let event: unknown;
  try {
    event = JSON.parse(last);
  } catch {
    return undefined;
  }
  if (!isObject(event) || (event.type !== 'response.completed' && event.type !== 'response.incomplete')) return undefined;
  const response = event.response;
  if (!isObject(response) || response.object !== 'response' || !isKeptAnswer(response) || event.type !== terminalEventOf(response)) return undefined;
  if (typeof response.id !== 'string' || !isObject(response.usage)) return undefined;
  return response;
}

/** Why `body` cannot be streamed faithfully, or undefined when it can. */
function synthesisProblem(body: unknown): string | undefined {
  if (!isObject(body) || body.object !== 'response') return 'not a response object';
  if (typeof body.id !== 'string' || !isKeptAnswer(body)) return 'neither completed nor cut by its max_output_tokens';
  if (!isObject(body.usage)) return 'no usage';
  if (!Array.isArray(body.output)) return 'no output';
  for (const item of body.output as unknown[]) {
    if (!isObject(item) || typeof item.id !== 'string') return 'an output item without id';
    if (item.type === 'message') {
      if (!Array.isArray(item.content)) return 'a message without content';
      for (const part of item.content as unknown[]) {
        if (!isObject(part)) return 'a malformed content part';
        if (part.type === 'output_text' && typeof part.text === 'string') {
          // A stream carries these in events of their own (each delta's logprobs, one
          // output_text.annotation.added per citation) that a stored answer cannot place: such a
          // request goes upstream, as a chat stream with logprobs does.
          if (Array.isArray(part.logprobs) && part.logprobs.length > 0) return 'output text with logprobs';
          if (Array.isArray(part.annotations) && part.annotations.length > 0) return 'output text with annotations';
          continue;
        }
        if (part.type === 'refusal' && typeof part.refusal === 'string') continue;
        return `a ${String(part.type)} content part`;
      }
    } else if (item.type === 'function_call') {
      if (typeof item.arguments !== 'string') return 'a function call without arguments';
    } else if (item.type === 'reasoning') {
      const summary = item.summary;
      if ((Array.isArray(summary) && summary.length > 0) || (Array.isArray(item.content) && item.content.length > 0)) {
        return 'reasoning with visible text';
      }
    } else return `a ${String(item.type)} output item`;
  }
  return undefined;
}

export function canSynthesizeResponse(body: unknown): boolean {
  return synthesisProblem(body) === undefined;
}

/** One typed SSE event: `event:` is the data's `type`, as OpenAI sends it. */
export interface TypedEvent {
  event: string;
  data: string;
}

/**
 * The events of a stream equivalent to a stored response (no [DONE]: Responses streams end with
 * response.completed, or response.incomplete for one cut by its max_output_tokens). Throws when the
 * body cannot be streamed: check canSynthesizeResponse.
 */
export function synthesizeResponseStream(body: Json): TypedEvent[] {
  const problem = synthesisProblem(body);
  if (problem) throw new Error(`Cannot synthesize a Responses stream from this body: ${problem}.`);
  const out: TypedEvent[] = [];
  const emit = (type: string, fields: Json) => {
    out.push({ event: type, data: JSON.stringify({ type, sequence_number: out.length, ...fields }) });
  };
  // What the response looked like while in progress: nothing generated, no usage yet.
  const inProgress = { ...body, status: 'in_progress', incomplete_details: null, output: [], usage: null, ...('output_text' in body ? { output_text: '' } : {}) };
  emit('response.created', { response: inProgress });
  emit('response.in_progress', { response: inProgress });

  (body.output as Json[]).forEach((item, outputIndex) => {
    const itemId = item.id as string;
    if (item.type === 'message') {
      emit('response.output_item.added', { output_index: outputIndex, item: { ...item, status: 'in_progress', content: [] } });
      (item.content as Json[]).forEach((part, contentIndex) => {
        const at = { item_id: itemId, output_index: outputIndex, content_index: contentIndex };
        if (part.type === 'output_text') {
          emit('response.content_part.added', { ...at, part: { ...part, text: '', annotations: [] } });
          for (const delta of textPieces(part.text as string)) emit('response.output_text.delta', { ...at, delta, logprobs: [] });
          emit('response.output_text.done', { ...at, text: part.text, logprobs: [] });
        } else {
          emit('response.content_part.added', { ...at, part: { ...part, refusal: '' } });
          for (const delta of textPieces(part.refusal as string)) emit('response.refusal.delta', { ...at, delta });
          emit('response.refusal.done', { ...at, refusal: part.refusal });
        }
        emit('response.content_part.done', { ...at, part });
      });
    } else if (item.type === 'function_call') {
      emit('response.output_item.added', { output_index: outputIndex, item: { ...item, status: 'in_progress', arguments: '' } });
      const at = { item_id: itemId, output_index: outputIndex };
      for (const delta of textPieces(item.arguments as string)) emit('response.function_call_arguments.delta', { ...at, delta });
      emit('response.function_call_arguments.done', { ...at, arguments: item.arguments });
    } else {
      emit('response.output_item.added', { output_index: outputIndex, item });
    }
    emit('response.output_item.done', { output_index: outputIndex, item });
  });
  emit(terminalEventOf(body), { response: body });
  return out;
}
