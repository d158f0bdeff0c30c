// Converts between streamed and non-streamed chat / legacy completions, for the response cache.
//
// The cache stores one form, the non-streamed JSON body. A streamed miss is captured as it flows (the
// SSE `data:` payloads, [DONE] excluded) and assembled here into the body OpenAI would have returned
// without `stream`; a later streamed hit is served a stream synthesized here from the stored body.
//
// Both directions are deliberately strict: anything this module does not understand completely
// (logprobs, audio, legacy function_call, provider-specific fields, error events...) makes
// assembleStream return undefined and canSynthesize return false, so the caller treats it as "not
// cacheable" / "cache miss" instead of storing or serving something subtly different.
//
// Decisions:
// - `message.annotations` is always present in an assembled chat body (`[]` when the stream carried
//   none), because OpenAI's (and the fake's) non-streamed bodies always have it. The synthesizer emits
//   an `annotations` delta only when the array is non-empty. So the round trip is exact for such
//   bodies; a body without the field comes back with `annotations: []`.
// - `content` is the concatenation of the content deltas; it is null when no content delta was a
//   string, or when it is empty and the choice has tool calls or a refusal (OpenAI's non-streamed
//   shape). `refusal` is the concatenation, or null when empty.
// - `system_fingerprint` and `service_tier` are copied when the chunks (or body) carry them, null included.
// - The usage chunk is required: the gateway always asks upstream for it, and a cached body must bill.
// - The fields `obfuscation` (OpenAI's stream padding) and `usage: null` on chunks are ignored.

export type ConvertibleEndpoint = 'chat.completions' | 'completions';

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const isIndex = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0;
const isAbsent = (v: unknown): v is null | undefined => v === null || v === undefined;
const onlyKeys = (o: Json, allowed: ReadonlySet<string>) => Object.keys(o).every((k) => allowed.has(k));

/** Thrown inside the assembler when the stream cannot be assembled faithfully; never escapes. */
class NotAssemblable extends Error {}
function check(condition: unknown): asserts condition {
  if (!condition) throw new NotAssemblable();
}

// ---------------------------------------------------------------------------------------------------
// Stream -> body

const CHUNK_KEYS = new Set(['id', 'object', 'created', 'model', 'system_fingerprint', 'service_tier', 'choices', 'usage', 'obfuscation']);
const CHAT_CHOICE_KEYS = new Set(['index', 'delta', 'logprobs', 'finish_reason']);
const DELTA_KEYS = new Set(['role', 'content', 'refusal', 'tool_calls', 'annotations']);
const TOOL_CALL_DELTA_KEYS = new Set(['index', 'id', 'type', 'function']);
const FUNCTION_DELTA_KEYS = new Set(['name', 'arguments']);
const TEXT_CHOICE_KEYS = new Set(['text', 'index', 'logprobs', 'finish_reason']);

/** What every chunk of one response shares, and the usage chunk's usage. */
interface Header {
  id: string;
  created: number;
  model: string;
  systemFingerprint?: { value: unknown };
  serviceTier?: { value: unknown };
  usage?: Json;
}

/** Parses and checks the chunks' envelope; returns the header and every choice object in stream order. */
function readChunks(data: readonly string[], object: string): { header: Header; choices: Json[] } {
  const payloads = data.length > 0 && data[data.length - 1] === '[DONE]' ? data.slice(0, -1) : data;
  check(payloads.length > 0);
  let header: Header | undefined;
  const choices: Json[] = [];
  for (const payload of payloads) {
    let chunk: unknown;
    try {
      chunk = JSON.parse(payload);
    } catch {
      throw new NotAssemblable();
    }
    check(isObject(chunk) && onlyKeys(chunk, CHUNK_KEYS)); // an `error` event fails here
    check(chunk.object === object && typeof chunk.id === 'string' && typeof chunk.created === 'number' && typeof chunk.model === 'string');
    check(Array.isArray(chunk.choices));
    if (!header) header = { id: chunk.id, created: chunk.created, model: chunk.model };
    else check(chunk.id === header.id);
    if (chunk.system_fingerprint !== undefined && (header.systemFingerprint === undefined || header.systemFingerprint.value === null)) {
      header.systemFingerprint = { value: chunk.system_fingerprint };
    }
    if (chunk.service_tier !== undefined && (header.serviceTier === undefined || header.serviceTier.value === null)) {
      header.serviceTier = { value: chunk.service_tier };
    }
    if (isObject(chunk.usage)) header.usage = chunk.usage;
    else check(isAbsent(chunk.usage));
    for (const choice of chunk.choices as unknown[]) {
      check(isObject(choice) && isIndex(choice.index));
      check(isAbsent(choice.logprobs));
      check(isAbsent(choice.finish_reason) || typeof choice.finish_reason === 'string');
      choices.push(choice);
    }
  }
  check(header?.usage);
  return { header: header!, choices };
}

