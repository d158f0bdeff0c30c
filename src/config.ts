// The environment, validated once at boot. Nothing else in Tollgate reads process.env.
import { isIP } from 'node:net';
import { z } from 'zod';
import { validTimeZone } from './quota/periods.js';
import { parseRedisAddresses, type RedisConnectionOptions } from './store/redis-connection.js';

const bool = z
  .enum(['true', 'false', '1', '0', 'yes', 'no', ''])
  .transform((v) => v === 'true' || v === '1' || v === 'yes');
/**
 * A whole number written in plain decimal digits. Number() would also read `0x1F90` as 8080, `1e3`
 * as 1000 or `0b11` as 3: a typo or a copied expression, never what a setting means.
 */
const int = (min: number, max: number) =>
  z
    .string()
    .trim()
    .regex(/^\d+$/, { message: 'must be a whole number written in decimal digits only, e.g. 8080' })
    .transform(Number)
    .pipe(z.number().int().min(min).max(max));
const optionalString = z
  .string()
  .optional()
  .transform((v) => (v === undefined || v.trim() === '' ? undefined : v.trim()));

/**
 * A bearer token is one word of an Authorization header: a space, a control character or a
 * character outside ASCII (which clients send in differing encodings, or refuse) would make a
 * token that can never authenticate. The message never includes the value.
 */
const headerSafeToken = (v: string | undefined) => v === undefined || /^[\x21-\x7e]+$/.test(v);
const HEADER_SAFE_TOKEN =
  'must be printable ASCII without spaces (letters, digits and punctuation: it is sent in an Authorization header), e.g. openssl rand -hex 24';

const redisAddresses = z
  .string()
  .transform((v, ctx) => {
    const { addresses, problems } = parseRedisAddresses(v);
    for (const message of problems) ctx.addIssue({ code: 'custom', message });
    return addresses;
  })
  .optional();

/**
 * Why REDIS_URL cannot be used, or undefined. Checked here (new URL(), a numeric port) so that a
 * typo is reported as configuration, never as an ioredis TypeError whose stack prints the password.
 */
