// buildApp(config): the whole gateway as a Fastify instance that never listens by itself.
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import pino, { type DestinationStream } from 'pino';
import type { Config } from './config.js';
import { errorHandler, notFoundHandler } from './errors.js';
import type { Store } from './store/store.js';
import { createMemoryStore } from './store/memory-store.js';
import { createRedisStore } from './store/redis-store.js';
import { createUpstreamClient, type UpstreamClient } from './upstream/client.js';
import { createKeyResolver } from './auth/key-resolver.js';
import { v1Routes } from './routes/v1.js';
import { adminRoutes } from './routes/admin.js';
import { healthRoutes } from './routes/health.js';
import './request-context.js';

export interface BuildOptions {
  /** Where logs go (tests capture them); stdout by default. */
  logStream?: DestinationStream;
  /** Use this store instead of the one the config names (tests share one between instances). */
  store?: Store;
  upstream?: UpstreamClient;
}

// A client's x-request-id is echoed only if it is short and plain: no header or log injection.
const SAFE_REQUEST_ID = /^[\w.:@-]{1,128}$/;

function requestId(req: IncomingMessage): string {
  const given = req.headers['x-request-id'];
  return typeof given === 'string' && SAFE_REQUEST_ID.test(given) ? given : randomUUID();
}

/** Log paths that may carry secrets. Redacted even though request logging never serialises headers. */
const REDACT = ['req.headers.authorization', 'req.headers.cookie', 'headers.authorization', '*.apiKey', '*.adminToken'];

export async function buildApp(config: Config, options: BuildOptions = {}): Promise<FastifyInstance> {
  const logger: FastifyBaseLogger = pino(
    { level: config.logLevel, redact: { paths: REDACT, censor: '[redacted]' }, base: { service: 'tollgate' } },
    options.logStream,
  );

  const app = Fastify({
    loggerInstance: logger,
    // One line per request, written in onResponse below, instead of Fastify's two.
    logController: new LogController({ disableRequestLogging: true, requestIdLogLabel: 'reqId' }),
    genReqId: requestId,
    bodyLimit: config.bodyLimitBytes,
    trustProxy: config.trustProxy,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
  });

  const store =
    options.store ??
    (config.redis
      ? await createRedisStore({ ...config.redis, logger })
      : createMemoryStore());
  const upstream = options.upstream ?? createUpstreamClient(config.upstream);
  const keyResolver = createKeyResolver(store, config.authCacheTtlMs);

  app.addHook('onClose', async () => {
    await upstream.close();
    if (!options.store) await store.close();
  });

  app.decorateRequest('gatewayKey', null);
  app.decorateRequest('trace', null as never);
  app.decorateRequest('rawBody', null);

  // JSON for every content type: `curl -d` sends form-urlencoded by default, and OpenAI only speaks JSON.
  // The raw bytes are kept so the body can be forwarded exactly as sent.
  const parseJson = app.getDefaultJsonParser('error', 'error');
  const keepRawAndParse: Parameters<typeof app.addContentTypeParser>[2] = (request, body, done) => {
    request.rawBody = body as Buffer;
    parseJson(request, (body as Buffer).toString('utf8'), done);
  };
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, keepRawAndParse);
  app.addContentTypeParser('*', { parseAs: 'buffer' }, keepRawAndParse);

  app.addHook('onRequest', async (request, reply) => {
    request.trace = {};
    reply.header('x-request-id', request.id);
  });

  app.addHook('onResponse', async (request, reply) => {
    const t = request.trace;
    const line = {
      keyId: request.gatewayKey?.id,
      method: request.method,
      path: request.routeOptions.url ?? 'unmatched',
      endpoint: t.endpoint,
      model: t.model,
      stream: t.stream,
      status: reply.statusCode,
      upstreamStatus: t.upstreamStatus,
      upstreamRequestId: t.upstreamRequestId,
      latencyMs: Math.round(reply.elapsedTime * 100) / 100,
      upstreamMs: t.upstreamMs === undefined ? undefined : Math.round(t.upstreamMs * 100) / 100,
      usage: t.usage,
      streamIncomplete: t.streamIncomplete || undefined,
      requestBody: t.requestBody,
      responseBody: t.responseBody,
    };
    const probe = line.path === '/healthz' || line.path === '/readyz';
    if (probe) request.log.debug(line, 'request');
    else request.log.info(line, 'request');
  });

  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler(notFoundHandler);

  await app.register(healthRoutes, { store });
  await app.register(v1Routes, { prefix: '/v1', upstream, keyResolver, logBodies: config.logBodies });
  if (config.adminToken) await app.register(adminRoutes, { prefix: '/admin', adminToken: config.adminToken, store });

  app.log.info(
    { store: store.kind, upstream: new URL(config.upstream.baseUrl).origin, admin: Boolean(config.adminToken) },
    store.kind === 'memory'
      ? 'using the in-memory store: single instance only, state is lost on restart (set REDIS_URL for production)'
      : 'using the Redis store',
  );
  return app;
}
