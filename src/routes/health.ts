// Liveness and readiness probes. Readiness names the mode each feature is in when the store is down.
import type { FastifyInstance } from 'fastify';
import type { Store } from '../store/store.js';
import type { StoreHealth } from '../resilience/store-health.js';
import type { DegradedModes } from '../resilience/modes.js';

export interface HealthOptions {
  store: Store;
  /** The store's health monitor (its probe); without one, readiness is a PING as before. */
  health?: StoreHealth;
  /** What each feature does while the store is down, and what waits to be written. */
  modes?: () => DegradedModes;
  /** Server-held OpenAI keys in rotation, for ops to see (they never make the gateway unready:
   *  with every key cooling down, the one back soonest is still used). */
  upstreamKeys?: () => { healthy: boolean }[];
}

export async function healthRoutes(app: FastifyInstance, opts: HealthOptions) {
  const upstreamKeys = () => {
    const keys = opts.upstreamKeys?.();
    return keys ? { upstreamKeys: { total: keys.length, inRotation: keys.filter((k) => k.healthy).length } } : {};
  };

  // Alive while the process can answer at all: no dependencies checked, so it never flaps with Redis.
  app.get('/healthz', async () => ({ status: 'ok' }));

  // Ready when the store answers: 200 {status:'ready', store}. Otherwise 503, so a load balancer
  // takes this instance out while it can only serve a degraded service:
  //   {status:'degraded', ...} the store answered before and stopped: features run in their outage
  //     modes (listed in `modes`), and the background probe brings them back by itself;
  //   {status:'not_ready', ...} the store never answered since start: no key can be authenticated.
  // While the monitor already knows the store is down this answers at once (no PING, no timeout).
  app.get('/readyz', async (_request, reply) => {
    let error: string | undefined;
    if (!opts.health || opts.health.up) {
      try {
        await opts.store.ping();
      } catch (err) {
        error = (err as Error).message;
      }
    } else {
      error = opts.health.lastError ?? 'store unavailable';
    }
    const modes = opts.modes?.();
    if (error === undefined) {
      // Recovered, but work from the outage is still being written: ready, and say what remains.
      const backlog = modes && (modes.buffered.usageEvents > 0 || modes.buffered.settlements > 0);
      return { status: 'ready', store: opts.store.kind, ...upstreamKeys(), ...(backlog && { flushing: modes.buffered }) };
    }
    return reply.code(503).send({
      status: opts.health && !opts.health.everAnswered ? 'not_ready' : 'degraded',
      store: opts.store.kind,
      failed: [{ component: 'store', error }],
      ...upstreamKeys(),
      ...(opts.health?.downSince != null && { since: new Date(opts.health.downSince).toISOString() }),
      ...(modes && { modes: { ...modes.modes, buffered: modes.buffered } }),
    });
  });
}
