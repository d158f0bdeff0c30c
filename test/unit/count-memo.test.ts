// The token-count memo: what it remembers, for how long, and within what memory.
import { describe, expect, it } from 'vitest';
import { CountMemo } from '../../src/openai/count-memo.js';

const text = (seed: string, length: number) => seed.repeat(Math.ceil(length / seed.length)).slice(0, length);

describe('CountMemo', () => {
  it('remembers a count it was given, for a copy of the same text too', () => {
    const memo = new CountMemo(10_000, 10);
    const prompt = text('You are a helpful assistant. ', 300);
    expect(memo.get(prompt)).toBeUndefined();
    memo.set(prompt, 57);
    // Each request parses its own copy of the text: the memo must match on content.
    expect(memo.get(JSON.parse(JSON.stringify(prompt)) as string)).toBe(57);
    expect(memo.stats()).toEqual({ entries: 1, chars: 300, hits: 1, misses: 1 });
  });

  it('never keeps text shorter than minLength or longer than a generation', () => {
    const memo = new CountMemo(1_000, 10);
    memo.set('short', 1);
    memo.set(text('x', 1_001), 100);
    expect(memo.get('short')).toBeUndefined();
    expect(memo.get(text('x', 1_001))).toBeUndefined();
    expect(memo.stats().entries).toBe(0);
  });

  it('holds at most two generations of maxChars, dropping what was not used since', () => {
    const memo = new CountMemo(1_000, 10);
    for (let i = 0; i < 100; i++) memo.set(`${i} `.padEnd(100, '.'), i);
    const { entries, chars } = memo.stats();
    expect(chars).toBeLessThanOrEqual(2_000);
    expect(entries).toBeLessThanOrEqual(20);
    expect(memo.get('0 '.padEnd(100, '.'))).toBeUndefined(); // long gone
    expect(memo.get('99 '.padEnd(100, '.'))).toBe(99); // the newest
  });

  it('keeps a text that is used while other texts come and go (a system prompt)', () => {
    const memo = new CountMemo(1_000, 10);
    const system = text('Answer briefly. ', 200);
    memo.set(system, 40);
    for (let i = 0; i < 200; i++) {
      memo.set(`${i} `.padEnd(100, '.'), i); // one unique user message per request
      expect(memo.get(system)).toBe(40);
    }
    expect(memo.stats().chars).toBeLessThanOrEqual(2_000);
  });
});
