// CORS for browser clients of the API, off unless origins are configured (CORS_ORIGINS).
import type { FastifyInstance } from 'fastify';
import fastifyCors from '@fastify/cors';

export interface CorsOptions {
  /** Exact origins allowed (`https://app.example.com`), or `*` for any. Empty: no CORS headers at all. */
  origins: string[];
}

/** Headers a browser script may read: request ids, rate limits, cache status. */
const EXPOSED = [
  'x-request-id',
  'x-upstream-request-id',
  'x-tollgate-cache',
  'retry-after',
  // The openai SDK reads this first: without it a browser client waits the rounded-up seconds.
  'retry-after-ms',
  'x-should-retry',
  'x-ratelimit-limit-requests',
  'x-ratelimit-remaining-requests',
  'x-ratelimit-reset-requests',
  'x-ratelimit-limit-tokens',
  'x-ratelimit-remaining-tokens',
  'x-ratelimit-reset-tokens',
];

/** `https://a.example/` and `https://a.example` are the same origin; browsers send the latter. */
function normalise(origin: string): string {
  return origin.trim().replace(/\/+$/, '');
}

async function cors(app: FastifyInstance, opts: CorsOptions) {
  const origins = new Set(opts.origins.map(normalise).filter(Boolean));
  if (origins.size === 0) return; // off: not even the OPTIONS route, so preflights get the usual 404
  const any = origins.has('*');
  await app.register(fastifyCors, {
    // A function, not a list: for an origin not allowed it answers `false`, which turns CORS off for
    // that request entirely (no access-control-* header, and its preflight is a plain 404).
    origin: (origin, cb) => {
      if (origin === undefined) return cb(null, false);
      if (any) return cb(null, '*');
      cb(null, origins.has(origin) ? origin : false);
    },
    // Bearer tokens, never cookies: credentialed requests are not needed and stay refused.
    credentials: false,
    methods: ['GET', 'POST', 'PATCH', 'DELETE'],
    // allowedHeaders unset: the headers a preflight asks for are allowed (the SDKs send x-stainless-*,
    // which changes with their versions); only allowed origins ever get this far.
    exposedHeaders: EXPOSED,
    maxAge: 600,
    // An OPTIONS from an allowed origin without access-control-request-method is not worth a text/plain 400.
    strictPreflight: false,
  });
}

/**
 * Not encapsulated (what fastify-plugin does, without depending on it): its hook and OPTIONS route
 * cover /v1, /admin and every other route of the app it is registered on.
 */
export const corsPlugin = Object.assign(cors, {
  [Symbol.for('skip-override')]: true,
  [Symbol.for('fastify.display-name')]: 'tollgate-cors',
});
