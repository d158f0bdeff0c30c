// The Responses API: POST /v1/responses (a `response` object, or its typed event stream), and for
// stored responses GET / DELETE /v1/responses/{id}, POST .../cancel and GET .../input_items.
import { randomBytes } from 'node:crypto';
import { FakeHttpError, badRequest, errorBody } from './errors.js';
import { capWords, makeUsage, optionalPositiveInt, requireModel, requireObject, type HandlerResult, type JsonObject, type StreamEvent } from './common.js';
import { replyWords } from './text.js';
import { estimatePromptTokens } from '../openai/tokens.js';

/** OpenAI's object ids: a prefix, an underscore and 48 hex digits. */
const objectId = (prefix: string) => `${prefix}_${randomBytes(24).toString('hex')}`;

const notFound = (id: string) => new FakeHttpError(404, errorBody(`Response with id '${id}' not found.`, 'invalid_request_error', null, null));

interface Stored {
  response: JsonObject;
  inputItems: JsonObject[];
  /** A queued background response: what it becomes when it runs (runQueued). */
  finished?: JsonObject;
}

/** `event:` + `data:`, the way the Responses API frames each typed event. */
const typed = (payload: { type: string } & JsonObject, completionTokens = 0): StreamEvent => ({
  data: `event: ${payload.type}\ndata: ${JSON.stringify(payload)}\n\n`,
  completionTokens,
});

function textOf(content: unknown): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  return content.map((p: unknown) => (typeof (p as { text?: unknown } | null)?.text === 'string' ? (p as { text: string }).text : '')).join(' ');
}

/** The input as the stored input items OpenAI lists: every message gets an id and content parts. */
function inputItemsOf(input: unknown): JsonObject[] {
  const items: unknown[] = typeof input === 'string' ? [{ type: 'message', role: 'user', content: input }] : Array.isArray(input) ? input : [];
  return items.map((raw) => {
    const item = (typeof raw === 'object' && raw !== null ? raw : {}) as JsonObject;
    if (item.type === undefined || item.type === 'message') {
      const content = typeof item.content === 'string' ? [{ type: 'input_text', text: item.content }] : item.content;
      return { id: objectId('msg'), type: 'message', role: item.role ?? 'user', content, status: 'completed' };
    }
    return { id: objectId('item'), ...item };
  });
}

