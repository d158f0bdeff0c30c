// Model prices and the cost of a request, in integer micro-dollars so spend adds up exactly.
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import shippedFile from './prices.json' with { type: 'json' };

/**
 * A model's price in micro-dollars (1e-6 USD) per 1M tokens, as integers: $0.15/M is 150_000.
 * `cachedInput` is what prompt tokens served from OpenAI's prompt cache cost.
 */
export interface Price {
  input: number;
  cachedInput: number;
  output: number;
}

/** A price as people write it: USD per 1M tokens. `cachedInput` defaults to `input` (no cache discount). */
export interface UsdPrice {
  input: number;
  cachedInput?: number;
  output: number;
}

/** The token counts a cost depends on. `Usage` from usage.ts fits as it is. */
export interface TokenCounts {
  /** All prompt tokens, cached ones included (as OpenAI reports `prompt_tokens`). */
  promptTokens: number;
  /** The part of `promptTokens` served from the prompt cache. Default 0. */
  cachedPromptTokens?: number;
  /** Output tokens, reasoning tokens included (as OpenAI reports `completion_tokens`). */
  completionTokens: number;
}

export interface PriceTable {
  /** The price of a model id: its exact entry, else, for a dated snapshot or a -latest / -stable alias, its model's. */
  priceFor(model: string): Price | undefined;
  /** The id of the entry priceFor uses for a model id (itself, or its snapshot's model), if any. */
  pricedAs(model: string): string | undefined;
  /** Every model id with an entry, sorted. */
  readonly models: readonly string[];
  /** When the prices were checked (YYYY-MM-DD) and where, as the (last merged) file says. */
  readonly date: string | undefined;
  readonly source: string | undefined;
}

/**
 * What OpenAI appends to a model's id for one of its snapshots: a date (-YYYY-MM-DD, or -MMDD for
 * older models), or an alias of the current one (omni-moderation-latest, text-moderation-stable).
 */
const SNAPSHOT_SUFFIX = /-(\d{4}-\d{2}-\d{2}|\d{4}|latest|stable)$/;

/**
 * Whether `answered` is `asked` itself or one of its dated snapshots (gpt-4o-2024-05-13 of gpt-4o):
 * the same model, so what OpenAI bills for it is its own price. Another model is never taken for it.
 */
export function isSnapshotOf(answered: string, asked: string): boolean {
  if (answered === asked) return true;
  const snapshot = SNAPSHOT_SUFFIX.exec(answered);
  return snapshot !== null && answered.slice(0, snapshot.index) === asked;
}

const MICROS_PER_USD = 1_000_000;
const TOKENS_PER_PRICE_UNIT = 1_000_000;
/**
 * No real model costs this much ($600/M is the dearest at the time of writing); a bigger number is
 * a typo (cents for dollars, a price per 1K written per 1M...), so the file is refused.
 */
export const MAX_USD_PER_MILLION = 10_000;

export function usdToMicros(usd: number): number {
  if (!Number.isFinite(usd)) throw new RangeError(`usdToMicros: not a finite number: ${usd}`);
  return Math.round(usd * MICROS_PER_USD);
}

/** For display only: sums and comparisons stay in integer micros. */
export function microsToUsd(micros: number): number {
  return micros / MICROS_PER_USD;
}

export function priceFromUsdPerMillion(usd: UsdPrice): Price {
  return {
    input: usdToMicros(usd.input),
    cachedInput: usdToMicros(usd.cachedInput ?? usd.input),
    output: usdToMicros(usd.output),
  };
}

function tokenCount(name: string, value: number | undefined): number {
  const v = value ?? 0;
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`costMicros: ${name} must be a non-negative integer, got ${v}`);
  return v;
}

/**
 * The exact cost of a request: whole micro-dollars, and the fraction of one left over in
 * millionths (0 .. 999,999): (uncachedPrompt * input + cached * cachedInput + completion * output)
 * / 1e6 micro-dollars, prices being micro-dollars per million tokens.
 *
 * Integers only. The products are exact doubles while the sum stays below 2^53 (about 9.007e15):
 * e.g. 1M tokens at $9,000/M, or 10M tokens at $900/M, far beyond any real request. Past that the
 * same sum is done in BigInt, so the result is exact for any counts whose cost is a safe integer
 * ($9 billion). A dearer one (only absurd counts, e.g. an upstream reporting 2^53 tokens: the
 * gateway refuses reservations past quota.ts MAX_RESERVED_TOKENS before pricing them) is
 * Number.MAX_SAFE_INTEGER: still an integer that sums and Redis's HINCRBY take, never an
 * inexact double or one printed as an exponent.
 */
export function exactCost(price: Price, usage: TokenCounts): { micros: number; fraction: number } {
  const prompt = tokenCount('promptTokens', usage.promptTokens);
  // OpenAI's cached tokens are part of prompt_tokens; never let a bad report make the uncached part negative.
  const cached = Math.min(tokenCount('cachedPromptTokens', usage.cachedPromptTokens), prompt);
  const completion = tokenCount('completionTokens', usage.completionTokens);
  const uncached = prompt - cached;

  const sum = uncached * price.input + cached * price.cachedInput + completion * price.output;
  if (Number.isSafeInteger(sum)) {
    // All terms are non-negative, so a safe sum means every product was exact too.
    const fraction = sum % TOKENS_PER_PRICE_UNIT;
    return { micros: (sum - fraction) / TOKENS_PER_PRICE_UNIT, fraction };
  }
  const big =
    BigInt(uncached) * BigInt(price.input) + BigInt(cached) * BigInt(price.cachedInput) + BigInt(completion) * BigInt(price.output);
  const unit = BigInt(TOKENS_PER_PRICE_UNIT);
  const micros = big / unit;
  return micros >= BigInt(Number.MAX_SAFE_INTEGER)
    ? { micros: Number.MAX_SAFE_INTEGER, fraction: 0 }
    : { micros: Number(micros), fraction: Number(big % unit) };
}

