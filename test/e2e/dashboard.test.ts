// The spend dashboard in a real Chromium, against stub admin routes serving canned usage, keys and events.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { dashboardRoutes, DASHBOARD_CSP } from '../../src/dashboard/routes.js';
import { errorHandler, notFoundHandler, openAIErrorBody } from '../../src/errors.js';
import type { UsageEvent } from '../../src/usage/event.js';
import { launchChromium } from '../helpers/browser.js';

// Names the functions passed to page.evaluate() use in the browser. The project's lib has no DOM types,
// and these declarations stay local to this module.
declare const window: any, document: any, sessionStorage: any, localStorage: any;
type HTMLElement = any;
type HTMLCanvasElement = any;

const TOKEN = 'dashboard-admin-token-0123456789';
const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/', import.meta.url));
const HOUR = 3_600_000;
const DAY = 86_400_000;

// ------------------------------------------------------------------ canned data

const XSS_NAME = '<img src=x onerror="window.__xss=1">search';
/** A right-to-left override and an isolate: shown as they are, the page would read "tob-troppus". */
const BIDI_NAME = 'support-\u202ebot\u2066';
/** How the page (and the CLI) show it: the invisible characters escaped. */
const BIDI_SHOWN = 'support-\\u202ebot\\u2066';

/**
 * Per key over the period. Totals: $19.7956, 2,500 requests, 1,234,567 tokens, 625 hits and 1,000 misses
 * among 1,625 lookups, $3.21 saved; and 40 more hits in hours recorded before lookups were counted.
 */
const KEY_USAGE = [
  // Deliberately not in spend order: the page sorts.
  { key: 'key_support0003', keyName: BIDI_NAME, costUsd: 2.5, requests: 400, errors: 0, cacheHits: 75, cacheMisses: 125, promptTokens: 40_000, completionTokens: 10_000, savedUsd: 0.2 },
  { key: 'key_billing0001', keyName: 'billing-app', costUsd: 12.3456, requests: 1200, errors: 12, cacheHits: 300, cacheMisses: 700, promptTokens: 700_000, completionTokens: 200_000, savedUsd: 2 },
  { key: 'key_batch000004', keyName: 'batch-jobs', costUsd: 0.75, requests: 100, errors: 5, cacheHits: 0, cacheMisses: 0, hitsBeforeLookups: 40, promptTokens: 4_000, completionTokens: 567, savedUsd: 0.01 },
  { key: 'key_search00002', keyName: XSS_NAME, costUsd: 4.2, requests: 800, errors: 3, cacheHits: 250, cacheMisses: 175, promptTokens: 200_000, completionTokens: 80_000, savedUsd: 1 },
];
const MODEL_SHARES: [string, number][] = [
  ['gpt-4o-mini', 0.5],
  ['gpt-4o', 0.35],
  ['text-embedding-3-small', 0.1],
  ['o3-mini', 0.05],
  // Requests that cost nothing (refused, or a free endpoint): in the tables, not in a spend chart's legend.
  ['omni-moderation-latest', 0],
];

type Row = Record<string, string | number>;

function metrics(u: (typeof KEY_USAGE)[number], share = 1): Row {
  const promptTokens = u.promptTokens * share;
  const completionTokens = u.completionTokens * share;
  return {
    requests: u.requests * share,
    errors: u.errors * share,
    cacheHits: (u.cacheHits + (('hitsBeforeLookups' in u && u.hitsBeforeLookups) || 0)) * share,
    cacheMisses: u.cacheMisses * share,
    cacheLookups: (u.cacheHits + u.cacheMisses) * share,
    promptTokens,
    cachedPromptTokens: 0,
    completionTokens,
    reasoningTokens: 0,
    totalTokens: promptTokens + completionTokens,
    costUsd: u.costUsd * share,
    savedUsd: u.savedUsd * share,
  };
}

const totalsOf = (usage: typeof KEY_USAGE) =>
  usage.reduce<Row>((sum, u) => {
    for (const [k, v] of Object.entries(metrics(u))) sum[k] = ((sum[k] as number | undefined) ?? 0) + (v as number);
    return sum;
  }, {});
const TOTALS = totalsOf(KEY_USAGE);
const TOTAL_COST = KEY_USAGE.reduce((s, u) => s + u.costUsd, 0);

/** The buckets of a window, as the real endpoint names them (UTC). */
function bucketsOf(bucket: 'hour' | 'day', from: number, to: number): string[] {
  const out = new Set<string>();
  for (let t = from; t <= to; t += HOUR) {
    const iso = new Date(Math.floor(t / HOUR) * HOUR).toISOString();
    out.add(bucket === 'hour' ? iso : iso.slice(0, 10));
  }
  return [...out];
}

/** Spreads every key's usage over the buckets (more recent, more spend), so the rows sum to the totals. */
function usageRows(groupBy: string[], from: number, to: number, usage = KEY_USAGE): Row[] {
  const bucket = groupBy.find((g) => g === 'hour' || g === 'day') as 'hour' | 'day' | undefined;
  const buckets = bucket ? bucketsOf(bucket, from, to) : [undefined];
  const weightSum = (buckets.length * (buckets.length + 1)) / 2;
  const rows: Row[] = [];
  buckets.forEach((b, i) => {
    const share = bucket ? (i + 1) / weightSum : 1;
    if (groupBy.includes('model')) {
      for (const [model, modelShare] of MODEL_SHARES) {
        const row: Row = { model };
        if (bucket && b) row[bucket] = b;
        const sum: Row = {};
        for (const u of usage) for (const [k, v] of Object.entries(metrics(u, share * modelShare))) sum[k] = ((sum[k] as number | undefined) ?? 0) + (v as number);
        rows.push({ ...row, ...sum });
      }
    } else {
      for (const u of usage) {
        const row: Row = { key: u.key, keyName: u.keyName };
        if (bucket && b) row[bucket] = b;
        rows.push({ ...row, ...metrics(u, share) });
      }
    }
  });
  return rows;
}

function quotaLine(limit: number | null, used: number, reserved: number, resetsAt: string | null) {
  return { limit, used, reserved, resetsAt };
}

