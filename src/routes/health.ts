// Liveness and readiness probes.
import type { FastifyInstance } from 'fastify';
import type { Store } from '../store/store.js';

export async function healthRoutes(app: FastifyInstance, opts: { store: Store }) {
  // Alive while the process can answer at all: no dependencies checked, so it never flaps with Redis.
  app.get('/healthz', async () => ({ status: 'ok' }));

  // Ready when the store answers; otherwise 503 naming what failed, so a load balancer drains us.
  app.get('/readyz', async (_request, reply) => {
    try {
      await opts.store.ping();
      return { status: 'ready', store: opts.store.kind };
    } catch (err) {
      return reply.code(503).send({
        status: 'not_ready',
        store: opts.store.kind,
        failed: [{ component: 'store', error: (err as Error).message }],
      });
    }
  });
}