/** Millionths of a micro-dollar: the unit of exactCost's fraction. */
export const FRACTION_PER_MICRO = TOKENS_PER_PRICE_UNIT;

/**
 * The cost of a request in micro-dollars, rounded up: what a reservation holds (a worst case
 * must never be under its real cost). What is recorded is not rounded per request (cost-carry.ts).
 */
export function costMicros(price: Price, usage: TokenCounts): number {
  const { micros, fraction } = exactCost(price, usage);
  return fraction > 0 && micros < Number.MAX_SAFE_INTEGER ? micros + 1 : micros;
}

function checkPrice(model: string, price: Price): Price {
  for (const field of ['input', 'cachedInput', 'output'] as const) {
    const v = price[field];
    if (!Number.isSafeInteger(v) || v < 0) {
      throw new RangeError(`price of '${model}': ${field} must be a non-negative integer of micro-dollars per 1M tokens, got ${v}`);
    }
  }
  return Object.freeze({ input: price.input, cachedInput: price.cachedInput, output: price.output });
}

export function createPriceTable(
  entries: Readonly<Record<string, Price>>,
  meta: { date?: string | undefined; source?: string | undefined } = {},
): PriceTable {
  const byModel = new Map<string, Price>();
  for (const [model, price] of Object.entries(entries)) {
    if (model.length === 0) throw new RangeError('price table: empty model id');
    byModel.set(model, checkPrice(model, price));
  }
  const models = Object.freeze([...byModel.keys()].sort());
  function pricedAs(model: string): string | undefined {
    if (byModel.has(model)) return model;
    // A dated snapshot (gpt-4o-mini-2024-07-18, gpt-4-0613) is priced as its model. Only a date
    // is cut: o1-pro or o3-deep-research are other models (o1-pro costs ~10x o1), not variants,
    // and must not be priced as o1 or o3.
    const snapshot = SNAPSHOT_SUFFIX.exec(model);
    const base = snapshot ? model.slice(0, snapshot.index) : undefined;
    return base !== undefined && byModel.has(base) ? base : undefined;
  }
  return {
    priceFor(model: string): Price | undefined {
      const id = pricedAs(model);
      return id === undefined ? undefined : byModel.get(id);
    },
    pricedAs,
    models,
    date: meta.date,
    source: meta.source,
  };
}

const usdPerMillion = z.number().min(0).max(MAX_USD_PER_MILLION);

/** The file format of prices.json and of PRICES_FILE. Strict, so a misspelt field is an error, not a silent default. */
export const priceFileSchema = z.strictObject({
  date: z.iso.date().optional(),
  source: z.string().min(1).optional(),
  note: z.string().optional(),
  models: z.record(
    z.string().min(1),
    z.strictObject({ input: usdPerMillion, cachedInput: usdPerMillion.optional(), output: usdPerMillion }),
  ),
});

export type PriceFile = z.infer<typeof priceFileSchema>;

function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => {
      const path = issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('').replace(/^\./, '');
      return `${path || '(root)'}: ${issue.message}`;
    })
    .join('; ');
}

/** Validates a parsed price file; throws an Error naming the file and every problem. */
export function parsePriceFile(data: unknown, origin: string): PriceFile {
  const result = priceFileSchema.safeParse(data);
  if (!result.success) throw new Error(`Invalid price file ${origin}: ${describeIssues(result.error)}`);
  return result.data;
}

function toMicros(file: PriceFile): Record<string, Price> {
  // fromEntries defines own properties, so even a model id of "__proto__" stays a plain key.
  return Object.fromEntries(Object.entries(file.models).map(([model, usd]) => [model, priceFromUsdPerMillion(usd)]));
}

let shipped: PriceFile | undefined;
/** The table shipped in prices.json (validated once, on first use). */
export function shippedPrices(): PriceFile {
  shipped ??= parsePriceFile(shippedFile, 'src/openai/prices.json');
  return shipped;
}

/**
 * The shipped table, with the JSON file at `path` (same format) merged over it: a model in the file
 * replaces the shipped entry of that model whole. Throws an Error naming the problem when the file
 * cannot be read, is not JSON or does not validate; the caller fails the boot.
 */
export function loadPriceTable(path?: string): PriceTable {
  const base = shippedPrices();
  if (path === undefined || path === '') {
    return createPriceTable(toMicros(base), { date: base.date, source: base.source });
  }
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`Cannot read price file ${path}: ${(err as Error).message}`);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new Error(`Invalid price file ${path}: not valid JSON (${(err as Error).message})`);
  }
  const override = parsePriceFile(data, path);
  return createPriceTable(
    { ...toMicros(base), ...toMicros(override) },
    { date: override.date ?? base.date, source: override.source ?? base.source },
  );
}
