// A fake OpenAI upstream on plain node:http (cheap enough for benchmarks) for tests and demo mode.
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { chatCompletions } from './chat.js';
import type { HandlerResult, StreamEvent, Usage } from './common.js';
import { completions } from './completions.js';
import { embeddings } from './embeddings.js';
import { moderations } from './moderations.js';
import { createFakeResponses } from './responses.js';
import { FakeHttpError, defaultErrorFor, invalidUrl, malformedJson, modelNotFound, unauthorized } from './errors.js';
import { MODELS, findModel } from './models.js';
import { openAIHeaders, pause, readBody, sendBody, writeChunk } from './respond.js';
import { preloadEncodings } from '../openai/tokens.js';

export interface FakeOpenAIOptions {
  /** Default 0: a free port. */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Delay before the response headers, for every response. */
  latencyMs?: number;
  /** Delay between SSE events. */
  streamChunkDelayMs?: number;
  /** Delay between a stream's headers and its first event (a model's time to first token). */
  firstEventDelayMs?: number;
  /** Share of POST requests (0..1) answered with a 500, at random: an unreliable upstream for soak tests. */
  failRate?: number;
  /** When set, requests without `Authorization: Bearer <apiKey>` get OpenAI's 401. */
  apiKey?: string;
  logger?: { info(obj: object, msg?: string): void };
}

export interface RecordedRequest {
  method: string;
  /** Path without the query string, e.g. /v1/chat/completions. */
  path: string;
  /** The raw request target, query string included. */
  url: string;
  headers: IncomingHttpHeaders;
  /** Parsed JSON, or undefined when the body was empty or not JSON. */
  body: unknown;
  rawBody: string;
}

export interface UsageTotals {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  requests: number;
}

export interface FakeOpenAI {
  /** Base URL including /v1, e.g. http://127.0.0.1:PORT/v1. */
  url: string;
  /** Every request received, in order (including failed, hung and dropped ones). */
  requests: RecordedRequest[];
  usageTotals(): UsageTotals;
  failNext(n: number, status: number, body?: unknown, headers?: Record<string, string>): void;
  setLatency(ms: number): void;
  /** Changes the share of POST requests answered with a random 500. */
  setFailRate(rate: number): void;
  setStreamChunkDelay(ms: number): void;
  setFirstEventDelay(ms: number): void;
  hangNext(n: number): void;
  dropNext(n: number): void;
  /** Runs the queued background responses to completion (they stay queued otherwise); how many ran. */
  runBackground(): number;
  reset(): void;
  activeStreams(): number;
  abortedStreams(): number;
  close(): Promise<void>;
}

/**
 * failNext/hangNext/dropNext queue one entry per request, in call order, so
 * `failNext(1, 500); dropNext(1)` means: the next request fails, the one after is dropped.
 */
type Mode =
  | { kind: 'fail'; status: number; body: unknown; headers: Record<string, string> }
  | { kind: 'hang' }
  | { kind: 'drop' };

const POST_ROUTES: Record<string, (body: unknown) => HandlerResult> = {
  '/v1/chat/completions': chatCompletions,
  '/v1/completions': completions,
  '/v1/embeddings': embeddings,
  '/v1/moderations': moderations,
};

type FakeResponses = ReturnType<typeof createFakeResponses>;

function route(method: string, path: string, url: string, body: unknown, parseFailed: boolean, responses: FakeResponses): HandlerResult {
  if (method === 'GET' && path === '/v1/models') {
    return { type: 'json', status: 200, body: { object: 'list', data: MODELS } };
  }
  if (method === 'GET' && path.startsWith('/v1/models/')) {
    const id = safeDecode(path.slice('/v1/models/'.length));
    const model = findModel(id);
    if (!model) throw modelNotFound(id);
    return { type: 'json', status: 200, body: model };
  }
  if (method === 'POST' && path === '/v1/responses') {
    if (parseFailed) throw malformedJson();
    return responses.create(body);
  }
  const stored = responses.route(method, path, url);
  if (stored) return stored;
  const handler = POST_ROUTES[path];
  if (method === 'POST' && handler) {
    if (parseFailed) throw malformedJson();
    return handler(body);
  }
  throw invalidUrl(method, path);
}

function safeDecode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

const RANDOM_FAILURE: Mode = {
  kind: 'fail',
  status: 500,
  body: { error: { message: 'The server had an error while processing your request.', type: 'server_error', param: null, code: null } },
  headers: {},
};

const emptyTotals = (): UsageTotals => ({ prompt_tokens: 0, completion_tokens: 0, total_tokens: 0, requests: 0 });

