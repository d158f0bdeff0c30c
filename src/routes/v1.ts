// The OpenAI-compatible API under /v1. Thin: authentication here, everything else in the pipeline.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { endpoints, type Endpoint } from '../openai/endpoints.js';
import { forward, clientGone, readUpstreamBody, sendBuffered, type ForwardDeps } from '../pipeline/forward.js';
import { upstreamHeadersForClient } from '../pipeline/headers.js';
import { bearerToken } from '../auth/bearer.js';
import type { KeyResolver } from '../auth/key-resolver.js';
import { waitOnStore } from '../request-context.js';
import type { FailedAuthGuard } from '../auth/failed-auth-guard.js';
import { clientClosed, invalidApiKey, modelNotFound, serviceUnavailable, upstreamAuthFailed, upstreamUnreachable } from '../errors.js';
import { hashSecret, isModelAllowed } from '../keys.js';
import { responseRoutes } from './responses.js';
import { isOutageError } from '../resilience/store-health.js';

export interface V1Options extends ForwardDeps {
  keyResolver: KeyResolver;
  authGuard: FailedAuthGuard;
}

const MISSING_KEY =
  "You didn't provide an API key. Provide your gateway key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).";
// One message for unknown and revoked keys, and never the key itself: no oracle, no echo.
const BAD_KEY = 'Incorrect API key provided. Ask your gateway administrator for a valid key.';

/** Every POST endpoint of the table, with the path(s) it is served on. */
const postRoutes: { url: string; endpoint: Endpoint; modelParam?: string }[] = [
  { url: '/chat/completions', endpoint: endpoints.chat },
  { url: '/completions', endpoint: endpoints.completions },
  // openai-python 0.x: Completion.create(engine=...) posts here; the engine is the model.
  { url: '/engines/:engine/completions', endpoint: endpoints.completions, modelParam: 'engine' },
  { url: '/embeddings', endpoint: endpoints.embeddings },
  // ...and Embedding.create(engine=...) here. 0.x's Engine.list() / retrieve() (GET /engines) are not served: a 404.
  { url: '/engines/:engine/embeddings', endpoint: endpoints.embeddings, modelParam: 'engine' },
  { url: '/responses', endpoint: endpoints.responses },
  { url: '/moderations', endpoint: endpoints.moderations },
];

export async function v1Routes(app: FastifyInstance, opts: V1Options) {
  app.addHook('onRequest', async (request) => {
    const secret = bearerToken(request.headers.authorization);
    if (!secret) throw invalidApiKey(MISSING_KEY);
    const hash = hashSecret(secret);
    let key = opts.keyResolver.cached(hash) ?? null;
    if (!key) {
      // A valid key is never refused by the failed-auth guard (see failed-auth-guard.ts): only a
      // key that resolves to nothing counts, and is refused with 429 once its address is over.
      try {
        key = await waitOnStore(request.trace, opts.keyResolver.lookup(hash));
      } catch (err) {
        // An outage has no line of its own: the request's line says auth_unavailable, and
        // errorHandler warns (throttled, per error code) with this cause. Anything else (a bug, a
        // record the store cannot read) is logged each time: a throttle would hide it among outages.
        if (!isOutageError(err)) request.log.error({ err }, 'key lookup failed');
        const unavailable = serviceUnavailable('Authentication is temporarily unavailable. Please retry.', 'auth_unavailable');
        unavailable.cause = err;
        throw unavailable;
      }
      if (!key) {
        await opts.authGuard.fail(request);
        throw invalidApiKey(BAD_KEY);
      }
    }
    request.gatewayKey = key;
  });

  for (const route of postRoutes) {
    app.post(route.url, (request, reply) => {
      const model = route.modelParam ? (request.params as Record<string, string>)[route.modelParam] : undefined;
      return forward(request, reply, route.endpoint, opts, { model });
    });
  }

  // A child scope: it inherits the authentication hook above.
  await app.register(responseRoutes, { upstream: opts.upstream, owners: opts.owners, quota: opts.quota });

  app.get('/models', async (request, reply) => {
    request.trace.endpoint = 'models.list';
    const res = await getUpstream(request, reply, opts, '/models');
    if (!res) return clientClosed(reply);
    const allowed = request.gatewayKey!.models;
    if (allowed === null || res.status !== 200) return sendBuffered(reply, res, performance.now(), false);
    // Only the models this key may use. Read outside the try: a cut body is already a 502 (or 504).
    const body = (await readUpstreamBody(res)).toString('utf8');
    let list: { data?: unknown } | null = null;
    try {
      list = JSON.parse(body) as { data?: unknown } | null;
    } catch {
      // not JSON: refused below
    }
    if (typeof list !== 'object' || list === null || Array.isArray(list) || !Array.isArray(list.data ?? [])) {
      // An HTML error page or any other non-list with a 200: as unusable as a cut body, and answered the same.
      request.log.warn('upstream answered GET /models with something that is not a model list');
      throw upstreamUnreachable();
    }
    // An entry without a string id cannot be checked against the allow-list: dropped.
    list.data = ((list.data ?? []) as unknown[]).filter(
      (m) => typeof (m as { id?: unknown } | null)?.id === 'string' && isModelAllowed(allowed, (m as { id: string }).id),
    );
    return reply.send(list);
  });

  app.get<{ Params: { id: string } }>('/models/:id', async (request, reply) => {
    const { id } = request.params;
    request.trace.endpoint = 'models.retrieve';
    request.trace.model = id;
    if (!isModelAllowed(request.gatewayKey!.models, id)) throw modelNotFound(id);
    const res = await getUpstream(request, reply, opts, `/models/${encodeURIComponent(id)}`);
    if (!res) return clientClosed(reply);
    return sendBuffered(reply, res, performance.now(), false);
  });
}

async function getUpstream(request: FastifyRequest, reply: FastifyReply, opts: V1Options, path: string) {
  const signal = clientGone(reply);
  try {
    const res = await opts.upstream.send({ method: 'GET', path, signal, log: request.log, tenant: request.gatewayKey?.id });
    request.trace.upstreamStatus = res.status;
    if (res.status === 401) {
      res.body.resume();
      throw upstreamAuthFailed(); // the gateway's own key was refused: not the client's problem to see
    }
    reply.code(res.status).headers(upstreamHeadersForClient(res.headers));
    return res;
  } catch (err) {
    if (signal.aborted) return undefined;
    throw err;
  }
}
