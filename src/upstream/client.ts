// The client that talks to OpenAI: one pooled undici dispatcher, the server-held keys, timeouts, retries, abort.
import type { Dispatcher, Pool as UndiciPool, errors as UndiciErrors } from 'undici';
import { createRequire } from 'node:module';
import { PassThrough, pipeline, Readable, Transform } from 'node:stream';
import { createBrotliDecompress, createGunzip, createInflate } from 'node:zlib';
import type { Config } from '../config.js';
import { GatewayError, upstreamInvalidStatus, upstreamTimeout, upstreamTimeoutAfterSending, upstreamUndecodable, upstreamUnreachable } from '../errors.js';
import { createKeyPool, type KeyPoolLogger, type PickedKey } from './key-pool.js';
import { createFairShare, type Release } from './fair-share.js';
import { KeyedThrottledWarning } from '../resilience/throttled-log.js';
import { createSecretMasker, type SecretMasker } from './redact.js';
import { backoffMs, isRetryableError, isRetryableStatus, retryAfterMs, shouldRetryHeader, sleep } from './retry.js';

export interface UpstreamRequest {
  method: 'GET' | 'POST' | 'DELETE';
  /** Path below the base URL, e.g. `/chat/completions`. */
  path: string;
  body?: Buffer | string;
  /** Client headers worth forwarding (already filtered by the caller). */
  headers?: Record<string, string>;
  /** Aborted when the client goes away: the upstream request is cancelled at once, and never retried. */
  signal?: AbortSignal;
  /** The request's logger (request.log): its retries are logged there, with its request id. */
  log?: UpstreamRequestLogger;
  /**
   * Whose request it is (the gateway key's id): when every upstream connection is busy, the next
   * free one goes to the waiting key holding the fewest (fair-share.ts).
   */
  tenant?: string;
}