export async function startFakeOpenAI(opts: FakeOpenAIOptions = {}): Promise<FakeOpenAI> {
  // Load the tokenizer now (~0.1 s, once per process) rather than inside the first request, where
  // it would look like upstream latency to timeout tests.
  preloadEncodings();
  const initialLatency = opts.latencyMs ?? 0;
  const initialChunkDelay = opts.streamChunkDelayMs ?? 0;
  let latencyMs = initialLatency;
  let failRate = opts.failRate ?? 0;
  let chunkDelayMs = initialChunkDelay;
  const initialFirstEventDelay = opts.firstEventDelayMs ?? 0;
  let firstEventDelayMs = initialFirstEventDelay;
  const requests: RecordedRequest[] = [];
  const modes: Mode[] = [];
  /** Stored Responses API objects, for the life of this fake. */
  const responses = createFakeResponses();
  let totals = emptyTotals();
  let active = 0;
  let aborted = 0;

  /**
   * usageTotals() is what this upstream would bill, i.e. the usage it computed and sent:
   * - JSON responses: their `usage`, when they have one (errors have none and count nothing);
   * - completed streams: the full usage, whether or not include_usage put it on the wire;
   * - aborted streams: the prompt tokens plus only the completion tokens actually written
   *   before the client went away (a real upstream stops generating, and billing, there).
   * Each of these adds 1 to `requests`.
   */
  const bill = (prompt: number, completion: number) => {
    totals.prompt_tokens += prompt;
    totals.completion_tokens += completion;
    totals.total_tokens += prompt + completion;
    totals.requests += 1;
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const startedAt = performance.now();
    // One signal per request, fired when the connection ends for any reason: client abort,
    // dropNext, or close(). Every wait below listens to it, so nothing writes to a dead socket.
    const gone = new AbortController();
    res.on('close', () => gone.abort());
    const method = req.method ?? 'GET';
    const url = req.url ?? '/';
    const path = url.split('?')[0] ?? url;
    if (opts.logger) {
      const logger = opts.logger;
      res.on('close', () =>
        logger.info(
          { method, path, status: res.statusCode, completed: res.writableFinished, ms: Math.round(performance.now() - startedAt) },
          'fake-openai request',
        ),
      );
    }

    const rawBody = await readBody(req);
    if (rawBody === null) return;
    let body: unknown;
    let parseFailed = false;
    if (rawBody.length > 0) {
      try {
        body = JSON.parse(rawBody);
      } catch {
        parseFailed = true;
      }
    }
    requests.push({ method, path, url, headers: req.headers, body, rawBody });

    const mode = modes.shift() ?? (method === 'POST' && Math.random() < failRate ? RANDOM_FAILURE : undefined);
    if (mode?.kind === 'hang') return; // the socket stays open until the client gives up or close()
    if (mode?.kind === 'drop') {
      req.socket.destroy();
      return;
    }

    let result: HandlerResult;
    let extraHeaders: Record<string, string> = {};
    if (mode?.kind === 'fail') {
      result = { type: 'json', status: mode.status, body: mode.body };
      extraHeaders = mode.headers;
    } else {
      try {
        if (opts.apiKey !== undefined && req.headers.authorization !== `Bearer ${opts.apiKey}`) {
          throw unauthorized(req.headers.authorization);
        }
        result = route(method, path, url, body, parseFailed, responses);
      } catch (err) {
        if (!(err instanceof FakeHttpError)) throw err;
        result = { type: 'json', status: err.status, body: err.body };
      }
    }

    await pause(latencyMs, gone.signal);
    if (gone.signal.aborted) return;

    if (result.type === 'json') {
      sendBody(res, result.status, result.body, { ...openAIHeaders(startedAt), ...extraHeaders });
      if (result.usage) bill(result.usage.prompt_tokens, result.usage.completion_tokens);
      return;
    }
    await stream(res, result.events, result.usage, startedAt, gone.signal);
  }

  async function stream(res: ServerResponse, events: StreamEvent[], usage: Usage, startedAt: number, signal: AbortSignal) {
    res.writeHead(200, {
      ...openAIHeaders(startedAt),
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
    });
    // Headers go out now, as OpenAI's do, not with the first event (which may wait: firstEventDelayMs).
    res.flushHeaders();
    active += 1;
    let completionWritten = 0;
    let finished = false;
    try {
      for (const [i, event] of events.entries()) {
        await pause(i > 0 ? chunkDelayMs : firstEventDelayMs, signal);
        if (signal.aborted) break;
        await writeChunk(res, event.data, signal);
        completionWritten += event.completionTokens;
      }
      finished = !signal.aborted;
      if (finished) res.end();
    } finally {
      active -= 1;
      if (!finished) aborted += 1;
      bill(usage.prompt_tokens, completionWritten);
    }
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      // A bug in the fake itself: answer 500 rather than leave the caller hanging.
      if (!res.headersSent) sendBody(res, 500, { error: { message: String(err), type: 'server_error', param: null, code: null } }, {});
      else res.destroy();
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;

  const enqueue = (n: number, mode: Mode) => {
    for (let i = 0; i < n; i++) modes.push(mode);
  };
  let closing: Promise<void> | undefined;

  return {
    url: `http://${host}:${address.port}/v1`,
    requests,
    usageTotals: () => ({ ...totals }),
    failNext: (n, status, body, headers = {}) =>
      enqueue(n, { kind: 'fail', status, body: body === undefined ? defaultErrorFor(status) : body, headers }),
    setFailRate: (rate) => {
      failRate = rate;
    },
    setLatency: (ms) => {
      latencyMs = ms;
    },
    setStreamChunkDelay: (ms) => {
      chunkDelayMs = ms;
    },
    setFirstEventDelay: (ms) => {
      firstEventDelayMs = ms;
    },
    hangNext: (n) => enqueue(n, { kind: 'hang' }),
    dropNext: (n) => enqueue(n, { kind: 'drop' }),
    runBackground: () => responses.runQueued(),
    // Back to the state right after start: latency and event delays return to the start options.
    reset: () => {
      failRate = opts.failRate ?? 0;
      requests.length = 0; // in place, so a reference held by a test stays live
      modes.length = 0;
      totals = emptyTotals();
      aborted = 0;
      latencyMs = initialLatency;
      chunkDelayMs = initialChunkDelay;
      firstEventDelayMs = initialFirstEventDelay;
    },
    activeStreams: () => active,
    abortedStreams: () => aborted,
    close: () => {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Also ends hung requests, open streams and idle keep-alive sockets, so close() never waits on a client.
        server.closeAllConnections();
      });
      return closing;
    },
  };
}
