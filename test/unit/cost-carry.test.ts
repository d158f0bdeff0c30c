// Recorded costs: exact to the micro-dollar over a key's requests, never each rounded up.
import { describe, expect, it } from 'vitest';
import { createCostCarry } from '../../src/quota/cost-carry.js';
import { costMicros, exactCost } from '../../src/openai/prices.js';

// Micro-dollars per million tokens: $0.02/M in, $0.60/M out.
const price = { input: 20_000, cachedInput: 10_000, output: 600_000 };

describe('exactCost and costMicros', () => {
  it('splits a cost into whole micro-dollars and millionths of one; costMicros rounds it up', () => {
    expect(exactCost(price, { promptTokens: 1, cachedPromptTokens: 0, completionTokens: 0 })).toEqual({ micros: 0, fraction: 20_000 });
    expect(exactCost(price, { promptTokens: 100, cachedPromptTokens: 50, completionTokens: 3 })).toEqual({ micros: 3, fraction: 300_000 });
    expect(costMicros(price, { promptTokens: 1, cachedPromptTokens: 0, completionTokens: 0 })).toBe(1);
    expect(costMicros(price, { promptTokens: 50, cachedPromptTokens: 0, completionTokens: 0 })).toBe(1);
    expect(costMicros(price, { promptTokens: 51, cachedPromptTokens: 0, completionTokens: 0 })).toBe(2);
  });
});

describe('createCostCarry', () => {
  it('records a key exact spend rounded down, carrying each fraction to its next request', () => {
    const record = createCostCarry();
    const oneToken = { promptTokens: 1, cachedPromptTokens: 0, completionTokens: 0 }; // 0.02 micro-dollars
    const charges = Array.from({ length: 100 }, () => record('key_a', price, oneToken));
    expect(charges.reduce((a, b) => a + b, 0)).toBe(2); // 100 x 0.02
    expect(charges.filter((c) => c === 1)).toHaveLength(2);
    expect(charges[48]).toBe(0);
    expect(charges[49]).toBe(1); // the 50th makes the first whole micro-dollar
  });

  it('keeps each key its own carry, and whole micro-dollars pass through', () => {
    const record = createCostCarry();
    const half = { promptTokens: 25, cachedPromptTokens: 0, completionTokens: 0 }; // 0.5 micro-dollars
    expect(record('key_a', price, half)).toBe(0);
    expect(record('key_b', price, half)).toBe(0);
    expect(record('key_a', price, half)).toBe(1);
    expect(record('key_b', price, { promptTokens: 0, cachedPromptTokens: 0, completionTokens: 10 })).toBe(6); // 6.0
    expect(record('key_b', price, half)).toBe(1);
  });

  it('never records more than the exact sum, and never a whole micro-dollar less', () => {
    const record = createCostCarry();
    let exact = 0;
    let recorded = 0;
    for (let i = 0; i < 10_000; i++) {
      const usage = { promptTokens: (i * 7919) % 3000, cachedPromptTokens: (i * 31) % 500, completionTokens: (i * 104_729) % 900 };
      const cached = Math.min(usage.cachedPromptTokens, usage.promptTokens);
      exact += ((usage.promptTokens - cached) * price.input + cached * price.cachedInput + usage.completionTokens * price.output) / 1e6;
      recorded += record('key_a', price, usage);
      expect(recorded).toBeLessThanOrEqual(exact + 1e-6);
      expect(recorded).toBeGreaterThan(exact - 1);
    }
  });

  it('remembers at most maxKeys fractions, forgetting the oldest key first', () => {
    const record = createCostCarry(2);
    const half = { promptTokens: 25, cachedPromptTokens: 0, completionTokens: 0 }; // 0.5 micro-dollars
    expect(record('key_a', price, half)).toBe(0);
    expect(record('key_b', price, half)).toBe(0);
    expect(record('key_c', price, half)).toBe(0); // key_a's half is forgotten
    expect(record('key_a', price, half)).toBe(0);
    expect(record('key_c', price, half)).toBe(1);
  });
});
