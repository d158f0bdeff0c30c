// buildApp(config): the whole gateway as a Fastify instance that never listens by itself.
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import pino, { type DestinationStream } from 'pino';
import { batchedStdout } from './log-destination.js';
import type { Config } from './config.js';
import { clientErrorHandler, CUT_AT_SHUTDOWN, errorHandler, frameworkErrorHandler, GatewayError, invalidRequest, notFoundHandler, openAIErrorBody, unsupportedContentEncoding } from './errors.js';
import { corsPlugin } from './plugins/cors.js';
import type { Store } from './store/store.js';
import { createMemoryStore } from './store/memory-store.js';
import { createRedisStore } from './store/redis-store.js';
import { createUpstreamClient, type UpstreamClient } from './upstream/client.js';
import { createKeyResolver } from './auth/key-resolver.js';
import { createFailedAuthGuards } from './auth/failed-auth-guard.js';
import { createQuota } from './quota/quota.js';
import { createCache } from './cache/cache.js';
import { createUsageRecorder } from './usage/recorder.js';
import { isMetered, usageEventOf } from './usage/build.js';
import type { UsageEvent } from './usage/event.js';
import { createMetrics } from './metrics/metrics.js';
import { budgetGauges } from './metrics/budgets.js';
import { metricsRoutes } from './routes/metrics.js';
import { dashboardRoutes } from './dashboard/routes.js';
import { createAlerts } from './alerts/alerts.js';
import { BudgetRefusal } from './quota/errors.js';
import { watchConnections } from './connections.js';
import { loadPriceTable, priceFromUsdPerMillion } from './openai/prices.js';
import { v1Routes } from './routes/v1.js';
import { createResponseOwners } from './pipeline/response-owners.js';
import { adminRoutes } from './routes/admin.js';
import { healthRoutes } from './routes/health.js';
import { createStoreHealth } from './resilience/store-health.js';
import { guardStore } from './resilience/guarded-store.js';
import { degradedModes } from './resilience/modes.js';
import { ThrottledWarning } from './resilience/throttled-log.js';
import type { RequestTrace } from './request-context.js';
import './request-context.js';

export interface BuildOptions {
  /** Where logs go (tests capture them); stdout by default. */
  logStream?: DestinationStream;
  /** Use this store instead of the one the config names (tests share one between instances). */
  store?: Store;
  upstream?: UpstreamClient;
  /** Epoch ms; tests inject one to cross day and month boundaries. */
  clock?: () => number;
  /** How long a revoked key's metric series stay (default UPSTREAM_TOTAL_TIMEOUT_MS + 5 minutes); tests shorten it. */
  retiredSeriesGraceMs?: number;
}

// A client's x-request-id is echoed only if it is short and plain: no header or log injection.
const SAFE_REQUEST_ID = /^[\w.:@-]{1,128}$/;
// ...and never if it looks like a secret pasted in the wrong header: it would be echoed and logged.
const LOOKS_LIKE_A_KEY = /^(tg|sk)-/i;

/** The request id: the client's X-Request-Id when safe to echo, else a new UUID. */
function requestIdGenerator(secrets: (string | undefined)[]): (req: IncomingMessage) => string {
  // The server's own tokens are not recognisable by a prefix: compared as they are.
  const known = new Set(secrets.filter((s): s is string => Boolean(s)));
  return (req) => {
    const given = req.headers['x-request-id'];
    const safe = typeof given === 'string' && SAFE_REQUEST_ID.test(given) && !LOOKS_LIKE_A_KEY.test(given) && !known.has(given);
    return safe ? given : randomUUID();
  };
}

/**
 * Log paths that may carry secrets. Redacted even though no log call passes headers or settings.
 * Named paths, no `*.` wildcards: a wildcard makes the redactor visit every field of every line,
 * which cost ~7 us per request line (35 fields), half of what writing the line costs.
 */
const REDACT = [
  'req.headers.authorization',
  'req.headers.cookie',
  'headers.authorization',
  'apiKey',
  'adminToken',
  'config.apiKey',
  'config.adminToken',
  'upstream.apiKey',
  'upstream.apiKeys',
];

/**
 * The one log line per request. For the API it is the usage event itself (plus transport details);
 * never the key's secret; bodies only when LOG_BODIES is on.
 */