function redisUrlProblem(v: string): string | undefined {
  const shape = 'must be redis://host:port or rediss://host:port (for a cluster, set REDIS_CLUSTER_NODES instead)';
  if (!/^rediss?:\/\/./.test(v)) return shape;
  // The port as written: new URL() drops a default one and rejects most junk, but check it anyway.
  const authority = /^rediss?:\/\/([^/?#]*)/.exec(v)?.[1] ?? '';
  const hostPort = authority.slice(authority.lastIndexOf('@') + 1);
  const port = /^(?:\[[^\]]*\]|[^:]*)(?::(.*))?$/.exec(hostPort)?.[1];
  if (port !== undefined && port !== '' && !(/^\d{1,5}$/.test(port) && Number(port) >= 1 && Number(port) <= 65535)) {
    return `the port must be a number from 1 to 65535 (${shape})`;
  }
  let url: URL;
  try {
    url = new URL(v);
  } catch {
    return `not a valid URL (${shape})`;
  }
  if (url.hostname === '') return `no host (${shape})`;
  if (url.pathname !== '' && url.pathname !== '/' && !/^\/\d+$/.test(url.pathname)) {
    return 'the path, if any, must be a database number, e.g. redis://host:6379/0';
  }
  return undefined;
}

/** Whether a URL (already known to parse) carries a user name or password. */
function hasCredentials(v: string): boolean {
  try {
    const url = new URL(v);
    return url.username !== '' || url.password !== '';
  } catch {
    return false;
  }
}

/** Names @fastify/proxy-addr knows for address ranges: 127.0.0.0/8 and ::1, link-local, private (10/8, 172.16/12, 192.168/16, fc00::/7). */
const PROXY_RANGE_NAMES = new Set(['loopback', 'linklocal', 'uniquelocal']);

/** A proxy address as TRUST_PROXY lists them: an IP, an IP/prefix (CIDR), or one of PROXY_RANGE_NAMES. */
function validProxyAddress(entry: string): boolean {
  if (PROXY_RANGE_NAMES.has(entry)) return true;
  const [ip, prefix, ...rest] = entry.split('/');
  const family = isIP(ip ?? '');
  if (family === 0 || rest.length > 0) return false;
  if (prefix === undefined) return true;
  return /^\d{1,3}$/.test(prefix) && Number(prefix) <= (family === 4 ? 32 : 128);
}

/**
 * TRUST_PROXY: false (the default: the peer's address is the client's), true (every hop of
 * X-Forwarded-For is trusted: its leftmost entry, which the client itself can write, becomes the
 * address), or the proxies' addresses: the client's is then the rightmost one that is not a proxy,
 * which a client cannot choose.
 */
const trustProxy = z
  .string()
  .default('false')
  .transform((v, ctx): boolean | string[] => {
    const value = v.trim();
    if (['', 'false', '0', 'no'].includes(value)) return false;
    if (['true', '1', 'yes'].includes(value)) return true;
    const entries = value.split(',').map((s) => s.trim()).filter(Boolean);
    for (const entry of entries) {
      if (!validProxyAddress(entry)) {
        ctx.addIssue({
          code: 'custom',
          message: `"${entry}" is not a proxy address: give true, false, or your proxies' addresses, comma-separated: IPs, CIDR ranges (10.0.0.0/8) or loopback, linklocal, uniquelocal`,
        });
      }
    }
    return entries;
  });

/**
 * A CORS origin as browsers send it in the Origin header: scheme://host[:port], no path, query,
 * fragment or credentials (a trailing slash is tolerated: the plugin drops it), or `*` for any.
 * For http(s) it must be the URL's own origin, so an uppercase host or a default port, which no
 * browser's Origin header would ever match, is refused too.
 */
function validOrigin(origin: string): boolean {
  // `null`: what browsers send from file:// pages, sandboxed iframes and some desktop apps.
  if (origin === '*' || origin === 'null') return true;
  const bare = origin.replace(/\/+$/, '');
  if (!/^[a-z][a-z\d+.-]*:\/\/[^/?#@\s]+$/i.test(bare)) return false;
  let url: URL;
  try {
    url = new URL(bare);
  } catch {
    return false;
  }
  if (url.hostname === '') return false;
  if (url.protocol === 'http:' || url.protocol === 'https:') return url.origin === bare;
  return true;
}

const envSchema = z.object({
  PORT: int(0, 65535).default(8080),
  HOST: z.string().min(1).default('0.0.0.0'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Log request bodies (prompts) and non-streamed response bodies. Off: they may hold personal data. */
  LOG_BODIES: bool.default(false),

  OPENAI_API_KEY: optionalString,
  /** Several server-held keys, comma-separated; load is spread over them. Merged with OPENAI_API_KEY. */
  OPENAI_API_KEYS: optionalString,
  OPENAI_BASE_URL: z.url({ protocol: /^https?$/ }).default('https://api.openai.com/v1'),
  OPENAI_ORGANIZATION: optionalString,
  OPENAI_PROJECT: optionalString,

  UPSTREAM_CONNECT_TIMEOUT_MS: int(1, 600_000).default(10_000),
  /** Until upstream sends response headers. Non-streamed completions can think for minutes. */
  UPSTREAM_HEADERS_TIMEOUT_MS: int(1, 3_600_000).default(300_000),
  /** Longest silence between two body chunks (e.g. SSE events) before the stream is cut. */
  UPSTREAM_IDLE_TIMEOUT_MS: int(1, 3_600_000).default(120_000),
  /** Whole upstream exchange, headers to last byte. */
  UPSTREAM_TOTAL_TIMEOUT_MS: int(1, 7_200_000).default(600_000),
  UPSTREAM_MAX_CONNECTIONS: int(1, 100_000).default(256),
  /** Retries of a failed upstream call (429, 5xx, connection errors), only before anything reached the client. */
  UPSTREAM_MAX_RETRIES: int(0, 10).default(2),
  /** Jittered exponential backoff between retries: base delay, doubled each attempt, capped. */
  UPSTREAM_RETRY_BASE_DELAY_MS: int(0, 60_000).default(500),
  UPSTREAM_RETRY_MAX_DELAY_MS: int(0, 300_000).default(8_000),
  /** Longest upstream retry-after honoured; a longer one is passed to the client instead of waited for. */
  UPSTREAM_RETRY_AFTER_MAX_MS: int(0, 600_000).default(20_000),
  /** A key answered 429 without retry-after: out of rotation this long. */
  UPSTREAM_KEY_COOLDOWN_MS: int(0, 3_600_000).default(30_000),
  /** A key answered 401 (revoked or invalid) or 429 insufficient_quota (its OpenAI quota spent): out of rotation this long. */
  UPSTREAM_KEY_INVALID_COOLDOWN_MS: int(0, 86_400_000).default(600_000),

  // Where Redis is: one of REDIS_URL (one server), REDIS_CLUSTER_NODES (a cluster), REDIS_SENTINELS (Sentinel).
  // Its problems are reported without its value: it may carry a password.
  REDIS_URL: optionalString.superRefine((v, ctx) => {
    if (v === undefined) return;
    const problem = redisUrlProblem(v);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  }),
  /** Seed nodes of a Redis Cluster, `host:port,host:port`; the others are discovered. */
  REDIS_CLUSTER_NODES: redisAddresses,
  /** Sentinels, `host:port,host:port`, watching the master named REDIS_SENTINEL_NAME. */
  REDIS_SENTINELS: redisAddresses,
  REDIS_SENTINEL_NAME: optionalString,
  /** Credentials of cluster nodes or of the Sentinel-named servers (REDIS_URL carries its own). */
  REDIS_USERNAME: optionalString,
  REDIS_PASSWORD: optionalString,
  REDIS_PREFIX: z.string().regex(/^[\w:.-]{1,64}$/).default('tg:'),
  REDIS_COMMAND_TIMEOUT_MS: int(10, 60_000).default(1000),
  /** While Redis is down, how often a background PING checks whether it is back (docs/architecture.md "When Redis is down"). */
  STORE_PROBE_INTERVAL_MS: int(100, 60_000).default(1000),
  /** While Redis is down, a key looked up successfully this recently keeps working (10 min: rides out a restart or failover). 0: off. */
  AUTH_OUTAGE_GRACE_MS: int(0, 86_400_000).default(600_000),
  /** While Redis is down: 'closed' refuses with 503 (budgets cannot be checked); 'open' admits under local per-instance caps. */
  QUOTA_FAIL_MODE: z.enum(['closed', 'open']).default('closed'),
  /** QUOTA_FAIL_MODE=open: requests per key per minute per instance while Redis is down (the key's own rpm if lower). */
  QUOTA_FAIL_OPEN_RPM: int(1, 1_000_000).default(60),
  /** QUOTA_FAIL_MODE=open: requests per key in flight per instance while Redis is down (the key's own maxConcurrent if lower). */
  QUOTA_FAIL_OPEN_CONCURRENCY: int(1, 100_000).default(10),
  /** Settlements kept in memory while Redis is down, written when it is back; past this they are logged in full. */
  QUOTA_SETTLE_QUEUE_MAX: int(0, 10_000_000).default(100_000),
  /** Usage events kept in memory while Redis is down, written in order when it is back; past this they are logged in full. */
  USAGE_BUFFER_MAX: int(0, 10_000_000).default(100_000),

  ADMIN_TOKEN: optionalString
    .refine((v) => v === undefined || v.length >= 16, { message: 'must be at least 16 characters' })
    .refine(headerSafeToken, { message: HEADER_SAFE_TOKEN }),
  /** How long an authenticated key is trusted without asking the store (pub/sub invalidates sooner). */
  AUTH_CACHE_TTL_MS: int(0, 60_000).default(5_000),

  /** Time zone of the calendar day and month that budgets reset on (IANA name). */
  QUOTA_TIME_ZONE: z.string().refine(validTimeZone, { message: 'must be an IANA time zone, e.g. UTC or Europe/Paris' }).default('UTC'),
  /**
   * Output tokens reserved (per choice) for a request that sets no max_tokens / max_completion_tokens.
   * Endpoints with a documented default reserve that instead (legacy completions: 16).
   */
  DEFAULT_MAX_OUTPUT_TOKENS: int(1, 10_000_000).default(4096),
  /** A JSON price table merged over the shipped one (same format as src/openai/prices.json). */
  PRICES_FILE: optionalString,
  /** Price (USD per 1M tokens) charged for models missing from the table, for keys without a USD budget. */
  UNPRICED_INPUT_USD_PER_MILLION: z.coerce.number().min(0).max(100_000).default(10),
  UNPRICED_OUTPUT_USD_PER_MILLION: z.coerce.number().min(0).max(100_000).default(30),
  /** A request's concurrency lease is renewed while it runs; a lease not renewed this long is released. */
  LEASE_TTL_MS: int(3_000, 3_600_000).default(60_000),
  /** Failed authentications allowed per client IP per minute; then 429 until the minute is over. 0: off. */
  AUTH_FAILURES_PER_MINUTE: int(0, 1_000_000).default(30),

  /** The response cache (chat, completions, embeddings, moderations, stateless Responses requests). Per key it can also be switched off. */
  CACHE_ENABLED: bool.default(true),
  /** 'key': entries are private to the gateway key that made them; 'global': shared by all keys. */
  CACHE_SCOPE: z.enum(['key', 'global']).default('key'),
  CACHE_TTL_SECONDS: int(1, 365 * 86_400).default(3600),
  CACHE_MAX_ENTRY_BYTES: int(1024, 100 * 1024 * 1024).default(1024 * 1024),
  /** How long identical concurrent requests wait for the one in flight before calling upstream themselves. */
  CACHE_SINGLE_FLIGHT_WAIT_MS: int(100, 600_000).default(30_000),

  /** Hourly usage aggregates are kept this long. */
  USAGE_RETENTION_DAYS: int(1, 3650).default(90),
  /** The raw usage event stream keeps about this many of the latest events. */
  USAGE_EVENTS_MAX: int(1000, 100_000_000).default(1_000_000),
  /** Usage events go to Redis in batches, one per this interval: reports lag by at most this much. */
  USAGE_FLUSH_MS: int(10, 10_000).default(250),
  /** Budget alerts (50%, 80%, 100% of any budget) are POSTed here as JSON. Unset: no alerts. */
  ALERT_WEBHOOK_URL: z
    .url({ protocol: /^https?$/ })
    // undici refuses a URL with credentials: every alert would fail. The message never prints the value.
    .refine((v) => !hasCredentials(v), {
      message: 'must not contain credentials (user:password@): the alerts could never be delivered; put a token in the path or query instead',
    })
    .optional(),
  /** When set, GET /metrics needs `Authorization: Bearer <METRICS_TOKEN>`. At least 16 characters, like ADMIN_TOKEN; the problem never prints the value. */
  METRICS_TOKEN: optionalString
    .refine((v) => v === undefined || v.length >= 16, { message: 'must be at least 16 characters (e.g. openssl rand -hex 24)' })
    .refine(headerSafeToken, { message: HEADER_SAFE_TOKEN }),

  BODY_LIMIT_BYTES: int(1024, 1024 * 1024 * 1024).default(10 * 1024 * 1024),
  /** The most objects, arrays and object fields a request body may hold (DEFAULT_MAX_BODY_NODES, src/openai/endpoints.ts). */
  BODY_MAX_NODES: int(1000, 100_000_000).default(100_000),
  /** How long a client has to send a whole request, headers and body; then 408. 0: no limit. */
  CLIENT_REQUEST_TIMEOUT_MS: int(0, 3_600_000).default(60_000),
  /** Size the V8 young generation is held at (MB per semi-space, it has two); 0 or 16: V8's default (src/heap.ts). */
  V8_MAX_SEMI_SPACE_MB: int(0, 16).default(4),
  /** Old-generation growth allowed between full GCs, percent of its live size; 0: V8's default (src/heap.ts). */
  V8_HEAP_GROWING_PERCENT: int(0, 1000).default(15),
  /** glibc's freed native memory is given back to the OS this often (malloc_trim); 0: never (src/native-memory.ts). */
  MEMORY_TRIM_INTERVAL_MS: int(0, 3_600_000).default(1000),
  SHUTDOWN_TIMEOUT_MS: int(0, 3_600_000).default(30_000),
  TRUST_PROXY: trustProxy,
  /** Browser origins allowed to call the API (CORS), comma-separated; empty: CORS off. */
  CORS_ORIGINS: z
    .string()
    .default('')
    .transform((v) => v.split(',').map((o) => o.trim()).filter(Boolean))
    .superRefine((origins, ctx) => {
      for (const origin of origins) {
        if (!validOrigin(origin)) {
          ctx.addIssue({ code: 'custom', message: `"${origin}" is not an origin: each must be scheme://host[:port] as browsers send it (lowercase, no path, no default port), e.g. https://app.example.com, or *` });
        }
      }
    }),
  /** Run with the built-in fake OpenAI upstream (also `--demo`); the store is memory unless REDIS_URL is set. */
  TOLLGATE_DEMO: bool.default(false),
});

export type Env = z.infer<typeof envSchema>;

export interface Config {
  port: number;
  host: string;
  logLevel: Env['LOG_LEVEL'];
  logBodies: boolean;
  demo: boolean;
  upstream: {
    baseUrl: string;
    /** The first of apiKeys (kept for callers that know one key). */
    apiKey: string;
    /** Every server-held key, de-duplicated, in order; empty only in demo mode. */
    apiKeys: string[];
    organization?: string;
    project?: string;
    connectTimeoutMs: number;
    headersTimeoutMs: number;
    idleTimeoutMs: number;
    totalTimeoutMs: number;
    maxConnections: number;
    maxRetries: number;
    retryBaseDelayMs: number;
    retryMaxDelayMs: number;
    retryAfterMaxMs: number;
    keyCooldownMs: number;
    keyInvalidCooldownMs: number;
  };
  /** Exactly one of url, clusterNodes or sentinels (+ sentinelName) is set. */
  redis?: Pick<RedisConnectionOptions, 'url' | 'clusterNodes' | 'sentinels' | 'sentinelName' | 'username' | 'password'> & {
    prefix: string;
    commandTimeoutMs: number;
  };
  /** What each feature does while the store is down (src/resilience/). */
  outage: {
    probeIntervalMs: number;
    authGraceMs: number;
    quotaFailMode: 'closed' | 'open';
    failOpenRpm: number;
    failOpenConcurrency: number;
    settleQueueMax: number;
    usageBufferMax: number;
  };
  adminToken?: string;
  authCacheTtlMs: number;
  authFailuresPerMinute: number;
  quota: {
    timeZone: string;
    defaultMaxOutputTokens: number;
    pricesFile?: string;
    unpricedUsdPerMillion: { input: number; output: number };
    leaseTtlMs: number;
  };
  usage: { retentionMs: number; maxEvents: number; flushIntervalMs: number };
  alertWebhookUrl?: string;
  metricsToken?: string;
  cache: { enabled: boolean; scope: 'key' | 'global'; ttlMs: number; maxEntryBytes: number; singleFlightWaitMs: number };
  bodyLimitBytes: number;
  /** The most objects, arrays and object fields a request body may hold. */
  bodyMaxNodes: number;
  /** How long a client has to send a whole request, ms; 0: no limit. */
  clientRequestTimeoutMs: number;
  /** V8 heap sizing (src/heap.ts). */
  heap: { maxSemiSpaceMb: number; growingPercent: number };
  /** How often freed native memory is given back to the OS, ms; 0: never (src/native-memory.ts). */
  memoryTrimIntervalMs: number;
  shutdownTimeoutMs: number;
  /** Fastify's trustProxy: false, true (every hop), or the proxies' addresses and ranges. */
  trustProxy: boolean | string[];
  corsOrigins: string[];
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

/** OPENAI_API_KEY then OPENAI_API_KEYS (comma-separated), blanks dropped, duplicates removed. */
function upstreamKeys(e: Pick<Env, 'OPENAI_API_KEY' | 'OPENAI_API_KEYS'>): string[] {
  const all = [e.OPENAI_API_KEY, ...(e.OPENAI_API_KEYS ?? '').split(',')].map((k) => k?.trim() ?? '');
  return [...new Set(all.filter((k) => k !== ''))];
}

/**
 * What is accepted but probably wrong: one line each, printed at start-up (the config still loads).
 * OPENAI_BASE_URL: OpenAI's paths hang off /v1 and the gateway appends /chat/completions etc., so a
 * base without it gets 404 for every request while /readyz says ready; some OpenAI-compatible
 * proxies use other paths, so it is a warning, not an error. The value is not printed.
 */
function configWarnings(e: Env): string[] {
  const warnings: string[] = [];
  if (e.TRUST_PROXY === true) {
    warnings.push(
      "TRUST_PROXY=true trusts every X-Forwarded-For entry, so a client can choose the address it is counted under (AUTH_FAILURES_PER_MINUTE: dodge the limit, or lock another address out); give your proxies' addresses instead, e.g. TRUST_PROXY=10.0.0.0/8 or TRUST_PROXY=loopback",
    );
  }
  const path = new URL(e.OPENAI_BASE_URL).pathname.replace(/\/+$/, '');
  if (!path.endsWith('/v1')) {
    warnings.push(
      'OPENAI_BASE_URL does not end in /v1 (expected e.g. https://api.openai.com/v1): requests go to its path + /chat/completions etc., which OpenAI answers with 404; ignore this only for a compatible server that uses another path',
    );
  }
  return warnings;
}

/**
 * The first words of Tollgate's own variables: another variable that starts with one is probably a
 * misspelt one of ours. Not OPENAI_ or LOG_: other tools read variables of those names
 * (OPENAI_LOG, LOG_FORMAT); a typo of ours there is still caught within two edits, and the SDKs'
 * names for ours are named below.
 */
const OUR_PREFIXES = new Set(['UPSTREAM', 'REDIS', 'STORE', 'AUTH', 'QUOTA', 'USAGE', 'ADMIN', 'CACHE', 'ALERT', 'METRICS', 'LEASE', 'PRICES', 'UNPRICED', 'SHUTDOWN', 'CORS', 'TOLLGATE']);

/** Names the openai SDKs (and older tools) read for what Tollgate calls otherwise: set for Tollgate, they would do nothing. */
const OTHER_TOOLS_NAMES: Record<string, string> = {
  OPENAI_ORG_ID: 'OPENAI_ORGANIZATION',
  OPENAI_PROJECT_ID: 'OPENAI_PROJECT',
  OPENAI_API_BASE: 'OPENAI_BASE_URL',
  OPENAI_KEY: 'OPENAI_API_KEY',
};

/**
 * What Kubernetes sets in every pod for each Service of its namespace (unless enableServiceLinks is
 * off): REDIS_SERVICE_HOST, REDIS_PORT, REDIS_PORT_6379_TCP_ADDR... for a Service named redis.
 */
const SERVICE_LINK = /_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT|PORT_\d+_(TCP|UDP|SCTP)(_ADDR|_PORT|_PROTO)?)$/;

/**
 * Variables that look like Tollgate's and are not (a typo: REDIS_ULR, ADMNI_TOKEN): ignored by the
 * schema, which would start a memory-only instance, or one without its admin API, without a word.
 * One warning each, with the nearest real name. Short names (HOME, PATH) are not compared: too
 * many of the machine's own are near ours.
 */
function unknownVariableWarnings(env: Record<string, unknown>): string[] {
  const known = Object.keys(envSchema.shape);
  const warnings: string[] = [];
  for (const name of Object.keys(env)) {
    if (name in envSchema.shape || SERVICE_LINK.test(name)) continue;
    const meant = OTHER_TOOLS_NAMES[name];
    const nearest = known.map((k) => ({ k, d: editDistance(name, k) })).sort((a, b) => a.d - b.d)[0]!;
    const ours = OUR_PREFIXES.has(name.split('_', 1)[0]!);
    if (!meant && !ours && !(name.length >= 8 && nearest.d <= 2)) continue;
    const hint = meant ? ` (Tollgate's is ${meant})` : nearest.d <= 3 ? ` (did you mean ${nearest.k}?)` : '';
    warnings.push(`${name} is not a Tollgate variable, and is ignored${hint}; see .env.example for them all`);
  }
  return warnings;
}

/** Optimal string alignment distance: insertions, deletions, substitutions and swaps of neighbours. */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
}

/** The REDIS_* variables that only make sense together (each one alone is checked by the schema). */
function redisProblems(e: Env): string[] {
  const problems: string[] = [];
  const targets = (['REDIS_URL', 'REDIS_CLUSTER_NODES', 'REDIS_SENTINELS'] as const).filter((name) => e[name] !== undefined);
  if (targets.length > 1) problems.push(`${targets.join(', ')}: set only one (one server, a cluster, or Sentinel)`);
  if (e.REDIS_SENTINELS !== undefined && e.REDIS_SENTINEL_NAME === undefined) {
    problems.push('REDIS_SENTINEL_NAME: required with REDIS_SENTINELS (the master name the Sentinels monitor)');
  }
  if (e.REDIS_SENTINEL_NAME !== undefined && e.REDIS_SENTINELS === undefined) {
    problems.push('REDIS_SENTINEL_NAME: only used with REDIS_SENTINELS');
  }
  for (const name of ['REDIS_USERNAME', 'REDIS_PASSWORD'] as const) {
    if (e[name] !== undefined && e.REDIS_CLUSTER_NODES === undefined && e.REDIS_SENTINELS === undefined) {
      problems.push(`${name}: only used with REDIS_CLUSTER_NODES or REDIS_SENTINELS (put credentials in REDIS_URL)`);
    }
  }
  return problems;
}

function redisConfig(e: Env): Config['redis'] {
  const common = { prefix: e.REDIS_PREFIX, commandTimeoutMs: e.REDIS_COMMAND_TIMEOUT_MS };
  const credentials = {
    ...(e.REDIS_USERNAME !== undefined && { username: e.REDIS_USERNAME }),
    ...(e.REDIS_PASSWORD !== undefined && { password: e.REDIS_PASSWORD }),
  };
  if (e.REDIS_URL) return { url: e.REDIS_URL, ...common };
  if (e.REDIS_CLUSTER_NODES) return { clusterNodes: e.REDIS_CLUSTER_NODES, ...credentials, ...common };
  if (e.REDIS_SENTINELS) return { sentinels: e.REDIS_SENTINELS, sentinelName: e.REDIS_SENTINEL_NAME, ...credentials, ...common };
  return undefined;
}

/**
 * Validates the environment and returns the config, or throws one ConfigError naming every problem.
 * In demo mode OPENAI_API_KEY may be absent: the caller points the upstream at the built-in fake.
 */
export function loadConfig(
  env: Record<string, string | undefined>,
  argv: string[] = [],
  /** Where start-up warnings (accepted but probably wrong values) go, one line each: stderr by default. */
  warn: (line: string) => void = (line) => console.warn(`Configuration warning: ${line}`),
): Config {
  // An empty variable (`PORT=` in an env file) means unset, so it takes the default.
  const set = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v.trim() !== ''));
  const parsed = envSchema.safeParse(set);
  const problems: string[] = parsed.success
    ? []
    : parsed.error.issues.map((i) => `${i.path.join('.') || 'environment'}: ${i.message}`);
  const demo = argv.includes('--demo') || (parsed.success && parsed.data.TOLLGATE_DEMO);
  if (parsed.success && !demo && upstreamKeys(parsed.data).length === 0) {
    problems.push('OPENAI_API_KEY: required, or OPENAI_API_KEYS (or run the demo: npm run demo)');
  }
  if (parsed.success) problems.push(...redisProblems(parsed.data));
  if (!parsed.success || problems.length > 0) throw new ConfigError(problems);

  const e = parsed.data;
  for (const line of [...unknownVariableWarnings(set), ...configWarnings(e)]) warn(line);
  return {
    port: e.PORT,
    host: e.HOST,
    logLevel: e.LOG_LEVEL,
    logBodies: e.LOG_BODIES,
    demo,
    upstream: {
      baseUrl: e.OPENAI_BASE_URL.replace(/\/+$/, ''),
      apiKey: upstreamKeys(e)[0] ?? '',
      apiKeys: upstreamKeys(e),
      organization: e.OPENAI_ORGANIZATION,
      project: e.OPENAI_PROJECT,
      connectTimeoutMs: e.UPSTREAM_CONNECT_TIMEOUT_MS,
      headersTimeoutMs: e.UPSTREAM_HEADERS_TIMEOUT_MS,
      idleTimeoutMs: e.UPSTREAM_IDLE_TIMEOUT_MS,
      totalTimeoutMs: e.UPSTREAM_TOTAL_TIMEOUT_MS,
      maxConnections: e.UPSTREAM_MAX_CONNECTIONS,
      maxRetries: e.UPSTREAM_MAX_RETRIES,
      retryBaseDelayMs: e.UPSTREAM_RETRY_BASE_DELAY_MS,
      retryMaxDelayMs: e.UPSTREAM_RETRY_MAX_DELAY_MS,
      retryAfterMaxMs: e.UPSTREAM_RETRY_AFTER_MAX_MS,
      keyCooldownMs: e.UPSTREAM_KEY_COOLDOWN_MS,
      keyInvalidCooldownMs: e.UPSTREAM_KEY_INVALID_COOLDOWN_MS,
    },
    redis: redisConfig(e),
    outage: {
      probeIntervalMs: e.STORE_PROBE_INTERVAL_MS,
      authGraceMs: e.AUTH_OUTAGE_GRACE_MS,
      quotaFailMode: e.QUOTA_FAIL_MODE,
      failOpenRpm: e.QUOTA_FAIL_OPEN_RPM,
      failOpenConcurrency: e.QUOTA_FAIL_OPEN_CONCURRENCY,
      settleQueueMax: e.QUOTA_SETTLE_QUEUE_MAX,
      usageBufferMax: e.USAGE_BUFFER_MAX,
    },
    adminToken: e.ADMIN_TOKEN,
    authCacheTtlMs: e.AUTH_CACHE_TTL_MS,
    authFailuresPerMinute: e.AUTH_FAILURES_PER_MINUTE,
    quota: {
      timeZone: e.QUOTA_TIME_ZONE,
      defaultMaxOutputTokens: e.DEFAULT_MAX_OUTPUT_TOKENS,
      pricesFile: e.PRICES_FILE,
      unpricedUsdPerMillion: { input: e.UNPRICED_INPUT_USD_PER_MILLION, output: e.UNPRICED_OUTPUT_USD_PER_MILLION },
      leaseTtlMs: e.LEASE_TTL_MS,
    },
    usage: { retentionMs: e.USAGE_RETENTION_DAYS * 86_400_000, maxEvents: e.USAGE_EVENTS_MAX, flushIntervalMs: e.USAGE_FLUSH_MS },
    alertWebhookUrl: e.ALERT_WEBHOOK_URL,
    metricsToken: e.METRICS_TOKEN,
    cache: {
      enabled: e.CACHE_ENABLED,
      scope: e.CACHE_SCOPE,
      ttlMs: e.CACHE_TTL_SECONDS * 1000,
      maxEntryBytes: e.CACHE_MAX_ENTRY_BYTES,
      singleFlightWaitMs: e.CACHE_SINGLE_FLIGHT_WAIT_MS,
    },
    bodyLimitBytes: e.BODY_LIMIT_BYTES,
    bodyMaxNodes: e.BODY_MAX_NODES,
    clientRequestTimeoutMs: e.CLIENT_REQUEST_TIMEOUT_MS,
    heap: { maxSemiSpaceMb: e.V8_MAX_SEMI_SPACE_MB, growingPercent: e.V8_HEAP_GROWING_PERCENT },
    memoryTrimIntervalMs: e.MEMORY_TRIM_INTERVAL_MS,
    shutdownTimeoutMs: e.SHUTDOWN_TIMEOUT_MS,
    trustProxy: e.TRUST_PROXY,
    corsOrigins: e.CORS_ORIGINS,
  };
}