function keysWithQuota(now: number) {
  const dayEnd = new Date(Math.ceil(now / DAY) * DAY).toISOString();
  const monthEnd = new Date(Date.UTC(new Date(now).getUTCFullYear(), new Date(now).getUTCMonth() + 1, 1)).toISOString();
  const base = { models: null, metadata: {}, hint: 'tg-abc', createdAt: '2026-01-01T00:00:00.000Z', updatedAt: '2026-01-01T00:00:00.000Z', revokedAt: null as string | null };
  const quota = (l: Record<string, number>, used: Partial<Record<string, [number, number]>>) => ({
    rpm: quotaLine(l.rpm ?? null, 3, 0, null),
    tpm: quotaLine(l.tpm ?? null, 900, 0, null),
    tokensPerDay: quotaLine(l.tokensPerDay ?? null, ...(used.tokensPerDay ?? [10_000, 0]), dayEnd),
    tokensPerMonth: quotaLine(l.tokensPerMonth ?? null, ...(used.tokensPerMonth ?? [200_000, 0]), monthEnd),
    usdPerDay: quotaLine(l.usdPerDay ?? null, ...(used.usdPerDay ?? [1, 0]), dayEnd),
    usdPerMonth: quotaLine(l.usdPerMonth ?? null, ...(used.usdPerMonth ?? [10, 0]), monthEnd),
    maxConcurrent: quotaLine(l.maxConcurrent ?? null, 0, 0, null),
  });
  const billing = { usdPerDay: 20, usdPerMonth: 300, rpm: 600 };
  const search = { tokensPerDay: 1_000_000 };
  const support = { rpm: 60 };
  const retired = { usdPerDay: 5 };
  return [
    { ...base, id: 'key_support0003', name: BIDI_NAME, limits: support, quota: quota(support, {}) },
    { ...base, id: 'key_billing0001', name: 'billing-app', limits: billing, quota: quota(billing, { usdPerDay: [15.5, 0.5], usdPerMonth: [123, 0] }) },
    { ...base, id: 'key_search00002', name: XSS_NAME, limits: search, quota: quota(search, { tokensPerDay: [950_000, 20_000] }) },
    // Revoked: its budget no longer matters, so it gets no bar.
    { ...base, id: 'key_retired0005', name: 'retired-app', limits: retired, revokedAt: '2026-01-02T00:00:00.000Z', quota: quota(retired, { usdPerDay: [4.9, 0] }) },
  ];
}

const EVENT_KEYS = ['key_billing0001', 'key_search00002', 'key_support0003', 'key_batch000004'];
const EVENT_MODELS = ['gpt-4o-mini', 'gpt-4o', 'text-embedding-3-small', 'o3-mini'];

/** 60 events over the last half hour (the page shows the latest 50), oldest first as a log would be. */
function events(now: number): ({ id: string } & UsageEvent)[] {
  const out: ({ id: string } & UsageEvent)[] = [];
  for (let i = 0; i < 60; i++) {
    const keyId = i === 2 ? null : EVENT_KEYS[i % 4]!;
    const status = i === 2 ? 401 : i % 10 === 3 ? 429 : i % 17 === 5 ? 502 : 200;
    const cache = i === 2 ? null : i % 3 === 1 ? 'HIT' : 'MISS';
    const totalTokens = status === 200 && cache === 'MISS' ? 1000 + i : 0;
    out.push({
      id: `evt_${String(i).padStart(3, '0')}`,
      ts: now - 5_000 - i * 30_000,
      eventId: `evt-${i}`,
      requestId: `req-${i}`,
      keyId,
      keyName: keyId ? KEY_USAGE.find((u) => u.key === keyId)!.keyName : null,
      endpoint: 'chat.completions',
      model: i === 2 ? null : EVENT_MODELS[i % 4]!,
      modelAnswered: null,
      status,
      stream: i % 2 === 0,
      cache,
      promptTokens: totalTokens,
      cachedPromptTokens: 0,
      completionTokens: 0,
      reasoningTokens: 0,
      totalTokens,
      costMicros: totalTokens ? 1234 + i * 10 : 0,
      savedTokens: 0,
      savedMicros: 0,
      estimated: false,
      latencyMs: 842.4 + i,
      ttfbMs: 100,
      upstreamMs: 800,
      overheadMs: 2,
      errorCode: status === 200 ? null : status === 401 ? 'invalid_api_key' : status === 429 ? 'rate_limit_exceeded' : 'upstream_unreachable',
    });
  }
  return out.reverse();
}

// ------------------------------------------------------------------ the stub gateway

interface Stub {
  app: FastifyInstance;
  url: string;
  /** What the admin routes accept; change it to simulate a rotated token. */
  token: string;
  /** Makes the events endpoint fail with a 500. */
  failEvents: boolean;
  /** When set, every /admin/usage call answers with this status (503: the store is down). */
  failUsage: number;
  /** The per-key usage /admin/usage serves. */
  usage: typeof KEY_USAGE;
  /** Replaces the keys /admin/keys lists. */
  keys: ((now: number) => unknown[]) | null;
  /** The most keys one /admin/keys page holds, whatever `limit` asks for (the pages must be followed). */
  keysPageSize: number;
  /** Query strings the page sent, per path. */
  calls: { path: string; query: Record<string, string>; auth: string | undefined }[];
}

