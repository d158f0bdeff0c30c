// Quotas: reserve a request's worst case against every limit of its key before it goes upstream
// (one atomic store call), then settle to what it really used. Nothing is charged after the fact.
import { randomUUID } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import type { KeyRecord, Limits } from '../keys.js';
import type { Endpoint } from '../openai/endpoints.js';
import type { Usage } from '../openai/usage.js';
import { costMicros, isSnapshotOf, microsToUsd, usdToMicros, type Price, type PriceTable } from '../openai/prices.js';
import { estimatePromptTokens } from '../openai/tokens.js';
import { periodsAt } from './periods.js';
import type { AdmissionRequest, AdmissionResult, CacheLookup, JoinedLookup, Periods, Store, StoreLimits } from '../store/store.js';
import { backgroundNotMetered, conversationNotMetered, hostedToolNotPriced, priorityTierNotPriced, quotaExceeded, requestTooLarge, unpricedModel } from './errors.js';
import { createReplayQueue } from '../resilience/replay-queue.js';
import { createCostCarry } from './cost-carry.js';
import { rateLimitHeaders } from './headers.js';
import { GatewayError } from '../errors.js';
import { isOutageError, StoreUnavailableError } from '../resilience/store-health.js';
import { createLocalLimiter } from '../resilience/local-limiter.js';
import { ThrottledWarning } from '../resilience/throttled-log.js';

/** How quota.admit() admits a request. */
export interface AdmitMode {
  /** A cache hit: count-only (rpm and maxConcurrent), nothing reserved. */
  free?: boolean;
  /** Counted against rpm already, by the free admission of a cache entry that then could not answer it. */
  rpmCounted?: boolean;
  /**
   * Input tokens the request sends besides its own body: the stored conversation it continues
   * (previous_response_id), which OpenAI bills again as input. Added to its prompt estimate.
   */
  carriedTokens?: number;
  /**
   * When the request arrived (epoch ms; default: now). Its day and month budgets are that instant's,
   * as its usage event's time is: a request that arrives before midnight and is admitted after it
   * (a slow upload, a single-flight wait) counts on one day in both the budget and the report.
   */
  arrivedAt?: number;
}

export interface QuotaOptions {
  store: Store;
  prices: PriceTable;
  clock: () => number;
  timeZone: string;
  /** Output tokens reserved when a request does not say (max_tokens / max_completion_tokens). */
  defaultMaxOutputTokens: number;
  leaseTtlMs: number;
  /** What a model missing from the price table costs, for keys without a USD budget. */
  unpricedModelPrice: Price;
  logger: FastifyBaseLogger;
  /**
   * What admission does when the store cannot answer (docs/architecture.md, "When Redis is down").
   * 'closed' (default): 503 quota_unavailable, since budgets cannot be checked. 'open': admit under
   * the local per-instance caps of `failOpen`, budgets unchecked, and say so in the log and metrics.
   */
  failMode?: 'closed' | 'open';
  failOpen?: { rpm: number; maxInFlight: number };
  /** Retry-After (seconds) of the 503 in closed mode: about when the health probe looks again. */
  unavailableRetryAfterSeconds?: number;
  /** Settlements kept in memory while the store is down; past this they are logged in full instead. */
  settleQueueMax?: number;
}

/** What a finished request really used, as the pipeline knows it. */
export interface Consumption {
  usage?: Usage;
  /** The counts are the gateway's own estimate (a stream cut short before upstream's usage). */
  estimated: boolean;
  /**
   * The model that answered, as upstream named it. OpenAI bills that one: an alias may answer with
   * a snapshot priced apart (gpt-4o with gpt-4o-2024-05-13). Priced as itself when it is the model
   * asked for or one of its snapshots and the price table knows it; otherwise as the model asked for.
   */
  model?: string;
}

export interface Settled {
  totalTokens: number;
  costMicros: number;
  estimated: boolean;
}

export type Quota = ReturnType<typeof createQuota>;
export type Admission = Awaited<ReturnType<Quota['admit']>>;

