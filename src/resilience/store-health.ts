// Store health: notices when the store (Redis) stops answering, probes it in the background until it
// answers again, and tells the features that buffered work (usage events, settlements) to flush.
import type { Store } from '../store/store.js';

export interface StoreHealthLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

export interface StoreHealthOptions {
  /** The store as it is (not guarded): the probe must reach it even while the gateway fails fast. */
  store: Pick<Store, 'ping' | 'kind'>;
  logger: StoreHealthLogger;
  /** How often the probe PINGs while the store is down. */
  probeIntervalMs: number;
  now?: () => number;
}

/** Thrown at once, without touching the store, while the store is known to be down. */
export class StoreUnavailableError extends Error {
  constructor() {
    super('store unavailable (failing fast until the health probe sees it answer again)');
    this.name = 'StoreUnavailableError';
  }
}

// What ioredis (and Redis itself) say when the server cannot answer: a timeout, a lost or refused
// connection, the retry limit of a command queued while disconnected, or a server that is up but
// not serving (loading its data set, busy with a script, out of memory, a read-only replica...).
const OUTAGE_MESSAGE =
  /timed out|connection is closed|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|isn't writeable|cluster is not ready|refresh slots|Too many Cluster redirections|sentinels|^LOADING|^BUSY|^MASTERDOWN|^CLUSTERDOWN|^TRYAGAIN|^READONLY|^OOM/i;

/** True when an error means "the store could not answer", not "the store said no" (a RangeError, a conflict). */
export function isOutageError(err: unknown): boolean {
  if (err instanceof StoreUnavailableError) return true;
  if (!(err instanceof Error)) return false;
  if (err instanceof RangeError || err instanceof TypeError) return false;
  if (err.name === 'MaxRetriesPerRequestError' || err.name === 'AbortError') return true;
  return OUTAGE_MESSAGE.test(err.message);
}

export type StoreHealth = ReturnType<typeof createStoreHealth>;

export function createStoreHealth(opts: StoreHealthOptions) {
  const now = opts.now ?? Date.now;
  let up = true;
  /** Whether the store ever answered since start: a store never reached is 'not_ready', not 'degraded'. */
  let everAnswered = false;
  let downSince: number | null = null;
  let lastError: string | null = null;
  let probeTimer: NodeJS.Timeout | undefined;
  let probing = false;
  let verifying = false;
  let closed = false;
  const onRecover: (() => void)[] = [];
  const onDown: (() => void)[] = [];

  function markDown(err: unknown) {
    lastError = err instanceof Error ? err.message : String(err);
    if (!up || closed) return;
    up = false;
    downSince = now();
    opts.logger.warn(
      { store: opts.store.kind, err: lastError },
      'store unavailable: degraded mode (auth grace, quota fail mode, cache bypass, usage buffering) until it answers',
    );
    for (const listener of onDown) listener();
    scheduleProbe(0);
  }

  function markUp() {
    everAnswered = true;
    if (up) return;
    up = true;
    opts.logger.info({ store: opts.store.kind, downForMs: downSince === null ? null : now() - downSince }, 'store answers again: normal mode');
    downSince = null;
    lastError = null;
    for (const listener of onRecover) {
      try {
        listener();
      } catch (err) {
        opts.logger.warn({ err: (err as Error).message }, 'store recovery listener failed');
      }
    }
  }

  function scheduleProbe(delayMs: number) {
    if (closed || probeTimer) return;
    probeTimer = setTimeout(() => {
      probeTimer = undefined;
      void probe();
    }, delayMs);
    probeTimer.unref();
  }

  /** One PING (bounded by the store's command timeout); then again every interval until it answers. */
  async function probe() {
    if (probing || closed) return;
    probing = true;
    try {
      await opts.store.ping();
      markUp();
    } catch (err) {
      lastError = err instanceof Error ? err.message : String(err);
      if (!up) scheduleProbe(opts.probeIntervalMs);
    } finally {
      probing = false;
    }
  }

  return {
    /** False while the store is known to be down: callers fail fast instead of paying the timeout. */
    get up() {
      return up;
    },
    get everAnswered() {
      return everAnswered;
    },
    get downSince() {
      return downSince;
    },
    get lastError() {
      return lastError;
    },
    /** A store call succeeded. */
    success() {
      everAnswered = true;
    },
    /**
     * A store call failed. An outage error flips to degraded at once; any other unexpected error
     * (not a RangeError) is checked with one PING in the background before deciding.
     */
    failure(err: unknown) {
      if (isOutageError(err)) return markDown(err);
      if (err instanceof RangeError || err instanceof TypeError || verifying || !up) return;
      verifying = true;
      opts.store.ping().then(
        () => {
          verifying = false;
          everAnswered = true;
        },
        (pingErr: unknown) => {
          verifying = false;
          markDown(pingErr);
        },
      );
    },
    /**
     * Something says the store answers again (its change feed subscribed anew): probed now, not at
     * the next interval. Nothing while it is up, or while a probe is on its way.
     */
    probeNow() {
      if (up || closed) return;
      clearTimeout(probeTimer);
      probeTimer = undefined;
      void probe();
    },
    onRecover(listener: () => void) {
      onRecover.push(listener);
    },
    onDown(listener: () => void) {
      onDown.push(listener);
    },
    close() {
      closed = true;
      clearTimeout(probeTimer);
      probeTimer = undefined;
    },
  };
}
