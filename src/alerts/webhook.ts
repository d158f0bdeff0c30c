// Webhook delivery of alert events: a bounded in-memory FIFO, one POST at a time, retried with backoff and jitter.
import type { FastifyBaseLogger } from 'fastify';

/** Anything with an id can be delivered; the id is sent as the idempotency header. */
export interface WebhookEvent {
  id: string;
}

export interface WebhookSenderOptions {
  /** http(s) URL the events are POSTed to. Only its origin is ever logged (the path may hold a token). */
  url: string;
  logger: FastifyBaseLogger;
  /** Attempts per event, the first included. */
  maxAttempts: number;
  /** Delay before the second attempt; doubled for each further one (with jitter). */
  baseDelayMs: number;
  /** Events waiting (the one being delivered not counted); when full, the oldest waiting one is dropped. */
  maxQueue: number;
  /** Bound on one attempt: connecting, sending and reading the answer. */
  attemptTimeoutMs: number;
  /** Ceiling of a backoff delay, and of a server's retry-after. */
  maxDelayMs: number;
}

export const USER_AGENT = 'tollgate';
export const EVENT_ID_HEADER = 'x-tollgate-event-id';

/** The delay a `retry-after` header asks for (seconds, or an HTTP date), or undefined. */
export function retryAfterMs(header: string | null, now = Date.now()): number | undefined {
  if (header === null) return undefined;
  const value = header.trim();
  if (/^\d+(\.\d+)?$/.test(value)) return Math.round(Number(value) * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** Exponential backoff with jitter: base * 2^(n-1), then a random 50-100 % of it (retries of many events spread out). */
export function backoffMs(failedAttempts: number, baseDelayMs: number, maxDelayMs: number, random = Math.random): number {
  const exp = Math.min(maxDelayMs, baseDelayMs * 2 ** Math.max(0, failedAttempts - 1));
  return Math.round(exp * (0.5 + random() * 0.5));
}

type Attempt = { ok: true } | { ok: false; reason: string; status?: number; retryAfterMs?: number };

/**
 * An error message fit for the log: every URL in it cut to its origin (scheme, host, port: no credentials, no path,
 * no query), and what could be a secret of `url` (its path and query, user, password) masked wherever it appears.
 * fetch's messages may quote the whole URL (e.g. undici's "Request cannot be constructed from a URL that includes
 * credentials: http://user:pass@host/hook/<token>").
 */
export function scrubUrl(message: string, url: string): string {
  let text = message.replace(/\b[a-z][a-z0-9+.-]*:\/\/[^\s'"<>()[\]{}]+/gi, (found) => {
    try {
      const origin = new URL(found).origin;
      return origin === 'null' ? '[url]' : origin;
    } catch {
      return '[url]';
    }
  });
  let u: URL | undefined;
  try {
    u = new URL(url);
  } catch {
    u = undefined;
  }
  const secrets = [url, u && u.pathname + u.search + u.hash, u?.pathname, u?.search, u?.username, u?.password]
    .flatMap((s) => (s ? [s, safeDecode(s)] : []))
    .filter((s) => s.length >= 3 && s !== '/');
  for (const secret of [...new Set(secrets)].sort((a, b) => b.length - a.length)) text = text.split(secret).join('***');
  return text;
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

export function createWebhookSender<E extends WebhookEvent>(opts: WebhookSenderOptions) {
  const { logger } = opts;
  // Only the origin is ever logged (credentials, path and query may hold secrets), error messages scrubbed of the rest.
  const target = new URL(opts.url).origin;
  const queue: E[] = [];
  /** Aborts an attempt in flight when the sender is closed. */
  const closing = new AbortController();
  let closed = false;
  let draining = false;
  /** The delivery loop, while it runs (undefined when the queue is empty). */
  let pumping: Promise<void> | undefined;
  /** The event being delivered (retries included). */
  let current: E | undefined;
  let backoff: { timer: NodeJS.Timeout; wake: () => void } | undefined;

  function sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        backoff = undefined;
        resolve();
      }, ms);
      // A pending retry must not keep an otherwise finished process alive, except while drain() waits for it.
      if (!draining) timer.unref();
      backoff = { timer, wake: resolve };
    });
  }

  async function attempt(event: E, body: string): Promise<Attempt> {
    // One controller per attempt, aborted by our own timer or by close(). Not
    // AbortSignal.any([AbortSignal.timeout(ms), closing.signal]): on Node 20 (nodejs/node#57736) the
    // timeout signal inside `any` can be garbage-collected before it fires, and the attempt then
    // waits on a silent webhook for ever, holding up every alert behind it.
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(new DOMException(`no answer within ${opts.attemptTimeoutMs} ms`, 'TimeoutError')), opts.attemptTimeoutMs);
    const onClose = () => abort.abort(closing.signal.reason);
    closing.signal.addEventListener('abort', onClose, { once: true });
    let res: Response;
    try {
      res = await fetch(opts.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'user-agent': USER_AGENT, [EVENT_ID_HEADER]: event.id },
        body,
        signal: abort.signal,
        // A redirect is a misconfigured URL; following it could send the event somewhere unintended.
        redirect: 'manual',
      });
      // Read the answer (bounded by the same timeout) so the connection can be reused.
      await res.arrayBuffer();
    } catch (err) {
      const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } };
      const reason = e.name === 'TimeoutError' ? `no answer within ${opts.attemptTimeoutMs} ms` : (e.cause?.code ?? e.cause?.message ?? e.message ?? String(err));
      return { ok: false, reason: scrubUrl(String(reason), opts.url) };
    } finally {
      clearTimeout(timer);
      closing.signal.removeEventListener('abort', onClose);
    }
    if (res.status >= 200 && res.status < 300) return { ok: true };
    const honoured = res.status === 429 || res.status === 503 ? retryAfterMs(res.headers.get('retry-after')) : undefined;
    return { ok: false, reason: `HTTP ${res.status}`, status: res.status, ...(honoured !== undefined && { retryAfterMs: honoured }) };
  }

  async function deliver(event: E) {
    const body = JSON.stringify(event);
    for (let n = 1; ; n++) {
      const result = await attempt(event, body);
      if (closed) return;
      if (result.ok) {
        logger.debug({ eventId: event.id, attempts: n, webhook: target }, 'alert webhook delivered');
        return;
      }
      if (n >= opts.maxAttempts) {
        // The event carries no secret (key id and name, amounts): logged whole so it can be replayed by hand.
        logger.error({ event, attempts: n, lastError: result.reason, webhook: target }, 'alert webhook delivery failed; giving up');
        return;
      }
      const delay = Math.min(opts.maxDelayMs, Math.max(backoffMs(n, opts.baseDelayMs, opts.maxDelayMs), result.retryAfterMs ?? 0));
      logger.warn({ eventId: event.id, attempt: n, error: result.reason, retryInMs: delay, webhook: target }, 'alert webhook attempt failed');
      await sleep(delay);
      if (closed) return;
    }
  }

  async function pump() {
    try {
      while (!closed && queue.length > 0) {
        current = queue.shift()!;
        await deliver(current);
        current = undefined;
      }
    } finally {
      current = undefined;
      pumping = undefined;
    }
  }

  return {
    /** Queues an event for delivery; never throws, never waits. */
    send(event: E): void {
      if (closed) {
        logger.error({ event }, 'alert dropped: the alert sender is closed');
        return;
      }
      queue.push(event);
      while (queue.length > opts.maxQueue) {
        const dropped = queue.shift()!;
        logger.error({ event: dropped, maxQueue: opts.maxQueue }, 'alert dropped: the webhook queue is full');
      }
      pumping ??= pump();
    },
    /** Events waiting plus the one being delivered. */
    get size(): number {
      return queue.length + (pumping ? 1 : 0);
    },
    /** Resolves when every queued event was delivered or given up on (retries included). */
    async drain(): Promise<void> {
      draining = true;
      backoff?.timer.ref();
      try {
        while (pumping) await pumping;
      } finally {
        draining = false;
        backoff?.timer.unref();
      }
    },
    /** Stops at once: the attempt in flight is aborted, a pending retry cancelled, what is still queued dropped (logged). */
    close(): void {
      if (closed) return;
      closed = true;
      closing.abort();
      if (backoff) {
        clearTimeout(backoff.timer);
        backoff.wake();
        backoff = undefined;
      }
      const undelivered = current ? [current, ...queue] : [...queue];
      queue.length = 0;
      // One line per event, whole (it carries no secret), so each can be replayed by hand.
      for (const event of undelivered) logger.error({ event, webhook: target }, 'alert dropped: closed before it was delivered');
    },
  };
}

export type WebhookSender<E extends WebhookEvent = WebhookEvent> = ReturnType<typeof createWebhookSender<E>>;