/** What send() logs a request's retries to: each at debug, and a throttled warning per kind of failure. */
export interface UpstreamRequestLogger {
  debug(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

type UpstreamHeaders = Record<string, string | string[] | undefined>;

export interface UpstreamResponse {
  status: number;
  /** Upstream's headers, with anything key-shaped in their values masked. */
  headers: UpstreamHeaders;
  body: Readable;
  /** True once the total timeout fired: a body error after that is a 504, not a 502. */
  timedOut(): boolean;
  /** How many requests upstream saw for this one (1 when the first attempt was answered). */
  attempts?: number;
  /** Which server key answered (its index in the pool, never the key). */
  keyIndex?: number;
  /**
   * Masks the server keys in this response's error text. A non-2xx body comes masked already; a
   * 2xx body may still carry an error (a failed Responses object, an error event in a stream),
   * which whoever relays it masks with this (see redact.ts).
   */
  maskSecrets: SecretMasker;
}

export interface UpstreamClientOptions {
  /** Key trouble (401, 429) and retries are logged here; silent by default. */
  logger?: KeyPoolLogger;
}

export type UpstreamClient = ReturnType<typeof createUpstreamClient>;

// Only the parts of undici used here: its entry module loads everything else too (fetch, WebSocket,
// EventSource, mock agents, caches, proxies), ~3 MB more heap for nothing, and ~9 MB more peak RSS
// at start-up. The request API is mixed into Dispatcher.prototype, as undici's index.js does.
// (test/unit/upstream-client.test.ts checks these paths against undici's own exports.)
const require = createRequire(import.meta.url);
const Pool = require('undici/lib/dispatcher/pool.js') as typeof UndiciPool;
const undiciErrors = require('undici/lib/core/errors.js') as typeof UndiciErrors;
const DispatcherClass = require('undici/lib/dispatcher/dispatcher.js') as { prototype: { request?: unknown } };
const requestApi = require('undici/lib/api/api-request.js') as (this: RequestDispatcher, opts: Dispatcher.RequestOptions) => Promise<Dispatcher.ResponseData>;
DispatcherClass.prototype.request ??= requestApi;

/** What undici's request API needs of its `this`: a dispatch. */
interface RequestDispatcher {
  dispatch(opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean;
}

const TIMEOUT_CODES = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);

/**
 * Maps a failed exchange to what the client sees: 504 for a timeout, 502 for anything else. A
 * timeout after upstream had the whole of a request it bills (`billedWork`: a POST it had read) is
 * one the client's SDK is told not to retry: upstream may still be generating, and billing, it (the
 * gateway does not retry it either), and another attempt would most likely wait as long again. A
 * GET (the model list, a stored response) is safe to repeat.
 */
export function upstreamFailure(err: unknown, timedOut: boolean, billedWork: boolean): GatewayError {
  if (undecodable(err)) return upstreamUndecodable();
  const code = (err as { code?: string })?.code;
  const timeout = timedOut || (code && TIMEOUT_CODES.has(code)) || err instanceof undiciErrors.HeadersTimeoutError;
  const failure = timeout ? (billedWork ? upstreamTimeoutAfterSending() : upstreamTimeout()) : upstreamUnreachable();
  // Never sent to the client; the throttled warning about such 5xx names it (an expired certificate,
  // a DNS failure: not all are worth retrying, and the log must say which it was).
  failure.cause = err;
  return failure;
}

/** Upstream's media type without its parameters, lower-cased (RFC 9110 makes it case-insensitive); '' when none. */
export function mediaTypeOf(res: Pick<UpstreamResponse, 'headers'>): string {
  return String(res.headers['content-type'] ?? '').split(';', 1)[0]!.trim().toLowerCase();
}

/** Whether a response ended by one of the gateway's own timeouts: the total, or idle while its body was read. */
export function endedByTimeout(res: UpstreamResponse, err: unknown): boolean {
  return res.timedOut() || (err as { code?: string } | undefined)?.code === 'UND_ERR_BODY_TIMEOUT';
}

/** The failures of `send()` whose last attempt upstream had read and was still working on (see below). */
const abandonedUpstream = new WeakSet<object>();

/**
 * Whether `send()` failed with `err` after its last attempt had been sent upstream whole and while
 * upstream was still on it: the gateway's own first-byte or total timeout gave up on it, or the
 * client left. Upstream has read that prompt, may be generating, and bills it as a hang-up. False
 * when the last attempt was never sent (refused or timed-out connection, still queued for a
 * connection, the client or the total timeout ending a wait between attempts) or when upstream
 * ended it (a reset or closed connection: retried as never served, and not billed either).
 * Earlier attempts never count: each was answered (an error, which OpenAI does not bill) or lost
 * its connection, which is why it was retried.
 */
export function abandonedAfterSending(err: unknown): boolean {
  return typeof err === 'object' && err !== null && abandonedUpstream.has(err);
}

function abandoned<E>(err: E): E {
  if (typeof err === 'object' && err !== null) abandonedUpstream.add(err);
  return err;
}

const silent: KeyPoolLogger = { error() {}, warn() {} };

/** How often a kind of upstream failure that is retried (a connection error code, an error status) is warned about. */
const RETRY_WARN_INTERVAL_MS = 30_000;

/**
 * Upstream's body as the gateway asked for it (accept-encoding: identity): decoded when upstream (a
 * proxy in front of OpenAI, say) compressed it all the same. Passed on as it came, gzip reached the
 * client without its content-encoding (a stream arrived empty, its events unreadable to the relay)
 * and its usage could not be read: charged nothing. An encoding not known here passes as it came.
 * Dropping the decoded body drops upstream's with it, which gives the connection back.
 */
function decodedBody(res: Dispatcher.ResponseData): Readable {
  const encoding = String(res.headers['content-encoding'] ?? '').trim().toLowerCase();
  const decoder =
    encoding === 'gzip' || encoding === 'x-gzip' ? createGunzip() : encoding === 'deflate' ? createInflate() : encoding === 'br' ? createBrotliDecompress() : undefined;
  if (!decoder) return res.body;
  const body = res.body;
  const out = new PassThrough();
  // A lost connection or a timeout reaches the reader as itself (endedByTimeout reads its code).
  body.on('error', (err) => out.destroy(err));
  decoder.on('error', (err: NodeJS.ErrnoException) => {
    // Nothing came to decode (an error answered with headers only): empty in any encoding. Else a
    // body cut short ('unexpected end of file') reaches the reader as a lost connection would (an
    // in-band error for a stream, a 502 for an answer), not as an answer silently cut.
    if (decoder.bytesWritten === 0 && err.code === 'Z_BUF_ERROR') out.end();
    else out.destroy(err);
  });
  // The reader dropped it: upstream's body goes too, which gives the connection back.
  out.on('close', () => {
    if (!body.destroyed) body.destroy();
    decoder.destroy();
  });
  body.pipe(decoder).pipe(out);
  return out;
}

/**
 * A body that is not what its content-encoding says: zlib's Z_DATA_ERROR, brotli's
 * ERR__ERROR_FORMAT_*. (Not Z_BUF_ERROR: a body cut short, a lost connection.)
 */
function undecodable(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && (code === 'Z_DATA_ERROR' || code.startsWith('ERR__ERROR_FORMAT') || code.includes('BROTLI'));
}

/** A response we will not pass on: read it off the socket (so the connection can be reused) or drop it. */
async function discard(res: Dispatcher.ResponseData): Promise<void> {
  try {
    await res.body.dump({ limit: 64 * 1024 });
  } catch {
    res.body.destroy();
  }
}

/**
 * Upstream's headers with every value masked that holds a server key or anything key-shaped: some
 * pass to the client (x-request-id as x-upstream-request-id, openai-model...) and into the log, and
 * an upstream (or a proxy in front of it) that echoes the Authorization header would hand it out.
 * A native search per value; a header holds a key only when something misbehaves.
 */
function maskedHeaders(headers: UpstreamHeaders, mask: SecretMasker): UpstreamHeaders {
  let out: UpstreamHeaders | undefined;
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined) continue;
    const values = Array.isArray(value) ? value : [value];
    if (!values.some((v) => v.includes('sk-') || mask.hasServerKey(v))) continue;
    out ??= { ...headers };
    out[name] = Array.isArray(value) ? value.map((v) => mask(v)) : mask(value);
  }
  return out ?? headers;
}

