// Retry rules for upstream calls: which failures are worth another attempt, and how long to wait first.

/** Statuses upstream answers when another attempt may succeed. 401 is handled apart (key rotation). */
const RETRYABLE_STATUS = new Set([429, 500, 502, 503, 504]);

/**
 * Errors before any response where the request surely or probably never got served: refused, reset,
 * closed by the other side, connect timeout, DNS hiccups. A headers timeout is not here: upstream got
 * the request and may still be working on it (and billing it).
 */
const RETRYABLE_ERROR_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'ENETUNREACH',
  'EHOSTUNREACH',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_CLOSED',
]);

export function isRetryableStatus(status: number): boolean {
  return RETRYABLE_STATUS.has(status);
}

export function isRetryableError(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && RETRYABLE_ERROR_CODES.has(code)) return true;
  }
  return false;
}

type Headers = Record<string, string | string[] | undefined>;

/** Upstream's requested wait in ms, from `retry-after-ms`, else `retry-after` (seconds or an HTTP date). */
export function retryAfterMs(headers: Headers, now = Date.now()): number | undefined {
  const ms = headers['retry-after-ms'];
  if (typeof ms === 'string' && ms.trim() !== '') {
    const n = Number(ms);
    if (Number.isFinite(n) && n >= 0) return n;
  }
  const ra = headers['retry-after'];
  if (typeof ra !== 'string' || ra.trim() === '') return undefined;
  const seconds = Number(ra);
  if (Number.isFinite(seconds)) return seconds >= 0 ? seconds * 1000 : undefined;
  const date = Date.parse(ra);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** `x-should-retry: false` is upstream saying another attempt cannot help (openai-node reads it too). */
export function shouldRetryHeader(headers: Headers): boolean | undefined {
  const v = headers['x-should-retry'];
  if (v === 'true') return true;
  if (v === 'false') return false;
  return undefined;
}

/**
 * Jittered exponential backoff: base x 2^attempt, capped, then a random point in its upper half, so
 * instances that failed together do not retry together, and no wait is shorter than half the step.
 */
export function backoffMs(attempt: number, baseMs: number, maxMs: number, random = Math.random): number {
  const step = Math.min(maxMs, baseMs * 2 ** attempt);
  return step / 2 + random() * (step / 2);
}

/** Resolves after `ms`, or rejects at once with the signal's reason when it aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(signal.reason);
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
