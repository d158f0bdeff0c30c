// Writes every usage event three ways: the log line, the store (hourly aggregates and the raw event
// stream), and the metrics; then lets the budget alerts look at the key. While the store cannot
// take events they wait in a bounded in-memory buffer and are written, in order, when it is back.
import type { FastifyBaseLogger } from 'fastify';
import type { Store } from '../store/store.js';
import type { UsageEvent } from './event.js';
import { isOutageError } from '../resilience/store-health.js';
import { createReplayQueue } from '../resilience/replay-queue.js';

export interface UsageRecorderOptions {
  store: Store;
  logger: FastifyBaseLogger;
  retentionMs: number;
  maxEvents: number;
  /** Extra consumers (metrics, alerts), called synchronously; they must not throw or block. */
  listeners?: ((event: UsageEvent) => void)[];
  /**
   * Events kept in memory while the store is down (USAGE_BUFFER_MAX, default 100,000: about 100 MB
   * at worst, minutes of heavy traffic). Past it each further event is logged in full at error
   * level instead, so none is lost: the log is the last resort to replay from.
   */
  bufferMax?: number;
}

export type UsageRecorder = ReturnType<typeof createUsageRecorder>;

export function createUsageRecorder(opts: UsageRecorderOptions) {
  const pending = new Set<Promise<void>>();
  const stats = { logged: 0 };
  const storeOptions = { retentionMs: opts.retentionMs, maxEvents: opts.maxEvents };

  /** The last resort: the full event in the log, so the spend can be recovered from there. */
  function logEvent(event: UsageEvent, err: string, why: string) {
    stats.logged++;
    opts.logger.error({ err, usageEvent: event }, why);
  }

  // Replays are safe: the store counts each event id once.
  const waiting = createReplayQueue<UsageEvent>({
    max: opts.bufferMax ?? 100_000,
    write: (event) => opts.store.recordUsage(event, storeOptions),
    log: logEvent,
    what: 'usage event',
  });

  function write(event: UsageEvent) {
    const w = opts.store.recordUsage(event, storeOptions).catch((err: unknown) => {
      if (isOutageError(err)) waiting.keep(event, err);
      else logEvent(event, (err as Error).message, 'usage event not stored');
    });
    pending.add(w);
    void w.finally(() => pending.delete(w));
  }

  function record(event: UsageEvent) {
    for (const listener of opts.listeners ?? []) {
      try {
        listener(event);
      } catch (err) {
        opts.logger.error({ err: (err as Error).message }, 'usage listener failed');
      }
    }
    // Once events are waiting, new ones queue behind them: the store receives them in order.
    if (waiting.busy()) {
      waiting.keep(event, new Error('store unavailable'));
      // Self-healing: a flush is normally started by the store's recovery, but an event kept just
      // after one must not wait for the next outage. While the store is down this fails fast.
      void waiting.flush();
    } else write(event);
  }

  return {
    record,
    /** Writes the events buffered while the store was down (called when it answers again). */
    flush: waiting.flush,
    /** Events waiting for the store, and how many went to the log instead. */
    stats: () => ({ buffered: waiting.size(), logged: stats.logged }),
    /**
     * Graceful shutdown: waits for writes in flight, tries once more to store the buffer, and logs
     * in full whatever is still buffered.
     */
    async drain() {
      while (pending.size > 0) await Promise.allSettled([...pending]);
      await waiting.drain();
    },
  };
}
