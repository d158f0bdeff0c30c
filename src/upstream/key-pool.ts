// The server-held OpenAI keys: round robin over the healthy ones, cooldowns for keys that answered 429 or 401.
import { createHash } from 'node:crypto';

export interface KeyPoolLogger {
  error(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  /** A key back in rotation is logged here, when the logger has it. */
  info?(obj: object, msg?: string): void;
}

export interface KeyPoolOptions {
  /** A key answered 429 without retry-after: out of rotation this long. */
  cooldownMs: number;
  /** A key answered 401, or 429 insufficient_quota (its billing quota is spent): out of rotation this long. */
  invalidCooldownMs: number;
  logger?: KeyPoolLogger;
  now?: () => number;
}

export interface KeyStatus {
  /** Position in OPENAI_API_KEYS (after OPENAI_API_KEY and de-duplication). Never the key itself. */
  index: number;
  /** Short sha256 of the key, to tell keys apart in logs and /readyz without revealing them. */
  id: string;
  healthy: boolean;
  /** Epoch ms until which the key is out of rotation; null when healthy. */
  coolingUntil: number | null;
  /** Why it is cooling down. */
  reason: 'rate_limited' | 'invalid' | 'insufficient_quota' | null;
}

export interface PickedKey {
  index: number;
  key: string;
  /** False when every key was cooling down and this one was taken as the soonest back. */
  healthy: boolean;
}

export type KeyPool = ReturnType<typeof createKeyPool>;

/** The short, non-reversible id under which a key appears in logs and status. */
export function keyId(key: string): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 8);
}

export function createKeyPool(keys: readonly string[], options: KeyPoolOptions) {
  if (keys.length === 0) throw new Error('the upstream key pool needs at least one key');
  const now = options.now ?? Date.now;
  const entries = keys.map((key, index) => ({
    index,
    key,
    id: keyId(key),
    coolingUntil: 0,
    reason: null as KeyStatus['reason'],
    /** Whether the key's going out of rotation was logged and its coming back not yet. */
    out: false,
  }));
  let cursor = 0;

  const isHealthy = (e: (typeof entries)[number], t: number) => e.coolingUntil <= t;

  /**
   * Logs, once, each key whose cooldown ended since it was logged out of rotation. Key state is
   * logged per change (out, back), never per request that meets it.
   */
  function noteReturns(t: number) {
    for (const e of entries) {
      if (!e.out || !isHealthy(e, t)) continue;
      e.out = false;
      options.logger?.info?.({ keyIndex: e.index, keyId: e.id, after: e.reason }, 'upstream key back in rotation');
    }
  }

  /**
   * The next key in round robin among the healthy ones, preferring keys not in `avoid` (those this
   * request already saw fail on their own account). If none is healthy, the one back soonest.
   */
  function pick(avoid: ReadonlySet<number> = new Set()): PickedKey {
    const t = now();
    noteReturns(t);
    for (const pass of [true, false]) {
      for (let i = 0; i < entries.length; i++) {
        const e = entries[(cursor + i) % entries.length]!;
        if (!isHealthy(e, t) || (pass && avoid.has(e.index))) continue;
        cursor = (e.index + 1) % entries.length;
        return { index: e.index, key: e.key, healthy: true };
      }
    }
    let soonest = entries[0]!;
    for (const e of entries) if (e.coolingUntil < soonest.coolingUntil) soonest = e;
    return { index: soonest.index, key: soonest.key, healthy: false };
  }

  /** Whether some key other than those in `avoid` is healthy now. */
  function hasHealthyOther(avoid: ReadonlySet<number>): boolean {
    const t = now();
    return entries.some((e) => !avoid.has(e.index) && isHealthy(e, t));
  }

  /** Upstream refused this key for its rate limits: out of rotation for `retryAfterMs`, or the default cooldown. */
  function rateLimited(index: number, retryAfterMs?: number) {
    const t = now();
    noteReturns(t);
    const e = entries[index]!;
    const until = t + (retryAfterMs ?? options.cooldownMs);
    if (e.reason !== 'rate_limited' && e.coolingUntil > until) return; // already out for longer
    // Logged when the key goes out (or out for another reason), not for each request that meets its
    // 429 meanwhile (those in flight when it went out, those served by it while every key cools).
    const change = !e.out || e.reason !== 'rate_limited';
    e.coolingUntil = Math.max(e.coolingUntil, until);
    e.reason = 'rate_limited';
    e.out = true;
    if (change) options.logger?.warn({ keyIndex: index, keyId: e.id, coolingUntil: new Date(e.coolingUntil).toISOString() }, 'upstream key rate limited; out of rotation');
  }

  /** Out of rotation for a long while, for something only an operator can mend: logged loudly (once). */
  function broken(index: number, reason: 'invalid' | 'insufficient_quota', message: string) {
    const t = now();
    noteReturns(t);
    const e = entries[index]!;
    const change = !e.out || e.reason !== reason;
    e.coolingUntil = Math.max(e.coolingUntil, t + options.invalidCooldownMs);
    e.reason = reason;
    e.out = true;
    if (change) options.logger?.error({ keyIndex: index, keyId: e.id, coolingUntil: new Date(e.coolingUntil).toISOString() }, message);
  }

  /** Upstream says this key is invalid or revoked. */
  function invalid(index: number) {
    broken(index, 'invalid', 'upstream rejected a server-held OpenAI key (401): check or replace it; out of rotation');
  }

  /** Upstream says this key's billing quota is spent (429 insufficient_quota): no wait brings it back. */
  function quotaSpent(index: number) {
    broken(index, 'insufficient_quota', "upstream says a server-held OpenAI key's quota is spent (429 insufficient_quota): check its plan and billing; out of rotation");
  }

  function status(): KeyStatus[] {
    const t = now();
    return entries.map((e) => {
      const healthy = isHealthy(e, t);
      return { index: e.index, id: e.id, healthy, coolingUntil: healthy ? null : e.coolingUntil, reason: healthy ? null : e.reason };
    });
  }

  return { size: entries.length, pick, hasHealthyOther, rateLimited, invalid, quotaSpent, status };
}