/**
 * An error answer after this client's own retries says `x-should-retry: false` (unless upstream
 * said otherwise), as the errors it throws then do: the client's SDK retrying the same answer
 * again would multiply the calls on the shared server key (the openai SDKs' 3 attempts x 3 here =
 * 9); and a spent quota comes back with no retry. Not when the last answer asked for a wait longer
 * than this client takes (the client may wait it out), nor after mere moves to another key.
 */
function markNoRetry(headers: UpstreamHeaders, status: number, doNotRetry: boolean): UpstreamHeaders {
  if (!doNotRetry || !isRetryableStatus(status) || headers['x-should-retry'] !== undefined) return headers;
  return { ...headers, 'x-should-retry': 'false' };
}

/** Error bodies are small; past this a 429's body is passed on without looking for its code. */
const ERROR_BODY_READ_LIMIT = 64 * 1024;

/**
 * The body of a 429, read whole (OpenAI says in it whether the key's quota is spent, which no wait
 * mends), and a stream of the same bytes to pass on; one that fails to arrive passes its error on.
 * Past ERROR_BODY_READ_LIMIT it is not OpenAI's: it passes on without its code, what was read and
 * then the rest of `body` (maskedBody buffers it all again, as any error body: this bounds only
 * what is read here). Whoever drops the returned stream (a retry, the client gone) ends `body` too,
 * which gives its connection back.
 */
async function readRateLimitBody(body: Readable): Promise<{ code: unknown; body: Readable }> {
  try {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of body.iterator({ destroyOnReturn: false })) {
      chunks.push(chunk as Buffer);
      size += (chunk as Buffer).length;
      if (size > ERROR_BODY_READ_LIMIT) {
        // What was read, then the rest of `body` with its back-pressure; dropped (a retry, the
        // client gone), it ends `body` at once, even while upstream stalls mid-body.
        const passed = new Readable({
          read() {
            body.resume();
          },
          destroy(err, done) {
            if (!body.readableEnded) body.destroy();
            done(err);
          },
        });
        for (const chunk of chunks) passed.push(chunk);
        body.on('data', (chunk: Buffer) => {
          if (!passed.push(chunk)) body.pause();
        });
        if (body.readableEnded) passed.push(null);
        else body.once('end', () => passed.push(null));
        body.on('error', (err) => passed.destroy(err));
        return { code: undefined, body: passed };
      }
    }
    const bytes = Buffer.concat(chunks);
    let code: unknown;
    try {
      code = (JSON.parse(bytes.toString('utf8')) as { error?: { code?: unknown } } | null)?.error?.code;
    } catch {
      // not JSON: no code
    }
    return { code, body: Readable.from([bytes]) };
  } catch (err) {
    // Fails once read, so whoever relays it has its error listener on by then.
    const failed = new Readable({
      read() {
        this.destroy(err as Error);
      },
    });
    return { code: undefined, body: failed };
  }
}

