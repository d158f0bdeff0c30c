import { describe, expect, it } from 'vitest';
import { carriesError, createSecretMasker, MASKED_KEY } from '../../src/upstream/redact.js';

describe('carriesError: the answer reports an error of its own', () => {
  const both = (text: string) => [carriesError(text), carriesError(Buffer.from(text))];

  it('sees a top-level error that is not null', () => {
    expect(both('{"error":{"message":"bad","type":"invalid_request_error"}}')).toEqual([true, true]);
    expect(both('{"id":"resp_1","object":"response","status":"failed","error" : {"code":"server_error"}}')).toEqual([true, true]);
    expect(both('{"id":"resp_1","error":"plain text"}')).toEqual([true, true]);
    expect(both('{"id":"resp_1","error":')).toEqual([true, true]); // cut short: cannot tell, so yes
  });

  it('ignores a null error, the word in text, and error members nested in the answer', () => {
    expect(both('{"id":"resp_1","object":"response","status":"completed","error":null}')).toEqual([false, false]);
    expect(both('{"choices":[{"message":{"content":"say \\"error\\": {\\"x\\":1}"}}]}')).toEqual([false, false]);
    expect(both('{"status":"error","x":["error"]}')).toEqual([false, false]);
    // A tool whose parameter is named error, metadata with an error field: the response is fine.
    const tools = '{"id":"resp_1","error":null,"tools":[{"type":"function","name":"report","parameters":{"type":"object","properties":{"error":{"type":"string"}}}}],"metadata":{"error":"none"}}';
    expect(both(tools)).toEqual([false, false]);
    // Strings with braces and escaped quotes before it do not confuse the depth.
    expect(both('{"a":"}}]] \\" {","error":{"message":"x"}}')).toEqual([true, true]);
  });
});

describe('createSecretMasker', () => {
  it('masks server keys and key-shaped text in error text, only the server keys elsewhere', () => {
    const mask = createSecretMasker(['sk-server-key-0123456789']);
    expect(mask('bad key sk-server-key-0123456789 and sk-other-key-abcdefgh')).toBe(`bad key ${MASKED_KEY} and ${MASKED_KEY}`);
    expect(mask.maskServerKeys('sk-server-key-0123456789 sk-other-key-abcdefgh')).toBe(`${MASKED_KEY} sk-other-key-abcdefgh`);
    expect(mask.hasServerKey(Buffer.from('x sk-server-key-0123456789'))).toBe(true);
    expect(mask.hasServerKey('sk-other-key-abcdefgh')).toBe(false);
  });
});
