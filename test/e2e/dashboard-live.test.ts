// The dashboard against the real gateway: real traffic through the openai SDK, then Chromium shows the
// same numbers /admin/usage reports.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Browser } from 'playwright-core';
import { ADMIN_TOKEN, startGateway, type Gateway } from '../helpers/gateway.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';
import { launchChromium } from '../helpers/browser.js';

const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/', import.meta.url));
let gw: Gateway;
let browser: Browser;

beforeAll(async () => {
  gw = await startGateway({ env: { CACHE_ENABLED: 'true', REDIS_URL: testRedisUrl(), REDIS_PREFIX: uniquePrefix() } });
  const billing = await gw.createKey({ name: 'billing-app', limits: { usdPerDay: 1, tokensPerMonth: 50_000 } });
  const search = await gw.createKey({ name: 'search-app' });
  for (const [key, n] of [[billing.key, 4], [search.key, 2]] as const) {
    const sdk = gw.sdk(key);
    for (let i = 0; i < n; i++) {
      await sdk.chat.completions.create({ model: i % 2 ? 'gpt-4o' : 'gpt-4o-mini', messages: [{ role: 'user', content: `question ${i}` }] });
    }
    await sdk.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'question 0' }] }); // a hit
  }
  await gw.sdk(search.key).embeddings.create({ model: 'text-embedding-3-small', input: 'embed me' });
  // A refusal: a request, but neither a hit nor a miss.
  const refused = await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${search.key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o-mini' }),
  });
  if (refused.status !== 400) throw new Error(`expected a 400, got ${refused.status}`);
  browser = await launchChromium();
}, 60_000);
afterAll(async () => {
  await browser?.close();
  await gw?.close();
});

it('shows what /admin/usage reports for real traffic', async () => {
  // Wait until every request's event is stored.
  await expect.poll(async () => (await gw.admin('GET', '/admin/usage?groupBy=key')).body.totals.requests).toBe(10);
  const { totals } = (await gw.admin('GET', '/admin/usage?groupBy=key')).body as { totals: Record<string, number> };

  const page = await browser.newPage({ viewport: { width: 1400, height: 1200 } });
  const problems: string[] = [];
  page.on('pageerror', (err) => problems.push(err.message));
  page.on('console', (msg) => msg.type() === 'error' && problems.push(msg.text()));
  await page.goto(`${gw.url}/dashboard`);
  await page.getByTestId('token').fill(ADMIN_TOKEN);
  await page.getByTestId('login-submit').click();
  await expect.poll(() => page.getByTestId('kpi-requests').textContent()).toBe(String(totals.requests));

  const text = async (id: string) => (await page.getByTestId(id).textContent())?.trim();
  const tokensTitle = await page.getByTestId('kpi-tokens').getAttribute('title');
  expect(tokensTitle).toBe(`${totals.totalTokens!.toLocaleString('en-US')} tokens`);
  const spend = Number((await text('kpi-spend'))!.replace(/[$,]/g, ''));
  expect(spend).toBeCloseTo(totals.costUsd!, 4);
  // The hit rate is among the requests the cache looked up: the refusal is not a miss.
  expect(totals.cacheLookups).toBe(totals.requests! - 1);
  expect(totals.cacheLookups! - totals.cacheMisses!).toBe(totals.cacheHits);
  expect(await text('kpi-cache-hits')).toBe(`${totals.cacheHits} of ${totals.cacheLookups} cacheable requests`);
  const saved = Number((await text('kpi-saved'))!.replace(/[$,]/g, ''));
  expect(saved).toBeCloseTo(totals.savedUsd!, 4);

  // Top keys in spend order, budget bars for the key with budgets, and the recent requests.
  const names = await page.getByTestId('top-key-name').allTextContents();
  expect(names).toEqual(['billing-app', 'search-app']);
  const budgets = await page.getByTestId('budget-row').evaluateAll((rows) => rows.map((r) => (r as { dataset: { budget: string } }).dataset.budget));
  expect(budgets.sort()).toEqual(['tokensPerMonth', 'usdPerDay']);
  await expect.poll(() => page.getByTestId('event-row').count()).toBe(10);

  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: `${ARTIFACTS}dashboard-live.png`, fullPage: true });
  expect(problems).toEqual([]);
  await page.close();
}, 60_000);

it('lets a few mistyped tokens pass without locking this address out', async () => {
  // The gateway refuses an address after AUTH_FAILURES_PER_MINUTE (30) failed attempts. The page checks a
  // token with one request before it asks for the rest, so seven typos are seven failures, not 35.
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  await page.goto(`${gw.url}/dashboard`);
  const submit = page.getByTestId('login-submit');
  for (let i = 0; i < 7; i++) {
    await page.getByTestId('token').fill(`a-mistyped-admin-token-${i}`);
    await submit.click();
    await page.waitForFunction(() => {
      const button = (globalThis as unknown as { document: { getElementById(id: string): { disabled: boolean } } }).document.getElementById('login-submit');
      return !button.disabled;
    });
    expect(await page.getByTestId('login-error').textContent()).toBe('That admin token was refused.');
  }
  await page.getByTestId('token').fill(ADMIN_TOKEN);
  await submit.click();
  await page.getByTestId('dashboard').waitFor({ state: 'visible' });
  expect(await page.getByTestId('login').isVisible()).toBe(false);
  // And /v1 from this address still works.
  const sdk = gw.sdk((await gw.createKey({ name: 'after-typos' })).key);
  const answer = await sdk.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'still here?' }] });
  expect(answer.choices.length).toBeGreaterThan(0);
  await page.close();
}, 60_000);
