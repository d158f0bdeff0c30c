// Gateway keys: the record ops manage, its limits, and how secrets are minted and hashed.
import { createHash, randomBytes } from 'node:crypto';
import { z } from 'zod';

/** Visible prefix so a leaked key is recognisable (secret scanners, logs, chat). */
export const KEY_PREFIX = 'tg-';

const positiveInt = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);
// Spend is kept in millionths of a dollar: a smaller limit would round to 0, which means no limit.
// A finer amount would be shown as given but enforced rounded: refused instead.
const storedUsd = z.number().min(0.000001, 'must be at least 0.000001 (budgets are kept in millionths of a dollar)').max(1e9);
const usd = storedUsd.refine((v) => Math.round(v * 1e6) / 1e6 === v, 'must be a whole number of millionths of a dollar (at most 6 decimal places)');

const limitFields = (usdLimit: z.ZodType<number>) => ({
  rpm: positiveInt.optional(),
  tpm: positiveInt.optional(),
  tokensPerDay: positiveInt.optional(),
  tokensPerMonth: positiveInt.optional(),
  usdPerDay: usdLimit.optional(),
  usdPerMonth: usdLimit.optional(),
  maxConcurrent: positiveInt.optional(),
});

/** Per-key limits. Any subset may be set; an absent limit is not enforced. Enforced by the quota module. */
export const limitsSchema = z.strictObject(limitFields(usd));
export type Limits = z.infer<typeof limitsSchema>;

/**
 * Limits as a stored key record may hold them: what earlier versions accepted too (USD amounts finer
 * than a millionth), so reading records back after an upgrade loses no key.
 */
export const storedLimitsSchema = z.strictObject(limitFields(storedUsd));

/**
 * Model names or prefix patterns ending in `*` (e.g. `gpt-4o*`); null means every model, [] none.
 * Entries are trimmed (a model name never begins or ends with a space); a `*` anywhere but at the
 * end, or a second one, would never match and is refused.
 */
export const modelsSchema = z
  .array(
    z
      .string()
      .trim()
      .min(1)
      .max(200)
      .refine((m) => !m.slice(0, -1).includes('*'), "'*' may appear only once, as the last character (a prefix pattern such as gpt-4o*)"),
  )
  .max(1000)
  .nullable();

/** Per-key cache settings: switch caching off, or keep this key's entries for another time. */
export const keyCacheSchema = z.strictObject({
  enabled: z.boolean().optional(),
  ttlSeconds: z.number().int().positive().max(365 * 86_400).optional(),
});
export type KeyCacheSettings = z.infer<typeof keyCacheSchema>;

const metadataSchema = z
  .record(z.string().max(200), z.union([z.string().max(2000), z.number(), z.boolean(), z.null()]))
  .refine((m) => Object.keys(m).length <= 50, 'at most 50 metadata entries');

export const createKeySchema = z.strictObject({
  name: z.string().trim().min(1).max(200),
  models: modelsSchema.optional(),
  limits: limitsSchema.optional(),
  cache: keyCacheSchema.optional(),
  metadata: metadataSchema.optional(),
});
export type CreateKeyInput = z.infer<typeof createKeySchema>;

export const updateKeySchema = z.strictObject({
  name: z.string().trim().min(1).max(200).optional(),
  models: modelsSchema.optional(),
  limits: limitsSchema.optional(),
  cache: keyCacheSchema.optional(),
  metadata: metadataSchema.optional(),
});
export type UpdateKeyInput = z.infer<typeof updateKeySchema>;

/**
 * A key's fields once a merge patch is merged into them: limits as stored records may hold them
 * (an untouched limit an earlier version accepted must not make an unrelated change fail; the
 * limits a patch sets are checked with limitsSchema first).
 */
export const mergedKeySchema = updateKeySchema.extend({ limits: storedLimitsSchema.optional() });

/** What the store keeps. The secret itself is never stored: only its sha256 (`hash`). */
export interface KeyRecord {
  id: string;
  name: string;
  hash: string;
  /** First characters of the secret, shown in listings so ops can tell keys apart. */
  hint: string;
  models: string[] | null;
  limits: Limits;
  /** Absent: the gateway's defaults. */
  cache?: KeyCacheSettings;
  metadata: Record<string, string | number | boolean | null>;
  createdAt: string;
  updatedAt: string;
  revokedAt: string | null;
}

/** The admin API's view of a key: everything but the hash. */
export function publicKey(record: KeyRecord) {
  const { hash: _hash, ...rest } = record;
  return rest;
}
export type PublicKey = ReturnType<typeof publicKey>;

export function newKeyId(): string {
  return `key_${randomBytes(12).toString('base64url')}`;
}

/** 32 random bytes: unguessable, so a fast unsalted hash is safe to store and index by. */
export function newSecret(): string {
  return KEY_PREFIX + randomBytes(32).toString('base64url');
}

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

export function secretHint(secret: string): string {
  return `${secret.slice(0, KEY_PREFIX.length + 4)}...`;
}

/** Does the key's allow-list admit this model? Entries ending in `*` match by prefix. */
export function isModelAllowed(models: string[] | null, model: string): boolean {
  if (models === null) return true;
  return models.some((m) => (m.endsWith('*') ? model.startsWith(m.slice(0, -1)) : m === model));
}
