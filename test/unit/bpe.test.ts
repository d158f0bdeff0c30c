// The compact BPE counter (src/openai/bpe.ts) against gpt-tokenizer itself: same tables, same counts.
import { createRequire } from 'node:module';
import { readdirSync, readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { loadBpe, type BpeCounter, type BpeEncodingName } from '../../src/openai/bpe.js';

const require = createRequire(import.meta.url);
const NAMES: BpeEncodingName[] = ['o200k_base', 'cl100k_base', 'p50k_base'];
/** How Tollgate called gpt-tokenizer before bpe.ts: special-token look-alikes are plain text. */
const PLAIN_TEXT = { disallowedSpecial: new Set<string>() };
type Reference = { countTokens(text: string, options: typeof PLAIN_TEXT): number };
const reference = (name: BpeEncodingName) => require(`gpt-tokenizer/encoding/${name}`) as Reference;

const counters = new Map<BpeEncodingName, BpeCounter>();
const counter = (name: BpeEncodingName) => {
  let c = counters.get(name);
  if (!c) counters.set(name, (c = loadBpe(name)));
  return c;
};

/** Text of every kind the gateway sees: this repository's code and docs, in pieces BPE handles fast. */
function repositoryTexts(): string[] {
  const texts: string[] = [];
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = `${dir}/${entry.name}`;
      if (entry.isDirectory()) walk(path);
      else if (/\.(ts|md|js|json|css|html|lua)$/.test(entry.name)) texts.push(readFileSync(path, 'utf8'));
    }
  };
  walk('src');
  walk('docs');
  texts.push(readFileSync('README.md', 'utf8'), readFileSync(require.resolve('gpt-tokenizer/data/TestPlans.txt'), 'utf8'));
  return texts.flatMap((t) => t.match(/[\s\S]{1,1500}/g) ?? []);
}

// Pieces that reach every branch: byte-order marks (gpt-tokenizer's lookup drops one when it decodes
// a byte range, which changes counts), lone surrogates (encoded as U+FFFD), special-token look-alikes,
// contractions, digit runs, combining marks, emoji sequences, scripts without spaces, control bytes.
const PIECES = ['a', 'Z', ' ', '  ', '\n', '\r\n', '\t', '\uFEFF', '\uFEFFusing', 'ab\uFEFFcd', '\uFEFF\uFEFF', '\uD800', '\uDC00',
  '😀', '東京', 'é', 'e\u0301', '<|endoftext|>', '<|im_start|>', "'s", "'LL", '123456', '—', '\u00A0', '\u200B', 'ﬁ', 'İ', '\u0000',
  '//', '...', 'ÿ', '\uFFFD', 'Ω', 'ß', '\u2028', '🇫🇷', '🏳️‍🌈', 'ю', 'ש', 'ع', 'क्ष', 'namespace', ' the', 'Hello'];
const nastyText = fc
  .array(fc.oneof(fc.constantFrom(...PIECES), fc.string({ unit: 'binary', maxLength: 4 }), fc.string({ unit: 'grapheme', maxLength: 6 })), { maxLength: 40 })
  .map((parts) => parts.join(''));

describe('BpeCounter', () => {
  it.each(NAMES)('%s: holds exactly the ranks of gpt-tokenizer\'s own table', (name) => {
    const ranks = (require(`gpt-tokenizer/bpeRanks/${name}`) as { default: (string | number[] | undefined)[] }).default;
    const mine = counter(name);
    expect(mine.rankCount).toBe(ranks.length);
    const encoder = new TextEncoder();
    let mismatches = 0;
    for (let rank = 0; rank < ranks.length; rank++) {
      const theirs = ranks[rank];
      const expected = theirs === undefined ? undefined : typeof theirs === 'string' ? encoder.encode(theirs) : Uint8Array.from(theirs);
      const actual = mine.tokenBytes(rank);
      if (expected === undefined ? actual !== undefined : actual === undefined || Buffer.compare(expected, actual) !== 0) mismatches++;
    }
    expect(mismatches).toBe(0);
  });

  it.each(NAMES)('%s: counts exactly as gpt-tokenizer on this repository\'s text', (name) => {
    const ref = reference(name);
    const mine = counter(name);
    const texts = repositoryTexts();
    expect(texts.length).toBeGreaterThan(500);
    const differing = texts.filter((t) => mine.count(t) !== ref.countTokens(t, PLAIN_TEXT));
    expect(differing.slice(0, 3)).toEqual([]);
  });

  it.each(NAMES)('%s: counts exactly as gpt-tokenizer on random text (BOMs, lone surrogates, emoji...)', (name) => {
    const ref = reference(name);
    const mine = counter(name);
    fc.assert(
      fc.property(nastyText, (text) => mine.count(text) === ref.countTokens(text, PLAIN_TEXT)),
      { numRuns: 3000, seed: 7 },
    );
  });

  it('keeps gpt-tokenizer\'s byte-order-mark quirk, which changes counts', () => {
    // Decoding "<BOM>using" drops the BOM, so gpt-tokenizer merges it as "using": fewer tokens than
    // a plain lookup of the bytes would give. Counts must not change, so the quirk stays.
    for (const name of NAMES) {
      for (const text of ['\u0639\uFEFFusing\u3177', 'ab\uFEFFcd', '\uFEFF\uFEFF//', '\uFEFF']) {
        expect(counter(name).count(text), `${name} ${JSON.stringify(text)}`).toBe(reference(name).countTokens(text, PLAIN_TEXT));
      }
    }
    expect(counter('o200k_base').count('\u0639\uFEFFusing\u3177')).toBe(6);
  });

  it('treats special-token look-alikes as plain text', () => {
    expect(counter('o200k_base').count('<|endoftext|>')).toBe(reference('o200k_base').countTokens('<|endoftext|>', PLAIN_TEXT));
    expect(counter('o200k_base').count('<|endoftext|>')).toBeGreaterThan(1);
  });

  it('is compact: o200k_base in typed arrays of under 5 MB, loaded without gpt-tokenizer\'s JS tables', () => {
    expect(counter('o200k_base').byteLength).toBeLessThan(5 * 1024 * 1024);
    // In a fresh process: RSS grows by ~10 MB (gpt-tokenizer's o200k_base module: ~55-70 MB).
    const script = `
      const { loadBpe } = await import(${JSON.stringify(new URL('../../src/openai/bpe.ts', import.meta.url).href)});
      const before = process.memoryUsage().rss;
      loadBpe('o200k_base').count('warm up');
      console.log(process.memoryUsage().rss - before);
    `;
    const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8' });
    const grew = Number(out.trim().split('\n').pop());
    expect(grew).toBeLessThan(25 * 1024 * 1024);
  });
});