function logLine(request: FastifyRequest, reply: FastifyReply, event: UsageEvent | undefined) {
  const t = request.trace;
  const path = request.routeOptions.url ?? 'unmatched';
  // Object.assign, not `{ ...event, method, ... }`: V8 builds a spread of this size with more
  // properties after it ~10x slower (15 us against 1.3 us per line, measured on Node 20), and this
  // runs for every request.
  const line = Object.assign(
    {},
    // Admin, probes, the dashboard: no usage event, but an error says what the client was told, as on /v1.
    event ?? { keyId: request.gatewayKey?.id, status: reply.statusCode, latencyMs: Math.round(reply.elapsedTime * 100) / 100, errorCode: t.errorCode },
    {
      method: request.method,
      path,
      costUsd: event ? event.costMicros / 1e6 : undefined,
      savedUsd: event?.savedMicros ? event.savedMicros / 1e6 : undefined,
      modelRefused: t.modelRefused,
      storeMs: t.storeMs === undefined ? undefined : Math.round(t.storeMs * 100) / 100,
      upstreamStatus: t.upstreamStatus,
      upstreamRequestId: t.upstreamRequestId,
      clientAborted: (!reply.raw.writableFinished && t.errorCode !== CUT_AT_SHUTDOWN) || undefined,
      streamIncomplete: t.streamIncomplete || undefined,
      requestBody: t.requestBody,
      responseBody: t.responseBody,
    },
  );
  if (path === '/healthz' || path === '/readyz' || path === '/metrics') request.log.debug(line, 'request');
  else request.log.info(line, 'request');
}

