import { describe, expect, it } from 'vitest';
import type { FastifyRequest } from 'fastify';
import { exactSeedDigits, stringifyWithSeed } from '../../src/openai/big-seed.js';

const request = (raw: string) => ({ rawBody: Buffer.from(raw) }) as unknown as FastifyRequest;
const digitsOf = (raw: string) => exactSeedDigits(request(raw), JSON.parse(raw) as object);

describe('seeds past 2^53', () => {
  it('reads the exact digits of a rounded top-level seed back from the raw body', () => {
    expect(digitsOf('{"model":"m","seed": 18446744073709551615}')).toBe('18446744073709551615');
    expect(digitsOf('{"seed":-9223372036854775808,"n":1}')).toBe('-9223372036854775808');
  });

  it('leaves safe integers, other types and unclear cases alone', () => {
    expect(digitsOf('{"seed":42}')).toBeUndefined();
    expect(digitsOf('{"seed":null}')).toBeUndefined();
    // Two different integers that round to the top-level seed: which one is it? Not guessed.
    expect(digitsOf('{"tools":[{"seed":18446744073709551614}],"seed":18446744073709551615}')).toBeUndefined();
    // The same digits twice (a nested copy) are still one answer.
    expect(digitsOf('{"metadata":{"seed":18446744073709551615},"seed":18446744073709551615}')).toBe('18446744073709551615');
    expect(exactSeedDigits({ rawBody: null } as unknown as FastifyRequest, { seed: 2 ** 60 })).toBeUndefined();
  });

  it('writes the digits in place of the rounded number, and nothing else changes', () => {
    const body = { model: 'm', seed: 18446744073709551615, messages: [{ content: 'seed' }] };
    expect(stringifyWithSeed(body, '18446744073709551615')).toBe('{"model":"m","seed":18446744073709551615,"messages":[{"content":"seed"}]}');
    expect(stringifyWithSeed(body, undefined)).toBe(JSON.stringify(body));
  });
});
