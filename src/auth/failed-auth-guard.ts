// Slows down credential guessing: counts failed authentications per client IP (shared through the
// Store by @fastify/rate-limit) and refuses further attempts from an IP that failed too often.
// Two guards, counted apart, so that one kind of failure never locks out the other kind of user:
// - `keys` (/v1, gateway keys): an app with a stale key retrying in a loop, or anyone sharing an
//   address with the apps (a NAT, a proxy, a node), must not lock the apps there out. A valid key
//   is never refused; wrong keys from an address over the limit get 429, not counted again. Each
//   distinct wrong key still costs one store read (the same one again is remembered as unknown:
//   key-resolver.ts), and such an address learns at full speed whether a key is valid: keys are
//   256 random bits, so this limit is not what stops guessing; leaked keys must be revoked.
// - `operators` (admin API, dashboard, /metrics): tokens an operator chose, at least 16
//   characters; an address over the limit is refused before its token is even compared, the right
//   one included, so guessing cannot go on there.
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

export interface FailedAuthGuard {
  /** Throws 429 if this IP is refused. Call before comparing a credential. */
  check(request: FastifyRequest): void;
  /** Counts a failed attempt; throws 429 once the IP is over the limit. */
  fail(request: FastifyRequest): Promise<void>;
}

export interface FailedAuthGuards {
  /** Gateway keys (/v1). */
  keys: FailedAuthGuard;
  /** The admin and metrics tokens. */
  operators: FailedAuthGuard;
}

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

export async function createFailedAuthGuards(app: FastifyInstance, opts: FailedAuthGuardOptions): Promise<FailedAuthGuards> {
  await app.register(rateLimit, {
    global: false,
    store: storeAdapter(opts.store, opts.windowMs),
    // A Redis outage must not lock everybody out: the guard then only works per instance (below).
    skipOnError: true,
  });
  return { keys: guard(app, opts, 'keys'), operators: guard(app, opts, 'operators') };
}

/** One guard: its own count per IP (the store key names the kind) and its own blocked list. */
function guard(app: FastifyInstance, opts: FailedAuthGuardOptions, kind: string): FailedAuthGuard {
  const now = opts.now ?? Date.now;
  const limiter = app.createRateLimit({ max: opts.maxFailures, timeWindow: opts.windowMs, keyGenerator: (req) => `${kind}:${req.ip}` });
  /** IPs this instance has seen exceed the limit, until when: checked without any store call. */
  const blocked = new Map<string, number>();

  function check(request: FastifyRequest) {
    if (opts.maxFailures === 0) return;
    const until = blocked.get(request.ip);
    if (until === undefined) return;
    if (until > now()) throw tooManyFailures(Math.ceil((until - now()) / 1000));
    blocked.delete(request.ip);
  }

  return {
    check,
    async fail(request: FastifyRequest) {
      if (opts.maxFailures === 0) return;
      // Already over the limit here: refused without counting again (no store call).
      check(request);
      const result = await limiter(request);
      if (result.isAllowed || !result.isExceeded) return;
      if (blocked.size > 100_000) blocked.clear(); // bounded memory under a spray of addresses
      blocked.set(request.ip, now() + result.ttl);
      throw tooManyFailures(result.ttlInSeconds);
    },
  };
}
