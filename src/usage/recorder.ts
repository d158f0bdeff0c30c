// Writes every usage event three ways: the log line, the store (hourly aggregates and the raw event
// stream), and the metrics; then lets the budget alerts look at the key. Events reach the store in
// batches, one every `flushIntervalMs` (or sooner when a batch is full): a busy gateway then makes a
// few store calls per interval instead of one per request, and the aggregates receive the batch's
// sums instead of every event's increments. While the store cannot take batches they wait in a
// bounded in-memory buffer and are written, in order, when it is back.
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
   * at worst, minutes of heavy traffic; checked per batch, so it may be passed by one batch). Past
   * it each further event is logged in full at error level instead, so none is lost: the log is the
   * last resort to replay from.
   */
  bufferMax?: number;
  /**
   * How long an event waits for others before its batch goes to the store (USAGE_FLUSH_MS,
   * default 250). Reports and the events export lag by at most this much.
   */
  flushIntervalMs?: number;
  /** A batch this big goes at once, without waiting for the interval. */
  batchMax?: number;
}

export type UsageRecorder = ReturnType<typeof createUsageRecorder>;

/** Big enough to make a batch per interval at thousands of requests per second, small enough for one quick script call. */
const DEFAULT_BATCH_MAX = 500;

export function createUsageRecorder(opts: UsageRecorderOptions) {
  const pending = new Set<Promise<void>>();
  const stats = { logged: 0 };
  const storeOptions = { retentionMs: opts.retentionMs, maxEvents: opts.maxEvents };
  const flushIntervalMs = opts.flushIntervalMs ?? 250;
  const batchMax = opts.batchMax ?? DEFAULT_BATCH_MAX;
  /** Events waiting for the next batch. */
  let batch: UsageEvent[] = [];
  let timer: NodeJS.Timeout | undefined;

  /** The last resort: every event in full in the log, so the spend can be recovered from there. */
  function logBatch(events: UsageEvent[], err: string, why: string) {
    for (const event of events) {
      stats.logged++;
      opts.logger.error({ err, usageEvent: event }, why);
    }
  }

  // Replays are safe: the store counts each batch once and lists it once, and a replay completes
  // a first write that was counted but not listed. A batch is kept and replayed whole, never split
  // or merged, so it keeps the identity the store knows it by.
  const waiting = createReplayQueue<UsageEvent[]>({
    max: opts.bufferMax ?? 100_000,
    weight: (events) => events.length,
    write: (events) => opts.store.recordUsage(events, storeOptions),
    log: logBatch,
    what: 'usage event',
  });

  function write(events: UsageEvent[]) {
    const w = opts.store.recordUsage(events, storeOptions).catch((err: unknown) => {
      if (isOutageError(err)) waiting.keep(events, err);
      else logBatch(events, (err as Error).message, 'usage event not stored');
    });
    pending.add(w);
    void w.finally(() => pending.delete(w));
  }

  /** Sends the batch being gathered, if any. */
  function flushBatch() {
    clearTimeout(timer);
    timer = undefined;
    if (batch.length === 0) return;
    const events = batch;
    batch = [];
    // Once batches are waiting, new ones queue behind them: the store receives them in order.
    if (waiting.busy()) {
      waiting.keep(events, new Error('store unavailable'));
      // Self-healing: a flush is normally started by the store's recovery, but a batch kept just
      // after one must not wait for the next outage. While the store is down this fails fast.
      void waiting.flush();
    } else write(events);
  }

  function record(event: UsageEvent) {
    for (const listener of opts.listeners ?? []) {
      try {
        listener(event);
      } catch (err) {
        opts.logger.error({ err: (err as Error).message }, 'usage listener failed');
      }
    }
    batch.push(event);
    if (batch.length >= batchMax) flushBatch();
    else if (!timer) {
      timer = setTimeout(flushBatch, flushIntervalMs);
      // A pending batch must not keep the process alive: shutdown drains it.
      timer.unref();
    }
  }

  return {
    record,
    /** Writes the batches buffered while the store was down (called when it answers again). */
    flush: waiting.flush,
    /** Events waiting for the store, and how many went to the log instead. */
    stats: () => ({ buffered: waiting.size(), logged: stats.logged }),
    /**
     * Graceful shutdown: sends the batch being gathered, waits for writes in flight, tries once more
     * to store the buffer, and logs in full whatever is still buffered.
     */
    async drain() {
      flushBatch();
      while (pending.size > 0) await Promise.allSettled([...pending]);
      await waiting.drain();
    },
  };
}