// Counters of a finished period are kept this long after it ends, for reports.
const DAY_RETENTION_MS = 40 * 86_400_000;
const MONTH_RETENTION_MS = 400 * 86_400_000;
const SETTLE_ATTEMPTS = 4;
const ZERO_PRICE: Price = { input: 0, cachedInput: 0, output: 0 };
/** Cache names whose prompt-token estimate is kept (oldest out first): ~1.5 MB at most. */
const HIT_ESTIMATES_MAX = 10_000;

export function storeLimits(limits: Limits): StoreLimits {
  return {
    rpm: limits.rpm ?? 0,
    tpm: limits.tpm ?? 0,
    tokensPerDay: limits.tokensPerDay ?? 0,
    tokensPerMonth: limits.tokensPerMonth ?? 0,
    usdMicrosPerDay: limits.usdPerDay === undefined ? 0 : usdToMicros(limits.usdPerDay),
    usdMicrosPerMonth: limits.usdPerMonth === undefined ? 0 : usdToMicros(limits.usdPerMonth),
    maxConcurrent: limits.maxConcurrent ?? 0,
  };
}

/**
 * The most tokens one request may reserve (its prompt plus the most it may generate); a request
 * that may use more is refused with a 400 before anything is priced or sent to the store. It is far
 * beyond any real request (128 choices of 128K tokens are 16.8M; a full batch of 2,048 legacy prompts
 * x 128 choices x 4K tokens is 1.07 billion), and it keeps the reservation's arithmetic exact: 1e10
 * tokens at the dearest price the configuration accepts ($100,000 per 1M, UNPRICED_*) cost 1e15
 * micro-dollars, below 2^53, as are the sums in Lua (doubles) and the reservation record.
 */
export const MAX_RESERVED_TOKENS = 10_000_000_000;

/**
 * The most output a request can produce: max_completion_tokens or max_tokens (absent or null: the
 * endpoint's documented default, else the gateway's default cap), times n (or best_of), times the
 * prompts of a batched legacy completion; for the Responses API max_output_tokens (else the cap).
 * Embeddings and moderations generate nothing. Unbounded here (the schemas bound each factor):
 * reservation() refuses a request past MAX_RESERVED_TOKENS before using the result.
 */
export function maxOutputTokens(endpoint: Endpoint, body: Record<string, unknown>, defaultCap: number): number {
  if (endpoint.name === 'embeddings' || endpoint.name === 'moderations') return 0;
  const cap = endpoint.defaultMaxOutputTokens ?? defaultCap;
  if (endpoint.name === 'responses') return typeof body.max_output_tokens === 'number' ? body.max_output_tokens : cap;
  // openai-python 0.x sends `max_tokens: null` for an unset argument: null is absent.
  const stated = statedOutputParam(endpoint, body) === 'max_completion_tokens' ? body.max_completion_tokens : body.max_tokens;
  const perChoice = typeof stated === 'number' ? stated : cap;
  const n = typeof body.n === 'number' ? body.n : 1;
  const bestOf = typeof body.best_of === 'number' ? body.best_of : 1; // legacy completions generate best_of, bill all
  const prompts = endpoint.name === 'completions' ? promptCount(body.prompt) : 1;
  return perChoice * Math.max(n, bestOf) * prompts;
}

/**
 * Legacy completions take a batch of prompts (strings, or arrays of token ids), and each gets its
 * own n (or best_of) choices. One array of numbers is a single prompt, as token ids.
 */
function promptCount(prompt: unknown): number {
  if (!Array.isArray(prompt) || prompt.length === 0) return 1;
  return prompt.every((item) => typeof item === 'number') ? 1 : prompt.length;
}

/**
 * Which of max_completion_tokens and max_tokens sets a chat or legacy completion's output size.
 * Only chat has max_completion_tokens (legacy completions do not: one sent there is upstream's to
 * refuse, and is not validated here, so it must not size the reservation either).
 */
function statedOutputParam(endpoint: Endpoint, body: Record<string, unknown>): 'max_completion_tokens' | 'max_tokens' {
  return endpoint.name === 'chat.completions' && body.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens';
}

/**
 * The first tool of a Responses request that OpenAI bills per call on top of tokens (web search,
 * file search, code interpreter, image generation), or undefined. Tools the client runs (function,
 * custom, ...) and remote MCP servers cost tokens only.
 */
