// What the pipeline learns about a request as it goes, for the one log line (and later, usage records).
import type { KeyRecord } from './keys.js';
import type { Usage } from './openai/usage.js';

export interface RequestTrace {
  /** When the request arrived (the gateway's clock, epoch ms): its usage event's time, and its budgets' day. */
  arrivedAt: number;
  endpoint?: string;
  /** The model asked for (see app.ts unvouchedModelRefused for what is recorded of a refused one). */
  model?: string;
  /**
   * The model asked for by a request refused it (404 model_not_found: the key may not use it, or
   * upstream does not know it), or neither served nor charged and not in the price table as it is
   * named: for the log line only, so a client cannot write any number of names into the usage
   * aggregates (kept 90 days) or metrics.
   */
  modelRefused?: string;
  stream?: boolean;
  upstreamStatus?: number;
  /** Upstream time from sending the request to its last byte. */
  upstreamMs?: number;
  /**
   * Time the request waited on the store before it was forwarded or answered: the key lookup (when
   * not cached), the admission and cache lookup round trip(s), any single-flight wait for an
   * identical request, the owner check of a Responses follow-up. Mostly Redis's latency; a
   * single-flight wait is the leading request's upstream time.
   */
  storeMs?: number;
  upstreamRequestId?: string;
  /** The model upstream says answered (a dated snapshot, say). */
  modelAnswered?: string;
  /** ms from arrival to the first byte of a streamed answer (non-streamed: the whole answer at once). */
  ttfbMs?: number;
  /** The OpenAI-style error code of a refused or failed request. */
  errorCode?: string;
  usage?: Usage;
  /** What the request was charged, integer micro-dollars. */
  costMicros?: number;
  /** x-tollgate-cache: HIT, MISS or BYPASS (cacheable endpoints only). */
  cache?: 'HIT' | 'MISS' | 'BYPASS';
  /** What a cache hit saved: the original call's tokens, and its cost at today's price in micro-dollars. */
  savedTokens?: number;
  savedMicros?: number;
  /** The usage is the gateway's own count (stream cut short), not upstream's. */
  estimated?: boolean;
  /** The stream ended before upstream's [DONE] (client left, upstream failed). */
  streamIncomplete?: boolean;
  /** Settles when the request's accounting is done (its stream's too); the log line waits for it. */
  completion?: Promise<void>;
  /** Settles when a streamed response's relay has ended and been accounted for. */
  streamDone?: Promise<void>;
  /** Only when LOG_BODIES is on. */
  requestBody?: unknown;
  responseBody?: unknown;
}

/**
 * Awaits a store call made on the request's way to upstream or to its cached answer, adding the
 * wait to the log line's storeMs. The call's synchronous part (the prompt's token count, the
 * script's arguments) has run before it is handed over, so this is the round trip and its reply.
 */
export async function waitOnStore<T>(trace: RequestTrace, call: Promise<T>): Promise<T> {
  const started = performance.now();
  try {
    return await call;
  } finally {
    trace.storeMs = (trace.storeMs ?? 0) + (performance.now() - started);
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    /** Cuts every connection still open (the shutdown deadline); their requests are recorded as cut at shutdown. */
    cutOpenConnections(): void;
  }
  interface FastifyRequest {
    /** The authenticated gateway key (set by the auth hook on /v1 routes). */
    gatewayKey: KeyRecord | null;
    trace: RequestTrace;
    /** The request body exactly as received, so it can be forwarded byte for byte. */
    rawBody: Buffer | null;
  }
}
