// A complete usage event for tests that feed events straight to a store, a report or the metrics.
import { randomUUID } from 'node:crypto';
import type { UsageEvent } from '../../src/usage/event.js';

/** A 200 chat completion of key_a with no tokens; `overrides` sets what a test cares about. */
export function usageEvent(overrides: Partial<UsageEvent> = {}): UsageEvent {
  return {
    ts: Date.now(),
    eventId: randomUUID(),
    requestId: randomUUID(),
    keyId: 'key_a',
    keyName: 'app-a',
    endpoint: 'chat.completions',
    model: 'gpt-4o-mini',
    modelAnswered: null,
    status: 200,
    stream: false,
    cache: null,
    promptTokens: 0,
    cachedPromptTokens: 0,
    completionTokens: 0,
    reasoningTokens: 0,
    totalTokens: 0,
    costMicros: 0,
    savedTokens: 0,
    savedMicros: 0,
    estimated: false,
    latencyMs: 1,
    ttfbMs: null,
    upstreamMs: null,
    overheadMs: 0,
    errorCode: null,
    ...overrides,
  };
}