async function startStub(): Promise<Stub> {
  const app = Fastify();
  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler(notFoundHandler);
  const stub: Stub = { app, url: '', token: TOKEN, failEvents: false, failUsage: 0, usage: KEY_USAGE, keys: null, keysPageSize: 1000, calls: [] };

  await app.register(dashboardRoutes, { prefix: '/dashboard' });
  await app.register(
    async (admin) => {
      admin.addHook('onRequest', async (request, reply) => {
        const auth = request.headers.authorization;
        stub.calls.push({ path: request.url.split('?')[0]!, query: request.query as Record<string, string>, auth });
        if (auth !== `Bearer ${stub.token}`) {
          return reply.code(401).send(openAIErrorBody('A valid admin token is required.', 'invalid_request_error', 'invalid_admin_token'));
        }
      });
      admin.get<{ Querystring: Record<string, string> }>('/usage', async (request, reply) => {
        if (stub.failUsage) {
          return reply.code(stub.failUsage).send(openAIErrorBody('The usage store is unavailable.', 'server_error', 'store_unavailable'));
        }
        const { from, to, groupBy } = request.query;
        const fromMs = Date.parse(from ?? '');
        const toMs = Date.parse(to ?? '');
        const groups = (groupBy ?? '').split(',').filter(Boolean);
        const allowed = ['hour', 'day', 'key', 'model'];
        if (Number.isNaN(fromMs) || Number.isNaN(toMs) || fromMs >= toMs || !groups.every((g) => allowed.includes(g))) {
          return reply.code(400).send(openAIErrorBody('bad query', 'invalid_request_error', 'invalid_value'));
        }
        return {
          object: 'usage',
          from: new Date(fromMs).toISOString(),
          to: new Date(toMs).toISOString(),
          groupBy: groups,
          timeZone: 'UTC',
          data: usageRows(groups, fromMs, toMs, stub.usage),
          totals: totalsOf(stub.usage),
        };
      });
      admin.get<{ Querystring: Record<string, string> }>('/usage/events', async (request, reply) => {
        if (stub.failEvents) {
          return reply.code(500).send(openAIErrorBody('The gateway had an internal error (request id r-1).', 'server_error', 'internal_error'));
        }
        const { order = 'asc', limit = '100000' } = request.query;
        if (
          request.query.format !== 'ndjson' ||
          Number.isNaN(Date.parse(request.query.since ?? '')) ||
          !['asc', 'desc'].includes(order) ||
          !/^[1-9]\d*$/.test(limit)
        ) {
          return reply.code(400).send(openAIErrorBody('bad query', 'invalid_request_error', 'invalid_value'));
        }
        // As the gateway answers: in arrival order (oldest first unless order=desc), at most `limit`.
        const since = Date.parse(request.query.since!);
        const listed = events(Date.now()).filter((e) => e.ts >= since);
        if (order === 'desc') listed.reverse();
        const lines = listed.slice(0, Number(limit)).map((e) => JSON.stringify(e));
        return reply.type('application/x-ndjson').send(lines.join('\n') + '\n');
      });
      admin.get<{ Querystring: Record<string, string> }>('/keys', async (request, reply) => {
        const all = (stub.keys ?? keysWithQuota)(Date.now()) as ReturnType<typeof keysWithQuota>;
        if (request.query.include !== 'quota') for (const k of all) delete (k as { quota?: unknown }).quota;
        // A page as the gateway cuts it: `limit` keys (1..1000, 100 by default) after the key `after`.
        const { limit = '100', after } = request.query;
        const start = after === undefined ? 0 : all.findIndex((k) => k.id === after) + 1;
        if (!/^[1-9]\d*$/.test(limit) || Number(limit) > 1000 || start === 0 && after !== undefined) {
          return reply.code(400).send(openAIErrorBody('bad query', 'invalid_request_error', 'invalid_value'));
        }
        const data = all.slice(start, start + Math.min(Number(limit), stub.keysPageSize));
        const hasMore = start + data.length < all.length;
        return { object: 'list', data, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null, has_more: hasMore };
      });
    },
    { prefix: '/admin' },
  );
  stub.url = await app.listen({ port: 0, host: '127.0.0.1' });
  return stub;
}

// ------------------------------------------------------------------ the test

const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};

let stub: Stub;
let browser: Browser;
let context: BrowserContext;
let page: Page;
/** Console errors, page errors and CSP violations, each with the phase of the test it happened in. */
const problems: { phase: string; text: string }[] = [];
let phase = 'load';

const text = (testid: string) => page.getByTestId(testid).first().textContent();
const texts = (testid: string) => page.getByTestId(testid).allTextContents();

