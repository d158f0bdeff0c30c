// The usage and model of a JSON answer too large to parse whole, read from its ends.
import { describe, expect, it } from 'vitest';
import { headModel, lastMembers } from '../../src/openai/large-json.js';

const bulk = Array.from({ length: 20_000 }, (_, i) => i / 7);
const usage = { prompt_tokens: 12, total_tokens: 12 };

describe('lastMembers', () => {
  it('reads model and usage written after the bulk (embeddings), compact or pretty-printed', () => {
    const answer = { object: 'list', data: [{ object: 'embedding', index: 0, embedding: bulk }], model: 'text-embedding-3-small', usage };
    for (const text of [JSON.stringify(answer), JSON.stringify(answer, null, 2), JSON.stringify(answer, null, '\t').replace(/\n/g, '\r\n')]) {
      expect(lastMembers(Buffer.from(text))).toEqual({ model: 'text-embedding-3-small', usage });
    }
  });

  it('reads usage alone when model comes first (chat)', () => {
    const answer = { id: 'c', model: 'gpt-4o-mini', choices: [{ index: 0, logprobs: { content: bulk } }], usage, system_fingerprint: 'fp' };
    expect(lastMembers(Buffer.from(JSON.stringify(answer)))).toEqual({ usage, system_fingerprint: 'fp' });
  });

  it('takes no member of a nested object, nor a name inside a string', () => {
    const nested = { data: bulk, meta: { model: 'evil', usage: { prompt_tokens: 999 } } };
    expect(lastMembers(Buffer.from(JSON.stringify(nested)))).toBeUndefined();
    const inString = { data: bulk, note: 'x", "usage": {"prompt_tokens": 999}, "y": "' };
    expect(lastMembers(Buffer.from(JSON.stringify(inString)))).toBeUndefined();
    const escapedName = `{"data":${JSON.stringify(bulk)},"x\\"usage": {"prompt_tokens": 999}}`;
    expect(lastMembers(Buffer.from(escapedName))).toBeUndefined();
  });

  it('finds nothing without a usage member near the end', () => {
    expect(lastMembers(Buffer.from(JSON.stringify({ usage, data: bulk })))).toBeUndefined();
  });
});

describe('headModel', () => {
  it("reads the outermost object's model near the start, not a nested one", () => {
    expect(headModel(Buffer.from(JSON.stringify({ id: 'c', object: 'chat.completion', model: 'gpt-4o-2024-08-06', choices: bulk })))).toBe('gpt-4o-2024-08-06');
    expect(headModel(Buffer.from(JSON.stringify({ metadata: { model: 'evil' }, model: 'gpt-4o-mini', data: bulk })))).toBe('gpt-4o-mini');
    expect(headModel(Buffer.from(JSON.stringify({ object: 'model', note: '"model": "evil"', data: bulk })))).toBeUndefined();
  });

  it('finds nothing past its first 4 KB', () => {
    expect(headModel(Buffer.from(JSON.stringify({ instructions: 'x'.repeat(5000), model: 'gpt-4o-mini' })))).toBeUndefined();
  });
});
