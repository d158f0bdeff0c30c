// The budget gauges' data: for every live key with a token or USD budget, what is left of it now.
import type { Store } from '../store/store.js';
import type { Quota } from '../quota/quota.js';
import type { BudgetGauge } from './metrics.js';

const BUDGETS = ['tokensPerDay', 'tokensPerMonth', 'usdPerDay', 'usdPerMonth'] as const;

/**
 * Keys whose budgets are read at once. One read is a few store round trips: read one key after another, a
 * thousand keys against a Redis 2 ms away would take longer than the scrape waits (budgetsTimeoutMs), and
 * every scrape would come back without budget gauges. 32 at a time: ~1,000 / 32 round trips of latency,
 * without flooding the store with a thousand commands at once.
 */
export const BUDGET_READ_CONCURRENCY = 32;

export async function budgetGauges(
  store: Store,
  quota: Pick<Quota, 'view'>,
  concurrency = BUDGET_READ_CONCURRENCY,
): Promise<BudgetGauge[]> {
  const keys = (await store.listKeys()).filter((k) => k.revokedAt === null && BUDGETS.some((b) => k.limits[b] !== undefined));
  const views = new Array<Awaited<ReturnType<Quota['view']>>>(keys.length);
  let next = 0;
  // A few workers, each taking the next key until none is left: one failed read fails the whole collection
  // (the scrape then serves no budget gauges, as before), and the other workers stop taking keys.
  let failed = false;
  const worker = async () => {
    while (!failed && next < keys.length) {
      const i = next++;
      try {
        views[i] = await quota.view(keys[i]!);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(Math.max(1, concurrency), keys.length) }, worker));

  const gauges: BudgetGauge[] = [];
  keys.forEach((key, i) => {
    const view = views[i]!;
    for (const limit of BUDGETS) {
      const { limit: value, used, reserved } = view[limit];
      if (value === null) continue;
      gauges.push({ keyId: key.id, keyName: key.name, limit, remaining: Math.max(0, value - used), reserved, ratioUsed: used / value });
    }
  });
  return gauges;
}