/** Per-index accumulators, checked to be exactly indices 0..n-1, each finished. */
function byIndex<T extends { finishReason: string | null }>(map: Map<number, T>): T[] {
  check(map.size > 0);
  const out: T[] = [];
  for (let i = 0; i < map.size; i++) {
    const acc = map.get(i);
    check(acc && acc.finishReason !== null);
    out.push(acc!);
  }
  return out;
}

/** The top-level fields after `choices`, in OpenAI's order. */
function tail(header: Header): Json {
  return {
    usage: header.usage,
    ...(header.serviceTier ? { service_tier: header.serviceTier.value } : {}),
    ...(header.systemFingerprint ? { system_fingerprint: header.systemFingerprint.value } : {}),
  };
}

interface ToolCallAcc {
  id?: string;
  type?: string;
  name?: string;
  arguments: string;
}

interface ChatChoiceAcc {
  role?: string;
  content: string;
  sawContent: boolean;
  refusal: string;
  toolCalls: Map<number, ToolCallAcc>;
  annotations: unknown[];
  finishReason: string | null;
}

const optionalString = (v: unknown): v is string | null | undefined => isAbsent(v) || typeof v === 'string';

function assembleChat(data: readonly string[]): Json {
  const { header, choices } = readChunks(data, 'chat.completion.chunk');
  const accs = new Map<number, ChatChoiceAcc>();
  for (const choice of choices) {
    check(onlyKeys(choice, CHAT_CHOICE_KEYS));
    const index = choice.index as number;
    let acc = accs.get(index);
    if (!acc) {
      acc = { content: '', sawContent: false, refusal: '', toolCalls: new Map(), annotations: [], finishReason: null };
      accs.set(index, acc);
    }
    if (typeof choice.finish_reason === 'string') acc.finishReason = choice.finish_reason;
    const delta = choice.delta;
    if (delta === undefined) continue;
    check(isObject(delta) && onlyKeys(delta, DELTA_KEYS));
    check(optionalString(delta.role) && optionalString(delta.content) && optionalString(delta.refusal));
    if (typeof delta.role === 'string') acc.role = delta.role;
    if (typeof delta.content === 'string') {
      acc.content += delta.content;
      acc.sawContent = true;
    }
    if (typeof delta.refusal === 'string') acc.refusal += delta.refusal;
    if (!isAbsent(delta.annotations)) {
      check(Array.isArray(delta.annotations));
      acc.annotations.push(...(delta.annotations as unknown[]));
    }
    if (!isAbsent(delta.tool_calls)) {
      check(Array.isArray(delta.tool_calls));
      for (const call of delta.tool_calls as unknown[]) mergeToolCall(acc.toolCalls, call);
    }
  }

  const assembled = byIndex(accs).map((acc, index) => {
    check(acc.role !== undefined);
    const toolCalls = [...acc.toolCalls.keys()].length > 0 ? finishToolCalls(acc.toolCalls) : undefined;
    const refusal = acc.refusal === '' ? null : acc.refusal;
    const content = !acc.sawContent || (acc.content === '' && (toolCalls || refusal !== null)) ? null : acc.content;
    return {
      index,
      message: {
        role: acc.role,
        content,
        ...(toolCalls ? { tool_calls: toolCalls } : {}),
        refusal,
        annotations: acc.annotations,
      },
      logprobs: null,
      finish_reason: acc.finishReason,
    };
  });
  return { id: header.id, object: 'chat.completion', created: header.created, model: header.model, choices: assembled, ...tail(header) };
}

