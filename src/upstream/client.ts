// The client that talks to OpenAI: one pooled undici dispatcher, the server-held key, timeouts, abort.
import { Pool, errors as undiciErrors } from 'undici';
import type { Readable } from 'node:stream';
import type { Config } from '../config.js';
import { GatewayError, upstreamTimeout, upstreamUnreachable } from '../errors.js';

export interface UpstreamRequest {
  method: 'GET' | 'POST' | 'DELETE';
  /** Path below the base URL, e.g. `/chat/completions`. */
  path: string;
  body?: Buffer | string;
  /** Client headers worth forwarding (already filtered by the caller). */
  headers?: Record<string, string>;
  /** Aborted when the client goes away: the upstream request is cancelled at once. */
  signal?: AbortSignal;
}

export interface UpstreamResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Readable;
  /** True once the total timeout fired: a body error after that is a 504, not a 502. */
  timedOut(): boolean;
}

export type UpstreamClient = ReturnType<typeof createUpstreamClient>;

const TIMEOUT_CODES = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);

/** Maps a failed exchange to what the client sees: 504 for a timeout, 502 for anything else. */
export function upstreamFailure(err: unknown, timedOut: boolean): GatewayError {
  const code = (err as { code?: string })?.code;
  if (timedOut || (code && TIMEOUT_CODES.has(code)) || err instanceof undiciErrors.HeadersTimeoutError) {
    return upstreamTimeout();
  }
  return upstreamUnreachable();
}

export function createUpstreamClient(upstream: Config['upstream']) {
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

  const fixedHeaders: Record<string, string> = {
    authorization: `Bearer ${upstream.apiKey}`,
    // Uncompressed, so usage can be read from the body and bytes passed straight through.
    'accept-encoding': 'identity',
  };
  if (upstream.organization) fixedHeaders['openai-organization'] = upstream.organization;
  if (upstream.project) fixedHeaders['openai-project'] = upstream.project;

  /**
   * Sends one request. Resolves once response headers arrive; the body is a stream the caller must
   * consume or destroy. Rejects with a GatewayError (502/504) when the exchange fails before headers.
   * The total timeout keeps running while the caller reads the body.
   */
  async function send(req: UpstreamRequest): Promise<UpstreamResponse> {
    const total = AbortSignal.timeout(upstream.totalTimeoutMs);
    const signal = req.signal ? AbortSignal.any([req.signal, total]) : total;
    const headers: Record<string, string> = { ...req.headers, ...fixedHeaders };
    if (req.body !== undefined) headers['content-type'] = 'application/json';
    try {
      const res = await pool.request({
        method: req.method,
        path: basePath + req.path,
        headers,
        body: req.body,
        signal,
      });
      return { status: res.statusCode, headers: res.headers, body: res.body, timedOut: () => total.aborted };
    } catch (err) {
      if (req.signal?.aborted) throw err; // the client left; nobody is waiting for an answer
      throw upstreamFailure(err, total.aborted);
    }
  }

  return { send, close: () => pool.close() };
}
