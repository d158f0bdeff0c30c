// Budget alerts: when a key's spend crosses 50 %, 80 %, 100 % of a day or month budget (or a budget refuses one of its
// requests: 100 %, "exhausted"), one webhook event per threshold per period, across every instance (the store marks
// each threshold once), delivered in the background.
import { randomUUID } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import type { KeyRecord } from '../keys.js';
import type { Quota } from '../quota/quota.js';
import { periodsAt } from '../quota/periods.js';
import type { Store } from '../store/store.js';
import { createWebhookSender } from './webhook.js';

/** The limits that are budgets over a calendar period, in the order their events are sent. */
export const BUDGET_LIMITS = ['tokensPerDay', 'usdPerDay', 'tokensPerMonth', 'usdPerMonth'] as const;
export type BudgetLimit = (typeof BUDGET_LIMITS)[number];

/** What the webhook receives (POST, application/json). USD amounts are in dollars, token amounts in tokens. */
export interface BudgetAlertEvent {
  type: 'budget.threshold_crossed';
  /** Unique per event; also sent as the `x-tollgate-event-id` header, so a receiver can drop a retried duplicate. */
  id: string;
  /** When the crossing was noticed (ISO 8601). */
  time: string;
  key: { id: string; name: string };
  limit: BudgetLimit;
  /** The budget's period: `YYYY-MM-DD` or `YYYY-MM` in the quota time zone, and when it ends. */
  period: { id: string; resetsAt: string };
  /** The fraction crossed, e.g. 0.8. 1 means the budget is exhausted (see `cause`). */
  threshold: number;
  /**
   * What raised it: 'spend', the settled spend reached `threshold` of the budget; 'refusal' (threshold 1 only), the
   * budget refused a request of the key while its settled spend was still below the limit, and what is left of it
   * could not cover that request even with nothing else in flight. Each is sent at most once per period: a
   * refusal first, then the spend reaching the limit, are two events.
   */
  cause: 'spend' | 'refusal';
  /** Settled spend of the period when the crossing was noticed (requests in flight not counted). */
  used: number;
  limitValue: number;
  /** used / limitValue (rounded to 6 decimals). */
  ratio: number;
}

export interface AlertsOptions {
  /** Where events are POSTed. Unset: alerts are off and check() does nothing. */
  webhookUrl?: string;
  store: Store;
  quota: Pick<Quota, 'view'>;
  clock: () => number;
  timeZone: string;
  logger: FastifyBaseLogger;
  /** Fractions of a budget that raise an event; default [0.5, 0.8, 1]. */
  thresholds?: number[];
  /** Delivery attempts per event, the first included; default 6. */
  maxAttempts?: number;
  /** First retry delay, doubled on each retry, with jitter; default 500 ms. */
  baseDelayMs?: number;
  /** Events waiting for delivery; when full, the oldest is dropped (logged). Default 1000. */
  maxQueue?: number;
  /** Bound on one delivery attempt; default 5000 ms. */
  attemptTimeoutMs?: number;
  /** At most one usage read per key per this interval (real time); default 1000 ms. */
  minCheckIntervalMs?: number;
}

export interface Alerts {
  /**
   * Looks at a key's budgets after one of its requests settled. Never throws, never waits: the work is done in
   * the background, at most once per key per `minCheckIntervalMs` (checks in between are coalesced into one
   * at the end of the interval, so a crossing may be noticed up to that much later).
   */
  check(key: KeyRecord): void;
  /**
   * A request of the key that may use `wanted` (tokens, or dollars) was refused by this budget: sends its threshold-1
   * ("exhausted") event with cause 'refusal', once per period, if the settled spend plus `wanted` is past the limit
   * (a refusal only because of other requests in flight says nothing: they may settle for less). Never throws, never
   * waits; called for every such refusal, so once this instance knows the period's exhausted event is sent, it costs
   * no store call.
   */
  refused(key: KeyRecord, limit: BudgetLimit, wanted: number): void;
  /**
   * Runs the coalesced checks now, and waits for them and for every queued event to be delivered or given up on;
   * with `timeoutMs`, at most that long (a slow or silent webhook may take minutes: 6 attempts, 5 s each, backoff):
   * what is not delivered by then is logged in full by close().
   */
  drain(timeoutMs?: number): Promise<void>;
  /**
   * Stops timers and deliveries at once (call drain() first to deliver what is queued). Every event not delivered
   * (in flight, queued, or marked by a check still running) is logged at error level, one line each, in full.
   */
  close(): void;
}