function mergeToolCall(calls: Map<number, ToolCallAcc>, call: unknown): void {
  check(isObject(call) && onlyKeys(call, TOOL_CALL_DELTA_KEYS) && isIndex(call.index));
  check(optionalString(call.id) && optionalString(call.type));
  let acc = calls.get(call.index);
  if (!acc) {
    acc = { arguments: '' };
    calls.set(call.index, acc);
  }
  if (typeof call.id === 'string' && call.id !== '') {
    check(acc.id === undefined || acc.id === call.id);
    acc.id = call.id;
  }
  if (typeof call.type === 'string' && call.type !== '') acc.type = call.type;
  if (isAbsent(call.function)) return;
  const fn = call.function;
  check(isObject(fn) && onlyKeys(fn, FUNCTION_DELTA_KEYS) && optionalString(fn.name) && optionalString(fn.arguments));
  if (typeof fn.name === 'string' && fn.name !== '') acc.name = fn.name;
  if (typeof fn.arguments === 'string') acc.arguments += fn.arguments;
}

function finishToolCalls(calls: Map<number, ToolCallAcc>): Json[] {
  const out: Json[] = [];
  for (let i = 0; i < calls.size; i++) {
    const call = calls.get(i);
    check(call && call.id !== undefined && call.type === 'function' && call.name !== undefined);
    out.push({ id: call!.id, type: 'function', function: { name: call!.name, arguments: call!.arguments } });
  }
  return out;
}

interface TextChoiceAcc {
  text: string;
  finishReason: string | null;
}

function assembleCompletion(data: readonly string[]): Json {
  const { header, choices } = readChunks(data, 'text_completion');
  const accs = new Map<number, TextChoiceAcc>();
  for (const choice of choices) {
    check(onlyKeys(choice, TEXT_CHOICE_KEYS) && optionalString(choice.text));
    const index = choice.index as number;
    let acc = accs.get(index);
    if (!acc) {
      acc = { text: '', finishReason: null };
      accs.set(index, acc);
    }
    if (typeof choice.text === 'string') acc.text += choice.text;
    if (typeof choice.finish_reason === 'string') acc.finishReason = choice.finish_reason;
  }
  const assembled = byIndex(accs).map((acc, index) => ({ text: acc.text, index, logprobs: null, finish_reason: acc.finishReason }));
  // Legacy completions put system_fingerprint before choices and have no service_tier; keep OpenAI's order.
  const { usage, ...rest } = tail(header);
  return { id: header.id, object: 'text_completion', created: header.created, model: header.model, ...rest, choices: assembled, usage };
}

/**
 * The non-streamed body equivalent to a complete stream, or undefined when it cannot be assembled
 * faithfully (a choice without finish_reason, an error event, unparseable data, logprobs present,
 * no usage chunk, unknown shapes...). `data` is the list of SSE data payloads; a trailing [DONE] is tolerated.
 */
