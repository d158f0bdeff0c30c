// GET /metrics: the Prometheus scrape endpoint, optionally behind a bearer token.
import type { FastifyInstance } from 'fastify';
import type { FailedAuthGuard } from '../auth/failed-auth-guard.js';
import { bearerToken, safeEqual } from '../auth/bearer.js';
import { GatewayError } from '../errors.js';
import type { Metrics } from '../metrics/metrics.js';

export interface MetricsRouteOptions {
  metrics: Metrics;
  /** When set, scrapes must send `Authorization: Bearer <token>`. */
  token?: string;
  /**
   * Wrong tokens count against the same per-IP failure limit as wrong gateway keys and admin tokens;
   * an address over it is refused (429) before its token is even compared.
   */
  authGuard?: Pick<FailedAuthGuard, 'check' | 'fail'>;
}

export async function metricsRoutes(app: FastifyInstance, opts: MetricsRouteOptions) {
  const { registry } = opts.metrics;
  const token = opts.token || undefined;

  app.get('/metrics', async (request, reply) => {
    if (token !== undefined) {
      opts.authGuard?.check(request);
      const given = bearerToken(request.headers.authorization);
      // Compared in constant time; a missing header is compared too, so both failures take as long.
      if (!safeEqual(given ?? '', token) || given === undefined) {
        // Only a token that was sent counts as a guess (as on /admin): a bare scrape is a misconfiguration.
        if (given !== undefined) await opts.authGuard?.fail(request);
        throw new GatewayError(401, 'A valid metrics token is required (Authorization: Bearer <token>).', 'invalid_request_error', 'invalid_metrics_token');
      }
    }
    const body = await registry.metrics();
    return reply.header('cache-control', 'no-store').type(registry.contentType).send(body);
  });
}
