// Prometheus metrics: exact counts from usage events, bounded labels, budgets at scrape time, the token, the dashboard.
import { readFileSync } from 'node:fs';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterAll, describe, expect, it } from 'vitest';
import { errorHandler } from '../../src/errors.js';
import { createMetrics, type BudgetGauge, type Metrics, type MetricsOptions } from '../../src/metrics/metrics.js';
import { loadPriceTable } from '../../src/openai/prices.js';
import { metricsRoutes } from '../../src/routes/metrics.js';
import type { UsageEvent } from '../../src/usage/event.js';
import { createMemoryStore } from '../../src/store/memory-store.js';
import type { Store } from '../../src/store/store.js';
import { startGateway, type Gateway } from '../helpers/gateway.js';
import { usageEvent } from '../helpers/usage-events.js';

const prices = loadPriceTable();
const opened: FastifyInstance[] = [];
const gateways: Gateway[] = [];
afterAll(async () => {
  for (const app of opened) await app.close();
  for (const gw of gateways) await gw.close();
});

async function buildMetricsApp(options: Partial<MetricsOptions> = {}, token?: string): Promise<{ app: FastifyInstance; metrics: Metrics }> {
  const metrics = createMetrics({ prices, ...options });
  const app = Fastify();
  app.setErrorHandler(errorHandler);
  await app.register(metricsRoutes, { metrics, ...(token ? { token } : {}) });
  await app.ready();
  opened.push(app);
  return { app, metrics };
}

function event(overrides: Partial<UsageEvent>): UsageEvent {
  return usageEvent({ eventId: 'evt_1', requestId: 'req_1', keyName: 'billing-app', overheadMs: 1, ...overrides });
}

