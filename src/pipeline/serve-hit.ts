// Answers a request from a cache entry: as JSON or as an SSE stream, whichever it asked for.
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Endpoint } from '../openai/endpoints.js';
import { formatEvent } from '../openai/sse.js';
import type { Admission, Quota } from '../quota/quota.js';
import type { Cache } from '../cache/cache.js';
import type { CacheEntry } from '../store/store.js';
import { waitOnStore } from '../request-context.js';
import { clientClosed } from '../errors.js';

export async function serveHit(
  request: FastifyRequest,
  reply: FastifyReply,
  endpoint: Endpoint,
  body: Record<string, unknown> & { model: string; stream?: boolean | null; stream_options?: { include_usage?: boolean | null } | null },
  entry: CacheEntry,
  { quota, cache }: { quota: Quota; cache: Cache },
  /** The hit's admission when the lookup made it (Cache.lookupAndAdmit). */
  admitted?: Admission,
) {
  const trace = request.trace;
  // A hit still counts against rpm and concurrency, but costs no tokens or dollars.
  const admission = admitted ?? (await waitOnStore(trace, quota.admit(request.gatewayKey!, endpoint, body, body.model, { free: true })));
  admission.settle({ estimated: false });
  // A client that left while it waited (on an identical request in flight, or on the store) gets
  // nothing: a 499 as on the upstream path, not a 200 HIT written to a closed socket.
  if (reply.raw.destroyed) return clientClosed(reply);
  const saved = { promptTokens: entry.promptTokens, cachedPromptTokens: entry.cachedPromptTokens, completionTokens: entry.completionTokens };
  trace.cache = 'HIT';
  // A hit spends no tokens: it records what it saved instead, so token sums match what upstream billed.
  trace.savedMicros = quota.costOf(request.gatewayKey!.id, entry.model || body.model, saved);
  trace.savedTokens = saved.promptTokens + saved.completionTokens;
  trace.modelAnswered = entry.model || undefined;
  trace.costMicros = 0;

  reply
    .headers(admission.headers)
    .header('x-tollgate-cache', 'HIT')
    .header('age', String(cache.ageSeconds(entry)));

  const wantsStream = endpoint.streamable && body.stream === true;
  trace.ttfbMs = reply.elapsedTime;
  if (!wantsStream || !endpoint.convert) {
    // As bytes: for a JSON string Fastify appends '; charset=utf-8', which OpenAI's answer (and a miss) does not have.
    return reply.type('application/json').send(Buffer.from(entry.body));
  }
  let text = '';
  for (const event of endpoint.convert.synthesize(JSON.parse(entry.body) as Record<string, unknown>, body)) text += formatEvent(event);
  // OpenAI's content type, as a streamed miss relays it.
  return reply.type('text/event-stream; charset=utf-8').header('cache-control', 'no-cache').send(text);
}
