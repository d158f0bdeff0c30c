// A `seed` past 2^53 - 1, as clients that draw random 64-bit seeds send: JSON.parse rounds it to the
// nearest double, so wherever the gateway re-serialises the body (a stream it asks usage for, a
// legacy engine path that names the model) or names it for the cache, it would use another seed than
// the client's. Its exact digits are read back from the bytes the client sent.
import { randomUUID } from 'node:crypto';
import type { FastifyRequest } from 'fastify';

const SEED = /"seed"\s*:\s*(-?\d+)(?![\d.eE])/g;

/**
 * The digits of the body's top-level `seed` when JSON.parse could not hold it exactly, else
 * undefined (the rest of the time this costs one type check). Found in the raw body as the only
 * integer `"seed"` member whose value parses to the same number; ambiguous or not found, undefined.
 */
export function exactSeedDigits(request: FastifyRequest, body: object): string | undefined {
  const seed = (body as { seed?: unknown }).seed;
  if (typeof seed !== 'number' || Number.isSafeInteger(seed) || !request.rawBody) return undefined;
  let found: string | undefined;
  for (const [, digits] of request.rawBody.toString('utf8').matchAll(SEED)) {
    if (Number(digits) !== seed || digits === found) continue;
    if (found !== undefined) return undefined; // two different integers round to this seed
    found = digits;
  }
  return found;
}

/** JSON.stringify(body), with its top-level `seed` written as `digits` instead of the rounded number. */
export function stringifyWithSeed(body: Record<string, unknown>, digits: string | undefined): string {
  if (digits === undefined) return JSON.stringify(body);
  // A placeholder no client text can hold by chance: a fresh random one (only big seeds pay for it).
  const placeholder = `tollgate-seed-${randomUUID()}`;
  return JSON.stringify({ ...body, seed: placeholder }).replace(JSON.stringify(placeholder), digits);
}