/**
 * An error body with every server key masked (see redact.ts): read whole (error bodies are small,
 * and a key cut across two chunks must still be found), then passed on as one chunk. Errors and
 * the consumer's destroy cross the pipe both ways, so timeouts and aborts behave as on the raw body.
 */
function maskedBody(body: Readable, mask: SecretMasker): Readable {
  const chunks: Buffer[] = [];
  const masked = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      chunks.push(chunk);
      done();
    },
    flush(done) {
      const bytes = Buffer.concat(chunks);
      const text = bytes.toString('utf8');
      const out = mask(text);
      // Unchanged bytes go out as they came (a body that is not UTF-8 is not re-encoded).
      done(null, out === text ? bytes : Buffer.from(out, 'utf8'));
    },
  });
  pipeline(body, masked, () => undefined); // errors reach the consumer through `masked`
  return masked;
}

/**
 * The abort signal of one upstream exchange: fires when the total timeout passes (a TimeoutError,
 * as AbortSignal.timeout gives) or when the client's signal fires (with its reason). `end()` clears
 * the timer and the listener on the client's signal; call it once the exchange is over.
 */
class Exchange {
  private readonly controller = new AbortController();
  private readonly timer: NodeJS.Timeout;
  timedOut = false;

  constructor(
    timeoutMs: number,
    private readonly client: AbortSignal | undefined,
  ) {
    this.timer = setTimeout(this.onTimeout, timeoutMs);
    this.timer.unref();
    if (client) {
      if (client.aborted) this.controller.abort(client.reason);
      else client.addEventListener('abort', this.onClientAbort, { once: true });
    }
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  private readonly onTimeout = () => {
    this.timedOut = true;
    this.controller.abort(new DOMException('The operation was aborted due to timeout', 'TimeoutError'));
  };

  private readonly onClientAbort = () => this.controller.abort(this.client!.reason);

  readonly isTimedOut = () => this.timedOut;

  readonly end = () => {
    clearTimeout(this.timer);
    this.client?.removeEventListener('abort', this.onClientAbort);
  };
}

export function createUpstreamClient(upstream: Config['upstream'], options: UpstreamClientOptions = {}) {
  const log = options.logger ?? silent;
  const base = new URL(upstream.baseUrl);
  const basePath = base.pathname.replace(/\/+$/, '');
  // One keep-alive pool to the one origin: no per-request connection setup, no fetch overhead.
  const pool = new Pool(base.origin, {
    connections: upstream.maxConnections,
    connect: { timeout: upstream.connectTimeoutMs },
    headersTimeout: upstream.headersTimeoutMs,
    bodyTimeout: upstream.idleTimeoutMs,
    keepAliveTimeout: 30_000,
  });
  // No request is handed to the pool while all its connections are busy: undici would queue it
  // first come, first served, behind every other key's backlog.
  const connections = createFairShare(upstream.maxConnections);
  const keys = upstream.apiKeys.length > 0 ? upstream.apiKeys : [upstream.apiKey];
  const keyPool = createKeyPool(keys, {
    cooldownMs: upstream.keyCooldownMs,
    invalidCooldownMs: upstream.keyInvalidCooldownMs,
    logger: log,
  });
  const { maxRetries, retryBaseDelayMs, retryMaxDelayMs, retryAfterMaxMs } = upstream;
  /**
   * Retries are routine under upstream trouble: each is logged at debug on its request's logger;
   * beyond that, one warning per kind of failure per interval (with how many were left out).
   */
  const retryWarning = new KeyedThrottledWarning(log, RETRY_WARN_INTERVAL_MS);
  /** Logs one retry, with the request's id: as the throttled warning of its kind, or else at debug. */
  function retrying(req: UpstreamRequest, kind: string, obj: object, msg: string) {
    if (!retryWarning.warn(kind, obj, msg, req.log ?? log)) req.log?.debug(obj, msg);
  }
  /** Masks every key of the pool (and anything key-shaped) in upstream error text. */
  const maskSecrets = createSecretMasker(keys);

  const fixedHeaders: Record<string, string> = {
    // Uncompressed, so usage can be read from the body and bytes passed straight through.
    'accept-encoding': 'identity',
  };
  if (upstream.organization) fixedHeaders['openai-organization'] = upstream.organization;
  if (upstream.project) fixedHeaders['openai-project'] = upstream.project;

  /**
   * Sends one request. Resolves once response headers arrive; the body is a stream the caller must
   * consume or destroy: until it closes, the request holds one of the pool's connections (and an
   * unread body keeps it until the total timeout). Rejects with a GatewayError (502/504) when the
   * exchange fails before headers, or, once the client left (req.signal aborted), with undici's
   * error or the signal's reason: callers check the signal first. The body of any non-2xx answer
   * comes with the server keys masked (OpenAI echoes the key it was sent in some errors): whatever
   * relays or logs it downstream never holds a key.
   *
   * Retries happen only in here, i.e. before anything reached the client: 429, 500, 502, 503, 504
   * and connection errors, with jittered exponential backoff or upstream's retry-after, within the
   * total timeout (which covers every attempt and keeps running while the caller reads the body).
   * A 401 or 429 takes that key out of rotation and, when another key is healthy, the request
   * moves to it at once (at most once per key, apart from UPSTREAM_MAX_RETRIES). A 429
   * insufficient_quota (the key's OpenAI quota is spent) is never retried on the same key.
   */
  async function send(req: UpstreamRequest): Promise<UpstreamResponse> {
    const deadline = performance.now() + upstream.totalTimeoutMs;
    // One controller for the whole exchange, aborted by the total timeout or by the client leaving.
    // (AbortSignal.timeout + AbortSignal.any did the same with two more signals, WeakRefs and
    // finalization-registry entries: ~2 KB of heap and ~5 KB of RSS per exchange in a
    // microbenchmark, against ~1.1 KB here; and their timer stayed pending until the signal was
    // garbage-collected, while this one is cleared when the exchange ends.)
    const exchange = new Exchange(upstream.totalTimeoutMs, req.signal);
    try {
      const res = await attempts(req, exchange, deadline);
      // The total timeout keeps running while the caller reads the body; it ends with the body.
      if (res.body.destroyed) exchange.end();
      else res.body.once('close', exchange.end);
      return res;
    } catch (err) {
      exchange.end();
      throw err;
    }
  }

  async function attempts(req: UpstreamRequest, exchange: Exchange, deadline: number): Promise<UpstreamResponse> {
    const signal = exchange.signal;
    const baseHeaders: Record<string, string> = { ...req.headers, ...fixedHeaders };
    if (req.body !== undefined) baseHeaders['content-type'] = 'application/json';
    /** Keys that failed on their own account (401, 429) during this request. */
    const refused = new Set<number>();
    let retries = 0;
    /** The last answer's retry-after was longer than this client waits: waiting is the client's. */
    let leftToClient = false;

    /** Waits before the next attempt, if it fits in the total timeout; false: give up instead. */
    const waitFor = async (ms: number): Promise<boolean> => {
      if (performance.now() + ms >= deadline - 50) return false;
      await sleep(ms, signal).catch(() => undefined);
      return !signal.aborted;
    };

    for (let attempt = 1; ; attempt++) {
      let res: Dispatcher.ResponseData;
      /** Set once this attempt is written to the socket whole: from then on upstream may be working on it. */
      let sent = false;
      /** This attempt's hold on one of the pool's connections: until its answer's body closes. */
      let release: Release | undefined;
      /** Picked once a connection is granted: a key picked before a wait may be cooling down by then. */
      let key: PickedKey | undefined;
      try {
        const turn = connections.acquire(req.tenant ?? '', signal);
        release = typeof turn === 'function' ? turn : await turn;
        key = keyPool.pick(refused);
        res = await requestApi.call(
          {
            dispatch(opts, handler) {
              // undici calls a handler's onRequestSent once the whole request is written (core/request.js;
              // its headers timeout starts then too). Its request API's handler has none of its own.
              (handler as { onRequestSent?: () => void }).onRequestSent = () => (sent = true);
              return pool.dispatch(opts, handler);
            },
          },
          {
            method: req.method,
            path: basePath + req.path,
            headers: { ...baseHeaders, authorization: `Bearer ${key.key}` },
            body: req.body,
            signal,
          },
        );
      } catch (err) {
        release?.();
        // The client left; nobody is waiting for an answer.
        if (req.signal?.aborted) throw sent ? abandoned(err) : err;
        const failure = upstreamFailure(err, exchange.timedOut, sent && req.method === 'POST');
        // The gateway's own first-byte or total timeout gave up on a request upstream had read (a
        // connect timeout never sent it): never retried, and upstream bills it as a hang-up.
        if (sent && failure.status === 504) throw abandoned(failure);
        if (exchange.timedOut || retries >= maxRetries || !isRetryableError(err)) {
          // Retried here already: the client's SDK retrying too would multiply the attempts.
          if (retries > 0) failure.headers['x-should-retry'] = 'false';
          throw failure;
        }
        const wait = backoffMs(retries, retryBaseDelayMs, retryMaxDelayMs);
        const code = (err as { code?: string }).code;
        retrying(req, `connection:${code}`, { attempt, keyIndex: key?.index, code, waitMs: Math.round(wait) }, 'upstream connection failed; retrying');
        if (!(await waitFor(wait))) {
          if (req.signal?.aborted) throw req.signal.reason;
          if (retries > 0) failure.headers['x-should-retry'] = 'false';
          throw failure;
        }
        retries++;
        continue;
      }
      // undici keeps the connection until the body is read whole or destroyed.
      if (res.body.destroyed) release();
      else res.body.once('close', release);
      // undici passes on any status it can parse (a broken proxy's 700); Fastify will not send one
      // outside 100-599 (it throws), and nothing says what it meant: upstream's failure, a 502.
      if (res.statusCode < 200 || res.statusCode > 599) {
        res.body.on('error', () => undefined).destroy(); // undici's body errors when dropped unread
        throw upstreamInvalidStatus(res.statusCode);
      }

      let body = decodedBody(res);
      let quotaSpent = false;
      if (res.statusCode === 429) {
        const read = await readRateLimitBody(body);
        body = read.body;
        quotaSpent = read.code === 'insufficient_quota';
      }
      const wait = nextWait(res, key.index, quotaSpent);
      if (wait === undefined) {
        return {
          status: res.statusCode,
          headers: markNoRetry(maskedHeaders(res.headers, maskSecrets), res.statusCode, quotaSpent || (retries > 0 && !leftToClient)),
          // Only error answers pay for the masking here; a 2xx body streams through untouched, and
          // whoever relays it masks what in it carries an error (maskSecrets, below).
          body: res.statusCode >= 300 ? maskedBody(body, maskSecrets) : body,
          timedOut: exchange.isTimedOut,
          attempts: attempt,
          keyIndex: key.index,
          maskSecrets,
        };
      }
      // Only now is the response known to be dropped: nothing of it ever reaches the client.
      if (body === res.body) await discard(res);
      else body.destroy(); // read in part or whole (a 429), or decoded: its end gives the connection back
      retrying(req, `status:${res.statusCode}`, { attempt, keyIndex: key.index, status: res.statusCode, waitMs: Math.round(wait.ms) }, 'upstream answered an error; retrying');
      if (!(await waitFor(wait.ms))) {
        if (req.signal?.aborted) throw req.signal.reason;
        throw upstreamTimeout(); // the response is gone, and the time with it
      }
      if (wait.counts) retries++;
    }

    /**
     * How long to wait before trying again after this response, and whether that uses up a retry;
     * undefined: pass the response on. Also updates the key pool.
     */
    function nextWait(res: Dispatcher.ResponseData, keyIndex: number, quotaSpent: boolean): { ms: number; counts: boolean } | undefined {
      const status = res.statusCode;
      if (status === 401 || quotaSpent) {
        if (quotaSpent) keyPool.quotaSpent(keyIndex);
        else keyPool.invalid(keyIndex);
        refused.add(keyIndex);
        // Another key may work; this one will not, so never the same key again.
        return keyPool.hasHealthyOther(refused) ? { ms: 0, counts: false } : undefined;
      }
      if (!isRetryableStatus(status)) return undefined;
      const requested = retryAfterMs(res.headers);
      if (status === 429) {
        keyPool.rateLimited(keyIndex, requested);
        refused.add(keyIndex);
        // Upstream's wait is this key's; a healthy other key can take the request now.
        if (keyPool.hasHealthyOther(refused)) return { ms: 0, counts: false };
      }
      if (shouldRetryHeader(res.headers) === false) return undefined;
      if (requested !== undefined && requested > retryAfterMaxMs) {
        leftToClient = true; // the client may wait, not us
        return undefined;
      }
      if (retries >= maxRetries) return undefined;
      const ms = requested ?? backoffMs(retries, retryBaseDelayMs, retryMaxDelayMs);
      if (performance.now() + ms >= deadline - 50) return undefined; // would outlast the total timeout: answer now
      return { ms, counts: true };
    }
  }

  return { send, keyPool, maskSecrets, connections: connections.stats, close: () => pool.close() };
}
