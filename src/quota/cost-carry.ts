// What a request's cost adds to the recorded spend, in whole micro-dollars, without rounding each
// request up: the fractions of a micro-dollar are carried per key until they make a whole one.
//
// Why: budgets, aggregates, usage events and metrics count integer micro-dollars. Rounding each
// request up made cheap requests cost many times their price (a one-token text-embedding-3-small
// call costs 0.02 micro-dollars and was recorded as 1: 50x), and a key of such calls ran out of its
// USD budget 25-50x too soon. With the carry, a key's recorded spend on one instance is its exact
// spend rounded down, never more than one micro-dollar under; one event may show 0 and the next 1.
// Reservations still round up (quota.ts): a worst case must never be under its real cost.
import { exactCost, FRACTION_PER_MICRO, type Price, type TokenCounts } from '../openai/prices.js';

export type CostCarry = (keyId: string, price: Price, usage: TokenCounts) => number;

/** Keys whose fractions are remembered; past it the oldest is forgotten (it held under 1 micro-dollar). */
export const CARRIED_KEYS_MAX = 100_000;

export function createCostCarry(maxKeys = CARRIED_KEYS_MAX): CostCarry {
  /** keyId -> millionths of a micro-dollar spent but not yet recorded (below one micro-dollar). */
  const carried = new Map<string, number>();
  return (keyId, price, usage) => {
    const { micros, fraction } = exactCost(price, usage);
    if (fraction === 0) return micros;
    const total = (carried.get(keyId) ?? 0) + fraction;
    const whole = total >= FRACTION_PER_MICRO ? 1 : 0; // each fraction is below one micro-dollar
    // Deleted keys (and revoked ones) never come back to claim theirs: the map stays bounded.
    if (!carried.has(keyId) && carried.size >= maxKeys) carried.delete(carried.keys().next().value!);
    carried.set(keyId, total - whole * FRACTION_PER_MICRO);
    return Math.min(Number.MAX_SAFE_INTEGER, micros + whole);
  };
}
