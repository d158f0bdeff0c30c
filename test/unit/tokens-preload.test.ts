// Which encodings the gateway loads, and when: this file runs in its own process, so nothing has
// loaded an encoding before its first test.
import { describe, expect, it } from 'vitest';
import { countTokens, loadedEncodings, preloadEncodings } from '../../src/openai/tokens.js';

describe('preloadEncodings', () => {
  it('loads only o200k_base by default (current models); older encodings load on their first use', () => {
    expect(loadedEncodings()).toEqual([]);
    preloadEncodings();
    expect(loadedEncodings()).toEqual(['o200k_base']);
    expect(countTokens('hello world', 'gpt-4o-mini')).toBe(2);
    expect(loadedEncodings()).toEqual(['o200k_base']);
    expect(countTokens('hello world', 'gpt-3.5-turbo')).toBe(2);
    expect(loadedEncodings()).toEqual(['o200k_base', 'cl100k_base']);
    expect(countTokens('hello world', 'text-davinci-003')).toBe(2);
    expect(loadedEncodings()).toEqual(['o200k_base', 'cl100k_base', 'p50k_base']);
  });

  it('loads an encoding once', () => {
    preloadEncodings(['o200k_base', 'cl100k_base']);
    expect(loadedEncodings()).toEqual(['o200k_base', 'cl100k_base', 'p50k_base']);
  });
});
