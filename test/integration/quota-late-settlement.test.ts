// A settlement whose reservation is gone (its lease expired and another admission released it)
// still counts in the day the request arrived in, as the request's usage event does.
import { afterEach, expect, it } from 'vitest';
import pino from 'pino';
import { createQuota } from '../../src/quota/quota.js';
import { createMemoryStore } from '../../src/store/memory-store.js';
import { loadPriceTable, priceFromUsdPerMillion } from '../../src/openai/prices.js';
import { endpoints } from '../../src/openai/endpoints.js';
import { hashSecret, newKeyId, newSecret, secretHint, type KeyRecord } from '../../src/keys.js';

const closing: (() => unknown)[] = [];
afterEach(async () => {
  for (const close of closing.splice(0)) await close();
});

it('a late settlement counts in the day its request arrived in, though written the next day', async () => {
  let now = Date.parse('2026-12-01T00:00:01Z');
  const store = createMemoryStore({ clock: () => now });
  const quota = createQuota({
    store,
    prices: loadPriceTable(),
    clock: () => now,
    timeZone: 'UTC',
    defaultMaxOutputTokens: 100,
    leaseTtlMs: 60_000,
    unpricedModelPrice: priceFromUsdPerMillion({ input: 10, output: 30 }),
    logger: pino({ level: 'silent' }),
  });
  closing.push(() => quota.close(), () => store.close());
  const secret = newSecret();
  const at = new Date(now).toISOString();
  const key: KeyRecord = { id: newKeyId(), name: 'late', hash: hashSecret(secret), hint: secretHint(secret), models: null, limits: { tokensPerDay: 1_000_000 }, metadata: {}, createdAt: at, updatedAt: at, revokedAt: null };
  const body = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 10 };
  // Arrived just before midnight, admitted just after.
  const late = await quota.admit(key, endpoints.chat, body, 'gpt-4o-mini', { arrivedAt: Date.parse('2026-11-30T23:59:59.500Z') });
  // Its lease runs out (its instance stalled), and the next admission of the key releases it.
  now += 61_000;
  await quota.admit(key, endpoints.chat, body, 'gpt-4o-mini');
  late.settle({ usage: { promptTokens: 9, completionTokens: 3, totalTokens: 12, cachedPromptTokens: 0, reasoningTokens: 0 }, estimated: false });
  await quota.drain();
  const nov30 = quota.periods(now, Date.parse('2026-11-30T12:00:00Z'));
  expect((await store.quotaUsage(key.id, nov30, now)).day.tokens.used).toBe(12); // was counted on Dec 1
});
