// The Responses API's object routes: retrieve, delete, cancel, list input items. Forwarded with the
// server key, but only for the gateway key that created the response; every other key gets
// OpenAI's own 404, and upstream is never asked.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { mediaTypeOf, type UpstreamClient } from '../upstream/client.js';
import type { ResponseOwners } from '../pipeline/response-owners.js';
import { clientGone, sendBuffered, sendRelayed } from '../pipeline/forward.js';
import { clientHeadersForUpstream, upstreamHeadersForClient } from '../pipeline/headers.js';
import { clientClosed, notFound, upstreamAuthFailed } from '../errors.js';
import { relaySse } from '../openai/sse.js';
import { endpoints } from '../openai/endpoints.js';
import type { Quota } from '../quota/quota.js';
import { waitOnStore } from '../request-context.js';

export interface ResponseRoutesOptions {
  upstream: UpstreamClient;
  owners: ResponseOwners;
  quota: Quota;
}

type IdRequest = FastifyRequest<{ Params: { id: string } }>;

/** OpenAI's answer for an id it does not know: the same for another key's response, so no oracle. */
const noSuchResponse = (id: string) => notFound(`Response with id '${id}' not found.`, null);

export async function responseRoutes(app: FastifyInstance, opts: ResponseRoutesOptions) {
  const routes: { method: 'GET' | 'DELETE' | 'POST'; url: string; name: string; suffix: string }[] = [
    { method: 'GET', url: '/responses/:id', name: 'responses.retrieve', suffix: '' },
    { method: 'DELETE', url: '/responses/:id', name: 'responses.delete', suffix: '' },
    { method: 'POST', url: '/responses/:id/cancel', name: 'responses.cancel', suffix: '/cancel' },
    { method: 'GET', url: '/responses/:id/input_items', name: 'responses.input_items', suffix: '/input_items' },
  ];
  for (const route of routes) {
    app.route({
      method: route.method,
      url: route.url,
      handler: (request: IdRequest, reply) => passThrough(request, reply, opts, route.method, route.name, route.suffix),
    });
  }
}

async function passThrough(
  request: IdRequest,
  reply: FastifyReply,
  opts: ResponseRoutesOptions,
  method: 'GET' | 'DELETE' | 'POST',
  name: string,
  suffix: string,
) {
  const { id } = request.params;
  request.trace.endpoint = name;
  const keyId = request.gatewayKey!.id;
  const owner = await waitOnStore(request.trace, opts.owners.ownerOf(id));
  if (owner?.keyId !== keyId) throw noSuchResponse(id);
  // A read is then a request like any other to rpm and maxConcurrent (a polling loop used the
  // shared server key's rate limit unbounded): admitted count-only, as a cache hit is, since nothing
  // here is billed. Not DELETE or cancel: stopping a response that spends must work at any limit.
  if (method === 'GET') {
    const admission = await waitOnStore(request.trace, opts.quota.admit(request.gatewayKey!, endpoints.responses, {}, '', { free: true }));
    admission.settle({ estimated: false });
    reply.headers(admission.headers);
  }

  const query = request.url.indexOf('?');
  const path = `/responses/${encodeURIComponent(id)}${suffix}${query >= 0 ? request.url.slice(query) : ''}`;
  const signal = clientGone(reply);
  const started = performance.now();
  let res;
  try {
    res = await opts.upstream.send({
      method,
      path,
      headers: clientHeadersForUpstream(request.headers),
      signal,
      log: request.log,
      tenant: request.gatewayKey?.id,
    });
  } catch (err) {
    request.trace.upstreamMs = performance.now() - started; // upstream time, even when it failed
    if (signal.aborted) return clientClosed(reply);
    throw err;
  }
  request.trace.upstreamStatus = res.status;
  // Deleted upstream: the id must not answer its owner again, nor its cached copy anyone.
  if (method === 'DELETE' && res.status >= 200 && res.status < 300) await opts.owners.forget(id);
  if (res.status === 401) {
    request.trace.upstreamMs = performance.now() - started;
    res.body.resume();
    throw upstreamAuthFailed(); // the gateway's own key was refused: not the client's problem to see
  }
  reply.code(res.status).headers(upstreamHeadersForClient(res.headers));
  // GET /responses/{id}?stream=true replays the events of a background response: relayed event by
  // event as they arrive (a 200 or not), and error events (`error`, `response.failed`, data that
  // carries an error) masked like any upstream error text (see redact.ts); other events keep their
  // data. Nothing is billed (the create call was), so no usage is read and no event is kept.
  // Upstream failing mid-replay ends it with the in-band error event, as for any stream.
  if (mediaTypeOf(res) === 'text/event-stream') {
    const { stream } = relaySse(res.body, {
      dropUsageChunk: false,
      readEvent: () => undefined,
      keepData: false,
      maskError: res.maskSecrets,
      typedEvents: true,
      onFirstEvent: () => (request.trace.ttfbMs = reply.elapsedTime),
      // A background response's output exists only now: its items are recorded for their owner
      // (item references), and its usage for previous_response_id, as for one created in the foreground.
      onEvent: (data, event) => opts.owners.recordFromEvent(data, event, keyId),
    });
    return sendRelayed(reply, stream);
  }
  // The same for the object a GET or a cancel returns (a finished background response).
  const recorded = method !== 'DELETE' && suffix !== '/input_items' ? { beforeSend: (json: unknown) => opts.owners.recordFromBody(json, keyId) } : {};
  return sendBuffered(reply, res, started, false, undefined, recorded);
}
