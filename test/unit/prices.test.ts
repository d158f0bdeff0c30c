// The shipped price table, model lookup, integer cost arithmetic and PRICES_FILE overrides.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  costMicros,
  createPriceTable,
  isSnapshotOf,
  loadPriceTable,
  microsToUsd,
  priceFromUsdPerMillion,
  shippedPrices,
  usdToMicros,
  type Price,
} from '../../src/openai/prices.js';

const shipped = loadPriceTable();
const price = (model: string): Price => {
  const p = shipped.priceFor(model);
  if (!p) throw new Error(`no price for ${model}`);
  return p;
};

const dir = mkdtempSync(join(tmpdir(), 'tollgate-prices-'));
let files = 0;
function priceFile(content: unknown): string {
  const path = join(dir, `prices-${files++}.json`);
  writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
  return path;
}

describe('shipped table', () => {
  it('carries its date and source, and prices every model the gateway expects', () => {
    const file = shippedPrices();
    expect(file.date).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    expect(file.source).toBe('https://openai.com/api/pricing');
    expect(shipped.date).toBe(file.date);
    const expected = [
      'gpt-5', 'gpt-5-mini', 'gpt-5-nano', 'gpt-4.1', 'gpt-4.1-mini', 'gpt-4.1-nano', 'gpt-4o', 'gpt-4o-mini',
      'o1', 'o3', 'o3-mini', 'o4-mini', 'gpt-4-turbo', 'gpt-4', 'gpt-3.5-turbo',
      'gpt-3.5-turbo-instruct', 'davinci-002', 'babbage-002', 'text-davinci-002', 'text-davinci-003',
      'text-embedding-3-small', 'text-embedding-3-large', 'text-embedding-ada-002',
    ];
    expect(shipped.models).toEqual(expect.arrayContaining(expected));
    for (const model of shipped.models) {
      const p = price(model);
      for (const v of [p.input, p.cachedInput, p.output]) expect(Number.isSafeInteger(v) && v >= 0).toBe(true);
      expect(p.cachedInput).toBeLessThanOrEqual(p.input);
    }
  });

  it('holds integer micro-dollars per 1M tokens', () => {
    expect(price('gpt-4o-mini')).toEqual({ input: 150_000, cachedInput: 75_000, output: 600_000 });
    expect(price('gpt-4o')).toEqual({ input: 2_500_000, cachedInput: 1_250_000, output: 10_000_000 });
    expect(price('gpt-5-nano')).toEqual({ input: 50_000, cachedInput: 5_000, output: 400_000 });
    expect(price('o4-mini')).toEqual({ input: 1_100_000, cachedInput: 275_000, output: 4_400_000 });
    expect(price('text-embedding-3-small')).toEqual({ input: 20_000, cachedInput: 20_000, output: 0 });
    expect(price('text-embedding-3-large').input).toBe(130_000);
    expect(price('text-embedding-ada-002').input).toBe(100_000);
    expect(price('text-davinci-003')).toEqual({ input: 20_000_000, cachedInput: 20_000_000, output: 20_000_000 });
  });
});

describe('isSnapshotOf', () => {
  it('takes the model itself and its dated snapshots, never another model', () => {
    expect(isSnapshotOf('gpt-4o', 'gpt-4o')).toBe(true);
    expect(isSnapshotOf('gpt-4o-2024-05-13', 'gpt-4o')).toBe(true);
    expect(isSnapshotOf('gpt-4-0613', 'gpt-4')).toBe(true);
    expect(isSnapshotOf('gpt-4o-mini', 'gpt-4o')).toBe(false);
    expect(isSnapshotOf('gpt-4o-mini-2024-07-18', 'gpt-4o')).toBe(false);
    expect(isSnapshotOf('gpt-4o', 'gpt-4o-2024-05-13')).toBe(false);
    expect(isSnapshotOf('o1-pro', 'o1')).toBe(false);
  });
});

