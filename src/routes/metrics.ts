// GET /metrics: the Prometheus scrape endpoint, optionally behind a bearer token.
import type { FastifyInstance } from 'fastify';
import { bearerToken, safeEqual } from '../auth/bearer.js';
import { GatewayError } from '../errors.js';
import type { Metrics } from '../metrics/metrics.js';

export interface MetricsRouteOptions {
  metrics: Metrics;
  /** When set, scrapes must send `Authorization: Bearer <token>`. */
  token?: string;
}

export async function metricsRoutes(app: FastifyInstance, opts: MetricsRouteOptions) {
  const { registry } = opts.metrics;
  const token = opts.token || undefined;

  app.get('/metrics', async (request, reply) => {
    if (token !== undefined) {
      const given = bearerToken(request.headers.authorization);
      // Compared in constant time; a missing header is compared too, so both failures take as long.
      if (!safeEqual(given ?? '', token) || given === undefined) {
        throw new GatewayError(401, 'A valid metrics token is required (Authorization: Bearer <token>).', 'invalid_request_error', 'invalid_metrics_token');
      }
    }
    const body = await registry.metrics();
    return reply.header('cache-control', 'no-store').type(registry.contentType).send(body);
  });
}
