// Metrics and budget alerts through the real gateway: traffic shows up in /metrics, and a key that
// crosses its budget thresholds is reported to the webhook once per threshold.
import { afterAll, describe, expect, it } from 'vitest';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { startGateway, type Gateway } from '../helpers/gateway.js';
import { startFakeOpenAI } from '../../src/fake-openai/server.js';

const opened: { close(): Promise<void> }[] = [];
afterAll(async () => {
  for (const r of opened.reverse()) await r.close();
});

const chat = (gw: Gateway, key: string, content = 'hello') =>
  fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content }], max_tokens: 20 }),
  });

function metricValue(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.split(' ').at(-1));
  }
  return undefined;
}

describe('/metrics', () => {
  it('counts requests, tokens and cost per key and model, with budget gauges; METRICS_TOKEN guards it', async () => {
    const gw = await startGateway({ env: { METRICS_TOKEN: 'metrics-secret-token' } });
    opened.push(gw);
    const { key } = await gw.createKey({ name: 'metered-app', limits: { usdPerDay: 1 } });
    const res = await chat(gw, key);
    const { usage } = (await res.json()) as { usage: { prompt_tokens: number; completion_tokens: number } };
    await chat(gw, 'tg-wrong');
    expect((await fetch(`${gw.url}/metrics`)).status).toBe(401);
    const read = async () =>
      (await fetch(`${gw.url}/metrics`, { headers: { authorization: 'Bearer metrics-secret-token' } })).text();
    await expect.poll(async () => metricValue(await read(), 'tollgate_requests_total', { key: 'metered-app', status: '200' })).toBe(1);
    const text = await read();
    expect(metricValue(text, 'tollgate_tokens_total', { key: 'metered-app', model: 'gpt-4o-mini', kind: 'prompt' })).toBe(usage.prompt_tokens);
    expect(metricValue(text, 'tollgate_tokens_total', { key: 'metered-app', kind: 'completion' })).toBe(usage.completion_tokens);
    expect(metricValue(text, 'tollgate_cost_usd_total', { key: 'metered-app' })).toBeGreaterThan(0);
    expect(metricValue(text, 'tollgate_requests_total', { key: 'none', status: '401' })).toBe(1);
    expect(metricValue(text, 'tollgate_budget_used_ratio', { key: 'metered-app', limit: 'usdPerDay' })).toBeGreaterThan(0);
    expect(text).toContain('tollgate_gateway_overhead_seconds_bucket');
    expect(text).toContain('process_resident_memory_bytes');
    expect(text).not.toContain('tg-wrong');
  });

  it('says how much of a budget requests in flight hold, beside what is left', async () => {
    const gw = await startGateway({ env: { METRICS_TOKEN: 'metrics-secret-token' } });
    opened.push(gw);
    const { key } = await gw.createKey({ name: 'held-app', limits: { tokensPerDay: 100_000 } });
    const read = async () =>
      (await fetch(`${gw.url}/metrics`, { headers: { authorization: 'Bearer metrics-secret-token' } })).text();
    // Upstream holds the request until the client gives up on it.
    gw.fake.hangNext(1);
    const client = new AbortController();
    const pending = fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hello' }], max_tokens: 20 }),
      signal: client.signal,
    }).catch(() => undefined);
    // While it is in flight: nothing used, its worst case (prompt + 20 tokens) held.
    await expect.poll(async () => metricValue(await read(), 'tollgate_budget_reserved_tokens', { key: 'held-app', limit: 'tokensPerDay' })).toBeGreaterThan(20);
    expect(metricValue(await read(), 'tollgate_budget_remaining_tokens', { key: 'held-app', limit: 'tokensPerDay' })).toBe(100_000);
    // Gone: charged its prompt (upstream had read it), the rest given back.
    client.abort();
    await pending;
    gw.fake.reset();
    await expect.poll(async () => metricValue(await read(), 'tollgate_budget_reserved_tokens', { key: 'held-app', limit: 'tokensPerDay' })).toBe(0);
    expect(metricValue(await read(), 'tollgate_budget_remaining_tokens', { key: 'held-app', limit: 'tokensPerDay' })).toBeLessThan(100_000);
  });
});

describe('budget alerts', () => {
  it('posts one event per crossed threshold to the webhook', async () => {
    const received: Record<string, unknown>[] = [];
    const receiver = createServer((req: IncomingMessage, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        received.push(JSON.parse(body) as Record<string, unknown>);
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
    opened.push({ close: () => new Promise((r) => receiver.close(() => r())) });
    const url = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hooks/tollgate`;
    const gw = await startGateway({ env: { ALERT_WEBHOOK_URL: url } });
    opened.push(gw);

    // One request costs about a tenth of this budget: spend until refused.
    const { key } = await gw.createKey({ name: 'alerting-app', limits: { tokensPerDay: 200 } });
    for (let i = 0; i < 20; i++) {
      if ((await chat(gw, key, `question ${i}`)).status === 429) break;
      await new Promise((r) => setTimeout(r, 1100)); // the alerts look at a key at most once a second
    }
    await expect.poll(() => received.map((e) => e.threshold), { timeout: 5000 }).toEqual([0.5, 0.8]);
    expect(received[0]).toMatchObject({ type: 'budget.threshold_crossed', key: { name: 'alerting-app' }, limit: 'tokensPerDay', limitValue: 200 });
  }, 40_000);
});

describe('upstream time of failed requests', () => {
  /** A series' value; `labels` empty for an unlabelled one. */
  const series = (text: string, name: string, labels = '') => {
    const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `));
    return line === undefined ? undefined : Number(line.split(' ').at(-1));
  };

  it.each([
    ['504 upstream_timeout (first-byte timeout)', 504, false],
    ['502 upstream_unreachable after retries', 502, true],
  ] as const)('%s: counted in tollgate_upstream_duration_seconds, not as gateway overhead', async (_name, status, unreachable) => {
    let env: Record<string, string> = { UPSTREAM_HEADERS_TIMEOUT_MS: '400', UPSTREAM_TOTAL_TIMEOUT_MS: '5000' };
    let fake: Gateway['fake'] | undefined;
    if (unreachable) {
      // A port that was free a moment ago: nothing listens there. Retried twice, with backoff.
      fake = await startFakeOpenAI();
      await fake.close();
      env = { OPENAI_BASE_URL: fake.url, UPSTREAM_MAX_RETRIES: '2', UPSTREAM_RETRY_BASE_DELAY_MS: '200', UPSTREAM_RETRY_MAX_DELAY_MS: '400' };
    }
    const gw = await startGateway({ env, ...(fake && { fake }) });
    opened.push(gw);
    const { key } = await gw.createKey({ name: 'failing-upstream' });
    if (!unreachable) gw.fake.hangNext(1);
    const res = await chat(gw, key);
    expect(res.status).toBe(status);
    await res.text();
    const read = async () => (await fetch(`${gw.url}/metrics`)).text();
    await expect.poll(async () => series(await read(), 'tollgate_gateway_overhead_seconds_count')).toBe(1);
    const text = await read();
    expect(series(text, 'tollgate_upstream_duration_seconds_count', '{endpoint="chat.completions"}')).toBe(1);
    const upstream = series(text, 'tollgate_upstream_duration_seconds_sum', '{endpoint="chat.completions"}')!;
    const overhead = series(text, 'tollgate_gateway_overhead_seconds_sum')!;
    expect(upstream).toBeGreaterThan(0);
    expect(overhead).toBeLessThan(upstream);
  });
});
