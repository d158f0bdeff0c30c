// Writes every usage event three ways: the log line, the store (hourly aggregates and the raw event
// stream), and the metrics; then lets the budget alerts look at the key. While the store cannot
// take events they wait in a bounded in-memory buffer and are written, in order, when it is back.
import type { FastifyBaseLogger } from 'fastify';
import type { Store } from '../store/store.js';
import type { UsageEvent } from './event.js';
import { isOutageError } from '../resilience/store-health.js';

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
  const bufferMax = opts.bufferMax ?? 100_000;
  /** Events not yet stored because the store was down, oldest first. */
  const buffer: UsageEvent[] = [];
  let flushing: Promise<void> | undefined;
  const stats = { logged: 0 };
  const storeOptions = { retentionMs: opts.retentionMs, maxEvents: opts.maxEvents };

  /** The last resort: the full event in the log, so the spend can be recovered from there. */
  function logEvent(event: UsageEvent, err: string, why: string) {
    stats.logged++;
    opts.logger.error({ err, usageEvent: event }, why);
  }

  function keep(event: UsageEvent, err: unknown) {
    if (buffer.length >= bufferMax) {
      logEvent(event, (err as Error).message, 'usage event not stored: store down and the usage buffer is full');
      return;
    }
    buffer.push(event);
  }

  function write(event: UsageEvent) {
    const w = opts.store.recordUsage(event, storeOptions).catch((err: unknown) => {
      if (isOutageError(err)) keep(event, err);
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
    if (buffer.length > 0 || flushing) {
      keep(event, new Error('store unavailable'));
      // Self-healing: a flush is normally started by the store's recovery, but an event kept just
      // after one must not wait for the next outage. While the store is down this fails fast.
      if (!flushing) void flush();
    } else write(event);
  }

  /**
   * Writes buffered events one at a time, oldest first, until the buffer is empty or the store
   * fails again (the rest wait for the next recovery). One flush at a time. A write that timed out
   * may have landed, so an event can be stored twice in that case (at least once, never lost).
   */
  function flush(): Promise<void> {
    if (flushing) return flushing;
    // The body starts a tick later, so `flushing` is always set before its `finally` clears it
    // (an empty buffer would otherwise leave a settled promise behind and block every later flush).
    const run = (async () => {
      await Promise.resolve();
      try {
        while (buffer.length > 0) {
          const event = buffer[0]!;
          try {
            await opts.store.recordUsage(event, storeOptions);
          } catch (err) {
            if (isOutageError(err)) return;
            logEvent(event, (err as Error).message, 'usage event not stored');
          }
          buffer.shift();
        }
      } finally {
        flushing = undefined;
      }
    })();
    flushing = run;
    return run;
  }

  return {
    record,
    flush,
    /** Events waiting for the store, and how many went to the log instead. */
    stats: () => ({ buffered: buffer.length, logged: stats.logged }),
    /**
     * Graceful shutdown: waits for writes in flight, tries once more to store the buffer, and logs
     * in full whatever is still buffered.
     */
    async drain() {
      while (pending.size > 0) await Promise.allSettled([...pending]);
      await flush();
      for (const event of buffer.splice(0)) logEvent(event, 'store unavailable at shutdown', 'usage event not stored at shutdown');
    },
  };
}