describe('the spend dashboard', () => {
  beforeAll(async () => {
    stub = await startStub();
    browser = await launchChromium();
    // UTC and en-US, so the times and numbers the page shows are the ones computed here.
    context = await browser.newContext({ viewport: { width: 1440, height: 900 }, timezoneId: 'UTC', locale: 'en-US' });
    page = await context.newPage();
    page.on('console', (msg) => {
      if (msg.type() === 'error' || /content security policy/i.test(msg.text())) problems.push({ phase, text: `console.${msg.type()}: ${msg.text()}` });
    });
    page.on('pageerror', (err) => problems.push({ phase, text: `pageerror: ${err.message}` }));
    // Also record CSP violations as the page itself sees them.
    await page.addInitScript(() => {
      document.addEventListener('securitypolicyviolation', (e: any) => {
        console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI}`);
      });
    });
  }, 60_000);

  // A test that fails half-way must not leave the stub failing for the next ones.
  afterEach(() => {
    stub.failEvents = false;
    stub.failUsage = 0;
    stub.usage = KEY_USAGE;
    stub.keys = null;
    stub.keysPageSize = 1000;
  });

  afterAll(async () => {
    await browser?.close();
    await stub?.app.close();
  });

  it('serves the page and its assets with the security headers and content types', async () => {
    const cases: [string, number, RegExp][] = [
      ['/dashboard', 200, /^text\/html; charset=utf-8$/],
      ['/dashboard/', 200, /^text\/html; charset=utf-8$/],
      ['/dashboard/assets/app.js', 200, /^text\/javascript; charset=utf-8$/],
      ['/dashboard/assets/style.css', 200, /^text\/css; charset=utf-8$/],
      ['/dashboard/assets/chart.js', 200, /^text\/javascript; charset=utf-8$/],
      ['/dashboard/assets/..%2Froutes.ts', 404, /^application\/json/],
      ['/dashboard/assets/nope.js', 404, /^application\/json/],
    ];
    for (const [path, status, type] of cases) {
      const res = await fetch(stub.url + path);
      expect(res.status, path).toBe(status);
      expect(res.headers.get('content-type'), path).toMatch(type);
      for (const [name, value] of Object.entries(SECURITY_HEADERS)) expect(res.headers.get(name), `${path} ${name}`).toBe(value);
      if (path.startsWith('/dashboard/assets/') && status === 200) {
        expect(res.headers.get('cache-control'), path).toBe('no-cache');
        const etag = res.headers.get('etag')!;
        expect(etag).toMatch(/^"[\w-]+"$/);
        const again = await fetch(stub.url + path, { headers: { 'if-none-match': etag } });
        expect(again.status, `${path} revalidated`).toBe(304);
      } else {
        expect(res.headers.get('cache-control'), path).toBe('no-store');
      }
      await res.arrayBuffer();
    }
    expect(DASHBOARD_CSP).toBe(SECURITY_HEADERS['content-security-policy']);

    // The chart library really is Chart.js 4's UMD build, served from node_modules.
    const chart = await (await fetch(`${stub.url}/dashboard/assets/chart.js`)).text();
    expect(chart).toContain('Chart.js v4');
    expect(chart.length).toBeGreaterThan(100_000);

    // Nothing inline: the CSP would refuse it.
    const html = await (await fetch(`${stub.url}/dashboard`)).text();
    expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/i);
    expect(html).not.toMatch(/<style|\sstyle=|\son[a-z]+=/i);
  });

  it('asks for the admin token and refuses a wrong one', async () => {
    phase = 'login';
    const res = await page.goto(`${stub.url}/dashboard`);
    expect(res!.status()).toBe(200);
    for (const [name, value] of Object.entries(SECURITY_HEADERS)) expect(res!.headers()[name]).toBe(value);

    await page.getByTestId('login').waitFor({ state: 'visible' });
    expect(await page.getByTestId('dashboard').isVisible()).toBe(false);
    expect(await page.getByTestId('login-error').isVisible()).toBe(false);

    phase = 'wrong-token';
    await page.getByTestId('token').fill('not-the-admin-token');
    await page.getByTestId('login-submit').click();
    await page.getByTestId('login-error').waitFor({ state: 'visible' });
    expect(await text('login-error')).toBe('That admin token was refused.');
    expect(await page.getByTestId('dashboard').isVisible()).toBe(false);
    expect(await page.evaluate(() => sessionStorage.length)).toBe(0);
    // One request tells whether the token works: the gateway counts every refused one against this
    // address (and locks it out after a few dozen), so a typo must not cost one per panel.
    const wrong = stub.calls.filter((c) => c.auth === 'Bearer not-the-admin-token');
    expect(wrong.map((c) => c.path)).toEqual(['/admin/keys']);

    // The same after a reload with a token in the tab that no longer works.
    await page.evaluate(() => sessionStorage.setItem('tollgate.adminToken', 'a-stale-admin-token-0000'));
    await page.reload();
    await page.getByTestId('login-error').waitFor({ state: 'visible' });
    expect(await text('login-error')).toBe('That admin token was refused.');
    expect(stub.calls.filter((c) => c.auth === 'Bearer a-stale-admin-token-0000').map((c) => c.path)).toEqual(['/admin/keys']);
    expect(await page.evaluate(() => sessionStorage.length)).toBe(0);
  });

  it('says a pasted token has characters no token has, and sends nothing', async () => {
    phase = 'bad-characters';
    stub.calls.length = 0;
    // A zero-width space, curly quotes and a non-Latin-1 letter: fetch cannot put these in a header.
    for (const pasted of [`${TOKEN.slice(0, 8)}\u200b${TOKEN.slice(8)}`, `\u201c${TOKEN}\u201d`, `${TOKEN}\u0436`, `${TOKEN.slice(0, 8)} ${TOKEN.slice(8)}`]) {
      await page.getByTestId('token').fill(pasted);
      await page.getByTestId('login-submit').click();
      await page.getByTestId('login-error').waitFor({ state: 'visible' });
      expect(await text('login-error')).toMatch(/^The token contains characters a token cannot contain/);
      expect(await page.getByTestId('login-submit').isEnabled()).toBe(true);
      expect(await page.evaluate(() => sessionStorage.length)).toBe(0);
    }
    expect(stub.calls).toEqual([]);
  });

  it('shows the headline numbers, charts, top keys, budgets and recent requests', async () => {
    phase = 'signed-in';
    stub.calls.length = 0;
    await page.getByTestId('token').fill(TOKEN);
    await page.getByTestId('login-submit').click();
    await page.getByTestId('dashboard').waitFor({ state: 'visible' });
    await page.getByTestId('event-row').first().waitFor();
    expect(await page.getByTestId('login').isVisible()).toBe(false);

    // The token lives in sessionStorage only, and goes out only as a bearer header.
    expect(await page.evaluate(() => Object.values(sessionStorage))).toEqual([TOKEN]);
    expect(await page.evaluate(() => localStorage.length)).toBe(0);
    expect(await page.evaluate(() => document.cookie)).toBe('');
    expect(stub.calls.length).toBeGreaterThan(0);
    expect(stub.calls.every((c) => c.auth === `Bearer ${TOKEN}` && !JSON.stringify(c.query).includes(TOKEN))).toBe(true);

    // The default period is 7 days, by day; the time series and the table use the documented groupings.
    const usage = stub.calls.filter((c) => c.path === '/admin/usage');
    expect(usage.map((c) => c.query.groupBy).sort()).toEqual(['day,key', 'day,model', 'key']);
    const { from, to } = usage[0]!.query;
    expect(Date.parse(to!) - Date.parse(from!)).toBeGreaterThan(6 * DAY);
    expect(Date.parse(to!) - Date.parse(from!)).toBeLessThanOrEqual(7 * DAY);
    expect(new Date(from!).toISOString()).toMatch(/T00:00:00\.000Z$/); // whole UTC days
    const eventsCall = stub.calls.find((c) => c.path === '/admin/usage/events')!;
    expect(eventsCall.query.format).toBe('ndjson');
    // Only the newest it shows (and one more, to know there are more), newest first: never the whole hour.
    expect(eventsCall.query.order).toBe('desc');
    expect(Number(eventsCall.query.limit)).toBeGreaterThanOrEqual(50);
    expect(Number(eventsCall.query.limit)).toBeLessThanOrEqual(51);
    expect(Math.abs(Date.now() - HOUR - Date.parse(eventsCall.query.since!))).toBeLessThan(60_000);
    // Every key with its quota, in as few pages as the API allows: here one.
    expect(stub.calls.filter((c) => c.path === '/admin/keys').map((c) => c.query)).toEqual([{ include: 'quota', limit: '1000' }]);

    // Headline numbers: the canned totals, as the page formats them.
    expect(TOTAL_COST).toBeCloseTo(19.7956, 6);
    expect(await text('kpi-spend')).toBe('$19.80');
    expect(await text('kpi-requests')).toBe('2,500');
    expect(await text('kpi-errors')).toBe('20 errors (0.8%)');
    expect(await text('kpi-tokens')).toBe('1.2M');
    expect(await page.getByTestId('kpi-tokens').getAttribute('title')).toBe('1,234,567 tokens');
    // Among the 1,625 requests the cache looked up (625 hits, 1,000 misses), not all 2,500; the 40
    // hits of hours from before lookups were counted are left out (their misses are unknown).
    expect(await text('kpi-cache-rate')).toBe('38.5%');
    expect(await text('kpi-cache-hits')).toBe('625 of 1,625 cacheable requests');
    expect(await text('kpi-saved')).toBe('$3.21');

    // Top keys, in spend order, names shown as text (one is an HTML payload).
    expect(await texts('top-key-name')).toEqual(['billing-app', XSS_NAME, BIDI_SHOWN, 'batch-jobs']);
    expect(await texts('top-key-spend')).toEqual(['$12.35', '$4.20', '$2.50', '$0.75']);
    expect(await texts('top-key-share')).toEqual(['62.4%', '21.2%', '12.6%', '3.8%']);
    expect(await texts('top-key-requests')).toEqual(['1,200', '800', '400', '100']);
    expect(await texts('top-key-errors')).toEqual(['12', '3', '0', '5']);
    expect(await page.getByTestId('top-key-row').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-key-id')))).toEqual([
      'key_billing0001',
      'key_search00002',
      'key_support0003',
      'key_batch000004',
    ]);
    expect(await page.evaluate(() => document.querySelectorAll('main img').length)).toBe(0);
    expect(await page.evaluate(() => (window as unknown as { __xss?: number }).__xss)).toBeUndefined();

    // Budgets: one bar per budget of an active key, fullest first; keys without a budget and revoked keys get none.
    const budgets = await page.getByTestId('budget-row').evaluateAll((rows) => rows.map((r) => `${r.getAttribute('data-key-id')} ${r.getAttribute('data-budget')}`));
    expect(budgets).toEqual(['key_search00002 tokensPerDay', 'key_billing0001 usdPerDay', 'key_billing0001 usdPerMonth']);
    expect(await texts('budget-percent')).toEqual(['95.0%', '77.5%', '41.0%']);
    expect(await texts('budget-used')).toEqual(['950K of 1M', '$15.50 of $20.00', '$123.00 of $300.00']);
    expect(await texts('budget-key')).toEqual([XSS_NAME, 'billing-app', 'billing-app']);
    const detail = await texts('budget-detail');
    expect(detail[0]).toMatch(/^\+20K in flight · resets in /);
    expect(detail[1]).toMatch(/^\+\$0\.50 in flight · resets in /);
    expect(detail[2]).toMatch(/^resets in \d+ d \d+ h$|^resets in \d+ h \d+ min$/);
    // The bar's width is its percentage.
    const widths = await page.locator('.bar-used').evaluateAll((bars) => bars.map((b) => (b as HTMLElement).style.width));
    expect(widths).toEqual(['95%', '77.5%', '41%']);

    // Recent requests: the latest 50 of the 60 events, newest first.
    const all = events(Date.now());
    const newest = [...all].sort((a, b) => b.ts - a.ts);
    const ids = await page.getByTestId('event-row').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-event-id')));
    expect(ids).toEqual(newest.slice(0, 50).map((e) => e.id));
    expect(await text('events-note')).toBe('latest 50 in the last hour');
    const first = page.getByTestId('event-row').nth(0);
    const cellOf = (row: typeof first, id: string) => row.getByTestId(id).textContent();
    // The page fetched its events a moment before this list was built: compare the clock to the second.
    expect(await cellOf(first, 'event-time')).toMatch(/^\d\d:\d\d:\d\d$/);
    const shown = Date.parse(`${new Date().toISOString().slice(0, 10)}T${await cellOf(first, 'event-time')}Z`);
    const apart = (((shown - newest[0]!.ts) % DAY) + DAY) % DAY; // across midnight too
    expect(Math.min(apart, DAY - apart)).toBeLessThan(10_000);
    expect(await cellOf(first, 'event-key')).toBe('billing-app');
    expect(await cellOf(first, 'event-model')).toBe('gpt-4o-mini');
    expect(await cellOf(first, 'event-status')).toBe('200');
    expect(await cellOf(first, 'event-cache')).toBe('MISS');
    expect(await cellOf(first, 'event-tokens')).toBe('1,000');
    expect(await cellOf(first, 'event-cost')).toBe('$0.0012');
    expect(await cellOf(first, 'event-latency')).toBe('842 ms');
    const unauthenticated = page.getByTestId('event-row').nth(2);
    expect(await cellOf(unauthenticated, 'event-key')).toBe('–');
    expect(await cellOf(unauthenticated, 'event-status')).toBe('401');
    expect(await unauthenticated.getByTestId('event-status').getAttribute('title')).toBe('invalid_api_key');
    expect(await cellOf(page.getByTestId('event-row').nth(1), 'event-cache')).toBe('HIT');
    expect(await cellOf(page.getByTestId('event-row').nth(1), 'event-key')).toBe(XSS_NAME);

    // Charts: a Chart.js chart on each canvas, stacked series that sum to the total, pixels drawn.
    const charts = await page.evaluate(() => {
      const Chart = (window as unknown as { Chart: { getChart(c: HTMLCanvasElement): any } }).Chart;
      return ['chart-keys', 'chart-models'].map((id) => {
        const canvas = document.getElementById(id) as HTMLCanvasElement;
        const chart = Chart.getChart(canvas);
        const pixels = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height).data;
        let painted = 0;
        for (let i = 3; i < pixels.length; i += 4) if (pixels[i]! > 0) painted++;
        return {
          width: canvas.width,
          height: canvas.height,
          painted,
          labels: chart?.data.labels as string[],
          series: (chart?.data.datasets as { label: string; data: number[] }[]).map((d) => d.label),
          sum: (chart?.data.datasets as { data: number[] }[]).reduce((s, d) => s + d.data.reduce((a, b) => a + b, 0), 0),
          stacked: chart?.options.scales.y.stacked,
        };
      });
    });
    for (const chart of charts) {
      expect(chart.width).toBeGreaterThan(300);
      expect(chart.height).toBeGreaterThan(200);
      expect(chart.painted).toBeGreaterThan(5_000);
      expect(chart.labels).toHaveLength(7);
      expect(chart.sum).toBeCloseTo(TOTAL_COST, 6);
      expect(chart.stacked).toBe(true);
    }
    expect(charts[0]!.series).toEqual(['billing-app', XSS_NAME, BIDI_SHOWN, 'batch-jobs']);
    expect(charts[1]!.series).toEqual(['gpt-4o-mini', 'gpt-4o', 'text-embedding-3-small', 'o3-mini']);
    expect(charts[0]!.labels.at(-1)).toBe(new Date().toLocaleDateString('en-US', { month: 'short', day: 'numeric', timeZone: 'UTC' }));
    await expect(page.getByTestId('chart-keys-empty').isVisible()).resolves.toBe(false);

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: `${ARTIFACTS}dashboard.png`, fullPage: true });
    expect(await page.getByTestId('banner').isVisible()).toBe(false);

    // On a phone: one column, nothing wider than the screen (wide tables scroll inside their card).
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForFunction(() => (document.getElementById('chart-keys') as HTMLCanvasElement).clientWidth < 390);
    expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
    await page.screenshot({ path: `${ARTIFACTS}dashboard-mobile.png`, fullPage: true });
    await page.setViewportSize({ width: 1440, height: 900 });
  });

  it('switches the period: 24 h by hour, 30 d by day', async () => {
    stub.calls.length = 0;
    await page.getByRole('radio', { name: '24 h' }).click();
    await page.waitForFunction(() => {
      const chart = (window as unknown as { Chart: { getChart(id: string): any } }).Chart.getChart('chart-keys');
      return chart?.data.labels.length === 24;
    });
    expect(stub.calls.filter((c) => c.path === '/admin/usage').map((c) => c.query.groupBy).sort()).toEqual(['hour,key', 'hour,model', 'key']);
    expect(await page.getByRole('radio', { name: '24 h' }).getAttribute('aria-checked')).toBe('true');
    expect(new URL(page.url()).hash).toBe('#24h');
    expect(await text('kpi-spend')).toBe('$19.80');

    stub.calls.length = 0;
    await page.getByRole('radio', { name: '30 d' }).click();
    await page.waitForFunction(() => {
      const chart = (window as unknown as { Chart: { getChart(id: string): any } }).Chart.getChart('chart-models');
      return chart?.data.labels.length === 30;
    });
    const groupings = stub.calls.filter((c) => c.path === '/admin/usage').map((c) => c.query.groupBy);
    expect(groupings.sort()).toEqual(['day,key', 'day,model', 'key']);
    await page.getByRole('radio', { name: '7 d' }).click();
    await page.waitForFunction(() => (window as unknown as { Chart: { getChart(id: string): any } }).Chart.getChart('chart-keys')?.data.labels.length === 7);
  });

  it('works the period radio group from the keyboard, and follows the #period of the address', async () => {
    const labels = () => page.evaluate(() => (window as unknown as { Chart: { getChart(id: string): any } }).Chart.getChart('chart-keys')?.data.labels.length);
    const checked = () => page.getAttribute('[role=radio][aria-checked=true]', 'data-period');
    // One Tab stop: the checked radio.
    expect(await page.$$eval('[data-period]', (buttons) => buttons.map((b) => (b as HTMLElement).tabIndex))).toEqual([-1, 0, -1]);
    await page.getByRole('radio', { name: '7 d' }).focus();
    await page.keyboard.press('ArrowRight');
    await page.waitForFunction(() => (window as unknown as { Chart: { getChart(id: string): any } }).Chart.getChart('chart-keys')?.data.labels.length === 30);
    expect(await checked()).toBe('30d');
    expect(await page.evaluate(() => (document.activeElement as HTMLElement).dataset.period)).toBe('30d');
    await page.keyboard.press('ArrowRight'); // wraps to the first
    await page.waitForFunction(() => (window as unknown as { Chart: { getChart(id: string): any } }).Chart.getChart('chart-keys')?.data.labels.length === 24);
    expect(await checked()).toBe('24h');
    expect(new URL(page.url()).hash).toBe('#24h');
    // With a modifier it is the browser's key (Alt+Left: Back, Ctrl+End), not the group's.
    await page.keyboard.press('Control+End');
    await page.waitForTimeout(100);
    await page.evaluate(() => window.scrollTo(0, 0)); // Ctrl+End scrolled the page down
    expect(await checked()).toBe('24h');
    // The address's #period, changed without a reload, changes the view too.
    await page.evaluate(() => (window.location.hash = '#7d'));
    await page.waitForFunction(() => (window as unknown as { Chart: { getChart(id: string): any } }).Chart.getChart('chart-keys')?.data.labels.length === 7);
    expect(await checked()).toBe('7d');
    expect(await labels()).toBe(7);
  });

  it('shows dashes, not zeros, and keeps the time of the last good refresh when the usage cannot be loaded', async () => {
    phase = 'usage-down';
    const before = await text('updated');
    expect(before).toMatch(/^Updated \d\d:\d\d:\d\d UTC$/);
    // Let the clock pass the second shown, so an Updated time that moved would show it.
    const shownTime = before!.slice(8, 16);
    await page.waitForFunction((shown) => new Date().toISOString().slice(11, 19) !== shown, shownTime);
    stub.failUsage = 503;
    await page.getByTestId('refresh').click();
    await page.getByTestId('banner').waitFor({ state: 'visible' });
    expect(await text('banner')).toBe('Some data could not be loaded: /admin/usage: The usage store is unavailable. (HTTP 503)');
    for (const id of ['kpi-spend', 'kpi-requests', 'kpi-tokens', 'kpi-cache-rate', 'kpi-saved']) expect(await text(id), id).toBe('–');
    expect(await text('kpi-spend-sub')).toBe('Could not be loaded.');
    expect(await text('updated')).toBe(`${before} · refresh failed`);
    expect(await page.getByTestId('top-key-row').count()).toBe(0);

    phase = 'signed-in';
    stub.failUsage = 0;
    await page.getByTestId('refresh').click();
    await page.getByTestId('banner').waitFor({ state: 'hidden' });
    expect(await text('kpi-spend')).toBe('$19.80');
    expect(await text('updated')).toMatch(/^Updated \d\d:\d\d:\d\d UTC$/);
  });

  it('keeps long key names short in the table and the chart tooltips', async () => {
    phase = 'long-names';
    const long = 'an-extremely-long-key-name-'.repeat(7).slice(0, 190);
    stub.usage = KEY_USAGE.map((u) => (u.key === 'key_billing0001' ? { ...u, keyName: long } : u));
    await page.setViewportSize({ width: 1400, height: 900 });
    await page.getByTestId('refresh').click();
    await page.waitForFunction((name) => document.querySelector('[data-testid="top-key-name"]')?.textContent === name, long);

    // Every column of the table fits its card; the name is cut short (the full name is its title).
    const layout = await page.getByTestId('top-keys').evaluate((table: HTMLElement) => {
      const wrap = table.parentElement;
      const card = table.closest('.card').getBoundingClientRect();
      const errors = [...table.querySelectorAll('th')].at(-1).getBoundingClientRect();
      const name = table.querySelector('[data-testid="top-key-name"]');
      return { scroll: wrap.scrollWidth, client: wrap.clientWidth, errorsRight: errors.right, cardRight: card.right, nameCut: name.scrollWidth > name.clientWidth, title: name.title };
    });
    expect(layout.scroll).toBeLessThanOrEqual(layout.client);
    expect(layout.errorsRight).toBeLessThanOrEqual(layout.cardRight);
    expect(layout.nameCut).toBe(true);
    expect(layout.title).toBe(long);

    // Hovering the latest bar: the tooltip's line for the key is short enough to show its amount, inside the canvas.
    const bar = await page.evaluate(() => {
      const chart = window.Chart.getChart('chart-keys');
      const meta = chart.getDatasetMeta(0);
      const el = meta.data.at(-1);
      return { x: el.x, y: el.y + 2, label: chart.data.datasets[0].label };
    });
    expect(bar.label).toBe(long);
    const box = (await page.getByTestId('chart-keys').boundingBox())!;
    await page.mouse.move(box.x + bar.x, box.y + bar.y);
    await page.waitForFunction(() => window.Chart.getChart('chart-keys').tooltip.opacity === 1);
    const tip = await page.evaluate(() => {
      const chart = window.Chart.getChart('chart-keys');
      const t = chart.tooltip;
      return { lines: t.body.flatMap((b: { lines: string[] }) => b.lines), x: t.x, width: t.width, chartWidth: chart.width };
    });
    const line = tip.lines.find((l: string) => l.includes('an-extremely'))!;
    expect(line).toMatch(/^ an-extremely-long-key-name-an-.*…: \$\d[\d,.]*$/);
    expect(line.length).toBeLessThanOrEqual(48);
    expect(tip.x).toBeGreaterThanOrEqual(0);
    expect(tip.x + tip.width).toBeLessThanOrEqual(tip.chartWidth);
    await page.screenshot({ path: `${ARTIFACTS}dashboard-long-names.png` });

    await page.mouse.move(0, 0);
    stub.usage = KEY_USAGE;
    await page.setViewportSize({ width: 1440, height: 900 });
    await page.getByTestId('refresh').click();
    await page.waitForFunction(() => document.querySelector('[data-testid="top-key-name"]')?.textContent === 'billing-app');
  });

  it('draws only the fullest budgets when there are many, from every page of the key list', async () => {
    phase = 'many-budgets';
    const resets = new Date(Date.now() + DAY).toISOString();
    // 55 keys with a daily and a monthly USD budget each: 110 budgets, key i at i% and (i/2)%; the 15 fullest are days 54% to 40%.
    // Served 10 to a page, so the fullest (the last keys) are only on the last pages.
    stub.keysPageSize = 10;
    stub.calls.length = 0;
    stub.keys = () =>
      Array.from({ length: 55 }, (_, i) => ({
        id: `key_many${String(i).padStart(4, '0')}`,
        name: `team-${i}`,
        revokedAt: null,
        limits: { usdPerDay: 100, usdPerMonth: 1000 },
        quota: {
          usdPerDay: { limit: 100, used: i, reserved: 0, resetsAt: resets },
          usdPerMonth: { limit: 1000, used: i * 5, reserved: 0, resetsAt: resets },
        },
      }));
    await page.getByTestId('refresh').click();
    await page.waitForFunction(() => document.querySelector('[data-testid="budget-row"]')?.getAttribute('data-key-id') === 'key_many0054');
    expect(await page.getByTestId('budget-row').count()).toBe(15);
    expect(await text('budgets-note')).toBe('top 15 of 110 budgets');
    const shown = await texts('budget-percent');
    expect(shown[0]).toBe('54.0%');
    expect(shown.at(-1)).toBe('40.0%');
    expect(await page.evaluate(() => document.documentElement.scrollHeight)).toBeLessThan(3_000);
    // Six pages, each after the last key of the one before.
    const pages = stub.calls.filter((c) => c.path === '/admin/keys').map((c) => c.query.after ?? null);
    expect(pages).toEqual([null, 'key_many0009', 'key_many0019', 'key_many0029', 'key_many0039', 'key_many0049']);

    stub.keys = null;
    await page.getByTestId('refresh').click();
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="budget-row"]').length === 3);
    expect(await text('budgets-note')).toBe('today and this month, per key');
  });

  it('says what could not be loaded and shows the rest', async () => {
    phase = 'partial-failure';
    stub.failEvents = true;
    await page.getByTestId('refresh').click();
    await page.getByTestId('banner').waitFor({ state: 'visible' });
    expect(await text('banner')).toBe(
      'Some data could not be loaded: /admin/usage/events: The gateway had an internal error (request id r-1). (HTTP 500)',
    );
    expect(await page.getByTestId('event-row').count()).toBe(0);
    expect(await text('events-empty')).toBe('Could not be loaded.');
    expect(await text('kpi-spend')).toBe('$19.80');
    expect(await page.getByTestId('top-key-row').count()).toBe(4);

    phase = 'signed-in';
    stub.failEvents = false;
    await page.getByTestId('refresh').click();
    await page.getByTestId('event-row').first().waitFor();
    expect(await page.getByTestId('banner').isVisible()).toBe(false);
  });

  it('goes back to the form when the token stops working, and logs out cleanly', async () => {
    phase = 'token-rotated';
    stub.token = 'a-rotated-admin-token';
    await page.getByTestId('refresh').click();
    await page.getByTestId('login').waitFor({ state: 'visible' });
    expect(await text('login-error')).toBe('The admin token was refused. Sign in again.');
    expect(await page.evaluate(() => sessionStorage.length)).toBe(0);
    expect(await page.getByTestId('top-key-row').count()).toBe(0);

    phase = 'signed-in';
    stub.token = TOKEN;
    await page.getByTestId('token').fill(TOKEN);
    await page.getByTestId('login-submit').click();
    await page.getByTestId('top-key-row').first().waitFor();

    // A reload keeps the session (same tab), and log out forgets the token and the data.
    await page.reload();
    await page.getByTestId('top-key-row').first().waitFor();
    await page.getByTestId('logout').click();
    await page.getByTestId('login').waitFor({ state: 'visible' });
    expect(await page.getByTestId('login-error').isVisible()).toBe(false);
    expect(await page.evaluate(() => sessionStorage.length)).toBe(0);
    expect(await page.getByTestId('top-key-row').count()).toBe(0);
    expect(await page.getByTestId('event-row').count()).toBe(0);
    expect(await page.getByTestId('budget-row').count()).toBe(0);
    expect(await text('kpi-spend')).toBe('–');
    expect(await page.evaluate(() => document.body.textContent!.includes('billing-app'))).toBe(false);
  });

  it('gives up on a gateway that does not answer, on sign in and on refresh', async () => {
    // A page of its own, with a clock the test moves: the page's requests time out after 15 s.
    const own = await browser.newContext({ viewport: { width: 1440, height: 900 }, timezoneId: 'UTC', locale: 'en-US' });
    const p = await own.newPage();
    try {
      await p.clock.install();
      await p.goto(`${stub.url}/dashboard`);
      await p.getByTestId('login').waitFor({ state: 'visible' });
      let hung = 0;
      let arrived = () => {};
      const hang = async () => {
        await p.route('**/admin/**', () => {
          hung++;
          arrived();
        }); // never answers
      };
      const waitForHung = (n: number) =>
        new Promise<void>((resolve) => {
          arrived = () => hung >= n && resolve();
          arrived();
        });

      await hang();
      await p.getByTestId('token').fill(TOKEN);
      await p.getByTestId('login-submit').click();
      await waitForHung(1);
      expect(await p.getByTestId('login-submit').textContent()).toBe('Checking…');
      await p.clock.runFor(15_500);
      await p.getByTestId('login-error').waitFor({ state: 'visible' });
      expect(await p.getByTestId('login-error').textContent()).toBe('The gateway did not answer within 15 seconds.');
      expect(await p.getByTestId('login-submit').isEnabled()).toBe(true);
      expect(await p.getByTestId('login-submit').textContent()).toBe('Open dashboard');

      await p.unrouteAll();
      await p.getByTestId('token').fill(TOKEN);
      await p.getByTestId('login-submit').click();
      await p.getByTestId('top-key-row').first().waitFor();

      // A refresh that hangs: Refresh comes back, and the panels say why.
      hung = 0;
      await hang();
      await p.getByTestId('refresh').click();
      await waitForHung(5);
      expect(await p.getByTestId('refresh').isDisabled()).toBe(true);
      await p.clock.runFor(15_500);
      await p.getByTestId('banner').waitFor({ state: 'visible' });
      expect(await p.getByTestId('banner').textContent()).toBe('Some data could not be loaded: The gateway did not answer within 15 seconds.');
      expect(await p.getByTestId('refresh').isEnabled()).toBe(true);
      expect(await p.getByTestId('kpi-spend').textContent()).toBe('–');
    } finally {
      await own.close();
    }
  });

  it('logged no console errors, page errors or CSP violations', () => {
    // The only errors allowed are Chromium's notes on the 401s the wrong and rotated tokens got,
    // and on the 500 the failing events endpoint sent.
    const allowed: Record<string, RegExp> = {
      'wrong-token': /^console\.error: Failed to load resource: the server responded with a status of 401 \(Unauthorized\)$/,
      'token-rotated': /^console\.error: Failed to load resource: the server responded with a status of 401 \(Unauthorized\)$/,
      'partial-failure': /^console\.error: Failed to load resource: the server responded with a status of 500 \(Internal Server Error\)$/,
      'usage-down': /^console\.error: Failed to load resource: the server responded with a status of 503 \(Service Unavailable\)$/,
    };
    const unexpected = problems.filter((p) => !allowed[p.phase]?.test(p.text));
    expect(unexpected).toEqual([]);
  });
});
