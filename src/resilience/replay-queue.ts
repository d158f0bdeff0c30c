// Writes the store could not take while it was down (usage events, settlements): kept in memory,
// bounded, and written in order once it answers again. Past the bound, and at shutdown, each item
// goes to the log in full instead, so nothing is ever silently lost.
import { isOutageError } from './store-health.js';

export interface ReplayQueueOptions<T> {
  /** Weight kept in memory at most; past it each further item is logged instead. */
  max: number;
  /** What one item counts against `max` (a batch of usage events: its length); 1 by default. */
  weight?: (item: T) => number;
  /** Writes one item to the store. Must be safe to repeat (a write that timed out may have landed). */
  write: (item: T) => Promise<unknown>;
  /** The last resort: the item in full in the log, so it can be replayed by hand. */
  log: (item: T, err: string, why: string) => void;
  /** What an item is, for the log messages (`usage event`, `settlement`). */
  what: string;
}

export type ReplayQueue<T> = ReturnType<typeof createReplayQueue<T>>;

export function createReplayQueue<T>(opts: ReplayQueueOptions<T>) {
  /** Oldest first. */
  const items: T[] = [];
  const weight = opts.weight ?? (() => 1);
  let held = 0;
  let flushing: Promise<void> | undefined;

  /**
   * Writes queued items one at a time, oldest first, until none is left or the store fails again
   * (the rest wait for the next recovery). One flush at a time.
   */
  function flush(): Promise<void> {
    if (flushing) return flushing;
    // The body starts a tick later, so `flushing` is always set before its `finally` clears it
    // (an empty queue would otherwise leave a settled promise behind and block every later flush).
    const run = (async () => {
      await Promise.resolve();
      try {
        while (items.length > 0) {
          const next = items[0]!;
          try {
            await opts.write(next);
          } catch (err) {
            if (isOutageError(err)) return;
            opts.log(next, (err as Error).message, `${opts.what} not stored`);
          }
          items.shift();
          held -= weight(next);
        }
      } finally {
        flushing = undefined;
      }
    })();
    flushing = run;
    return run;
  }

  return {
    /** Keeps an item the store cannot take now; false when the queue is full and it was logged. */
    keep(item: T, err: unknown): boolean {
      // Checked before adding: a heavy item (a batch) may take the queue past `max` by its own weight.
      if (held >= opts.max) {
        opts.log(item, (err as Error).message, `${opts.what} not stored: store down and its queue is full`);
        return false;
      }
      items.push(item);
      held += weight(item);
      return true;
    },
    flush,
    /** Items are waiting, or being written: new ones must queue behind them to keep the order. */
    busy: () => items.length > 0 || flushing !== undefined,
    /** The weight waiting (items, unless weighed otherwise). */
    size: () => held,
    /** Shutdown: one more try to write everything, then whatever is left goes to the log. */
    async drain() {
      await flush();
      held = 0;
      for (const item of items.splice(0)) opts.log(item, 'store unavailable at shutdown', `${opts.what} not stored at shutdown`);
    },
  };
}
