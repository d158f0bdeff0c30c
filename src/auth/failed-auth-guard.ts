// Slows down key guessing: counts failed authentications per client IP (shared through the Store
// by @fastify/rate-limit) and refuses further attempts from an IP that failed too often.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import rateLimit from '@fastify/rate-limit';
import type { Store } from '../store/store.js';
import { GatewayError } from '../errors.js';

export interface FailedAuthGuardOptions {
  store: Store;
  /** Failures allowed per IP per window before attempts are refused. 0 turns the guard off. */
  maxFailures: number;
  windowMs: number;
  now?: () => number;
}

export type FailedAuthGuard = Awaited<ReturnType<typeof createFailedAuthGuard>>;

/** @fastify/rate-limit's store contract, backed by our Store's fixed-window counter (Redis or memory). */
function storeAdapter(store: Store, windowMs: number) {
  return class FailedAuthStore {
    // The plugin passes the window as a third argument its type declarations do not mention.
    incr(key: string, cb: (err: Error | null, res?: { current: number; ttl: number }) => void, timeWindow = windowMs) {
      store.hit(`authfail:${key}`, timeWindow).then(
        (r) => cb(null, { current: r.count, ttl: r.ttlMs }),
        (err: Error) => cb(err),
      );
    }
    child() {
      return this;
    }
  };
}

const tooManyFailures = (retryAfterSeconds: number) =>
  new GatewayError(
    429,
    'Too many failed authentication attempts from this address. Try again later.',
    'invalid_request_error',
    'too_many_failed_attempts',
    null,
    { 'retry-after': String(Math.max(1, retryAfterSeconds)), 'x-should-retry': 'false' },
  );

export async function createFailedAuthGuard(app: FastifyInstance, opts: FailedAuthGuardOptions) {
  const now = opts.now ?? Date.now;
  await app.register(rateLimit, {
    global: false,
    store: storeAdapter(opts.store, opts.windowMs),
    // A Redis outage must not lock everybody out: the guard then only works per instance (below).
    skipOnError: true,
  });
  const limiter = app.createRateLimit({ max: opts.maxFailures, timeWindow: opts.windowMs, keyGenerator: (req) => req.ip });
  /** IPs this instance has seen exceed the limit, until when. Checked before any lookup, costs nothing. */
  const blocked = new Map<string, number>();

  return {
    /** Throws 429 if this IP is refused. Call before looking a credential up. */
    check(request: FastifyRequest) {
      if (opts.maxFailures === 0) return;
      const until = blocked.get(request.ip);
      if (until === undefined) return;
      if (until > now()) throw tooManyFailures(Math.ceil((until - now()) / 1000));
      blocked.delete(request.ip);
    },
    /** Counts a failed attempt; throws 429 once the IP is over the limit. */
    async fail(request: FastifyRequest) {
      if (opts.maxFailures === 0) return;
      const result = await limiter(request);
      if (result.isAllowed || !result.isExceeded) return;
      if (blocked.size > 100_000) blocked.clear(); // bounded memory under a spray of addresses
      blocked.set(request.ip, now() + result.ttl);
      throw tooManyFailures(result.ttlInSeconds);
    },
  };
}