describe('priceFor', () => {
  it('resolves dated snapshots and -latest / -stable aliases to their model', () => {
    expect(shipped.priceFor('omni-moderation-latest')).toBe(price('omni-moderation'));
    expect(shipped.priceFor('text-moderation-stable')).toBe(price('text-moderation'));
    expect(shipped.priceFor('gpt-4o-2024-08-06')).toBe(price('gpt-4o'));
    expect(shipped.priceFor('gpt-4o-mini-2024-07-18')).toBe(price('gpt-4o-mini'));
    expect(shipped.priceFor('gpt-4o-mini-2024-07-18')).not.toEqual(price('gpt-4o'));
    expect(shipped.priceFor('gpt-4.1-nano-2025-04-14')).toBe(price('gpt-4.1-nano'));
    expect(shipped.priceFor('o3-mini-2025-01-31')).toBe(price('o3-mini'));
    expect(shipped.priceFor('o3-2025-04-16')).toBe(price('o3'));
    expect(shipped.priceFor('gpt-5-mini-2025-08-07')).toBe(price('gpt-5-mini'));
    expect(shipped.priceFor('gpt-4-turbo-2024-04-09')).toBe(price('gpt-4-turbo'));
    expect(shipped.priceFor('gpt-4-0613')).toBe(price('gpt-4'));
    expect(shipped.priceFor('gpt-3.5-turbo-instruct-0914')).toBe(price('gpt-3.5-turbo-instruct'));
  });

  it('prefers an exact entry, even over a shorter prefix', () => {
    // The first gpt-4o snapshot kept its launch price.
    expect(shipped.priceFor('gpt-4o-2024-05-13')).toEqual({ input: 5_000_000, cachedInput: 5_000_000, output: 15_000_000 });
    // Older gpt-3.5-turbo snapshots cost more than today's gpt-3.5-turbo (0125, $0.50 / $1.50).
    expect(shipped.priceFor('gpt-3.5-turbo-0125')).toBe(price('gpt-3.5-turbo'));
    expect(shipped.priceFor('gpt-3.5-turbo-1106')).toEqual({ input: 1_000_000, cachedInput: 1_000_000, output: 2_000_000 });
    expect(shipped.priceFor('gpt-3.5-turbo-0613')).toEqual({ input: 1_500_000, cachedInput: 1_500_000, output: 2_000_000 });
    expect(shipped.priceFor('gpt-3.5-turbo-16k-0613')).toEqual({ input: 3_000_000, cachedInput: 3_000_000, output: 4_000_000 });
  });

  it('prices every moderation model, at nothing: a key with a USD budget can moderate', () => {
    for (const model of ['omni-moderation-latest', 'omni-moderation-2024-09-26', 'text-moderation-latest', 'text-moderation-stable', 'text-moderation-007']) {
      expect(shipped.priceFor(model), model).toEqual({ input: 0, cachedInput: 0, output: 0 });
    }
  });

  it('does not price other models as the one their name starts with', () => {
    // o1-pro costs ~10x o1: priced as o1 it would be under-reserved and under-charged ~10x.
    for (const model of ['o1-pro', 'o1-pro-2025-03-19', 'o3-pro', 'o3-deep-research', 'gpt-5-pro', 'gpt-4o-realtime-preview', 'gpt-4o-search-preview']) {
      expect(shipped.priceFor(model), model).toBeUndefined();
    }
  });

  it('returns undefined for unknown models and for prefixes not followed by "-"', () => {
    expect(shipped.priceFor('gpt-9')).toBeUndefined();
    expect(shipped.priceFor('gpt-4omni')).toBeUndefined();
    expect(shipped.priceFor('ft:gpt-4o-mini:acme::abc123')).toBeUndefined();
    expect(shipped.priceFor('')).toBeUndefined();
    expect(shipped.priceFor('-')).toBeUndefined();
  });
});

