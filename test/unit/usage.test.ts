// Reading usage from upstream answers: whatever upstream sends, the counts are whole, safe integers.
import { describe, expect, it } from 'vitest';
import { readUsage } from '../../src/openai/usage.js';

describe('readUsage', () => {
  it('reads the counts and their details', () => {
    expect(
      readUsage({
        usage: {
          prompt_tokens: 10,
          completion_tokens: 5,
          total_tokens: 15,
          prompt_tokens_details: { cached_tokens: 4 },
          completion_tokens_details: { reasoning_tokens: 2 },
        },
      }),
    ).toEqual({ promptTokens: 10, completionTokens: 5, totalTokens: 15, cachedPromptTokens: 4, reasoningTokens: 2 });
  });

  it('turns fractions, negatives, absurd and non-numeric values into safe integers', () => {
    const usage = readUsage({ usage: { prompt_tokens: 2.5, completion_tokens: -3, total_tokens: 1e300, prompt_tokens_details: { cached_tokens: '7' } } })!;
    expect(usage.promptTokens).toBe(2);
    expect(usage.completionTokens).toBe(0);
    expect(usage.totalTokens).toBe(Number.MAX_SAFE_INTEGER);
    expect(usage.cachedPromptTokens).toBe(0);
    for (const v of Object.values(usage)) expect(Number.isSafeInteger(v)).toBe(true);
  });
});