export function createFakeResponses() {
  const stored = new Map<string, Stored>();

  function get(id: string): Stored {
    const found = stored.get(id);
    if (!found) throw notFound(id);
    return found;
  }

  function create(rawBody: unknown): HandlerResult {
    const body = requireObject(rawBody);
    const model = requireModel(body);
    const input = body.input;
    if (input !== undefined && input !== null && typeof input !== 'string' && !Array.isArray(input)) {
      throw badRequest("Invalid type for 'input': expected a string or an array.", 'input', 'invalid_type');
    }
    const maxTokens = optionalPositiveInt(body, 'max_output_tokens');
    const store = body.store !== false;
    const background = body.background === true;
    if (background && !store) throw badRequest('Background responses require store=true.', 'store', 'invalid_value');
    const previous = typeof body.previous_response_id === 'string' ? body.previous_response_id : null;
    if (previous !== null && !stored.has(previous)) {
      throw new FakeHttpError(400, errorBody(`Previous response with id '${previous}' not found.`, 'invalid_request_error', 'previous_response_id', 'previous_response_not_found'));
    }

    const items = Array.isArray(input) ? (input as JsonObject[]) : [];
    const lastUser = [...items].reverse().find((i) => i?.role === 'user');
    const seed = typeof input === 'string' ? input : textOf(lastUser?.content);
    const choice = capWords(0, replyWords('This is a fake response to:', seed, 0), maxTokens);
    const text = choice.words.join(' ');
    const usage = makeUsage(estimatePromptTokens('responses', body, model), choice.words.length);
    const incomplete = choice.finishReason === 'length';
    const messageId = objectId('msg');
    const message = {
      id: messageId,
      type: 'message',
      status: incomplete ? 'incomplete' : 'completed',
      content: [{ type: 'output_text', annotations: [], logprobs: [], text }],
      role: 'assistant',
    };
    const response: JsonObject = {
      id: objectId('resp'),
      object: 'response',
      created_at: Math.floor(Date.now() / 1000),
      status: incomplete ? 'incomplete' : 'completed',
      background,
      error: null,
      incomplete_details: incomplete ? { reason: 'max_output_tokens' } : null,
      instructions: typeof body.instructions === 'string' ? body.instructions : null,
      max_output_tokens: maxTokens ?? null,
      model,
      output: [message],
      parallel_tool_calls: true,
      previous_response_id: previous,
      reasoning: { effort: null, summary: null },
      store,
      temperature: typeof body.temperature === 'number' ? body.temperature : 1,
      text: { format: { type: 'text' }, verbosity: 'medium' },
      tool_choice: 'auto',
      tools: [],
      top_p: typeof body.top_p === 'number' ? body.top_p : 1,
      truncation: 'disabled',
      usage: {
        input_tokens: usage.prompt_tokens,
        input_tokens_details: { cached_tokens: 0 },
        output_tokens: usage.completion_tokens,
        output_tokens_details: { reasoning_tokens: 0 },
        total_tokens: usage.total_tokens,
      },
      // Echoed, as OpenAI's are (so a cache must keep them apart).
      user: typeof body.user === 'string' ? body.user : null,
      metadata: {},
    };

    if (background) {
      // Queued: it runs "later" (never, in the fake), so it can be retrieved and cancelled. Upstream
      // bills a background response when it runs; the answer to the create call carries no usage.
      const queued: JsonObject = { ...response, status: 'queued', output: [], usage: null, incomplete_details: null };
      stored.set(queued.id as string, { response: queued, inputItems: inputItemsOf(input), finished: response });
      return { type: 'json', status: 200, body: queued };
    }
    if (store) stored.set(response.id as string, { response, inputItems: inputItemsOf(input) });
    if (body.stream !== true) return { type: 'json', status: 200, body: response, usage };
    return { type: 'stream', events: events(response, message, choice.words), usage };
  }

  /** The typed events of one generation, one output_text.delta per word (one token each). */
  function events(response: JsonObject, message: JsonObject, words: string[]): StreamEvent[] {
    let seq = 0;
    const ev = (payload: { type: string } & JsonObject, tokens = 0) => typed({ ...payload, sequence_number: seq++ }, tokens);
    const inProgress = { ...response, status: 'in_progress', output: [], usage: null, incomplete_details: null };
    const at = { item_id: message.id, output_index: 0, content_index: 0 };
    const text = words.join(' ');
    const part = { type: 'output_text', annotations: [], logprobs: [], text };
    const out = [
      ev({ type: 'response.created', response: inProgress }),
      ev({ type: 'response.in_progress', response: inProgress }),
      ev({ type: 'response.output_item.added', output_index: 0, item: { ...message, status: 'in_progress', content: [] } }),
      ev({ type: 'response.content_part.added', ...at, part: { ...part, text: '' } }),
      ...words.map((w, i) => ev({ type: 'response.output_text.delta', ...at, delta: i === 0 ? w : ` ${w}`, logprobs: [] }, 1)),
      ev({ type: 'response.output_text.done', ...at, text, logprobs: [] }),
      ev({ type: 'response.content_part.done', ...at, part }),
      ev({ type: 'response.output_item.done', output_index: 0, item: message }),
    ];
    out.push(ev({ type: response.status === 'incomplete' ? 'response.incomplete' : 'response.completed', response }));
    return out;
  }

  /** GET / DELETE /v1/responses/{id}, POST .../cancel, GET .../input_items; undefined for other paths. */
  function route(method: string, path: string, url: string): HandlerResult | undefined {
    const match = /^\/v1\/responses\/([^/]+)(\/cancel|\/input_items)?$/.exec(path);
    if (!match) return undefined;
    const id = decodeURIComponent(match[1]!);
    const action = match[2] ?? '';
    if (action === '' && method === 'GET') return { type: 'json', status: 200, body: get(id).response };
    if (action === '' && method === 'DELETE') {
      get(id);
      stored.delete(id);
      return { type: 'json', status: 200, body: { id, object: 'response', deleted: true } };
    }
    if (action === '/cancel' && method === 'POST') {
      const found = get(id);
      if (found.response.background !== true) throw badRequest('Only responses created with background=true can be cancelled.');
      found.response = { ...found.response, status: 'cancelled' };
      return { type: 'json', status: 200, body: found.response };
    }
    if (action === '/input_items' && method === 'GET') {
      const params = new URL(url, 'http://fake').searchParams;
      const ordered = params.get('order') === 'asc' ? [...get(id).inputItems] : [...get(id).inputItems].reverse();
      // A page starts after the item named by `after` (as OpenAI pages): the SDKs' auto-paging follows last_id.
      const after = params.get('after');
      const from = after === null ? 0 : ordered.findIndex((item) => item.id === after) + 1;
      const items = from > 0 || after === null ? ordered.slice(from) : [];
      const limit = Number(params.get('limit') ?? 20);
      const data = items.slice(0, limit);
      return {
        type: 'json',
        status: 200,
        body: { object: 'list', data, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null, has_more: items.length > data.length },
      };
    }
    return undefined;
  }

  /** Runs every queued background response to completion (the fake never does on its own); how many ran. */
  function runQueued(): number {
    let ran = 0;
    for (const entry of stored.values()) {
      if (entry.finished && entry.response.status === 'queued') {
        entry.response = entry.finished;
        ran++;
      }
    }
    return ran;
  }

  return { create, route, runQueued };
}
