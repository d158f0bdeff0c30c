// The usage recorder sends events to the store in batches (one per flush interval, or when a batch
// is full), not one call per request; what the store counts stays exact, outages included.
import pino from 'pino';
import { describe, expect, it, vi } from 'vitest';
import { createUsageRecorder } from '../../src/usage/recorder.js';
import { StoreUnavailableError } from '../../src/resilience/store-health.js';
import type { Store } from '../../src/store/store.js';
import type { UsageEvent } from '../../src/usage/event.js';
import { hourId } from '../../src/store/usage-math.js';
import { redisStore } from '../helpers/stores.js';
import { usageEvent } from '../helpers/usage-events.js';

const KEEP = { retentionMs: 86_400_000, maxEvents: 100_000 };
const silent = pino({ level: 'silent' });

function event(costMicros: number): UsageEvent {
  return usageEvent({
    keyId: 'key_batch',
    keyName: 'batch',
    modelAnswered: 'gpt-4o-mini',
    cache: 'MISS',
    promptTokens: 3,
    completionTokens: 2,
    totalTokens: 5,
    costMicros,
    ttfbMs: 1,
    upstreamMs: 1,
  });
}

/** The real Redis store, with its recordUsage calls counted and, while `down`, refused as in an outage. */
function observed(store: Store) {
  const calls: number[] = [];
  const state = { down: false };
  const wrapped: Store = Object.create(store) as Store;
  wrapped.recordUsage = (events, options) => {
    calls.push(events.length);
    if (state.down) return Promise.reject(new StoreUnavailableError());
    return store.recordUsage(events, options);
  };
  return { store: wrapped, calls, state };
}

async function totals(store: Store) {
  const hour = hourId(Date.now());
  const rows = await store.usageRows(hour, hour);
  return { requests: rows.reduce((n, r) => n + r.requests, 0), costMicros: rows.reduce((n, r) => n + r.costMicros, 0) };
}

describe('usage batching', () => {
  it('sends the events of a flush interval in one call, and a full batch at once', async () => {
    const real = await redisStore();
    const { store, calls } = observed(real);
    const recorder = createUsageRecorder({ store, logger: silent, ...KEEP, flushIntervalMs: 100, batchMax: 50 });
    for (let i = 1; i <= 120; i++) recorder.record(event(i));
    // Two full batches went at once; the last 20 wait for the interval.
    expect(calls).toEqual([50, 50]);
    await vi.waitFor(() => expect(calls).toEqual([50, 50, 20]), { timeout: 2000, interval: 10 });
    await recorder.drain();
    expect(await totals(real)).toEqual({ requests: 120, costMicros: (120 * 121) / 2 });
    expect(await real.usageEvents({ sinceMs: 0, limit: 1000 })).toHaveLength(120);
  });

  it('keeps batches while the store is down and writes each once when it is back', async () => {
    const real = await redisStore();
    const { store, calls, state } = observed(real);
    const recorder = createUsageRecorder({ store, logger: silent, ...KEEP, flushIntervalMs: 20, batchMax: 10 });
    state.down = true;
    for (let i = 0; i < 25; i++) recorder.record(event(1));
    await vi.waitFor(() => expect(recorder.stats().buffered).toBe(25), { timeout: 2000, interval: 10 });
    state.down = false;
    await recorder.flush();
    expect(recorder.stats()).toEqual({ buffered: 0, logged: 0 });
    await recorder.drain();
    expect(await totals(real)).toEqual({ requests: 25, costMicros: 25 });
    expect(calls.length).toBeGreaterThanOrEqual(3);
  });

  it('sends the batch being gathered at shutdown', async () => {
    const real = await redisStore();
    const { store, calls } = observed(real);
    const recorder = createUsageRecorder({ store, logger: silent, ...KEEP, flushIntervalMs: 60_000 });
    for (let i = 0; i < 3; i++) recorder.record(event(2));
    expect(calls).toEqual([]);
    await recorder.drain();
    expect(calls).toEqual([3]);
    expect(await totals(real)).toEqual({ requests: 3, costMicros: 6 });
  });
});