// --- A small reader of the Prometheus text format ---------------------------------------------------
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parseSamples(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/.exec(line);
    if (!m) throw new Error(`unparsable exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!.replace(/\\(.)/g, '$1');
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return samples;
}

/** The samples of a metric whose labels include `labels`. */
function find(samples: Sample[], name: string, labels: Record<string, string> = {}): Sample[] {
  return samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
}

/** The value of the one sample with exactly these labels. */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const exact = samples.filter(
    (s) => s.name === name && Object.keys(s.labels).length === Object.keys(labels).length && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  if (exact.length > 1) throw new Error(`several samples of ${name} ${JSON.stringify(labels)}`);
  return exact[0]?.value;
}

/** Every name the exposition offers: metric families plus the series names of histograms and summaries. */
function exposedNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\w+)$/gm)) {
    const [, name, type] = m as unknown as [string, string, string];
    names.add(name);
    if (type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(name + s);
    if (type === 'summary') for (const s of ['_sum', '_count']) names.add(name + s);
  }
  return names;
}

async function scrape(app: FastifyInstance, headers: Record<string, string> = {}) {
  const res = await app.inject({ method: 'GET', url: '/metrics', headers });
  return { res, text: res.body, samples: parseSamples(res.statusCode === 200 ? res.body : '') };
}

// --- The events of the main scenario --------------------------------------------------------------
const miss = event({
  requestId: 'req_miss',
  modelAnswered: 'gpt-4o-mini-2024-07-18',
  cache: 'MISS',
  stream: true,
  promptTokens: 1200,
  cachedPromptTokens: 1024,
  completionTokens: 300,
  reasoningTokens: 64,
  totalTokens: 1500,
  costMicros: 2500,
  latencyMs: 852.5,
  ttfbMs: 310,
  upstreamMs: 850,
  overheadMs: 2.5,
});
const hit = event({
  requestId: 'req_hit',
  modelAnswered: 'gpt-4o-mini-2024-07-18',
  cache: 'HIT',
  savedTokens: 1500,
  savedMicros: 2500,
  latencyMs: 0.8,
  ttfbMs: 0.7,
  overheadMs: 0.8,
});
const unauthenticated = event({
  requestId: 'req_401',
  keyId: null,
  keyName: null,
  model: null,
  status: 401,
  errorCode: 'invalid_api_key',
  latencyMs: 0.3,
  ttfbMs: 0.3,
  overheadMs: 0.3,
});
const randomModel = event({
  requestId: 'req_random',
  keyId: 'key_b',
  keyName: null,
  model: 'zz-made-up-7f3a9c',
  status: 404,
  errorCode: 'model_not_found',
  latencyMs: 120,
  ttfbMs: 120,
  upstreamMs: 119,
  overheadMs: 1,
});

const budgetList: BudgetGauge[] = [
  { keyId: 'key_a', keyName: 'billing-app', limit: 'usdPerDay', remaining: 12.5, reserved: 0.25, ratioUsed: 0.375 },
  { keyId: 'key_a', keyName: 'billing-app', limit: 'tokensPerMonth', remaining: 900000, reserved: 4096, ratioUsed: 0.1 },
  { keyId: 'key_b', keyName: '', limit: 'tokensPerDay', remaining: 0, reserved: 0, ratioUsed: 1.25 },
];

describe('metrics', () => {
  it('counts requests, tokens, spend and cache savings exactly, with bounded labels', async () => {
    let budgetCalls = 0;
    const { app, metrics } = await buildMetricsApp({
      budgets: async () => {
        budgetCalls++;
        return budgetList;
      },
    });
    for (const e of [miss, hit, hit, unauthenticated, randomModel]) metrics.observe(e);

    const { res, text, samples } = await scrape(app);
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe(metrics.registry.contentType);

    // Answered as a snapshot of the model asked for: labelled as asked, as the usage report groups it.
    const a = { key: 'billing-app', key_id: 'key_a', model: 'gpt-4o-mini' };
    const requests = 'tollgate_requests_total';
    expect(value(samples, requests, { ...a, endpoint: 'chat.completions', status: '200', cache: 'MISS' })).toBe(1);
    expect(value(samples, requests, { ...a, endpoint: 'chat.completions', status: '200', cache: 'HIT' })).toBe(2);
    expect(value(samples, requests, { key: 'none', key_id: 'none', model: 'none', endpoint: 'chat.completions', status: '401', cache: 'none' })).toBe(1);
    // The made-up model is `other`; the key without a name is labelled by its id.
    expect(value(samples, requests, { key: 'key_b', key_id: 'key_b', model: 'other', endpoint: 'chat.completions', status: '404', cache: 'none' })).toBe(1);
    expect(find(samples, requests)).toHaveLength(4);
    expect(text).not.toContain('zz-made-up');
    expect(text).not.toContain('req_');

    expect(value(samples, 'tollgate_tokens_total', { ...a, kind: 'prompt' })).toBe(1200);
    expect(value(samples, 'tollgate_tokens_total', { ...a, kind: 'cached_prompt' })).toBe(1024);
    expect(value(samples, 'tollgate_tokens_total', { ...a, kind: 'completion' })).toBe(300);
    expect(value(samples, 'tollgate_tokens_total', { ...a, kind: 'reasoning' })).toBe(64);
    // Requests that used nothing add no token or cost series.
    expect(find(samples, 'tollgate_tokens_total')).toHaveLength(4);
    expect(value(samples, 'tollgate_cost_usd_total', a)).toBe(0.0025);
    expect(find(samples, 'tollgate_cost_usd_total')).toHaveLength(1);

    expect(value(samples, 'tollgate_cache_hits_total', a)).toBe(2);
    expect(value(samples, 'tollgate_cache_saved_tokens_total', a)).toBe(3000);
    expect(value(samples, 'tollgate_cache_saved_usd_total', a)).toBe(0.005);

    // Histograms: overhead of every request; upstream time only when upstream was called; TTFB by stream.
    expect(value(samples, 'tollgate_gateway_overhead_seconds_count')).toBe(5);
    expect(value(samples, 'tollgate_gateway_overhead_seconds_sum')).toBeCloseTo((2.5 + 0.8 + 0.8 + 0.3 + 1) / 1000, 12);
    expect(value(samples, 'tollgate_gateway_overhead_seconds_bucket', { le: '0.001' })).toBe(4);
    expect(value(samples, 'tollgate_gateway_overhead_seconds_bucket', { le: '+Inf' })).toBe(5);
    expect(value(samples, 'tollgate_upstream_duration_seconds_count', { endpoint: 'chat.completions' })).toBe(2);
    expect(value(samples, 'tollgate_upstream_duration_seconds_sum', { endpoint: 'chat.completions' })).toBeCloseTo(0.969, 12);
    expect(value(samples, 'tollgate_upstream_duration_seconds_bucket', { endpoint: 'chat.completions', le: '0.25' })).toBe(1);
    expect(value(samples, 'tollgate_upstream_duration_seconds_bucket', { endpoint: 'chat.completions', le: '1' })).toBe(2);
    expect(value(samples, 'tollgate_time_to_first_byte_seconds_count', { endpoint: 'chat.completions', stream: 'true' })).toBe(1);
    expect(value(samples, 'tollgate_time_to_first_byte_seconds_count', { endpoint: 'chat.completions', stream: 'false' })).toBe(4);
    expect(value(samples, 'tollgate_time_to_first_byte_seconds_bucket', { endpoint: 'chat.completions', stream: 'false', le: '0.001' })).toBe(3);

    // Process and runtime metrics, under their standard names.
    for (const name of ['process_cpu_user_seconds_total', 'process_resident_memory_bytes', 'nodejs_heap_size_used_bytes', 'nodejs_eventloop_lag_p99_seconds']) {
      expect(find(samples, name).length, name).toBeGreaterThan(0);
    }

    // Budgets, read once per scrape; one unit per metric; a key without a name is labelled by its id.
    expect(budgetCalls).toBe(1);
    expect(value(samples, 'tollgate_budget_remaining_usd', { key: 'billing-app', key_id: 'key_a', limit: 'usdPerDay' })).toBe(12.5);
    expect(value(samples, 'tollgate_budget_remaining_tokens', { key: 'billing-app', key_id: 'key_a', limit: 'tokensPerMonth' })).toBe(900000);
    expect(value(samples, 'tollgate_budget_remaining_tokens', { key: 'key_b', key_id: 'key_b', limit: 'tokensPerDay' })).toBe(0);
    expect(find(samples, 'tollgate_budget_remaining_usd')).toHaveLength(1);
    expect(find(samples, 'tollgate_budget_remaining_tokens')).toHaveLength(2);
    expect(value(samples, 'tollgate_budget_reserved_usd', { key: 'billing-app', key_id: 'key_a', limit: 'usdPerDay' })).toBe(0.25);
    expect(value(samples, 'tollgate_budget_reserved_tokens', { key: 'billing-app', key_id: 'key_a', limit: 'tokensPerMonth' })).toBe(4096);
    expect(find(samples, 'tollgate_budget_reserved_usd')).toHaveLength(1);
    expect(find(samples, 'tollgate_budget_reserved_tokens')).toHaveLength(2);
    expect(value(samples, 'tollgate_budget_used_ratio', { key: 'billing-app', key_id: 'key_a', limit: 'usdPerDay' })).toBe(0.375);
    expect(value(samples, 'tollgate_budget_used_ratio', { key: 'billing-app', key_id: 'key_a', limit: 'tokensPerMonth' })).toBe(0.1);
    expect(value(samples, 'tollgate_budget_used_ratio', { key: 'key_b', key_id: 'key_b', limit: 'tokensPerDay' })).toBe(1.25);
    expect(value(samples, 'tollgate_budget_collect_failures_total')).toBe(0);

    // Counters add up across scrapes; budgets are read again.
    metrics.observe(miss);
    const again = await scrape(app);
    expect(value(again.samples, 'tollgate_cost_usd_total', a)).toBe(0.005);
    expect(value(again.samples, 'tollgate_tokens_total', { ...a, kind: 'prompt' })).toBe(2400);
    expect(budgetCalls).toBe(2);
  });

  it('gives calls as slow as the default upstream timeouts a bucket below +Inf', async () => {
    const { app, metrics } = await buildMetricsApp();
    // A long reasoning call: 9 minutes upstream (UPSTREAM_TOTAL_TIMEOUT_MS is 10), its first byte after 4 (headers: 5).
    metrics.observe(event({ endpoint: 'chat.completions', stream: false, upstreamMs: 540_000, ttfbMs: 240_000 }));
    const { samples } = await scrape(app);
    expect(value(samples, 'tollgate_upstream_duration_seconds_bucket', { endpoint: 'chat.completions', le: '600' })).toBe(1);
    expect(value(samples, 'tollgate_upstream_duration_seconds_bucket', { endpoint: 'chat.completions', le: '300' })).toBe(0);
    expect(value(samples, 'tollgate_time_to_first_byte_seconds_bucket', { endpoint: 'chat.completions', stream: 'false', le: '300' })).toBe(1);
    expect(value(samples, 'tollgate_time_to_first_byte_seconds_bucket', { endpoint: 'chat.completions', stream: 'false', le: '120' })).toBe(0);
  });

  it('counts 200s that did not end normally by reason, so a failing upstream mid-stream does not look like success', async () => {
    const { app, metrics } = await buildMetricsApp();
    const stream = { endpoint: 'chat.completions', stream: true, status: 200 } as const;
    metrics.observe(event({ ...stream, errorCode: 'upstream_stream_error' }));
    metrics.observe(event({ ...stream, errorCode: 'upstream_stream_error' }));
    metrics.observe(event({ ...stream, errorCode: 'client_closed_request' }));
    // A failed Responses stream's code is upstream's choice: not a label value.
    metrics.observe(event({ ...stream, endpoint: 'responses', errorCode: 'made_up_by_upstream_1234' }));
    metrics.observe(event({ ...stream, errorCode: null }));
    metrics.observe(event({ status: 429, errorCode: 'rate_limit_exceeded' }));
    const { samples } = await scrape(app);
    const labels = { key: 'billing-app', key_id: 'key_a' };
    expect(value(samples, 'tollgate_requests_incomplete_total', { ...labels, endpoint: 'chat.completions', reason: 'upstream_stream_error' })).toBe(2);
    expect(value(samples, 'tollgate_requests_incomplete_total', { ...labels, endpoint: 'chat.completions', reason: 'client_closed_request' })).toBe(1);
    expect(value(samples, 'tollgate_requests_incomplete_total', { ...labels, endpoint: 'responses', reason: 'other' })).toBe(1);
    expect(find(samples, 'tollgate_requests_incomplete_total')).toHaveLength(3);
  });

  it('labels models from a bounded set', async () => {
    // Answered models outside the exact ids of the price table share the cap: one snapshot and two echoes.
    const { metrics } = await buildMetricsApp({ maxUnpricedModelLabels: 3 });
    // The answered model wins, unless it is a snapshot of the (priced) model asked for: then the
    // model asked for, as the usage report names it. A requested model only when it is an exact id of
    // the price table, and a requested snapshot is labelled with the id it is priced as (the snapshot
    // rule accepts endless names).
    expect(metrics.modelLabel('gpt-4o-mini', 'gpt-4o-mini-2024-07-18')).toBe('gpt-4o-mini');
    expect(metrics.modelLabel('gpt-4o', 'gpt-4o-2024-08-06')).toBe('gpt-4o');
    // Another model than the one asked for (a proxy's fallback) keeps its own name.
    expect(metrics.modelLabel('gpt-4o', 'gpt-4o-mini-2024-07-18')).toBe('gpt-4o-mini-2024-07-18');
    expect(metrics.modelLabel('gpt-4o')).toBe('gpt-4o');
    expect(metrics.modelLabel('gpt-4o-mini-2024-07-18', null)).toBe('gpt-4o-mini');
    expect(metrics.modelLabel('gpt-4o-1000', null)).toBe('gpt-4o');
    expect(metrics.modelLabel('gpt-4o-mini-2099-01-01', null)).toBe('gpt-4o-mini');
    expect(metrics.modelLabel('random-3b1f', null)).toBe('other');
    expect(metrics.modelLabel('gpt-4o\n{evil="1"}', null)).toBe('other');
    expect(metrics.modelLabel(null, null)).toBe('none');
    // An upstream that echoes any name: at most maxUnpricedModelLabels unpriced answered models get a series.
    expect(metrics.modelLabel('ft:custom-1', 'ft:custom-1')).toBe('ft:custom-1');
    expect(metrics.modelLabel('echo-2', 'echo-2')).toBe('echo-2');
    expect(metrics.modelLabel('echo-3', 'echo-3')).toBe('other');
    expect(metrics.modelLabel('ft:custom-1', 'ft:custom-1')).toBe('ft:custom-1');
    expect(metrics.modelLabel('gpt-4.1', 'gpt-4.1')).toBe('gpt-4.1');
    expect(metrics.modelLabel('x', 'x'.repeat(500))).toBe('other');
  });

  it('serves the scrape without budget gauges when budgets() rejects', async () => {
    let calls = 0;
    const errors: string[] = [];
    const { app, metrics } = await buildMetricsApp({
      budgets: async () => {
        calls++;
        if (calls === 1) throw new Error('store down');
        return budgetList;
      },
      onBudgetsError: (err) => errors.push(err.message),
    });
    metrics.observe(miss);
    const first = await scrape(app);
    expect(first.res.statusCode).toBe(200);
    expect(first.text).toContain('# TYPE tollgate_budget_used_ratio gauge');
    expect(find(first.samples, 'tollgate_budget_used_ratio')).toHaveLength(0);
    expect(find(first.samples, 'tollgate_budget_remaining_usd')).toHaveLength(0);
    expect(value(first.samples, 'tollgate_budget_collect_failures_total')).toBe(1);
    expect(value(first.samples, 'tollgate_cost_usd_total', { key: 'billing-app', key_id: 'key_a', model: 'gpt-4o-mini' })).toBe(0.0025);
    expect(errors).toEqual(['store down']);
    expect(calls).toBe(1);

    // The next scrape tries again and recovers.
    const second = await scrape(app);
    expect(value(second.samples, 'tollgate_budget_used_ratio', { key: 'billing-app', key_id: 'key_a', limit: 'usdPerDay' })).toBe(0.375);
    expect(value(second.samples, 'tollgate_budget_collect_failures_total')).toBe(1);
  });

  it('serves the scrape in time without budget gauges when budgets() hangs, and does not pile up calls', async () => {
    let calls = 0;
    const { app } = await buildMetricsApp({
      budgets: () => {
        calls++;
        return new Promise<BudgetGauge[]>(() => {});
      },
      budgetsTimeoutMs: 50,
    });
    const started = performance.now();
    const first = await scrape(app);
    expect(performance.now() - started).toBeLessThan(2000);
    expect(first.res.statusCode).toBe(200);
    expect(find(first.samples, 'tollgate_budget_used_ratio')).toHaveLength(0);
    expect(value(first.samples, 'tollgate_budget_collect_failures_total')).toBe(1);
    expect(find(first.samples, 'process_cpu_user_seconds_total')).toHaveLength(1);

    const second = await scrape(app);
    expect(second.res.statusCode).toBe(200);
    expect(value(second.samples, 'tollgate_budget_collect_failures_total')).toBe(2);
    // The stuck call is joined, not repeated.
    expect(calls).toBe(1);
  });

  it('serves the scrape without budget gauges when no budgets() is given', async () => {
    const { app } = await buildMetricsApp();
    const { res, samples } = await scrape(app);
    expect(res.statusCode).toBe(200);
    expect(find(samples, 'tollgate_budget_used_ratio')).toHaveLength(0);
    expect(value(samples, 'tollgate_budget_collect_failures_total')).toBe(0);
  });

  it('requires the bearer token when one is configured', async () => {
    const token = 'metrics-token-0123456789';
    const { app } = await buildMetricsApp({}, token);
    const refused: Record<string, string>[] = [{}, { authorization: 'Bearer wrong-token' }, { authorization: token }, { authorization: `Basic ${token}` }];
    for (const headers of refused) {
      const { res } = await scrape(app, headers);
      expect(res.statusCode, JSON.stringify(headers)).toBe(401);
      expect(res.json()).toEqual({
        error: { message: expect.any(String), type: 'invalid_request_error', param: null, code: 'invalid_metrics_token' },
      });
      expect(res.body).not.toContain(token);
    }
    const ok = await scrape(app, { authorization: `Bearer ${token}` });
    expect(ok.res.statusCode).toBe(200);
    expect(ok.text).toContain('# TYPE tollgate_requests_total counter');
  });

  it('gives made-up snapshot names no series of their own, requested or echoed back', async () => {
    const { app, metrics } = await buildMetricsApp({ maxUnpricedModelLabels: 5 });
    // Requested names the price table prices as snapshots of gpt-4o, refused upstream (no answered model).
    for (let i = 0; i < 200; i++) metrics.observe(event({ model: `gpt-4o-${1000 + i}`, status: 404 }));
    for (let i = 0; i < 50; i++) metrics.observe(event({ model: `gpt-4o-mini-2031-01-${String(i % 28 + 1).padStart(2, '0')}`, status: 404 }));
    let models = new Set(find((await scrape(app)).samples, 'tollgate_requests_total').map((s) => s.labels.model));
    expect([...models].sort()).toEqual(['gpt-4o', 'gpt-4o-mini']);
    // An upstream that echoes the requested name back: labelled as the model the name is priced as.
    for (let i = 0; i < 200; i++) metrics.observe(event({ model: `gpt-4o-${3000 + i}`, modelAnswered: `gpt-4o-${3000 + i}`, status: 200 }));
    models = new Set(find((await scrape(app)).samples, 'tollgate_requests_total').map((s) => s.labels.model));
    expect([...models].sort()).toEqual(['gpt-4o', 'gpt-4o-mini']);
    // Answered snapshots of another model count against the cap.
    for (let i = 0; i < 200; i++) metrics.observe(event({ model: 'gpt-4o-mini', modelAnswered: `gpt-4o-${5000 + i}`, status: 200 }));
    models = new Set(find((await scrape(app)).samples, 'tollgate_requests_total').map((s) => s.labels.model));
    expect(models.size).toBeLessThanOrEqual(2 + 5 + 1); // the two above, the cap, and `other`
    expect(models.has('other')).toBe(true);
  });

  it('through the gateway, made-up snapshot names that upstream refuses add no model series', async () => {
    const gw = await startGateway();
    gateways.push(gw);
    const { key } = await gw.createKey({ name: 'guesser' });
    for (let i = 1000; i <= 1030; i++) {
      const res = await fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: `gpt-4o-${i}`, messages: [{ role: 'user', content: 'hi' }] }),
      });
      expect(res.status).toBe(404);
      await res.arrayBuffer();
    }
    const read = async () => parseSamples(await (await fetch(`${gw.url}/metrics`)).text());
    await expect.poll(async () => find(await read(), 'tollgate_requests_total', { key: 'guesser' }).reduce((n, s) => n + s.value, 0)).toBe(31);
    const models = new Set(find(await read(), 'tollgate_requests_total', { key: 'guesser' }).map((s) => s.labels.model));
    // A name upstream does not know is recorded as no model at all (the usage report's bound too).
    expect([...models]).toEqual(['none']);
  });

  it("drops a revoked key's series, and a renamed key's series under its old name, after the grace", async () => {
    const gw = await startGateway({ retiredSeriesGraceMs: 1500 });
    gateways.push(gw);
    const chat = (key: string) =>
      fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'gpt-4o-mini', max_tokens: 3, messages: [{ role: 'user', content: 'hi' }] }),
      }).then((res) => res.arrayBuffer());
    const gone = await gw.createKey({ name: 'one-job' });
    const renamed = await gw.createKey({ name: 'old-name' });
    await chat(gone.key);
    await chat(renamed.key);
    const read = async () => parseSamples(await (await fetch(`${gw.url}/metrics`)).text());
    const seriesOf = async (labels: Record<string, string>) =>
      (await read()).filter((s) => s.name.startsWith('tollgate_') && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).length;
    await expect.poll(() => seriesOf({ key_id: gone.id })).toBeGreaterThanOrEqual(4); // requests, tokens x2, cost
    await expect.poll(() => seriesOf({ key: 'old-name' })).toBeGreaterThanOrEqual(4);

    expect((await gw.admin('DELETE', `/admin/keys/${gone.id}`)).status).toBe(200);
    expect((await gw.admin('PATCH', `/admin/keys/${renamed.id}`, { name: 'new-name' })).status).toBe(200);
    await chat(renamed.key);
    // Still there during the grace, for the scrapes that read their last values.
    expect(await seriesOf({ key_id: gone.id })).toBeGreaterThanOrEqual(4);
    expect(await seriesOf({ key: 'old-name' })).toBeGreaterThanOrEqual(4);
    await expect.poll(() => seriesOf({ key_id: gone.id }), { timeout: 6000 }).toBe(0);
    await expect.poll(() => seriesOf({ key: 'old-name' }), { timeout: 6000 }).toBe(0);
    // The live key keeps its series under its current name.
    expect(await seriesOf({ key_id: renamed.id, key: 'new-name' })).toBeGreaterThanOrEqual(4);
  });

  it("after the change feed's '*' (messages maybe missed), looks at every key with series", async () => {
    const records: Record<string, { name: string; revokedAt: string | null }> = {
      key_live: { name: 'live', revokedAt: null },
      key_gone: { name: 'gone', revokedAt: '2026-12-01T00:00:00.000Z' },
    };
    const { metrics } = await buildMetricsApp({ keyRecord: async (id) => records[id] ?? null, retiredSeriesGraceMs: 50 });
    metrics.observe(event({ keyId: 'key_live', keyName: 'live' }));
    metrics.observe(event({ keyId: 'key_gone', keyName: 'gone' }));
    metrics.observe(event({ keyId: null, keyName: null, status: 401 }));
    const ids = async () => new Set(parseSamples(await metrics.registry.metrics()).filter((s) => s.name === 'tollgate_requests_total').map((s) => s.labels.key_id));
    expect(await ids()).toEqual(new Set(['key_live', 'key_gone', 'none']));
    metrics.keyChanged('*');
    await expect.poll(ids).toEqual(new Set(['key_live', 'none']));
  });

  it('counts wrong metrics tokens against the failed-auth guard', async () => {
    const gw = await startGateway({ env: { METRICS_TOKEN: 'metrics-token-0123456789', AUTH_FAILURES_PER_MINUTE: '3' } });
    gateways.push(gw);
    const get = (auth?: string) => fetch(`${gw.url}/metrics`, auth ? { headers: { authorization: auth } } : {});
    // A scrape without a token is a misconfigured scraper, not a guess: it is refused but not counted.
    for (let i = 0; i < 5; i++) expect((await get()).status).toBe(401);
    expect((await get('Bearer metrics-token-0123456789')).status).toBe(200);
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await get(`Bearer wrong-guess-${i}`)).status);
    expect(statuses).toEqual([401, 401, 401, 429, 429, 429]);
    // Over the limit, even the right token is refused before it is compared.
    const blocked = await get('Bearer metrics-token-0123456789');
    expect(blocked.status).toBe(429);
    expect(blocked.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(((await blocked.json()) as { error: { code: string } }).error.code).toBe('too_many_failed_attempts');
  });

  it('gives two keys that share a name their own series and budget gauges, told apart by key_id', async () => {
    // Names are free text chosen by admins: nothing stops two keys from both being called `reports`.
    const twins: BudgetGauge[] = [
      { keyId: 'key_twin1', keyName: 'reports', limit: 'usdPerDay', remaining: 4, reserved: 0, ratioUsed: 0.2 },
      { keyId: 'key_twin2', keyName: 'reports', limit: 'usdPerDay', remaining: 1, reserved: 0, ratioUsed: 0.8 },
      { keyId: 'key_twin1', keyName: 'reports', limit: 'tokensPerDay', remaining: 7000, reserved: 0, ratioUsed: 0.3 },
      { keyId: 'key_twin2', keyName: 'reports', limit: 'tokensPerDay', remaining: 100, reserved: 0, ratioUsed: 0.99 },
    ];
    const { app, metrics } = await buildMetricsApp({ budgets: async () => twins });
    const spend = (keyId: string, costMicros: number, promptTokens: number) =>
      event({ keyId, keyName: 'reports', model: 'gpt-4o', cache: 'MISS', costMicros, promptTokens, totalTokens: promptTokens });
    metrics.observe(spend('key_twin1', 1000, 10));
    metrics.observe(spend('key_twin2', 3000, 30));
    metrics.observe(spend('key_twin2', 3000, 30));
    metrics.observe(event({ keyId: 'key_twin1', keyName: 'reports', model: 'gpt-4o', cache: 'HIT', savedTokens: 5, savedMicros: 500 }));

    const { text, samples } = await scrape(app);
    const one = { key: 'reports', key_id: 'key_twin1', model: 'gpt-4o' };
    const two = { key: 'reports', key_id: 'key_twin2', model: 'gpt-4o' };
    const req = { endpoint: 'chat.completions', status: '200', cache: 'MISS' };
    expect(value(samples, 'tollgate_requests_total', { ...one, ...req })).toBe(1);
    expect(value(samples, 'tollgate_requests_total', { ...two, ...req })).toBe(2);
    expect(value(samples, 'tollgate_cost_usd_total', one)).toBe(0.001);
    expect(value(samples, 'tollgate_cost_usd_total', two)).toBe(0.006);
    expect(value(samples, 'tollgate_tokens_total', { ...one, kind: 'prompt' })).toBe(10);
    expect(value(samples, 'tollgate_tokens_total', { ...two, kind: 'prompt' })).toBe(60);
    expect(value(samples, 'tollgate_cache_hits_total', one)).toBe(1);
    expect(value(samples, 'tollgate_cache_saved_tokens_total', one)).toBe(5);
    expect(find(samples, 'tollgate_cache_hits_total', { key_id: 'key_twin2' })).toHaveLength(0);

    // The budget gauges, refilled at every scrape, keep one series per key instead of the last writer's.
    for (const [name, limit, v1, v2] of [
      ['tollgate_budget_remaining_usd', 'usdPerDay', 4, 1],
      ['tollgate_budget_used_ratio', 'usdPerDay', 0.2, 0.8],
      ['tollgate_budget_remaining_tokens', 'tokensPerDay', 7000, 100],
      ['tollgate_budget_used_ratio', 'tokensPerDay', 0.3, 0.99],
    ] as const) {
      expect(value(samples, name, { key: 'reports', key_id: 'key_twin1', limit }), `${name} ${limit}`).toBe(v1);
      expect(value(samples, name, { key: 'reports', key_id: 'key_twin2', limit }), `${name} ${limit}`).toBe(v2);
    }
    expect(find(samples, 'tollgate_budget_used_ratio')).toHaveLength(4);

    // Every per-key series carries both labels; the readable name stays what ops group by.
    const perKey = samples.filter((s) => s.name.startsWith('tollgate_') && 'key' in s.labels);
    expect(perKey.length).toBeGreaterThan(0);
    for (const s of perKey) expect(s.labels, s.name).toMatchObject({ key: 'reports', key_id: expect.stringMatching(/^key_twin[12]$/) });
    expect(text).toContain('key_id="key_twin1"');
  });

  it('through the gateway, two keys created with the same name keep their own spend and budgets, by id and never by secret', async () => {
    const gw = await startGateway();
    gateways.push(gw);
    const first = await gw.createKey({ name: 'same-name', limits: { usdPerDay: 1 } });
    const second = await gw.createKey({ name: 'same-name', limits: { usdPerDay: 2 } });
    expect(first.id).not.toBe(second.id);
    const call = async (apiKey: string) => {
      const res = await fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] }),
      });
      expect(res.status).toBe(200);
      await res.arrayBuffer();
    };
    await call(first.key);
    await call(second.key);
    await call(second.key);
    const read = async () => {
      const text = await (await fetch(`${gw.url}/metrics`)).text();
      return { text, samples: parseSamples(text) };
    };
    const requestsOf = (samples: Sample[], id: string) =>
      find(samples, 'tollgate_requests_total', { key: 'same-name', key_id: id }).reduce((n, s) => n + s.value, 0);
    await expect.poll(async () => requestsOf((await read()).samples, second.id)).toBe(2);
    const { text, samples } = await read();
    expect(requestsOf(samples, first.id)).toBe(1);
    for (const id of [first.id, second.id]) {
      expect(find(samples, 'tollgate_cost_usd_total', { key: 'same-name', key_id: id }), id).toHaveLength(1);
    }
    // Each key's own USD budget: 1 and 2 a day, so the two gauges cannot be one overwriting the other.
    const used = (id: string) => find(samples, 'tollgate_budget_used_ratio', { key: 'same-name', key_id: id, limit: 'usdPerDay' });
    const remaining = (id: string) => find(samples, 'tollgate_budget_remaining_usd', { key: 'same-name', key_id: id, limit: 'usdPerDay' });
    expect(used(first.id)).toHaveLength(1);
    expect(used(second.id)).toHaveLength(1);
    expect(remaining(first.id)[0]!.value).toBeLessThanOrEqual(1);
    expect(remaining(second.id)[0]!.value).toBeGreaterThan(1);
    expect(find(samples, 'tollgate_budget_remaining_usd', { key: 'same-name' })).toHaveLength(2);
    // Ids, never the secrets.
    for (const secret of [first.key, second.key]) expect(text).not.toContain(secret);
  });

  it('through the gateway, fills the budget gauges of hundreds of keys though each store read is slow, reading keys concurrently', async () => {
    // Each usage read waits 10 ms (a store a few milliseconds away, several round trips a read): 300 keys read one
    // after another would take 3 s, past the 2 s the scrape waits for budgets, and the gauges would stay empty.
    let slow = false;
    const memory = createMemoryStore();
    const store = new Proxy(memory, {
      get(target, prop, receiver) {
        const value = Reflect.get(target, prop, receiver) as unknown;
        if (typeof value !== 'function') return value;
        const fn = value as (...args: unknown[]) => unknown;
        if (prop !== 'quotaUsage') return fn.bind(target);
        return async (...args: unknown[]) => {
          if (slow) await new Promise((resolve) => setTimeout(resolve, 10));
          return fn.apply(target, args);
        };
      },
    }) as Store;
    const gw = await startGateway({ store });
    gateways.push(gw);
    const keys = 300;
    const ids = new Set<string>();
    for (let i = 0; i < keys; i += 25) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(25, keys - i) }, (_, j) => gw.createKey({ name: `many-${i + j}`, limits: { usdPerDay: 5 } })),
      );
      for (const k of batch) ids.add(k.id);
    }
    slow = true;
    const samples = parseSamples(await (await fetch(`${gw.url}/metrics`)).text());
    expect(value(samples, 'tollgate_budget_collect_failures_total')).toBe(0);
    const ratios = find(samples, 'tollgate_budget_used_ratio', { limit: 'usdPerDay' });
    expect(new Set(ratios.map((s) => s.labels.key_id))).toEqual(ids);
    expect(find(samples, 'tollgate_budget_remaining_usd', { limit: 'usdPerDay' }).every((s) => s.value === 5)).toBe(true);
  });

  it('labels a key with its id in key_id whatever its name, and `none` before a key is known', async () => {
    const { app, metrics } = await buildMetricsApp();
    metrics.observe(event({ keyId: 'key_named', keyName: 'named-app' }));
    metrics.observe(event({ keyId: 'key_unnamed', keyName: null }));
    metrics.observe(event({ keyId: null, keyName: null, model: null, status: 401 }));
    const { samples } = await scrape(app);
    const labels = find(samples, 'tollgate_requests_total').map((s) => [s.labels.key, s.labels.key_id]);
    expect(labels.sort()).toEqual([
      ['key_unnamed', 'key_unnamed'],
      ['named-app', 'key_named'],
      ['none', 'none'],
    ]);
  });

  it('keeps each app in its own registry', async () => {
    const one = await buildMetricsApp();
    const two = await buildMetricsApp();
    one.metrics.observe(miss);
    const a = await scrape(one.app);
    const b = await scrape(two.app);
    expect(find(a.samples, 'tollgate_requests_total')).toHaveLength(1);
    expect(find(b.samples, 'tollgate_requests_total')).toHaveLength(0);
  });
});

// --- The Grafana dashboard never drifts from the code ---------------------------------------------
interface Panel {
  type: string;
  title?: string;
  datasource?: { type: string; uid: string };
  targets?: { expr?: string }[];
  panels?: Panel[];
}

const PROMQL_KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'inf', 'nan']);

/** The metric names a PromQL expression reads: identifiers that are not functions, keywords, labels or numbers. */
function metricNamesOf(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""') // string literals
    .replace(/\{[^}]*\}/g, ' ') // label matchers
    .replace(/\[[^\]]*\]/g, ' ') // range and subquery durations
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ') // label lists
    .replace(/\$\w+/g, ' ') // dashboard variables
    .replace(/\b\d+(\.\d+)?(e[+-]?\d+)?\b/gi, ' '); // numbers
  const names: string[] = [];
  for (const m of stripped.matchAll(/([a-zA-Z_:][\w:]*)(\s*\()?/g)) {
    if (m[2] || PROMQL_KEYWORDS.has(m[1]!.toLowerCase())) continue; // a function or aggregation, or a keyword
    names.push(m[1]!);
  }
  return names;
}

/** Label names an expression uses in matchers and in by/without lists. */
function labelNamesOf(expr: string): string[] {
  const labels: string[] = [];
  for (const sel of expr.matchAll(/\{([^}]*)\}/g)) for (const l of sel[1]!.matchAll(/(\w+)\s*(=~|!~|!=|=)/g)) labels.push(l[1]!);
  for (const list of expr.matchAll(/\b(?:by|without)\s*\(([^)]*)\)/g)) labels.push(...list[1]!.split(',').map((s) => s.trim()).filter(Boolean));
  return labels;
}

describe('grafana dashboard', () => {
  const dashboard = JSON.parse(readFileSync(new URL('../../grafana/tollgate-dashboard.json', import.meta.url), 'utf8')) as {
    schemaVersion: number;
    __inputs: { name: string; type: string; pluginId: string }[];
    panels: Panel[];
    templating: { list: { name: string; query?: { query: string } | string }[] };
  };
  const panels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]).filter((p) => p.type !== 'row');

  it('is importable with a Prometheus datasource input', () => {
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(dashboard.__inputs).toContainEqual(expect.objectContaining({ name: 'DS_PROMETHEUS', type: 'datasource', pluginId: 'prometheus' }));
    expect(panels.length).toBeGreaterThan(10);
    for (const p of panels) {
      expect(p.datasource, p.title).toEqual({ type: 'prometheus', uid: '${DS_PROMETHEUS}' });
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
    }
  });

  it('reads only metrics and labels the gateway exposes', async () => {
    const { app, metrics } = await buildMetricsApp({ budgets: async () => budgetList });
    for (const e of [miss, hit, unauthenticated, randomModel]) metrics.observe(e);
    const { text, samples } = await scrape(app);
    const exposed = exposedNames(text);
    // Prometheus adds job and instance at scrape; le and quantile come with histograms and summaries.
    const labels = new Set(['job', 'instance', 'le', 'quantile', ...samples.flatMap((s) => Object.keys(s.labels))]);

    const exprs = panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr ?? '' })));
    const used = new Set<string>();
    for (const { panel, expr } of exprs) {
      const names = metricNamesOf(expr);
      expect(names.length, `${panel}: ${expr}`).toBeGreaterThan(0);
      for (const name of names) {
        expect(exposed.has(name), `${panel}: ${name} is not exposed`).toBe(true);
        used.add(name);
      }
      for (const label of labelNamesOf(expr)) expect(labels.has(label), `${panel}: label ${label} is never exposed`).toBe(true);
    }
    for (const v of dashboard.templating.list) {
      const query = typeof v.query === 'string' ? v.query : v.query?.query;
      const name = query && /label_values\(\s*([a-zA-Z_:][\w:]*)/.exec(query)?.[1];
      if (name) expect(exposed.has(name), `variable ${v.name}: ${name}`).toBe(true);
    }
    // The panels the brief asks for all read what they should.
    for (const name of [
      'tollgate_requests_total',
      'tollgate_cost_usd_total',
      'tollgate_tokens_total',
      'tollgate_cache_hits_total',
      'tollgate_cache_saved_usd_total',
      'tollgate_budget_used_ratio',
      'tollgate_gateway_overhead_seconds_bucket',
      'tollgate_upstream_duration_seconds_bucket',
      'tollgate_time_to_first_byte_seconds_bucket',
      'process_resident_memory_bytes',
    ]) {
      expect(used.has(name), name).toBe(true);
    }
  });

  it('keeps keys that share a name apart: every grouping by key also groups by key_id', () => {
    const groupings = panels
      .flatMap((p) => (p.targets ?? []).map((t) => t.expr ?? ''))
      .flatMap((expr) => [...expr.matchAll(/\bby\s*\(([^)]*)\)/g)].map((m) => m[1]!.split(',').map((l) => l.trim())));
    const byKey = groupings.filter((labels) => labels.includes('key'));
    expect(byKey.length).toBeGreaterThan(5);
    for (const labels of byKey) expect(labels).toContain('key_id');
  });

  it('finds metric names in PromQL the way the drift check needs', () => {
    expect(
      metricNamesOf('histogram_quantile(0.99, sum by (le, endpoint) (rate(tollgate_upstream_duration_seconds_bucket{job=~"$job"}[$__rate_interval])))'),
    ).toEqual(['tollgate_upstream_duration_seconds_bucket']);
    expect(metricNamesOf('sum(rate(a_total{x="y or z"}[5m])) / clamp_min(sum(rate(b_total[5m])), 1e-9) * 3600')).toEqual(['a_total', 'b_total']);
    expect(metricNamesOf('process_resident_memory_bytes')).toEqual(['process_resident_memory_bytes']);
  });
});
