// The budget gauges' data: for every live key with a token or USD budget, what is left of it now.
import type { Store } from '../store/store.js';
import type { Quota } from '../quota/quota.js';
import type { BudgetGauge } from './metrics.js';

const BUDGETS = ['tokensPerDay', 'tokensPerMonth', 'usdPerDay', 'usdPerMonth'] as const;

export async function budgetGauges(store: Store, quota: Pick<Quota, 'view'>): Promise<BudgetGauge[]> {
  const keys = (await store.listKeys()).filter((k) => k.revokedAt === null && BUDGETS.some((b) => k.limits[b] !== undefined));
  const gauges: BudgetGauge[] = [];
  for (const key of keys) {
    const view = await quota.view(key);
    for (const limit of BUDGETS) {
      const { limit: value, used } = view[limit];
      if (value === null) continue;
      gauges.push({ keyId: key.id, keyName: key.name, limit, remaining: Math.max(0, value - used), ratioUsed: used / value });
    }
  }
  return gauges;
}
