// The environment, validated once at boot. Nothing else in Tollgate reads process.env.
import { z } from 'zod';
import { validTimeZone } from './quota/periods.js';

const bool = z
  .enum(['true', 'false', '1', '0', 'yes', 'no', ''])
  .transform((v) => v === 'true' || v === '1' || v === 'yes');
const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);
const optionalString = z
  .string()
  .optional()
  .transform((v) => (v === undefined || v.trim() === '' ? undefined : v.trim()));

const envSchema = z.object({
  PORT: int(0, 65535).default(8080),
  HOST: z.string().min(1).default('0.0.0.0'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Log request bodies (prompts) and non-streamed response bodies. Off: they may hold personal data. */
  LOG_BODIES: bool.default(false),

  OPENAI_API_KEY: optionalString,
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

  REDIS_URL: optionalString,
  REDIS_PREFIX: z.string().regex(/^[\w:.-]{1,64}$/).default('tg:'),
  REDIS_COMMAND_TIMEOUT_MS: int(10, 60_000).default(1000),

  ADMIN_TOKEN: optionalString.refine((v) => v === undefined || v.length >= 16, {
    message: 'must be at least 16 characters',
  }),
  /** How long an authenticated key is trusted without asking the store (pub/sub invalidates sooner). */
  AUTH_CACHE_TTL_MS: int(0, 60_000).default(5_000),

  /** Time zone of the calendar day and month that budgets reset on (IANA name). */
  QUOTA_TIME_ZONE: z.string().refine(validTimeZone, { message: 'must be an IANA time zone, e.g. UTC or Europe/Paris' }).default('UTC'),
  /** Output tokens reserved for a request that sets no max_tokens / max_completion_tokens. */
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

  /** The response cache (chat, completions, embeddings). Per key it can also be switched off. */
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
  /** Budget alerts (50%, 80%, 100% of any budget) are POSTed here as JSON. Unset: no alerts. */
  ALERT_WEBHOOK_URL: z.url({ protocol: /^https?$/ }).optional(),
  /** When set, GET /metrics needs `Authorization: Bearer <METRICS_TOKEN>`. */
  METRICS_TOKEN: optionalString,

  BODY_LIMIT_BYTES: int(1024, 1024 * 1024 * 1024).default(10 * 1024 * 1024),
  SHUTDOWN_TIMEOUT_MS: int(0, 3_600_000).default(30_000),
  TRUST_PROXY: bool.default(false),
  /** Run with the built-in fake OpenAI and an in-memory store (also `--demo` on the command line). */
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
    apiKey: string;
    organization?: string;
    project?: string;
    connectTimeoutMs: number;
    headersTimeoutMs: number;
    idleTimeoutMs: number;
    totalTimeoutMs: number;
    maxConnections: number;
  };
  redis?: { url: string; prefix: string; commandTimeoutMs: number };
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
  usage: { retentionMs: number; maxEvents: number };
  alertWebhookUrl?: string;
  metricsToken?: string;
  cache: { enabled: boolean; scope: 'key' | 'global'; ttlMs: number; maxEntryBytes: number; singleFlightWaitMs: number };
  bodyLimitBytes: number;
  shutdownTimeoutMs: number;
  trustProxy: boolean;
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

/**
 * Validates the environment and returns the config, or throws one ConfigError naming every problem.
 * In demo mode OPENAI_API_KEY may be absent: the caller points the upstream at the built-in fake.
 */
export function loadConfig(env: Record<string, string | undefined>, argv: string[] = []): Config {
  // An empty variable (`PORT=` in an env file) means unset, so it takes the default.
  const set = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v.trim() !== ''));
  const parsed = envSchema.safeParse(set);
  const problems: string[] = parsed.success
    ? []
    : parsed.error.issues.map((i) => `${i.path.join('.') || 'environment'}: ${i.message}`);
  const demo = argv.includes('--demo') || (parsed.success && parsed.data.TOLLGATE_DEMO);
  if (parsed.success && !demo && !parsed.data.OPENAI_API_KEY) {
    problems.push('OPENAI_API_KEY: required (or run the demo: npm run demo)');
  }
  if (!parsed.success || problems.length > 0) throw new ConfigError(problems);

  const e = parsed.data;
  return {
    port: e.PORT,
    host: e.HOST,
    logLevel: e.LOG_LEVEL,
    logBodies: e.LOG_BODIES,
    demo,
    upstream: {
      baseUrl: e.OPENAI_BASE_URL.replace(/\/+$/, ''),
      apiKey: e.OPENAI_API_KEY ?? '',
      organization: e.OPENAI_ORGANIZATION,
      project: e.OPENAI_PROJECT,
      connectTimeoutMs: e.UPSTREAM_CONNECT_TIMEOUT_MS,
      headersTimeoutMs: e.UPSTREAM_HEADERS_TIMEOUT_MS,
      idleTimeoutMs: e.UPSTREAM_IDLE_TIMEOUT_MS,
      totalTimeoutMs: e.UPSTREAM_TOTAL_TIMEOUT_MS,
      maxConnections: e.UPSTREAM_MAX_CONNECTIONS,
    },
    redis: e.REDIS_URL
      ? { url: e.REDIS_URL, prefix: e.REDIS_PREFIX, commandTimeoutMs: e.REDIS_COMMAND_TIMEOUT_MS }
      : undefined,
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
    usage: { retentionMs: e.USAGE_RETENTION_DAYS * 86_400_000, maxEvents: e.USAGE_EVENTS_MAX },
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
    shutdownTimeoutMs: e.SHUTDOWN_TIMEOUT_MS,
    trustProxy: e.TRUST_PROXY,
  };
}