describe('costMicros', () => {
  it('computes ceil(sum / 1e6) in integers', () => {
    // 1000 x 0.15 + 500 x 0.60 = 450 micro-dollars exactly
    expect(costMicros(price('gpt-4o-mini'), { promptTokens: 1000, cachedPromptTokens: 0, completionTokens: 500 })).toBe(450);
    // one token at $0.15/M is 0.15 micro-dollars: rounded up, never to zero
    expect(costMicros(price('gpt-4o-mini'), { promptTokens: 1, completionTokens: 0 })).toBe(1);
    expect(costMicros(price('gpt-4o-mini'), { promptTokens: 0, completionTokens: 0 })).toBe(0);
    // 7 x 0.15 + 3 x 0.6 = 2.85 -> 3
    expect(costMicros(price('gpt-4o-mini'), { promptTokens: 7, completionTokens: 3 })).toBe(3);
  });

  it('bills cached prompt tokens at the cached price', () => {
    const gpt4o = price('gpt-4o');
    // 1000 uncached x 2.5 + 1000 cached x 1.25 + 100 x 10
    expect(costMicros(gpt4o, { promptTokens: 2000, cachedPromptTokens: 1000, completionTokens: 100 })).toBe(2500 + 1250 + 1000);
    // a report with more cached than prompt tokens cannot make the uncached part negative
    expect(costMicros(gpt4o, { promptTokens: 10, cachedPromptTokens: 50, completionTokens: 0 })).toBe(13); // 12.5 -> 13
  });

  it('accepts a usage record as usage.ts reads it', () => {
    const usage = { promptTokens: 100, completionTokens: 20, totalTokens: 120, cachedPromptTokens: 0, reasoningTokens: 5 };
    expect(costMicros(price('gpt-4.1'), usage)).toBe(200 + 160);
  });

  it('stays exact past 2^53 by switching to BigInt', () => {
    const dear: Price = { input: 10_000_000_000, cachedInput: 0, output: 9_999_999_999 };
    const usage = { promptTokens: 3_000_001, cachedPromptTokens: 0, completionTokens: 7_000_003 };
    const exact = (3_000_001n * 10_000_000_000n + 7_000_003n * 9_999_999_999n + 999_999n) / 1_000_000n;
    expect(costMicros(dear, usage)).toBe(Number(exact));
  });

  it('caps a cost past 2^53 micro-dollars at Number.MAX_SAFE_INTEGER, never an inexact double', () => {
    // An upstream that reports 2^53 - 1 tokens (usage.ts clamps there) at the dearest configurable price.
    const dearest: Price = { input: 100_000_000_000, cachedInput: 100_000_000_000, output: 100_000_000_000 };
    const cost = costMicros(dearest, { promptTokens: Number.MAX_SAFE_INTEGER, completionTokens: Number.MAX_SAFE_INTEGER });
    expect(cost).toBe(Number.MAX_SAFE_INTEGER);
    expect(String(cost)).toMatch(/^\d+$/); // what HINCRBY takes
    // Just below the cap, still exact.
    expect(costMicros({ input: 1_000_000, cachedInput: 0, output: 0 }, { promptTokens: Number.MAX_SAFE_INTEGER, completionTokens: 0 })).toBe(
      Number.MAX_SAFE_INTEGER,
    );
  });

  it('adds up exactly where floats would drift', () => {
    // $0.10/M per token is 0.1 micro-dollars: ten one-token calls are ten rounded-up micros, and one
    // 10-token call exactly 1; nothing like 0.1 + 0.2 !== 0.3 can creep in.
    const ada = price('text-embedding-ada-002');
    let total = 0;
    for (let i = 0; i < 10; i++) total += costMicros(ada, { promptTokens: 1, completionTokens: 0 });
    expect(total).toBe(10);
    expect(costMicros(ada, { promptTokens: 10, completionTokens: 0 })).toBe(1);
    expect(costMicros(ada, { promptTokens: 30, completionTokens: 0 })).toBe(3);
  });

  it('refuses counts that are not non-negative integers', () => {
    const p = price('gpt-4o');
    expect(() => costMicros(p, { promptTokens: 1.5, completionTokens: 0 })).toThrow(RangeError);
    expect(() => costMicros(p, { promptTokens: -1, completionTokens: 0 })).toThrow(/promptTokens/);
    expect(() => costMicros(p, { promptTokens: 1, completionTokens: Number.NaN })).toThrow(/completionTokens/);
  });
});

