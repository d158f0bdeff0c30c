// The per-instance admission used by QUOTA_FAIL_MODE=open while the store is down: a rolling
// minute of requests and a count in flight per key, in memory, on this instance only.

export interface LocalLimiterOptions {
  /** Requests per key per rolling minute on this instance. */
  rpm: number;
  /** Requests per key in flight on this instance. */
  maxInFlight: number;
  now?: () => number;
}

export type LocalDecision = { admitted: true; release: () => void } | { admitted: false; limit: 'rpm' | 'maxConcurrent'; retryAfterMs: number };

const WINDOW_MS = 60_000;

export function createLocalLimiter(opts: LocalLimiterOptions) {
  const now = opts.now ?? Date.now;
  const perKey = new Map<string, { times: number[]; inFlight: number }>();

  return {
    /**
     * Admits one request of `keyId` if it passes the local caps, each lowered to the key's own
     * rpm / maxConcurrent when those are smaller (the local cap never loosens a key's limit).
     */
    admit(keyId: string, keyLimits: { rpm?: number; maxConcurrent?: number }): LocalDecision {
      const t = now();
      const rpm = Math.min(opts.rpm, keyLimits.rpm ?? Infinity);
      const maxInFlight = Math.min(opts.maxInFlight, keyLimits.maxConcurrent ?? Infinity);
      let state = perKey.get(keyId);
      if (!state) perKey.set(keyId, (state = { times: [], inFlight: 0 }));
      while (state.times.length > 0 && state.times[0]! <= t - WINDOW_MS) state.times.shift();
      if (state.inFlight >= maxInFlight) return { admitted: false, limit: 'maxConcurrent', retryAfterMs: 1000 };
      if (state.times.length >= rpm) return { admitted: false, limit: 'rpm', retryAfterMs: state.times[0]! + WINDOW_MS - t };
      state.times.push(t);
      state.inFlight++;
      const s = state;
      let released = false;
      return {
        admitted: true,
        release() {
          if (released) return;
          released = true;
          s.inFlight--;
        },
      };
    },
    /** Forgets every count: the store's limits apply again once it is back. */
    reset() {
      for (const [keyId, state] of perKey) if (state.inFlight === 0) perKey.delete(keyId);
      for (const state of perKey.values()) state.times = [];
    },
  };
}
