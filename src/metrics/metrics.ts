// Prometheus metrics: one dedicated registry per app, fed by usage events and, at scrape time, by budgets.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { isSnapshotOf, type PriceTable } from '../openai/prices.js';
import type { UsageEvent } from '../usage/event.js';
import type { DegradedModes } from '../resilience/modes.js';

/** One budget limit of one key, as the scrape shows it. */
export interface BudgetGauge {
  keyId: string;
  keyName: string;
  limit: 'tokensPerDay' | 'tokensPerMonth' | 'usdPerDay' | 'usdPerMonth';
  /** In the limit's unit: tokens, or USD. What is not used; requests in flight may hold some of it (reserved). */
  remaining: number;
  /** Held by requests in flight (their reservations, worst case), in the limit's unit: not used yet, not free either. */
  reserved: number;
  /** used / limit: 0 to 1, past 1 when a key overran its budget. */
  ratioUsed: number;
}

export interface MetricsOptions {
  prices: PriceTable;
  /** Every key's budgets, read at scrape time. A rejection or a timeout leaves the budget gauges empty. */
  budgets?: () => Promise<BudgetGauge[]>;
  /** How long a scrape waits for budgets(). Default 2000 ms (well within Prometheus' 10 s scrape timeout). */
  budgetsTimeoutMs?: number;
  /** At most this many distinct model label values outside the price table (defence in depth). Default 100. */
  maxUnpricedModelLabels?: number;
  /** Told why budget gauges were left empty. */
  onBudgetsError?: (err: Error) => void;
  /** The outage modes (store down), read at scrape time: tollgate_degraded and its companions. */
  degraded?: () => DegradedModes;
  /** Requests holding an upstream connection and requests waiting for one, read at scrape time. */
  upstreamConnections?: () => { held: number; waiting: number };
  /** A key as it is now (null: no such key), read when its retired series are dropped (keyChanged). */
  keyRecord?: (keyId: string) => Promise<{ name: string; revokedAt: string | null } | null>;
  /**
   * How long the series of a revoked key (or of a key's old name) stay after the change: the last
   * values are scraped, and requests in flight at the change end first. Default 15 minutes.
   */
  retiredSeriesGraceMs?: number;
}

export type Metrics = ReturnType<typeof createMetrics>;

/** A label value when there is nothing to name (a request refused before auth, an unmatched endpoint). */
const NONE = 'none';
/** The model label of every model that may not have a series of its own. */
const OTHER = 'other';
/** What a model id looks like; anything else (odd characters, very long) is never a label value. */
const MODEL_ID = /^[\w.:/@+-]{1,100}$/;
/**
 * The reasons a request counted as a 2xx ends otherwise (tollgate_requests_incomplete_total): the
 * gateway's own codes. Anything else (a failed Responses stream's code, which upstream chooses) is `other`.
 */
const INCOMPLETE_REASONS: ReadonlySet<string> = new Set([
  'upstream_stream_error',
  'upstream_stream_cut',
  'upstream_timeout',
  'response_failed',
  'client_closed_request',
  'cut_at_shutdown',
]);

/** Overhead is the gateway's own work: auth cache, Redis round trip, JSON; sub-millisecond to tens of ms. */
const OVERHEAD_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];
/**
 * A call to OpenAI: an embedding in 50 ms to a long reasoning completion of minutes, up to
 * UPSTREAM_TOTAL_TIMEOUT_MS's default (600 s), so the slowest calls still have a bucket below +Inf.
 */
const UPSTREAM_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600];
/**
 * First byte: a cache hit or a refusal in a millisecond, a first streamed token in 0.2-2 s, a whole
 * non-streamed reply later, up to UPSTREAM_HEADERS_TIMEOUT_MS's default (300 s).
 */
const TTFB_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300];

/**
 * The labels of a key: `key` is what ops read (its name if it has one, else its id) and `key_id` is
 * what tells keys apart (its id, never its secret): names are free text, and two keys may share one,
 * so every per-key series carries both. `none` for both when a request was refused before a key was known.
 */
export function keyLabels(keyId: string | null, keyName: string | null): { key: string; key_id: string } {
  return { key: keyName || keyId || NONE, key_id: keyId || NONE };
}

/** HTTP status as its code; every code is in 100-599, so the label has a bounded set of values. */
function statusLabel(status: number): string {
  return Number.isInteger(status) && status >= 100 && status <= 599 ? String(status) : OTHER;
}