function toolBilledPerCall(tools: unknown): string | undefined {
  if (!Array.isArray(tools)) return undefined;
  for (const tool of tools) {
    const type = (tool as { type?: unknown } | null)?.type;
    if (typeof type === 'string' && (type.startsWith('web_search') || TOOLS_BILLED_PER_CALL.has(type))) return type;
  }
  return undefined;
}
const TOOLS_BILLED_PER_CALL = new Set(['file_search', 'code_interpreter', 'image_generation']);

/** The field that sets a request's output size, for the 400 of a request past MAX_RESERVED_TOKENS. */
function outputParam(endpoint: Endpoint, body: Record<string, unknown>): string {
  if (endpoint.name === 'responses') return 'max_output_tokens';
  return statedOutputParam(endpoint, body);
}

/** A settlement as it is written, kept whole while the store is down so it can be written later. */
interface PendingSettlement {
  keyId: string;
  reservationId: string;
  tokens: number;
  usdMicros: number;
  /** When the request ended. */
  now: number;
  /**
   * The instant whose periods its usage counts in (its arrival), should its reservation be gone
   * (expired, released): a late write still counts in the day and month it belongs to.
   */
  countsAt: number;
}

export function createQuota(opts: QuotaOptions) {
  const { store, clock, logger } = opts;
  const failMode = opts.failMode ?? 'closed';
  const local = createLocalLimiter({ rpm: opts.failOpen?.rpm ?? 60, maxInFlight: opts.failOpen?.maxInFlight ?? 10, now: clock });
  const degradedStats = { admittedOpen: 0, refusedUnavailable: 0, settlementsLogged: 0 };
  const openWarning = new ThrottledWarning(logger, 30_000);
  /** Reservations of requests in flight on this instance: their leases are renewed until ended (endLease) or settled. */
  const live = new Map<string, { keyId: string; reservationId: string }>();
  /** Settlement writes not yet finished: shutdown waits for them. */
  const pending = new Set<Promise<unknown>>();

  /** The periods `at` falls in, their TTLs counted from `now`. */
  const periods = (now: number, at = now): Periods => {
    const p = periodsAt(at, opts.timeZone);
    return {
      day: p.day,
      month: p.month,
      dayTtlMs: p.dayEndsAt - now + DAY_RETENTION_MS,
      monthTtlMs: p.monthEndsAt - now + MONTH_RETENTION_MS,
    };
  };

  // Fails on every tick while Redis is down: a line per outage (and per 30 s), not per tick.
  const renewalWarning = new ThrottledWarning(logger, 30_000);
  const renewal = setInterval(() => {
    if (live.size === 0) return;
    store.renewLeases([...live.values()], clock(), opts.leaseTtlMs).catch((err: Error) => {
      renewalWarning.warn({ err: err.message, leases: live.size }, 'lease renewal failed');
    });
  }, Math.max(1000, Math.floor(opts.leaseTtlMs / 3)));
  renewal.unref();

  /** A limit that counts tokens or dollars (rpm and maxConcurrent count requests). */
  const limitsTokensOrSpend = (l: KeyRecord['limits']) =>
    l.tpm !== undefined || l.tokensPerDay !== undefined || l.tokensPerMonth !== undefined || l.usdPerDay !== undefined || l.usdPerMonth !== undefined;

  const recordedCost = createCostCarry();

  function priceOf(key: KeyRecord, model: string): Price {
    const price = opts.prices.priceFor(model);
    if (price) return price;
    // Policy: an unknown price cannot be held against a USD budget, so such keys are refused;
    // other keys are charged the configured default price (pessimistic by default).
    if (key.limits.usdPerDay !== undefined || key.limits.usdPerMonth !== undefined) throw unpricedModel(model);
    return opts.unpricedModelPrice;
  }

  const writeSettlement = ({ countsAt, ...s }: PendingSettlement) => store.settle({ ...s, fallbackPeriods: periods(s.now, countsAt) });

  /** Logged in full, so the spend can be replayed by hand: it is never silently lost. */
  function logSettlement(s: PendingSettlement, err: string, why: string) {
    degradedStats.settlementsLogged++;
    logger.error({ err, settlement: s }, why);
  }

  /**
   * Settlements the store could not take (down), written in order when it answers again. Settling
   * is idempotent, so a write whose reply was lost and is written again changes nothing.
   */
  const queued = createReplayQueue<PendingSettlement>({
    max: opts.settleQueueMax ?? 100_000,
    write: writeSettlement,
    log: logSettlement,
    what: 'settlement',
  });
  const enqueue = (s: PendingSettlement, err: unknown) => (queued.keep(s, err) ? ('queued' as const) : ('failed' as const));

  async function settleWithRetry(s: PendingSettlement) {
    for (let attempt = 1; ; attempt++) {
      try {
        const outcome = await writeSettlement(s);
        // The store takes writes again: anything still queued from an outage goes now too.
        if (queued.size() > 0) void queued.flush();
        return outcome;
      } catch (err) {
        // Known down (the health probe says so): no point retrying now, keep it for the recovery.
        if (err instanceof StoreUnavailableError) return enqueue(s, err);
        if (attempt >= SETTLE_ATTEMPTS) {
          if (isOutageError(err)) return enqueue(s, err);
          logSettlement(s, (err as Error).message, 'settlement failed');
          return 'failed' as const;
        }
        await new Promise((r) => setTimeout(r, 100 * 2 ** attempt));
      }
    }
  }

  /** The request's admission when the store cannot answer: the configured fail mode. */
  function admitWhileDown(key: KeyRecord, err: unknown, reservationId: string) {
    if (failMode === 'closed') {
      degradedStats.refusedUnavailable++;
      // An admission sent and timed out may still land (a stalled Redis runs the queued script when
      // it resumes): its reservation and lease would then hold the key's budget and concurrency
      // until LEASE_TTL_MS. A release (settled at nothing, idempotent, a no-op if it never landed)
      // goes with the settlements written when the store answers again. One refused by the guard
      // (StoreUnavailableError) was never sent: nothing to release, and nothing to fill the queue with.
      if (!(err instanceof StoreUnavailableError)) enqueue({ keyId: key.id, reservationId, tokens: 0, usdMicros: 0, now: clock(), countsAt: clock() }, err);
      const seconds = String(opts.unavailableRetryAfterSeconds ?? 1);
      throw new GatewayError(
        503,
        'Quota checks are temporarily unavailable, so the request was not admitted. Please retry.',
        'server_error',
        'quota_unavailable',
        null,
        { 'retry-after': seconds },
      );
    }
    const decision = local.admit(key.id, key.limits);
    if (!decision.admitted) {
      const seconds = Math.max(1, Math.ceil(decision.retryAfterMs / 1000));
      throw new GatewayError(
        429,
        `Rate limit reached for this gateway key while quotas run in degraded mode (${
          decision.limit === 'rpm' ? 'requests per minute' : 'concurrent requests'
        } on this gateway instance). Please try again in ${seconds}s.`,
        'requests',
        'rate_limit_exceeded',
        null,
        { 'retry-after': String(seconds), 'retry-after-ms': String(Math.ceil(decision.retryAfterMs)) },
      );
    }
    degradedStats.admittedOpen++;
    openWarning.warn(
      { keyId: key.id, reservationId, err: (err as Error).message, admittedOpen: degradedStats.admittedOpen },
      'quota store unavailable: admitting under the local per-instance cap (QUOTA_FAIL_MODE=open), budgets unchecked',
    );
    return decision.release;
  }

  /**
   * Prompt-token estimates of recent cache hits, by cache name. A joined admission (admitAndLookup)
   * must estimate before it knows whether the request is a hit, and the tokenizer is a large part
   * of a hit's cost; an identical request (same name, same prompt) is likely to hit again.
   */
  const hitEstimates = new Map<string, number>();
  function rememberHit(name: string, promptTokens: number) {
    if (hitEstimates.has(name)) return;
    if (hitEstimates.size >= HIT_ESTIMATES_MAX) hitEstimates.delete(hitEstimates.keys().next().value!);
    hitEstimates.set(name, promptTokens);
  }

  /** A request's worst case, priced, and the admission request that reserves it. */
  function reservation(key: KeyRecord, endpoint: Endpoint, body: Record<string, unknown>, model: string, mode: AdmitMode, estimate?: number) {
    // A free request (a cache hit) is checked against maxConcurrent and rpm and counts against rpm
    // (tpm and the budgets do not apply: it adds nothing to them), but it is over once admitted: the
    // store records no reservation or lease, and settling it writes nothing.
    const free = mode.free === true;
    if (!free && endpoint.name === 'responses' && body.background === true && limitsTokensOrSpend(key.limits)) throw backgroundNotMetered();
    if (!free && endpoint.name === 'responses' && body.conversation != null && limitsTokensOrSpend(key.limits)) throw conversationNotMetered();
    const usdLimited = key.limits.usdPerDay !== undefined || key.limits.usdPerMonth !== undefined;
    if (!free && body.service_tier === 'priority' && usdLimited) throw priorityTierNotPriced();
    const feeTool = !free && usdLimited && endpoint.name === 'responses' ? toolBilledPerCall(body.tools) : undefined;
    if (feeTool !== undefined) throw hostedToolNotPriced(feeTool);
    const price = free ? ZERO_PRICE : priceOf(key, model);
    // Plus the input sent besides the body (AdmitMode.carriedTokens).
    const promptTokens = free ? 0 : (estimate ?? estimatePromptTokens(endpoint.name, body, model)) + (mode.carriedTokens ?? 0);
    const outputTokens = free ? 0 : maxOutputTokens(endpoint, body, opts.defaultMaxOutputTokens);
    const tokens = promptTokens + outputTokens;
    // Before pricing: past this bound tokens x price would leave the safe integers (a 500 otherwise).
    if (tokens > MAX_RESERVED_TOKENS) throw requestTooLarge(tokens, MAX_RESERVED_TOKENS, outputParam(endpoint, body));
    const now = clock();
    /** The instant whose day and month the request counts in: its arrival (AdmitMode.arrivedAt). */
    const countsAt = Math.min(mode.arrivedAt ?? now, now);
    const request: AdmissionRequest = {
      keyId: key.id,
      reservationId: randomUUID(),
      limits: storeLimits(key.limits),
      tokens,
      usdMicros: costMicros(price, { promptTokens, cachedPromptTokens: 0, completionTokens: outputTokens }),
      now,
      periods: periods(now, countsAt),
      leaseTtlMs: opts.leaseTtlMs,
      countOnly: free,
    };
    return { price, promptTokens, request, model, countsAt };
  }

  type Reservation = ReturnType<typeof reservation>;

  /**
   * The store's answer as the request's admission: throws the client's 429 (with headers) when a
   * limit would be passed. `releaseLocal` is set when admitted locally (store down, fail-open).
   */
  function admission(key: KeyRecord, { price, promptTokens, request, model, countsAt }: Reservation, result: AdmissionResult, releaseLocal?: () => void) {
    const { tokens, usdMicros, reservationId } = request;
    const free = request.countOnly === true;
    const headers = rateLimitHeaders(result);
    // Tells the client (and whoever reads its logs) that this admission skipped the shared limits.
    if (releaseLocal) headers['x-tollgate-degraded'] = 'quota-open';
    if (!result.admitted) {
      // A budget's reset is that of the period the request counts in.
      throw quotaExceeded(result, key.limits, { tokens, usdMicros, headers, now: request.now, countsAt, timeZone: opts.timeZone });
    }
    // A lease exists only for an admission the store recorded.
    if (!releaseLocal && !free) live.set(reservationId, { keyId: key.id, reservationId });

    let settled: Settled | undefined;
    /** The request's place in its key's maxConcurrent was given back (endLease, or settle). */
    let ended = false;
    return {
      headers,
      promptTokens,
      reservedTokens: tokens,
      reservedMicros: usdMicros,
      /**
       * Upstream is done with the request: it stops counting against its key's maxConcurrent, before
       * its client can see the end of the response, while settle() runs after the response (a
       * strictly sequential client would otherwise find its previous request still in flight,
       * whichever instance it calls next). Resolves once the store has it (never rejects; bounded
       * by the store's command timeout), so the caller can hold the response's last bytes until
       * then; undefined when there is nothing to wait for: a key without maxConcurrent (its lease
       * limits nothing; settle() releases it), a free admission, or one admitted locally while the
       * store was down (its local count is released at once). Later calls, and calls after
       * settle(), do nothing.
       */
      endLease(): Promise<void> | undefined {
        if (ended || settled) return undefined;
        ended = true;
        if (releaseLocal) {
          releaseLocal();
          return undefined;
        }
        if (free || request.limits.maxConcurrent === 0) return undefined;
        // No longer renewed: an ended lease that is renewed would count in flight again.
        live.delete(reservationId);
        return store.endLease({ keyId: key.id, reservationId }, clock(), opts.leaseTtlMs).catch((err: unknown) => {
          // The lease stays until the settlement releases it (or it expires): the next request of
          // the key may be refused meanwhile, nothing else is lost. Known down: nothing to report.
          if (!(err instanceof StoreUnavailableError)) logger.warn({ err: (err as Error).message, keyId: key.id, reservationId }, 'ending a lease failed');
        });
      },
      /**
       * Replaces the reservation by real usage (no usage: nothing was consumed, all is released).
       * Returns the charge at once; the store write runs in the background (retried, and awaited
       * by drain() at shutdown). Settling twice returns the first charge and writes nothing.
       */
      settle(consumption: Consumption): Settled {
        if (settled) return settled;
        ended = true;
        live.delete(reservationId);
        releaseLocal?.();
        const usage = consumption.usage;
        // The answering model's own price when it is the one asked for or a snapshot of it (a cache
        // hit stays free): another model's name (a proxy's fallback, a renaming) changes nothing.
        const answered = consumption.model;
        const charged = !free && answered !== undefined && isSnapshotOf(answered, model) ? (opts.prices.priceFor(answered) ?? price) : price;
        settled = {
          totalTokens: usage?.totalTokens ?? 0,
          // The exact cost, its fraction of a micro-dollar carried over to the key's next request.
          costMicros: usage ? recordedCost(key.id, charged, usage) : 0,
          estimated: consumption.estimated,
        };
        if (free) return settled; // nothing was reserved
        const write = settleWithRetry({ keyId: key.id, reservationId, tokens: settled.totalTokens, usdMicros: settled.costMicros, now: clock(), countsAt });
        pending.add(write);
        void write.finally(() => pending.delete(write));
        return settled;
      },
    };
  }

  /** The admission of a request the store could not take: the fail mode's (throws in closed mode). */
  function admittedWhileDown(key: KeyRecord, planned: Reservation, err: unknown) {
    if (!isOutageError(err)) throw err;
    // Same reservation id: if the timed-out admission did land, the settlement replaces it.
    const releaseLocal = admitWhileDown(key, err, planned.request.reservationId);
    return admission(key, planned, { admitted: true }, releaseLocal);
  }

  /**
   * Reserves the worst case of one request. Throws the client's 429 (with headers) when a limit
   * would be passed. The returned admission must be settled exactly once (later calls are no-ops).
   */
  async function admit(key: KeyRecord, endpoint: Endpoint, body: Record<string, unknown>, model: string, mode: AdmitMode = {}) {
    const planned = reservation(key, endpoint, body, model, mode);
    if (mode.rpmCounted) planned.request.rpmCounted = true;
    let result: AdmissionResult;
    try {
      result = await store.admit(planned.request);
    } catch (err) {
      return admittedWhileDown(key, planned, err);
    }
    return admission(key, planned, result);
  }

  /**
   * admit() and the cache lookup of a name in the key's own scope, in one store round trip
   * (Store.admitAndLookup): a hit is admitted as free, a miss in full with the lead of the name if
   * nobody had it; while another request leads, nothing is admitted yet ('wait'). Throws as admit()
   * does. While the store is down the cache is skipped: a miss without the lead, admitted by the
   * fail mode.
   */
  async function admitAndLookup(
    key: KeyRecord,
    endpoint: Endpoint,
    body: Record<string, unknown>,
    model: string,
    lookup: CacheLookup,
    mode: Pick<AdmitMode, 'arrivedAt'> = {},
  ): Promise<JoinedLookup<Admission>> {
    const planned = reservation(key, endpoint, body, model, mode, hitEstimates.get(lookup.name));
    let found: JoinedLookup;
    try {
      found = await store.admitAndLookup(planned.request, lookup);
    } catch (err) {
      return { lookup: 'miss', leader: null, admission: admittedWhileDown(key, planned, err) };
    }
    if (found.lookup === 'wait') return found;
    if (found.lookup === 'miss') return { lookup: 'miss', leader: found.leader, admission: admission(key, planned, found.admission) };
    rememberHit(lookup.name, planned.promptTokens);
    // The store admitted the hit count-only: its admission is a free one's.
    const free: Reservation = { ...planned, price: ZERO_PRICE, promptTokens: 0, request: { ...planned.request, tokens: 0, usdMicros: 0, countOnly: true } };
    return { lookup: 'hit', entry: found.entry, admission: admission(key, free, found.admission) };
  }

  /** For each limit (set or not): used, reserved in flight, and when its window resets. */
  async function view(key: KeyRecord) {
    const now = clock();
    const q = await store.quotaUsage(key.id, periods(now), now);
    const p = periodsAt(now, opts.timeZone);
    const at = (ms: number) => new Date(ms).toISOString();
    const minuteReset = q.minute.resetMs > 0 ? at(now + q.minute.resetMs) : null;
    const l = key.limits;
    const line = (limit: number | undefined, used: number, reserved: number, resetsAt: string | null) => ({
      limit: limit ?? null,
      used,
      reserved,
      resetsAt,
    });
    return {
      // Rolling minute: reservations count in full until settled, so `used` includes what is in flight.
      rpm: line(l.rpm, q.minute.requests, 0, minuteReset),
      tpm: line(l.tpm, q.minute.tokens, 0, minuteReset),
      tokensPerDay: line(l.tokensPerDay, q.day.tokens.used, q.day.tokens.reserved, at(p.dayEndsAt)),
      tokensPerMonth: line(l.tokensPerMonth, q.month.tokens.used, q.month.tokens.reserved, at(p.monthEndsAt)),
      usdPerDay: line(l.usdPerDay, microsToUsd(q.day.usdMicros.used), microsToUsd(q.day.usdMicros.reserved), at(p.dayEndsAt)),
      usdPerMonth: line(l.usdPerMonth, microsToUsd(q.month.usdMicros.used), microsToUsd(q.month.usdMicros.reserved), at(p.monthEndsAt)),
      maxConcurrent: line(l.maxConcurrent, q.inFlight, 0, null),
    };
  }

  const savedCost = createCostCarry();
  /**
   * What a request with this usage costs (what a cache hit of this key saved), at today's price:
   * exact, its fraction of a micro-dollar carried as recorded costs are (cost-carry.ts).
   */
  function costOf(keyId: string, model: string, usage: Pick<Usage, 'promptTokens' | 'cachedPromptTokens' | 'completionTokens'>): number {
    return savedCost(keyId, opts.prices.priceFor(model) ?? opts.unpricedModelPrice, usage);
  }

  return {
    admit,
    admitAndLookup,
    costOf,
    view,
    periods,
    /** Micro-dollars as USD, for display. */
    usd: microsToUsd,
    /**
     * Waits for every settlement in progress (graceful shutdown), tries once more to write those
     * queued while the store was down, and logs in full any it still cannot write.
     */
    async drain() {
      while (pending.size > 0) await Promise.allSettled([...pending]);
      await queued.drain();
    },
    /** Writes the settlements queued while the store was down (called when it answers again). */
    flushQueued: queued.flush,
    /** The store is back: local fail-open counts no longer apply. */
    resetLocal: () => local.reset(),
    /** For /readyz and metrics. */
    degraded: () => ({ failMode, queuedSettlements: queued.size(), ...degradedStats }),
    close() {
      clearInterval(renewal);
    },
  };
}