export async function buildApp(config: Config, options: BuildOptions = {}): Promise<FastifyInstance> {
  const logger: FastifyBaseLogger = pino(
    { level: config.logLevel, redact: { paths: REDACT, censor: '[redacted]' }, base: { service: 'tollgate' } },
    options.logStream ?? batchedStdout(),
  );

  const app = Fastify({
    loggerInstance: logger,
    // One line per request, written when the response closes (below), instead of Fastify's two.
    logController: new LogController({ disableRequestLogging: true, requestIdLogLabel: 'reqId' }),
    genReqId: requestIdGenerator([config.adminToken, config.metricsToken]),
    // Route parameters are model names too (/v1/models/{id}, /engines/{id}/completions): fine-tuned
    // ids run past Fastify's default of 100 characters. The body's model may have 256.
    routerOptions: { maxParamLength: 256 },
    bodyLimit: config.bodyLimitBytes,
    // A client has this long to send its whole request (then 408), checked every second: without
    // it a stalled upload holds its socket and its body buffer for ever. Given to Node at creation
    // too: set only afterwards (as Fastify does), headersTimeout stays at 60 s, above it, and Node 20
    // then never times out a request whose headers have arrived (checked).
    requestTimeout: config.clientRequestTimeoutMs,
    http: { requestTimeout: config.clientRequestTimeoutMs, connectionsCheckingInterval: 1000, requireHostHeader: false },
    trustProxy: config.trustProxy,
    // Requests that arrive while the server closes (on keep-alive connections still busy) are answered
    // 503 by the onRequest hook below, in OpenAI's shape and logged, not by Fastify's own body.
    return503OnClosing: false,
    // Requests Fastify rejects before any route (bad headers, methods, encodings) answer in OpenAI's shape too.
    clientErrorHandler,
    frameworkErrors: frameworkErrorHandler,
    forceCloseConnections: 'idle',
  });

  const rawStore =
    options.store ??
    (config.redis
      ? await createRedisStore({ ...config.redis, logger })
      : createMemoryStore());
  // Every store call goes through the guard: once a call times out, the instance is degraded and
  // fails fast until the background probe sees the store answer (docs: "When Redis is down"); then
  // it releases the cache locks that timed-out lookups may have taken.
  const storeHealth = createStoreHealth({ store: rawStore, logger, probeIntervalMs: config.outage.probeIntervalMs });
  const store = guardStore(rawStore, storeHealth, { logger });
  const upstream = options.upstream ?? createUpstreamClient(config.upstream, { logger });
  const clock = options.clock ?? Date.now;
  const graceWarning = new ThrottledWarning(logger, 30_000);
  const budgetGaugesWarning = new ThrottledWarning(logger, 30_000);
  const keyResolver = createKeyResolver(store, config.authCacheTtlMs, Date.now, {
    graceMs: config.outage.authGraceMs,
    onGrace: (keyId, err) =>
      graceWarning.warn({ keyId, err: (err as Error).message }, 'store unavailable: key accepted from the outage grace (AUTH_OUTAGE_GRACE_MS)'),
  });
  const prices = loadPriceTable(config.quota.pricesFile);
  const quota = createQuota({
    store,
    prices,
    clock,
    timeZone: config.quota.timeZone,
    defaultMaxOutputTokens: config.quota.defaultMaxOutputTokens,
    leaseTtlMs: config.quota.leaseTtlMs,
    unpricedModelPrice: priceFromUsdPerMillion(config.quota.unpricedUsdPerMillion),
    logger,
    failMode: config.outage.quotaFailMode,
    failOpen: { rpm: config.outage.failOpenRpm, maxInFlight: config.outage.failOpenConcurrency },
    unavailableRetryAfterSeconds: Math.max(1, Math.ceil(config.outage.probeIntervalMs / 1000)),
    settleQueueMax: config.outage.settleQueueMax,
  });
  const cache = createCache({
    store,
    clock,
    enabled: config.cache.enabled,
    scope: config.cache.scope,
    defaultTtlMs: config.cache.ttlMs,
    maxEntryBytes: config.cache.maxEntryBytes,
    singleFlightWaitMs: config.cache.singleFlightWaitMs,
    logger,
  });
  const metrics = createMetrics({
    prices,
    budgets: () => budgetGauges(store, quota),
    // Every scrape while Redis is down: a line per 30 s, as for other outage warnings.
    onBudgetsError: (err) => budgetGaugesWarning.warn({ err: err.message }, 'budget gauges unavailable'),
    degraded: () => modes(),
    upstreamConnections: upstream.connections,
    keyRecord: (id) => store.getKeyById(id),
    // Past the longest request in flight at the change (UPSTREAM_TOTAL_TIMEOUT_MS), plus scrapes.
    retiredSeriesGraceMs: options.retiredSeriesGraceMs ?? config.upstream.totalTimeoutMs + 5 * 60_000,
  });
  store.onKeyChange(({ id }) => metrics.keyChanged(id));
  const alerts = createAlerts({ webhookUrl: config.alertWebhookUrl, store, quota, clock, timeZone: config.quota.timeZone, logger });
  const usage = createUsageRecorder({
    store,
    logger,
    retentionMs: config.usage.retentionMs,
    maxEvents: config.usage.maxEvents,
    flushIntervalMs: config.usage.flushIntervalMs,
    listeners: [metrics.observe],
    bufferMax: config.outage.usageBufferMax,
  });
  const modes = degradedModes({
    up: () => storeHealth.up,
    authGraceMs: config.outage.authGraceMs,
    auth: () => keyResolver.graceStats(),
    quota: () => quota.degraded(),
    usage: () => usage.stats(),
  });
  // The change feed subscribed anew ('*'), so Redis answers: the key resolver has just dropped its
  // outage grace (a revocation may have been missed), and until the next probe every key would be
  // refused 503 auth_unavailable by the guard, which still fails fast. Probed now instead.
  store.onKeyChange(({ hash }) => {
    if (hash === '*') storeHealth.probeNow();
  });
  // The store answers again: write what waited for it, and let the shared limits apply again.
  storeHealth.onRecover(() => {
    quota.resetLocal();
    void quota.flushQueued();
    void usage.flush();
  });
  const authGuards = await createFailedAuthGuards(app, {
    store,
    maxFailures: config.authFailuresPerMinute,
    windowMs: 60_000,
    now: clock,
  });

  // Fastify closes in-flight requests first, then runs these: settlements are flushed before the store closes.
  // Responses whose log line and usage event are not written yet. A stream cut when shutdown's
  // deadline closes its connection settles a little after the server reported itself closed: the
  // drains below wait for it, or its usage would be lost.
  let unaccounted = 0;
  let allAccounted: (() => void) | undefined;
  app.addHook('onClose', async () => {
    if (unaccounted > 0) await new Promise<void>((resolve) => (allAccounted = resolve));
    quota.close();
    await quota.drain();
    await usage.drain();
    // Bounded: a slow or silent webhook must not hold the shutdown past its deadline (server.ts exits DRAIN_GRACE_MS,
    // 5 s, after SHUTDOWN_TIMEOUT_MS). What is not delivered by then, close() logs in full, one line per event.
    await alerts.drain(Math.min(3_000, Math.max(1_000, config.shutdownTimeoutMs)));
    alerts.close();
    await upstream.close();
    storeHealth.close();
    if (!options.store) await store.close();
  });

  app.decorateRequest('gatewayKey', null);
  app.decorateRequest('trace', null as never);
  app.decorateRequest('rawBody', null);

  // JSON for every content type: `curl -d` sends form-urlencoded by default, and OpenAI only speaks JSON.
  // The raw bytes are kept so the body can be forwarded exactly as sent.
  const parseJson = app.getDefaultJsonParser('error', 'error');
  const keepRawAndParse: Parameters<typeof app.addContentTypeParser>[2] = (request, body, done) => {
    // An empty body is no body (many clients send Content-Type: application/json on every call): a
    // body-less route then works, and one that needs a body says so as it would without the header.
    if ((body as Buffer).length === 0) return done(null, undefined);
    // A compressed body would be read as broken JSON; say what is wrong instead.
    const encoding = request.headers['content-encoding'];
    if (encoding !== undefined && encoding.trim().toLowerCase() !== 'identity') return done(unsupportedContentEncoding(encoding), undefined);
    request.rawBody = body as Buffer;
    parseJson(request, (body as Buffer).toString('utf8'), done);
  };
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, keepRawAndParse);
  // Fastify's own text/plain parser would win over '*' and hand the handler a string.
  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser('*', { parseAs: 'buffer' }, keepRawAndParse);

  /**
   * The model of a request that was neither served nor charged is a name the client chose: recorded
   * as the price table's id it is priced as (itself, or a dated snapshot's model, as metrics label
   * it), else as none, the name kept for the log line alone (modelRefused); none too when it was
   * refused as a model the key may not use or upstream does not know (model_not_found). Otherwise
   * any refusal (a 404 for a made-up name, a 400 model_price_unknown, a 429) would write any number
   * of names into the usage aggregates, kept 90 days. A charged request (a hang-up after sending, a
   * cut answer) passed admission and keeps its model.
   */
  function unvouchedModelRefused(trace: RequestTrace, status: number) {
    if (trace.model === undefined || status < 400) return;
    if ((trace.costMicros ?? 0) > 0 || (trace.usage?.totalTokens ?? 0) > 0) return;
    const priced = trace.errorCode === 'model_not_found' ? undefined : prices.pricedAs(trace.model);
    if (priced === trace.model) return;
    trace.modelRefused = trace.model;
    trace.model = priced;
  }

  // Shutdown, per connection: silent ones closed, late requests refused, the deadline's cut said so.
  const connections = watchConnections(app);
  app.addHook('onRequest', async (request, reply) => {
    request.trace = { arrivedAt: clock() };
    reply.header('x-request-id', request.id);
    // 'close' fires for every response, finished or abandoned by the client (onResponse misses
    // the latter). A stream's accounting may finish just after: its line waits for it.
    unaccounted++;
    reply.raw.once('close', () => {
      // Cut by the shutdown deadline (cutOpenConnections): said so, rather than blamed on the client.
      if (connections.cutting && !reply.raw.writableFinished) request.trace.errorCode = CUT_AT_SHUTDOWN;
      const completion = (request.trace.completion ?? Promise.resolve()).catch((err: Error) => {
        // A bug in a stream's accounting must cost one log line, never the process.
        request.log.error({ err: err.message }, 'stream accounting failed');
      });
      void completion
        .then(() => {
          unvouchedModelRefused(request.trace, reply.statusCode);
          const event = isMetered(request) ? usageEventOf(request, reply) : undefined;
          logLine(request, reply, event);
          if (!event) return;
          usage.record(event);
          // Spend moved: let the alerts see whether a budget threshold was crossed.
          if (request.gatewayKey && event.costMicros + event.totalTokens > 0) alerts.check(request.gatewayKey);
        })
        .finally(() => {
          if (--unaccounted === 0) allAccounted?.();
        });
    });
    if (connections.closing) {
      // Fastify already set Connection: close: the client's pool reconnects, to another instance.
      throw new GatewayError(503, 'The gateway is shutting down. Please retry.', 'server_error', 'shutting_down', null, { 'retry-after': '1' });
    }
    // HTTP/1.1 requires Host. Node's own check (off above) answers with an empty 400; this one in
    // OpenAI's shape, and the request is logged like any other.
    if (request.raw.httpVersion === '1.1' && request.headers.host === undefined) {
      throw invalidRequest('The request has no Host header, which HTTP/1.1 requires.', null, 'missing_host');
    }
  });
  // A route that does not exist is a 404 before its body is read (Fastify reads it before its 404
  // handler): an upload to /v1/files over BODY_LIMIT_BYTES was told 413, shrink it, instead of that
  // the gateway has no such URL. preParsing: after every onRequest hook, so a scope that refuses
  // unauthenticated requests first (/admin: 401, never a map of its routes) still does.
  // A callback, not an async function: it runs on every request, and a promise per request is not free.
  // The 404 is sent from here, without done(): nothing after this hook runs for the request.
  app.addHook('preParsing', (request, reply, payload, done) => {
    if (request.is404) notFoundHandler(request, reply);
    else done(null, payload);
  });
  // A budget refused a request: admission keeps the spend below the limit, so only this says the key is blocked
  // (the 100 % alert). Not a request larger than the whole budget: smaller ones still pass. Cheap once sent.
  app.addHook('onError', async (request, _reply, err) => {
    if (err instanceof BudgetRefusal && !err.wholeBudget && request.gatewayKey) alerts.refused(request.gatewayKey, err.limit, err.wanted);
  });
  // An Expect header other than 100-continue: Node's own answer is a 417 with an empty body.
  app.server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    const body = JSON.stringify(openAIErrorBody(`Expect: ${String(req.headers.expect)} is not supported.`, 'invalid_request_error', 'expectation_failed'));
    res.writeHead(417, { 'content-type': 'application/json; charset=utf-8', 'x-content-type-options': 'nosniff', connection: 'close' });
    res.end(body);
  });

  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler(notFoundHandler);
  await app.register(corsPlugin, { origins: config.corsOrigins });

  await app.register(healthRoutes, {
    store,
    health: storeHealth,
    modes: () => modes(),
    upstreamKeys: () => upstream.keyPool.status(),
  });
  await app.register(metricsRoutes, { metrics, token: config.metricsToken, authGuard: authGuards.operators });
  const owners = createResponseOwners({ store, logger: app.log });
  await app.register(v1Routes, { prefix: '/v1', upstream, quota, cache, owners, keyResolver, authGuard: authGuards.keys, logBodies: config.logBodies, maxBodyNodes: config.bodyMaxNodes });
  if (config.adminToken) {
    // The page itself holds no data; it needs the admin token to show any, so it exists only with one.
    await app.register(dashboardRoutes, { prefix: '/dashboard' });
    await app.register(adminRoutes, {
      prefix: '/admin',
      adminToken: config.adminToken,
      store,
      quota,
      cache,
      authGuard: authGuards.operators,
      clock,
      timeZone: config.quota.timeZone,
      // Lowered limits may put a key at or past a threshold with no request left to notice it.
      onLimitsChanged: (key) => alerts.check(key),
    });
  }

  const started = { store: store.kind, upstream: new URL(config.upstream.baseUrl).origin, admin: Boolean(config.adminToken) };
  // Outside the demo an in-memory store is a warning: a REDIS_URL misspelt (config.ts warns of it
  // too) would otherwise give each replica keys and budgets of its own, with one info line to say so.
  const inMemory = 'using the in-memory store: single instance only, state is lost on restart (set REDIS_URL for production)';
  if (store.kind === 'redis') app.log.info(started, 'using the Redis store');
  else if (config.demo) app.log.info(started, inMemory);
  else app.log.warn(started, inMemory);
  return app;
}
