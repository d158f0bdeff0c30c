// Low-level node:http helpers for the fake upstream: reading bodies, OpenAI's headers, writing with backpressure.
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';

/** The whole body as text, or null when the client went away while sending it. */
export async function readBody(req: IncomingMessage): Promise<string | null> {
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of req) chunks.push(chunk as Buffer);
  } catch {
    return null;
  }
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * Headers the real API sends on every response. The organization/project ones are there so gateway
 * tests can check they are not passed through to callers.
 */
export function openAIHeaders(startedAt: number): Record<string, string> {
  return {
    'x-request-id': `req_${randomBytes(16).toString('hex')}`,
    'openai-processing-ms': String(Math.max(1, Math.round(performance.now() - startedAt))),
    'openai-version': '2020-10-01',
    'openai-organization': 'fake-org',
    'openai-project': 'proj_fake',
    'x-ratelimit-limit-requests': '10000',
    'x-ratelimit-limit-tokens': '30000000',
    'x-ratelimit-remaining-requests': '9999',
    'x-ratelimit-remaining-tokens': '29999000',
    'x-ratelimit-reset-requests': '6ms',
    'x-ratelimit-reset-tokens': '2ms',
  };
}

/** Sends a complete response. Strings go out as-is (to fake a proxy's HTML error page, say); the rest as JSON. */
export function sendBody(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string>,
): void {
  if (res.destroyed) return;
  const isText = typeof body === 'string';
  const payload = isText ? body : JSON.stringify(body ?? null);
  res.writeHead(status, {
    'content-type': isText ? 'text/plain; charset=utf-8' : 'application/json',
    'content-length': String(Buffer.byteLength(payload)),
    ...headers,
  });
  res.end(payload);
}

/** Writes one chunk; when the socket buffer is full, waits for it to drain (or for the client to leave). */
export async function writeChunk(res: ServerResponse, data: string, signal: AbortSignal): Promise<void> {
  if (res.write(data)) return;
  await once(res, 'drain', { signal }).catch(() => undefined);
}

/** setTimeout that ends early, without throwing, when the client disconnects. */
export function pause(ms: number, signal: AbortSignal): Promise<void> {
  if (ms <= 0 || signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}
