// Canonical JSON, the cache name's input: one string per value whatever its key order, and the
// same string as a plain sort-the-keys serialisation.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalJson } from '../../src/cache/canonical.js';

/** The obvious version, for reference: keys sorted with Array.prototype.sort at every depth. */
function reference(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map(reference).join(',')}]`;
  const object = value as Record<string, unknown>;
  const fields = Object.keys(object)
    .sort()
    .filter((k) => object[k] !== undefined)
    .map((k) => `${JSON.stringify(k)}:${reference(object[k])}`);
  return `{${fields.join(',')}}`;
}

/** Rebuilds every object with its keys in another order. */
function shuffled(value: unknown, seed: number): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map((v) => shuffled(v, seed));
  const entries = Object.entries(value as Record<string, unknown>);
  const order = entries.map((e, i) => ({ e, k: (i * 7919 + seed) % 101 })).sort((a, b) => a.k - b.k);
  return Object.fromEntries(order.map(({ e: [k, v] }) => [k, shuffled(v, seed)]));
}

describe('canonicalJson', () => {
  it('equals the sort-the-keys serialisation, and ignores key order', () => {
    // Keys from the full UTF-16 range (surrogates, astral characters) to pin the sort order.
    const json = fc.jsonValue({ maxDepth: 4 }).chain((v) => fc.tuple(fc.constant(v), fc.nat()));
    const key = fc.string({ unit: 'binary', maxLength: 6 });
    const objects = fc.dictionary(key, fc.jsonValue({ maxDepth: 2 }), { maxKeys: 12 });
    fc.assert(
      fc.property(json, objects, ([value, seed], object) => {
        expect(canonicalJson(value)).toBe(reference(value));
        expect(canonicalJson(shuffled(value, seed))).toBe(canonicalJson(value));
        expect(canonicalJson(object)).toBe(reference(object));
      }),
      { numRuns: 300 },
    );
  });

  it('sorts objects with many keys the same way (past the insertion sort)', () => {
    const key = fc.string({ unit: 'binary', maxLength: 6 });
    const objects = fc.dictionary(key, fc.integer(), { minKeys: 33, maxKeys: 80 });
    fc.assert(
      fc.property(objects, (object) => {
        expect(canonicalJson(object)).toBe(reference(object));
      }),
      { numRuns: 100 },
    );
  });

  it('names a body with 200,000 keys, which any client can send, without a quadratic sort', () => {
    // In reverse order, insertion's worst case: ~2e10 steps, minutes with the event loop blocked,
    // so without the fallback to V8's sort this case runs far past the test timeout.
    const many: Record<string, number> = {};
    for (let i = 200_000; i > 0; i--) many[`k${String(i).padStart(7, '0')}`] = i;
    const json = canonicalJson(many);
    expect(json.startsWith('{"k0000001":1,"k0000002":2,')).toBe(true);
    expect(json).toBe(reference(many));
  });

  it('writes the ordered fields as they are, keys in their order, at any depth', () => {
    const ordered = new Set(['schema']);
    const value = { b: { schema: { z: 1, a: { y: 2, x: 3 } } }, a: [{ schema: { q: 1, p: 2 }, d: 1, c: 2 }] };
    expect(canonicalJson(value, ordered)).toBe('{"a":[{"c":2,"d":1,"schema":{"q":1,"p":2}}],"b":{"schema":{"z":1,"a":{"y":2,"x":3}}}}');
    expect(canonicalJson(value)).toBe(reference(value));
  });

  it('leaves out undefined fields, as JSON does', () => {
    expect(canonicalJson({ b: 1, a: undefined, c: [undefined, 2] })).toBe('{"b":1,"c":[null,2]}');
  });
});