export function assembleStream(endpoint: ConvertibleEndpoint, data: readonly string[]): Record<string, unknown> | undefined {
  try {
    return endpoint === 'chat.completions' ? assembleChat(data) : assembleCompletion(data);
  } catch (err) {
    if (err instanceof NotAssemblable) return undefined;
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------------
// Body -> stream

const CHAT_BODY_KEYS = new Set(['id', 'object', 'created', 'model', 'choices', 'usage', 'service_tier', 'system_fingerprint']);
const TEXT_BODY_KEYS = new Set(['id', 'object', 'created', 'model', 'choices', 'usage', 'system_fingerprint']);
const CHAT_BODY_CHOICE_KEYS = new Set(['index', 'message', 'logprobs', 'finish_reason']);
const MESSAGE_KEYS = new Set(['role', 'content', 'refusal', 'tool_calls', 'annotations']);
const TOOL_CALL_KEYS = new Set(['id', 'type', 'function']);

/** Unknown keys are tolerated only with a null value (they would stream as nothing anyway). */
const onlyKeysOrNull = (o: Json, allowed: ReadonlySet<string>) => Object.entries(o).every(([k, v]) => allowed.has(k) || v === null);

/** Why `body` cannot be turned into an equivalent stream, or undefined when it can. */
function synthesisProblem(endpoint: ConvertibleEndpoint, body: unknown): string | undefined {
  if (!isObject(body)) return 'the body is not an object';
  const chat = endpoint === 'chat.completions';
  if (body.object !== (chat ? 'chat.completion' : 'text_completion')) return `unexpected object ${JSON.stringify(body.object)}`;
  if (!onlyKeysOrNull(body, chat ? CHAT_BODY_KEYS : TEXT_BODY_KEYS)) return 'unknown top-level fields';
  if (typeof body.id !== 'string' || typeof body.created !== 'number' || typeof body.model !== 'string') return 'missing id, created or model';
  if (!isObject(body.usage)) return 'no usage';
  if (!Array.isArray(body.choices) || body.choices.length === 0) return 'no choices';
  const seen = new Set<number>();
  for (const choice of body.choices as unknown[]) {
    if (!isObject(choice) || !isIndex(choice.index) || seen.has(choice.index) || choice.index >= body.choices.length) {
      return 'choice indices that are not 0..n-1';
    }
    seen.add(choice.index);
    if (typeof choice.finish_reason !== 'string') return 'a choice without finish_reason';
    if (!isAbsent(choice.logprobs)) return 'logprobs';
    if (chat) {
      if (!onlyKeysOrNull(choice, CHAT_BODY_CHOICE_KEYS)) return 'unknown choice fields';
      const problem = messageProblem(choice.message);
      if (problem) return problem;
    } else {
      if (!onlyKeysOrNull(choice, TEXT_CHOICE_KEYS)) return 'unknown choice fields';
      if (typeof choice.text !== 'string') return 'a choice without text';
    }
  }
  return undefined;
}

function messageProblem(message: unknown): string | undefined {
  if (!isObject(message) || typeof message.role !== 'string') return 'a choice without a message role';
  if (!onlyKeysOrNull(message, MESSAGE_KEYS)) return 'unknown message fields';
  if (!optionalString(message.content) || !optionalString(message.refusal)) return 'non-text content or refusal';
  if (!isAbsent(message.annotations) && !Array.isArray(message.annotations)) return 'annotations that are not an array';
  if (isAbsent(message.tool_calls)) return undefined;
  if (!Array.isArray(message.tool_calls)) return 'tool_calls that are not an array';
  for (const call of message.tool_calls as unknown[]) {
    if (!isObject(call) || !onlyKeys(call, TOOL_CALL_KEYS) || typeof call.id !== 'string' || call.id === '' || call.type !== 'function') {
      return 'a tool call that is not a function call';
    }
    const fn = call.function;
    if (!isObject(fn) || !onlyKeys(fn, FUNCTION_DELTA_KEYS) || typeof fn.name !== 'string' || fn.name === '' || typeof fn.arguments !== 'string') {
      return 'a malformed function tool call';
    }
  }
  return undefined;
}

/** Whether synthesizeStream can stream `body` faithfully; when false, treat a streamed request as a cache miss. */
export function canSynthesize(endpoint: ConvertibleEndpoint, body: Record<string, unknown>): boolean {
  return synthesisProblem(endpoint, body) === undefined;
}

const WORDS_PER_PIECE = 4;
const ARGUMENT_PIECE_LENGTH = 16;

/**
 * `text` cut into pieces of about four words that concatenate back to exactly `text`: each word takes
 * the whitespace before it, trailing whitespace is a piece of its own.
 */
export function textPieces(text: string): string[] {
  const words = text.match(/\s*\S+|\s+$/gu) ?? [];
  const pieces: string[] = [];
  for (let i = 0; i < words.length; i += WORDS_PER_PIECE) pieces.push(words.slice(i, i + WORDS_PER_PIECE).join(''));
  return pieces;
}

/** Tool-call arguments (compact JSON, often without spaces) in fixed-size pieces, never splitting a code point. */
function argumentPieces(args: string): string[] {
  const chars = Array.from(args);
  const pieces: string[] = [];
  for (let i = 0; i < chars.length; i += ARGUMENT_PIECE_LENGTH) pieces.push(chars.slice(i, i + ARGUMENT_PIECE_LENGTH).join(''));
  return pieces;
}

/** Item w of every list before item w+1 of any list: how OpenAI interleaves n>1 streams. */
function interleave<T>(lists: T[][]): T[] {
  const out: T[] = [];
  const longest = Math.max(0, ...lists.map((l) => l.length));
  for (let w = 0; w < longest; w++) for (const list of lists) if (w < list.length) out.push(list[w]!);
  return out;
}

function chatDeltas(message: Json): Json[] {
  const content = message.content as string | null | undefined;
  const refusal = message.refusal as string | null | undefined;
  const toolCalls = (message.tool_calls ?? []) as { id: string; function: { name: string; arguments: string } }[];
  const annotations = (message.annotations ?? []) as unknown[];
  const deltas: Json[] = [{ role: message.role, content: typeof content === 'string' ? '' : null, refusal: null }];
  for (const piece of textPieces(content ?? '')) deltas.push({ content: piece });
  toolCalls.forEach((call, index) => {
    deltas.push({ tool_calls: [{ index, id: call.id, type: 'function', function: { name: call.function.name, arguments: '' } }] });
    for (const piece of argumentPieces(call.function.arguments)) deltas.push({ tool_calls: [{ index, function: { arguments: piece } }] });
  });
  for (const piece of textPieces(refusal ?? '')) deltas.push({ refusal: piece });
  if (annotations.length > 0) deltas.push({ annotations });
  return deltas;
}

/**
 * The SSE data payloads (JSON strings, without `data: ` framing and without the final [DONE]) of a
 * stream equivalent to a stored non-streamed body. With includeUsage, a last chunk with `choices: []`
 * and the usage, and `usage: null` on every other chunk (as OpenAI does); without it, no usage anywhere.
 * Throws when the body cannot be streamed faithfully: check canSynthesize first.
 */
export function synthesizeStream(endpoint: ConvertibleEndpoint, body: Record<string, unknown>, options: { includeUsage: boolean }): string[] {
  const problem = synthesisProblem(endpoint, body);
  if (problem) throw new Error(`Cannot synthesize a ${endpoint} stream from this body: ${problem}.`);
  const chat = endpoint === 'chat.completions';
  const choices = [...(body.choices as Json[])].sort((a, b) => (a.index as number) - (b.index as number));
  const has = (key: string) => body[key] !== undefined;

  const chunk = (choiceList: Json[], usage: unknown): string =>
    JSON.stringify(
      chat
        ? {
            id: body.id,
            object: 'chat.completion.chunk',
            created: body.created,
            model: body.model,
            ...(has('service_tier') ? { service_tier: body.service_tier } : {}),
            ...(has('system_fingerprint') ? { system_fingerprint: body.system_fingerprint } : {}),
            choices: choiceList,
            ...(options.includeUsage ? { usage } : {}),
          }
        : {
            id: body.id,
            object: 'text_completion',
            created: body.created,
            model: body.model,
            ...(has('system_fingerprint') ? { system_fingerprint: body.system_fingerprint } : {}),
            choices: choiceList,
            ...(options.includeUsage ? { usage } : {}),
          },
    );

  const out: string[] = [];
  if (chat) {
    const deltas = choices.map((c) => chatDeltas(c.message as Json).map((delta) => ({ index: c.index, delta, logprobs: null, finish_reason: null })));
    for (const choice of interleave(deltas)) out.push(chunk([choice], null));
    for (const c of choices) out.push(chunk([{ index: c.index, delta: {}, logprobs: null, finish_reason: c.finish_reason }], null));
  } else {
    const texts = choices.map((c) => textPieces(c.text as string).map((text) => ({ text, index: c.index, logprobs: null, finish_reason: null })));
    for (const choice of interleave(texts)) out.push(chunk([choice], null));
    for (const c of choices) out.push(chunk([{ text: '', index: c.index, logprobs: null, finish_reason: c.finish_reason }], null));
  }
  if (options.includeUsage) out.push(chunk([], body.usage));
  return out;
}