const DAY_MS = 86_400_000;
const MAX_RETRY_DELAY_MS = 60_000;
/** Marks this instance already knows are set, kept so a key past a threshold does not ask the store again on every check. */
const KNOWN_MARKS_SWEEP_AT = 10_000;
const CHECK_FAILURE_LOG_INTERVAL_MS = 60_000;

/** The threshold that means "exhausted", which a refusal also raises. */
const EXHAUSTED = 1;

const isBudget = (limits: KeyRecord['limits']) => BUDGET_LIMITS.some((l) => limits[l] !== undefined && limits[l] > 0);

/** Threshold list, checked once at start-up: finite, positive, ascending, without duplicates. */
function normalizeThresholds(thresholds: number[]): number[] {
  for (const t of thresholds) {
    if (!Number.isFinite(t) || t <= 0) throw new RangeError(`alert thresholds must be positive numbers (got ${t})`);
  }
  return [...new Set(thresholds)].sort((a, b) => a - b);
}

interface Refusal {
  periodId: string;
  wanted: number;
}

interface KeyState {
  /** The latest record seen for the key (its limits may have changed since the last check). */
  key: KeyRecord;
  /** A check came in while one ran or during the cooldown: run once more when the cooldown ends. */
  pending: boolean;
  /** The evaluation in progress, if any. */
  running?: Promise<void>;
  /** End of the cooldown after the last evaluation. */
  cooldown?: NodeJS.Timeout;
  /** Budgets that refused a request since the last evaluation: the period (id) and the largest request refused. */
  refusals: Map<BudgetLimit, Refusal>;
}

