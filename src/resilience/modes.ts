// The stated policy of each feature while the store is down, as /readyz and /metrics report it.

export interface DegradedModes {
  /** True while the store is known to be down (the features below run in these modes). */
  degraded: boolean;
  modes: {
    /** 'grace': keys seen within AUTH_OUTAGE_GRACE_MS keep working, unknown keys get 503; 'unavailable': grace is off. */
    auth: 'grace' | 'unavailable';
    /** QUOTA_FAIL_MODE: 'closed' refuses with 503 quota_unavailable; 'open' admits under local per-instance caps. */
    quota: 'closed' | 'open';
    /** The cache is skipped: every request goes upstream. */
    cache: 'bypass';
    /** Usage events wait in memory (USAGE_BUFFER_MAX), written in order when the store is back. */
    usage: 'buffering';
  };
  /** Work kept in memory for the store: written when it answers again. */
  buffered: { usageEvents: number; settlements: number };
  /** Counts since start, for the metrics. */
  counts: {
    authGrace: number;
    quotaAdmittedOpen: number;
    quotaRefusedUnavailable: number;
    usageEventsLogged: number;
    settlementsLogged: number;
  };
}

export interface ModeSources {
  up: () => boolean;
  authGraceMs: number;
  auth: () => { servedFromGrace: number };
  quota: () => {
    failMode: 'closed' | 'open';
    queuedSettlements: number;
    admittedOpen: number;
    refusedUnavailable: number;
    settlementsLogged: number;
  };
  usage: () => { buffered: number; logged: number };
}

export function degradedModes(src: ModeSources): () => DegradedModes {
  return () => {
    const quota = src.quota();
    const usage = src.usage();
    return {
      degraded: !src.up(),
      modes: {
        auth: src.authGraceMs > 0 ? 'grace' : 'unavailable',
        quota: quota.failMode,
        cache: 'bypass',
        usage: 'buffering',
      },
      buffered: { usageEvents: usage.buffered, settlements: quota.queuedSettlements },
      counts: {
        authGrace: src.auth().servedFromGrace,
        quotaAdmittedOpen: quota.admittedOpen,
        quotaRefusedUnavailable: quota.refusedUnavailable,
        usageEventsLogged: usage.logged,
        settlementsLogged: quota.settlementsLogged,
      },
    };
  };
}