describe('conversions', () => {
  it('converts USD and micro-dollars', () => {
    expect(usdToMicros(0.15)).toBe(150_000);
    expect(usdToMicros(0.075)).toBe(75_000);
    expect(usdToMicros(1.1)).toBe(1_100_000);
    expect(usdToMicros(0.275)).toBe(275_000);
    expect(usdToMicros(12.34)).toBe(12_340_000);
    expect(microsToUsd(450)).toBe(0.00045);
    expect(microsToUsd(12_340_000)).toBe(12.34);
    expect(() => usdToMicros(Number.POSITIVE_INFINITY)).toThrow(RangeError);
  });

  it('builds a price from USD per 1M, cached defaulting to input', () => {
    expect(priceFromUsdPerMillion({ input: 10, output: 30 })).toEqual({ input: 10_000_000, cachedInput: 10_000_000, output: 30_000_000 });
    expect(priceFromUsdPerMillion({ input: 0.4, cachedInput: 0.1, output: 1.6 })).toEqual({ input: 400_000, cachedInput: 100_000, output: 1_600_000 });
  });

  it('createPriceTable refuses prices that are not integer micro-dollars', () => {
    expect(() => createPriceTable({ m: { input: 0.15, cachedInput: 0, output: 1 } })).toThrow(/'m': input/);
    expect(() => createPriceTable({ m: { input: 1, cachedInput: -1, output: 1 } })).toThrow(/cachedInput/);
    expect(() => createPriceTable({ '': { input: 1, cachedInput: 1, output: 1 } })).toThrow(/empty model id/);
    const table = createPriceTable({ custom: { input: 1, cachedInput: 1, output: 2 } }, { date: '2026-01-01' });
    expect(table.priceFor('custom-2026-01-01')).toEqual({ input: 1, cachedInput: 1, output: 2 });
    expect(table.priceFor('custom-v2')).toBeUndefined();
    expect(table.date).toBe('2026-01-01');
    expect(table.source).toBeUndefined();
  });
});

describe('loadPriceTable with PRICES_FILE', () => {
  it('merges the file over the shipped table, the file winning per model', () => {
    const path = priceFile({
      date: '2030-01-01',
      models: {
        'gpt-4o': { input: 2, cachedInput: 1, output: 8 },
        'acme-llm': { input: 3, output: 4 },
      },
    });
    const table = loadPriceTable(path);
    expect(table.priceFor('gpt-4o')).toEqual({ input: 2_000_000, cachedInput: 1_000_000, output: 8_000_000 });
    expect(table.priceFor('gpt-4o-2024-11-20')).toEqual(table.priceFor('gpt-4o'));
    expect(table.priceFor('acme-llm')).toEqual({ input: 3_000_000, cachedInput: 3_000_000, output: 4_000_000 });
    expect(table.priceFor('gpt-4o-mini')).toEqual(price('gpt-4o-mini'));
    expect(table.models).toHaveLength(shipped.models.length + 1);
    expect(table.date).toBe('2030-01-01');
    expect(table.source).toBe('https://openai.com/api/pricing');
  });

  it('treats a missing or empty path as no override', () => {
    expect(loadPriceTable(undefined).models).toEqual(shipped.models);
    expect(loadPriceTable('').models).toEqual(shipped.models);
  });

  it('throws an Error naming the problem', () => {
    expect(() => loadPriceTable(join(dir, 'missing.json'))).toThrow(/Cannot read price file .*missing\.json: ENOENT/);
    expect(() => loadPriceTable(priceFile('{"models": '))).toThrow(/Invalid price file .*: not valid JSON/);
    expect(() => loadPriceTable(priceFile({ models: { 'gpt-4o': { input: -1, output: 1 } } }))).toThrow(
      /Invalid price file .*: models\.gpt-4o\.input: .*>=0/,
    );
    expect(() => loadPriceTable(priceFile({ models: { 'gpt-4o': { input: 1, cached_input: 0.5, output: 1 } } }))).toThrow(
      /models\.gpt-4o: Unrecognized key: "cached_input"/,
    );
    expect(() => loadPriceTable(priceFile({ models: { x: { input: 1 } } }))).toThrow(/models\.x\.output/);
    expect(() => loadPriceTable(priceFile({ models: { x: { input: 25_000, output: 1 } } }))).toThrow(/models\.x\.input: .*10000/);
    expect(() => loadPriceTable(priceFile({ date: 'yesterday', models: {} }))).toThrow(/date:/);
    expect(() => loadPriceTable(priceFile({ prices: {} }))).toThrow(/models: Invalid input: expected record.*; \(root\): Unrecognized key: "prices"/);
    expect(() => loadPriceTable(priceFile([]))).toThrow(/\(root\): Invalid input: expected object/);
  });
});