export function createMetrics(opts: MetricsOptions) {
  const registry = new Registry();
  // Process and Node.js runtime metrics under their standard names (process_*, nodejs_*).
  collectDefaultMetrics({ register: registry });

  const { prices } = opts;
  const budgetsTimeoutMs = opts.budgetsTimeoutMs ?? 2000;
  const maxUnpriced = opts.maxUnpricedModelLabels ?? 100;
  const registers = [registry];

  const requests = new Counter({
    name: 'tollgate_requests_total',
    help: 'Requests to /v1, by key (name, and key_id), model, endpoint, HTTP status code and cache outcome (HIT, MISS, BYPASS or none).',
    labelNames: ['key', 'key_id', 'model', 'endpoint', 'status', 'cache'] as const,
    registers,
  });
  const tokens = new Counter({
    name: 'tollgate_tokens_total',
    help:
      'Tokens billed by upstream, as OpenAI counts them: prompt (cached ones included), cached_prompt (the part of prompt ' +
      'served from its prompt cache), completion (reasoning included) and reasoning (the part of completion).',
    labelNames: ['key', 'key_id', 'model', 'kind'] as const,
    registers,
  });
  const cost = new Counter({
    name: 'tollgate_cost_usd_total',
    help: 'What requests cost, in USD, at the gateway price table.',
    labelNames: ['key', 'key_id', 'model'] as const,
    registers,
  });
  const incomplete = new Counter({
    name: 'tollgate_requests_incomplete_total',
    help:
      'Requests recorded with a 2xx status (for a stream, sent before the trouble) that did not end normally, by reason: ' +
      'upstream_stream_error, upstream_stream_cut, upstream_timeout, response_failed, client_closed_request, cut_at_shutdown or other.',
    labelNames: ['key', 'key_id', 'endpoint', 'reason'] as const,
    registers,
  });
  const cacheHits = new Counter({
    name: 'tollgate_cache_hits_total',
    help: 'Requests answered from the response cache.',
    labelNames: ['key', 'key_id', 'model'] as const,
    registers,
  });
  const cacheSavedUsd = new Counter({
    name: 'tollgate_cache_saved_usd_total',
    help: 'What cache hits would have cost upstream, in USD.',
    labelNames: ['key', 'key_id', 'model'] as const,
    registers,
  });
  const cacheSavedTokens = new Counter({
    name: 'tollgate_cache_saved_tokens_total',
    help: 'Tokens cache hits did not spend again upstream.',
    labelNames: ['key', 'key_id', 'model'] as const,
    registers,
  });
  const overhead = new Histogram({
    name: 'tollgate_gateway_overhead_seconds',
    help: "The gateway's own share of a request: its latency minus the time spent waiting on upstream.",
    buckets: OVERHEAD_BUCKETS,
    registers,
  });
  const upstreamDuration = new Histogram({
    name: 'tollgate_upstream_duration_seconds',
    help: 'From sending a request upstream to its last byte, or to its failure (retries, backoff and timeouts included).',
    labelNames: ['endpoint'] as const,
    buckets: UPSTREAM_BUCKETS,
    registers,
  });
  const ttfb = new Histogram({
    name: 'tollgate_time_to_first_byte_seconds',
    help: "From a request's arrival to the first byte written to the client.",
    labelNames: ['endpoint', 'stream'] as const,
    buckets: TTFB_BUCKETS,
    registers,
  });
  const budgetFailures = new Counter({
    name: 'tollgate_budget_collect_failures_total',
    help: 'Scrapes whose budget gauges were left empty because reading budgets failed or timed out.',
    registers,
    // Read after this scrape's budgets() settles, so the scrape that failed already counts itself.
    async collect() {
      await budgetsOnce();
    },
  });

  const upstreamConnections = opts.upstreamConnections;
  if (upstreamConnections) {
    new Gauge({
      name: 'tollgate_upstream_connections',
      help: 'Requests holding one of the UPSTREAM_MAX_CONNECTIONS connections to upstream (busy), and requests waiting for one (waiting).',
      labelNames: ['state'] as const,
      registers,
      collect() {
        const { held, waiting } = upstreamConnections();
        this.set({ state: 'busy' }, held);
        this.set({ state: 'waiting' }, waiting);
      },
    });
  }

  // --- Degraded mode (store down), read at scrape time ---------------------------------------------
  // A gauge per feature, 1 while it runs in its outage mode, so an alert can fire on any of them;
  // the counters are kept by the features themselves and copied here at each scrape.
  const degraded = opts.degraded;
  if (degraded) {
    new Gauge({
      name: 'tollgate_degraded',
      help: 'Whether a feature runs in its outage mode because the store is down (1) or not (0): auth (grace), quota (fail mode), cache (bypass), usage (buffering).',
      labelNames: ['feature'] as const,
      registers,
      collect() {
        const d = degraded();
        for (const feature of ['auth', 'quota', 'cache', 'usage'] as const) this.set({ feature }, d.degraded ? 1 : 0);
      },
    });
    new Gauge({
      name: 'tollgate_degraded_buffered',
      help: 'Work kept in memory until the store is back: usage_events and settlements.',
      labelNames: ['kind'] as const,
      registers,
      collect() {
        const d = degraded();
        this.set({ kind: 'usage_events' }, d.buffered.usageEvents);
        this.set({ kind: 'settlements' }, d.buffered.settlements);
      },
    });
    const copied = (name: string, help: string, labelName: string, values: (d: DegradedModes) => Record<string, number>) =>
      new Counter({
        name,
        help,
        labelNames: [labelName],
        registers,
        collect() {
          this.reset();
          for (const [label, n] of Object.entries(values(degraded()))) if (n > 0) this.inc({ [labelName]: label }, n);
        },
      });
    copied('tollgate_degraded_requests_total', 'Requests served or refused by an outage mode: auth_grace, quota_admitted_open, quota_refused_unavailable.', 'outcome', (d) => ({
      auth_grace: d.counts.authGrace,
      quota_admitted_open: d.counts.quotaAdmittedOpen,
      quota_refused_unavailable: d.counts.quotaRefusedUnavailable,
    }));
    copied('tollgate_degraded_logged_total', 'Usage events and settlements the store could not take and that went to the error log in full instead.', 'kind', (d) => ({
      usage_events: d.counts.usageEventsLogged,
      settlements: d.counts.settlementsLogged,
    }));
  }

  // --- Budgets, read at scrape time -------------------------------------------------------------
  // One scrape collects the three budget gauges at once: they share one budgets() call. A call still
  // running from an earlier scrape (a stuck store) is joined rather than doubled.
  let running: Promise<BudgetGauge[]> | undefined;
  let scrape: Promise<BudgetGauge[] | undefined> | undefined;

  function budgetsOnce(): Promise<BudgetGauge[] | undefined> {
    const source = opts.budgets;
    if (!source) return Promise.resolve(undefined);
    scrape ??= (async () => {
      let timer: NodeJS.Timeout | undefined;
      try {
        if (!running) {
          const call = Promise.resolve().then(source);
          running = call;
          // Settles later than the scrape when it timed out: clear it then, and never leave it unhandled.
          call.then(
            () => (running = running === call ? undefined : running),
            () => (running = running === call ? undefined : running),
          );
        }
        const timeout = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`budgets() took more than ${budgetsTimeoutMs} ms`)), budgetsTimeoutMs);
          timer.unref();
        });
        return await Promise.race([running, timeout]);
      } catch (err) {
        budgetFailures.inc();
        opts.onBudgetsError?.(err instanceof Error ? err : new Error(String(err)));
        return undefined;
      } finally {
        clearTimeout(timer);
        scrape = undefined;
      }
    })();
    return scrape;
  }

  /** A gauge refilled from budgets() on every scrape: old series go, so a deleted key or limit disappears. */
  function budgetGauge(name: string, help: string, value: (b: BudgetGauge) => number | undefined) {
    return new Gauge({
      name,
      help,
      labelNames: ['key', 'key_id', 'limit'] as const,
      registers,
      async collect() {
        const list = await budgetsOnce();
        this.reset();
        for (const b of list ?? []) {
          const v = value(b);
          if (v !== undefined && Number.isFinite(v)) this.set({ ...keyLabels(b.keyId, b.keyName), limit: b.limit }, v);
        }
      },
    });
  }
  const isTokens = (b: BudgetGauge) => b.limit === 'tokensPerDay' || b.limit === 'tokensPerMonth';
  // One unit per metric (Prometheus naming): tokens and USD remaining are two metrics; the ratio has no unit.
  budgetGauge('tollgate_budget_remaining_tokens', 'Tokens left in a token budget (tokensPerDay, tokensPerMonth).', (b) =>
    isTokens(b) ? b.remaining : undefined,
  );
  budgetGauge('tollgate_budget_remaining_usd', 'USD left in a USD budget (usdPerDay, usdPerMonth).', (b) =>
    isTokens(b) ? undefined : b.remaining,
  );
  budgetGauge('tollgate_budget_used_ratio', 'Share of a budget used, 0 to 1 (past 1 when overrun).', (b) => b.ratioUsed);
  // A budget whose remaining covers nothing more once these are counted refuses requests (429, retry
  // in 1 s) though it looks unspent: they give back what they did not use when they end.
  budgetGauge('tollgate_budget_reserved_tokens', 'Tokens of a token budget held by requests in flight (worst case, until they settle).', (b) =>
    isTokens(b) ? b.reserved : undefined,
  );
  budgetGauge('tollgate_budget_reserved_usd', 'USD of a USD budget held by requests in flight (worst case, until they settle).', (b) =>
    isTokens(b) ? undefined : b.reserved,
  );

  // --- Labels ------------------------------------------------------------------------------------
  // BOUNDED LABELS. Every series costs Prometheus memory forever, so no label may take a value a
  // client chooses freely: no request ids, no raw user input. The model label is
  //   1. the model upstream answered with (event.modelAnswered), which upstream chose, not the client;
  //   2. else the requested model if it is an exact id of the price table (a fixed list), or, for a
  //      name priced as a dated snapshot of one (gpt-4o-2024-08-06, but also made-up gpt-4o-1234),
  //      that base id: the snapshot rule accepts endless names, so they never become labels here;
  //   3. else `other`.
  // So a client sending random model names adds nothing but `other`. As a second fence (an
  // OpenAI-compatible upstream may echo any requested name back), an answered model must look like a
  // model id, and at most `maxUnpricedModelLabels` distinct answered models that are not exact ids of
  // the price table (dated snapshots included) get a series of their own; later ones are `other`.
  // Keys are named by admins and identified by their ids (one series per key, never per secret),
  // endpoints and statuses come from code and HTTP: all bounded.
  const unpricedSeen = new Set<string>();

  function modelLabel(model: string | null, modelAnswered: string | null = null): string {
    // Answered by the model asked for or one of its snapshots (gpt-4o-mini as gpt-4o-mini-2024-07-18,
    // as OpenAI answers): labelled as the model asked for, which the usage report and the CLI group
    // by; the snapshot's own name made every series of real traffic differ from them.
    if (modelAnswered && model && isSnapshotOf(modelAnswered, model) && prices.pricedAs(model) !== undefined) modelAnswered = null;
    if (modelAnswered && MODEL_ID.test(modelAnswered)) {
      if (prices.pricedAs(modelAnswered) === modelAnswered) return modelAnswered; // an exact table id
      if (unpricedSeen.has(modelAnswered)) return modelAnswered;
      if (unpricedSeen.size < maxUnpriced) {
        unpricedSeen.add(modelAnswered);
        return modelAnswered;
      }
      return OTHER;
    }
    // The table id it is priced as: itself, or a snapshot's model (never the snapshot's own name).
    const priced = model && MODEL_ID.test(model) ? prices.pricedAs(model) : undefined;
    if (priced !== undefined) return priced;
    return model === null && !modelAnswered ? NONE : OTHER;
  }

  /** Counts one finished /v1 request. Never throws: metrics must not break accounting. */
  function observe(event: UsageEvent): void {
    const { key, key_id } = keyLabels(event.keyId, event.keyName);
    const model = modelLabel(event.model, event.modelAnswered);
    const endpoint = event.endpoint ?? NONE;
    requests.inc({ key, key_id, model, endpoint, status: statusLabel(event.status), cache: event.cache ?? NONE });
    // A stream whose 200 went out before upstream broke, cut or timed out, or its client left: a
    // success by its status alone, which would hide an upstream failing mid-stream.
    if (event.status < 400 && event.errorCode !== null) {
      incomplete.inc({ key, key_id, endpoint, reason: INCOMPLETE_REASONS.has(event.errorCode) ? event.errorCode : OTHER });
    }

    // Zero amounts create no series: a refused request does not add four empty token series.
    const add = (counter: Counter<'key' | 'key_id' | 'model'>, amount: number) => {
      if (amount > 0 && Number.isFinite(amount)) counter.inc({ key, key_id, model }, amount);
    };
    for (const [kind, n] of [
      ['prompt', event.promptTokens],
      ['cached_prompt', event.cachedPromptTokens],
      ['completion', event.completionTokens],
      ['reasoning', event.reasoningTokens],
    ] as const) {
      if (n > 0 && Number.isFinite(n)) tokens.inc({ key, key_id, model, kind }, n);
    }
    add(cost, event.costMicros / 1e6);
    if (event.cache === 'HIT') {
      cacheHits.inc({ key, key_id, model });
      add(cacheSavedUsd, event.savedMicros / 1e6);
      add(cacheSavedTokens, event.savedTokens);
    }

    if (Number.isFinite(event.overheadMs) && event.overheadMs >= 0) overhead.observe(event.overheadMs / 1000);
    if (event.upstreamMs !== null && Number.isFinite(event.upstreamMs)) upstreamDuration.observe({ endpoint }, event.upstreamMs / 1000);
    if (event.ttfbMs !== null && Number.isFinite(event.ttfbMs)) {
      ttfb.observe({ endpoint, stream: String(event.stream) }, event.ttfbMs / 1000);
    }
  }

  // --- Series of keys gone -------------------------------------------------------------------------
  // Every key used adds series to the per-key counters, which prom-client keeps for the life of
  // the process: without this, apps that create and revoke keys (one per job, say) grew the heap
  // ~1.3 KB and each scrape ~600 bytes per key ever used (a soak probe: 33,000 series for 6,700
  // keys). A revoked key's series, and a renamed key's series under its old name, are dropped
  // once the grace has let the last values be scraped (Prometheus reads a counter that stops as
  // ended; rate() and increase() over it are unaffected). The grace must outlast any request in
  // flight at the change: one that ends after the sweep writes its series again, for good.
  const perKeyCounters: Counter<string>[] = [requests, incomplete, tokens, cost, cacheHits, cacheSavedUsd, cacheSavedTokens];
  const graceMs = opts.retiredSeriesGraceMs ?? 15 * 60_000;
  /** Keys changed, and when their sweep is due: one sweep, one pass over the series, for all that are due. */
  const retiring = new Map<string, number>();
  let sweepTimer: NodeJS.Timeout | undefined;

  function scheduleSweep(): void {
    if (sweepTimer || retiring.size === 0) return;
    let due = Infinity;
    for (const at of retiring.values()) due = Math.min(due, at);
    sweepTimer = setTimeout(() => void sweep(), Math.max(0, due - Date.now()));
    sweepTimer.unref();
  }

  /** Calls `visit` with the labels of every per-key series, and the counter that holds it. */
  async function eachSeries(visit: (labels: Record<string, string>, counter: Counter<string>) => void): Promise<void> {
    for (const counter of perKeyCounters) {
      for (const { labels } of (await counter.get()).values) visit(labels as Record<string, string>, counter);
    }
  }

  async function sweep(): Promise<void> {
    const now = Date.now();
    // '*' (the change feed may have missed messages): every key with series is looked at.
    const everyKey = retiring.get('*');
    if (everyKey !== undefined && everyKey <= now) {
      retiring.delete('*');
      await eachSeries(({ key_id: id }) => {
        if (id && id !== NONE && !retiring.has(id)) retiring.set(id, now);
      });
    }
    /** Key id -> the key label its series keep (null: none, it is revoked or gone). */
    const keep = new Map<string, string | null>();
    for (const [keyId, due] of retiring) {
      if (due > now) continue;
      retiring.delete(keyId);
      // Read now, not when the change was heard: a key renamed and renamed back keeps its series.
      // The store may be down: that key's series stay until its next change.
      const record = await opts.keyRecord!(keyId).catch(() => undefined);
      if (record !== undefined) keep.set(keyId, record && record.revokedAt === null ? keyLabels(keyId, record.name).key : null);
    }
    if (keep.size > 0) {
      await eachSeries((labels, counter) => {
        if (keep.has(labels.key_id!) && labels.key !== keep.get(labels.key_id!)) counter.remove(labels);
      });
    }
    sweepTimer = undefined;
    scheduleSweep();
  }

  /**
   * A key changed (Store.onKeyChange: revoked, renamed, rotated, its limits...): its retired series
   * go after the grace. '*' (the change feed may have missed messages, after a reconnect) stands
   * for every key: the sweep then looks at every key that has series.
   */
  function keyChanged(keyId: string): void {
    if (!opts.keyRecord) return;
    retiring.set(keyId, Date.now() + graceMs);
    scheduleSweep();
  }

  return { registry, observe, modelLabel, keyChanged };
}
