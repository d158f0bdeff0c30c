// Writes every usage event three ways: the log line, the store (hourly aggregates and the raw event
// stream), and the metrics; then lets the budget alerts look at the key.
import type { FastifyBaseLogger } from 'fastify';
import type { Store } from '../store/store.js';
import type { UsageEvent } from './event.js';

export interface UsageRecorderOptions {
  store: Store;
  logger: FastifyBaseLogger;
  retentionMs: number;
  maxEvents: number;
  /** Extra consumers (metrics, alerts), called synchronously; they must not throw or block. */
  listeners?: ((event: UsageEvent) => void)[];
}

export type UsageRecorder = ReturnType<typeof createUsageRecorder>;

export function createUsageRecorder(opts: UsageRecorderOptions) {
  const pending = new Set<Promise<void>>();

  function record(event: UsageEvent) {
    for (const listener of opts.listeners ?? []) {
      try {
        listener(event);
      } catch (err) {
        opts.logger.error({ err: (err as Error).message }, 'usage listener failed');
      }
    }
    const write = opts.store
      .recordUsage(event, { retentionMs: opts.retentionMs, maxEvents: opts.maxEvents })
      .catch((err: Error) => {
        // The full event goes to the log, so the spend can be recovered from there: never lost.
        opts.logger.error({ err: err.message, usageEvent: event }, 'usage event not stored');
      });
    pending.add(write);
    void write.finally(() => pending.delete(write));
  }

  return {
    record,
    /** Waits for every write in flight (graceful shutdown). */
    async drain() {
      while (pending.size > 0) await Promise.allSettled([...pending]);
    },
  };
}