export function createAlerts(opts: AlertsOptions): Alerts {
  const { webhookUrl, store, quota, clock, timeZone, logger } = opts;
  if (!webhookUrl) {
    return { check() {}, refused() {}, async drain() {}, close() {} };
  }
  const url = new URL(webhookUrl);
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError('the alert webhook URL must be http(s)');

  const thresholds = normalizeThresholds(opts.thresholds ?? [0.5, 0.8, 1]);
  const minInterval = opts.minCheckIntervalMs ?? 1000;
  const sender = createWebhookSender<BudgetAlertEvent>({
    url: webhookUrl,
    logger,
    maxAttempts: Math.max(1, opts.maxAttempts ?? 6),
    baseDelayMs: opts.baseDelayMs ?? 500,
    maxQueue: Math.max(1, opts.maxQueue ?? 1000),
    attemptTimeoutMs: opts.attemptTimeoutMs ?? 5000,
    maxDelayMs: MAX_RETRY_DELAY_MS,
  });

  const states = new Map<string, KeyState>();
  /** Mark name -> when its period ends (clock ms). */
  const knownMarks = new Map<string, number>();
  /**
   * `keyId limit` -> when the period whose exhausted mark is known here ends: lets a flood of refusals skip even the
   * period computation. Swept with knownMarks.
   */
  const knownExhausted = new Map<string, number>();
  /** Exhausted marks a refusal has queued or is evaluating: further refusals of the same budget add nothing. */
  const claimed = new Set<string>();
  const markName = (keyId: string, limit: BudgetLimit, periodId: string, threshold: number) => `alert:${keyId}:${limit}:${periodId}:${threshold}`;
  /** The refusal's exhausted event has a mark of its own: the spend reaching the limit later is still reported. */
  const refusalMarkName = (keyId: string, limit: BudgetLimit, periodId: string) => `${markName(keyId, limit, periodId, EXHAUSTED)}:refusal`;
  let closed = false;
  let lastFailureLogAt = -Infinity;
  let failuresSinceLog = 0;

  function sweep(map: Map<string, number>) {
    if (map.size < KNOWN_MARKS_SWEEP_AT) return;
    const now = clock();
    for (const [n, end] of map) if (end <= now) map.delete(n);
    if (map.size >= KNOWN_MARKS_SWEEP_AT) map.clear(); // only costs a few store reads again
  }

  function remember(name: string, until: number, exhausted?: string) {
    sweep(knownMarks);
    knownMarks.set(name, until);
    if (exhausted !== undefined) {
      sweep(knownExhausted);
      knownExhausted.set(exhausted, until);
    }
  }

  function logFailure(keyId: string, err: unknown) {
    // Redis being down would otherwise log once per key per second; the quota path reports the outage already.
    failuresSinceLog++;
    const now = Date.now();
    if (now - lastFailureLogAt < CHECK_FAILURE_LOG_INTERVAL_MS) return;
    logger.warn({ err: err instanceof Error ? err.message : String(err), keyId, failures: failuresSinceLog }, 'budget alert check failed');
    lastFailureLogAt = now;
    failuresSinceLog = 0;
  }

  async function evaluate(key: KeyRecord, refusals: ReadonlyMap<BudgetLimit, Refusal>) {
    const before = periodsAt(clock(), timeZone);
    const view = await quota.view(key);
    const now = clock();
    const p = periodsAt(now, timeZone);
    // A read straddling midnight (or a month's end) may hold the old period's counters: skip that period's
    // budgets this time rather than mark the new period with the old one's spend. The next check sees it.
    const stable = { day: before.day === p.day, month: before.month === p.month };

    const crossings: {
      limit: BudgetLimit;
      periodId: string;
      endsAt: number;
      threshold: number;
      name: string;
      used: number;
      limitValue: number;
      cause: BudgetAlertEvent['cause'];
    }[] = [];
    for (const limit of BUDGET_LIMITS) {
      const limitValue = key.limits[limit];
      if (limitValue === undefined || !(limitValue > 0)) continue;
      const daily = limit.endsWith('PerDay');
      if (!(daily ? stable.day : stable.month)) continue;
      const used = view[limit].used;
      if (!Number.isFinite(used)) continue;
      const periodId = daily ? p.day : p.month;
      const endsAt = daily ? p.dayEndsAt : p.monthEndsAt;
      for (const threshold of thresholds) {
        // Tolerance for binary fractions: $2.40 of a $3 budget is 80 %, though 2.4 / 3 < 0.8 in floating point.
        if (used / limitValue + 1e-9 < threshold) break;
        const name = markName(key.id, limit, periodId, threshold);
        if (knownMarks.has(name)) continue;
        crossings.push({ limit, periodId, endsAt, threshold, name, used, limitValue, cause: 'spend' });
      }
      // A refusal means exhausted, not half spent: it raises threshold 1 only, while the spend is short of it, and
      // only if that request could not fit even with nothing else in flight. One in an earlier period (the check
      // ran after midnight) says nothing of this one.
      const refusal = refusals.get(limit);
      const spentAll = used / limitValue + 1e-9 >= EXHAUSTED;
      if (refusal?.periodId === periodId && !spentAll && used + refusal.wanted > limitValue * (1 + 1e-9)) {
        const name = refusalMarkName(key.id, limit, periodId);
        if (!knownMarks.has(name)) crossings.push({ limit, periodId, endsAt, threshold: EXHAUSTED, name, used, limitValue, cause: 'refusal' });
      }
    }
    if (crossings.length === 0) return;

    // One store call per crossing not yet known here, in parallel; the events then go out in ascending order.
    const marked = await Promise.allSettled(crossings.map((c) => store.markOnce(c.name, Math.max(1, Math.ceil(c.endsAt - now + DAY_MS)))));
    marked.forEach((result, i) => {
      const c = crossings[i]!;
      if (result.status === 'rejected') return logFailure(key.id, result.reason); // not remembered: tried again next check
      remember(c.name, c.endsAt, c.threshold === EXHAUSTED ? `${key.id} ${c.limit}` : undefined);
      // Another check (or instance) got there first. Marked by this one: sent, or logged in full if closed meanwhile
      // (the mark is set: no instance will send it again).
      if (!result.value) return;
      sender.send({
        type: 'budget.threshold_crossed',
        id: randomUUID(),
        time: new Date(now).toISOString(),
        key: { id: key.id, name: key.name },
        limit: c.limit,
        period: { id: c.periodId, resetsAt: new Date(c.endsAt).toISOString() },
        threshold: c.threshold,
        cause: c.cause,
        used: c.used,
        limitValue: c.limitValue,
        ratio: Math.round((c.used / c.limitValue) * 1e6) / 1e6,
      });
    });
  }

  function run(state: KeyState) {
    state.pending = false;
    const id = state.key.id;
    const refusals = state.refusals;
    state.refusals = new Map();
    const running = evaluate(state.key, refusals)
      .catch((err: unknown) => logFailure(id, err))
      .finally(() => {
        // Marked (and known), or failed: a later refusal may try again (at most once per interval, as checks do).
        for (const [limit, { periodId }] of refusals) claimed.delete(refusalMarkName(id, limit, periodId));
        state.running = undefined;
        if (closed) return;
        state.cooldown = setTimeout(() => {
          state.cooldown = undefined;
          if (closed) return;
          if (state.pending) run(state);
          else states.delete(id);
        }, minInterval);
        state.cooldown.unref();
      });
    state.running = running;
  }

  /** Runs an evaluation of the key now, or once its cooldown ends (with this record, the latest). */
  function schedule(key: KeyRecord, refusal?: Refusal & { limit: BudgetLimit }) {
    let state = states.get(key.id);
    const fresh = state === undefined;
    if (!state) {
      state = { key, pending: false, refusals: new Map() };
      states.set(key.id, state);
    }
    if (refusal) {
      // The largest refused request of the period is the one most surely past what is left.
      const seen = state.refusals.get(refusal.limit);
      if (seen?.periodId !== refusal.periodId || seen.wanted < refusal.wanted) {
        state.refusals.set(refusal.limit, { periodId: refusal.periodId, wanted: refusal.wanted });
      }
    }
    if (fresh) return run(state);
    state.key = key;
    state.pending = true;
  }

  const exhaustedAlerts = thresholds.includes(EXHAUSTED);

  return {
    check(key) {
      try {
        if (closed || !isBudget(key.limits)) return;
        schedule(key);
      } catch (err) {
        logFailure(key?.id ?? 'unknown', err);
      }
    },

    refused(key, limit, wanted) {
      try {
        if (closed || !exhaustedAlerts || !(wanted > 0)) return;
        const limitValue = key.limits[limit];
        if (limitValue === undefined || !(limitValue > 0)) return;
        // The hot path under a flood of refusals: one map read, no period computation, no store call.
        const now = clock();
        const knownUntil = knownExhausted.get(`${key.id} ${limit}`);
        if (knownUntil !== undefined && now < knownUntil) return;
        const p = periodsAt(now, timeZone);
        const periodId = limit.endsWith('PerDay') ? p.day : p.month;
        const name = refusalMarkName(key.id, limit, periodId);
        if (knownMarks.has(name) || knownMarks.has(markName(key.id, limit, periodId, EXHAUSTED)) || claimed.has(name)) return;
        claimed.add(name);
        schedule(key, { limit, periodId, wanted });
      } catch (err) {
        logFailure(key?.id ?? 'unknown', err);
      }
    },

    async drain(timeoutMs) {
      const work = drainAll();
      if (timeoutMs === undefined) return work;
      work.catch(() => undefined);
      let timer: NodeJS.Timeout | undefined;
      const bound = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), Math.max(0, timeoutMs))));
      try {
        if ((await Promise.race([work, bound])) === 'timeout' && !closed) {
          logger.warn({ timeoutMs, undelivered: sender.size }, 'alerts not delivered in time; the undelivered ones are logged');
        }
      } finally {
        clearTimeout(timer);
      }
    },

    close() {
      if (closed) return;
      closed = true;
      for (const state of states.values()) if (state.cooldown) clearTimeout(state.cooldown);
      states.clear();
      knownMarks.clear();
      knownExhausted.clear();
      claimed.clear();
      sender.close();
    },
  };

  /** Runs the coalesced checks now and waits for them and for the deliveries, until none is left (or close()). */
  async function drainAll(): Promise<void> {
    for (;;) {
      if (closed) return;
      // Coalesced checks would wait out their cooldown: run them now, the process is going away.
      for (const state of states.values()) {
        if (state.pending && !state.running && state.cooldown) {
          clearTimeout(state.cooldown);
          state.cooldown = undefined;
          run(state);
        }
      }
      const running = [...states.values()].flatMap((s) => (s.running ? [s.running] : []));
      if (running.length > 0) {
        await Promise.all(running);
        continue;
      }
      if (sender.size > 0) {
        await sender.drain();
        continue;
      }
      return;
    }
  }
}
