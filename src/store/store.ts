// The Store interface: everything Tollgate keeps outside the process. Redis in production,
// memory for the embedded single-instance default. One contract suite tests both.
import type { KeyRecord } from '../keys.js';
import type { UsageEvent } from '../usage/event.js';
import type { EventsQuery } from './usage-math.js';

export type { EventOrder, EventsQuery } from './usage-math.js';

export interface KeyPageQuery {
  limit: number;
  /** The id of the key the page starts after; the first page when absent. */
  after?: string;
}

export interface KeyPage {
  keys: KeyRecord[];
  /** More keys follow this page. */
  hasMore: boolean;
  /**
   * The `after` of the next page: the page's last key's id, or null for an empty page. Only a
   * record that cannot be read back (corrupt, so left out of `keys`) makes it differ from the last
   * key's id: the cursor still moves past it.
   */
  lastId: string | null;
}

/**
 * Store.updateKey lost its compare-and-set every time it tried: other writes to the same key kept
 * landing between its read and its write. Nothing was changed; the caller may try again.
 */
export class KeyChangeConflictError extends Error {
  constructor(
    readonly keyId: string,
    readonly attempts: number,
  ) {
    super(`key ${keyId}: still changing after ${attempts} attempts; try again`);
    this.name = 'KeyChangeConflictError';
  }
}

/** A stored Responses API object, as the gateway knows it (Store.getResponseOwner). */
export interface ResponseOwner {
  /** The gateway key that created it: the only one that may read, delete or continue it. */
  keyId: string;
  /**
   * Its input plus output tokens: what a request continuing it (previous_response_id) sends
   * OpenAI again, billed as input. 0 when not known: not completed through the gateway (a
   * background response, a stream cut before its end) or recorded by an earlier version.
   */
  contextTokens: number;
}

/** A change to a key record (Store.updateKey): the new record, or null for none. */
export type KeyChange = (current: KeyRecord) => KeyRecord | null;

/**
 * Told which key changed and which secret hash it affects (a rotation reports the old and the
 * new hash separately). Delivery is at least once: drop cache entries, don't count calls.
 * `{ id: '*', hash: '*' }` is a wildcard: changes may have been missed (e.g. the change feed
 * reconnected), so drop everything cached.
 */
export type KeyChangeListener = (change: { id: string; hash: string }) => void;

export interface Store {
  /** 'redis' or 'memory': reported by /readyz and the start-up log. */
  readonly kind: 'redis' | 'memory';

  /** Inserts a new key record and its hash index. Fails if the id exists. */
  createKey(record: KeyRecord): Promise<void>;
  getKeyById(id: string): Promise<KeyRecord | null>;
  /** Looks a key up by the sha256 of its secret. Returns revoked keys too; callers decide. */
  getKeyByHash(hash: string): Promise<KeyRecord | null>;
  /**
   * All keys, revoked included, oldest first: for internal callers that need every one (budget
   * metrics, report names). The admin API lists them a page at a time (listKeysPage).
   */
  listKeys(): Promise<KeyRecord[]>;
  /**
   * One page of listKeys' order: at most `limit` keys, from the first or from the one just after
   * the key `after`, and whether more follow. Costs O(page), not O(all keys). A page's last id,
   * passed as `after`, gives the next page: no key is skipped or listed twice (keys are never
   * removed from the list; one created with an earlier createdAt than the cursor's is not seen).
   * null when `after` names no listed key. Throws a RangeError for a `limit` that is not an
   * integer from 1 to MAX_KEY_PAGE (key-page.ts), or an empty `after`.
   */
  listKeysPage(query: KeyPageQuery): Promise<KeyPage | null>;
  /**
   * Changes a key atomically: `change` gets a copy of the current record and returns the new one,
   * or null to leave it as it is; what it throws, updateKey throws. If another write lands between
   * the read and this write, `change` runs again on the newer record (compare-and-set), so
   * overlapping changes (a PATCH, a revocation, a rotation) never undo each other. When the hash
   * changed (rotation), the old hash stops resolving; every instance is told (onKeyChange) for the
   * old and the new hash. Resolves the record as it now stands and whether this call changed it;
   * null when there is no such key.
   */
  updateKey(id: string, change: KeyChange): Promise<{ record: KeyRecord; changed: boolean } | null>;

  /** Called on every instance when any instance changes or revokes a key, so auth caches drop it. */
  onKeyChange(listener: KeyChangeListener): void;

  /**
   * Admission, in one atomic step (one Redis round trip): expire dead leases, check every limit of
   * the key against the request's worst case, and, only if all pass, record the reservation.
   * The rolling minute is made of 1-second buckets: a request counts in the bucket of
   * floor(now / 1000) and leaves the window when `now` reaches (thatSecond + 60) * 1000.
   * Throws (writing nothing) if `reservationId` is already held, or on non-integer amounts.
   */
  admit(request: AdmissionRequest): Promise<AdmissionResult>;
  /**
   * admit() joined with cacheLookup(), in one atomic step (one Redis round trip before a request
   * goes upstream), for a cache name scoped to the request's own key (`<keyId>:<hash>`: its entry
   * and lock share the key's Redis Cluster slot with its quota state):
   * - an entry is stored: the request is a cache hit, admitted count-only (`tokens` and `usdMicros`
   *   are not reserved): `{ lookup: 'hit', entry, admission }`;
   * - no entry and nobody leads the name: admitted in full, as admit() does, and only if admitted
   *   it also takes the lead, as cacheAcquire gives it: `{ lookup: 'miss', leader, admission }`
   *   (`leader` null when refused);
   * - no entry and another caller leads: nothing is checked or written: `{ lookup: 'wait' }`
   *   (then cacheWait, and admit() once the wait is over).
   * A stored entry that cannot be read back (corrupt) is a miss without the lead, admitted in
   * full: it counts against rpm twice. Throws a RangeError for a name of another scope, and
   * whatever admit() and cacheLookup() throw for their arguments.
   */
  admitAndLookup(request: AdmissionRequest, lookup: CacheLookup): Promise<JoinedLookup>;
  /**
   * Replaces a reservation by what the request really used. Idempotent: settling the same
   * reservation again changes nothing. If the reservation already expired, the usage is still
   * recorded (against `fallbackPeriods`), so no spend is ever lost.
   * 'settled': the reservation was still held (even if its lease is past expiry but no admission
   * has released it yet); usage goes to the periods it was reserved in, and the tpm bucket of its
   * admission second is corrected to the real tokens while that bucket is in the window.
   * 'expired': no reservation (released, or never made); usage goes to `fallbackPeriods`.
   * Settled ids are remembered for two days.
   */
  settle(settlement: Settlement): Promise<SettleOutcome>;
  /**
   * Pushes the expiry of leases (requests still in flight) to `now + leaseTtlMs`. A lease that was
   * released (by settle, or by an admission after it expired) is not brought back; one past its
   * expiry that no admission has released yet is renewed, as its reservation is still held.
   */
  renewLeases(leases: { keyId: string; reservationId: string }[], now: number, leaseTtlMs: number): Promise<void>;
  /**
   * Ends a lease before its settlement: the request no longer counts against maxConcurrent (upstream
   * is done with it; the pipeline calls this before its client can see the end of the response,
   * while the settlement is written after). Its reservation stays held until settle(); should no
   * settlement come (the instance died), an admission releases the reservation once `now +
   * leaseTtlMs` has passed, as for a lease that stopped being renewed. A lease already released
   * (settled, or released after its expiry) is not brought back. Renewing an ended lease makes it
   * count in flight again: callers stop renewing a lease once they end it.
   */
  endLease(lease: { keyId: string; reservationId: string }, now: number, leaseTtlMs: number): Promise<void>;
  /**
   * Used and reserved amounts of one key, for the admin API. Read only: `reserved` still includes
   * reservations whose lease expired until an admission releases them; `inFlight` counts only leases
   * with expiry > now.
   */
  quotaUsage(keyId: string, periods: Periods, now: number): Promise<QuotaUsage>;
  /**
   * Fixed-window counter (the shape @fastify/rate-limit's store needs): adds 1 to `name` and
   * returns the count in the current window and the ms left in it.
   */
  hit(name: string, windowMs: number): Promise<{ count: number; ttlMs: number }>;

  /**
   * A cached response, or null. `name` comes from the cache module: `<scope>:<request hash>`, the
   * scope a gateway key id or `global` (the Redis layout is built from it). Every cache method
   * throws a RangeError for a name without a non-empty scope and id, or with `{`/`}` in the scope
   * (cacheWait resolves 'failed' instead), for a ttlMs that is not a positive integer, and (cacheFill)
   * for an entry without a ttlMs.
   * An entry that cannot be read back (corrupt) is a miss.
   */
  cacheGet(name: string): Promise<CacheEntry | null>;
  /**
   * The lookup of a cache miss's first step, in one round trip: the stored entry if there is one
   * (no lock is taken), else single-flight leadership of `name` as cacheAcquire gives it: `leader`
   * is the token, or null when another caller leads (then cacheWait).
   */
  cacheLookup(name: string, leadTtlMs: number, token?: string): Promise<{ entry: CacheEntry | null; leader: string | null }>;
  /**
   * Single-flight leadership for one cache name across instances: a token for exactly one caller
   * (null for the others) until it calls cacheFill with it or ttlMs passes (a leader that died must
   * not block the others for long). The token is `token` when given (a non-empty string unique to
   * this lead, else a RangeError), so a caller that never hears the answer (a timeout) can still
   * release the lead the call may have taken; otherwise the store makes one. So do cacheLookup and
   * admitAndLookup (CacheLookup.token).
   */
  cacheAcquire(name: string, ttlMs: number, token?: string): Promise<string | null>;
  /**
   * Ends a miss in one round trip: stores `entry` (if given) for `ttlMs` (overwrites; only the
   * CacheEntry fields are kept), ends leadership if `token` still holds it (a slow leader whose lock
   * lapsed and was taken over must not end the new leader's), and wakes every waiter of `name` on
   * every instance: 'filled' if an entry for `name` exists then, else 'failed'. A fill nobody waits
   * for (no cacheWait on `name` since its last fill) wakes nobody and costs no message.
   * `ttlMs` is needed with an entry only.
   */
  cacheFill(name: string, fill: { entry?: CacheEntry; ttlMs?: number; token: string | null }): Promise<void>;
  /**
   * Resolves when the leader of `name` fills it ('filled' | 'failed'), when its leadership lapses
   * without a release ('failed'), or after timeoutMs ('timeout'). Never rejects.
   * Also at once when nobody leads `name` (entry: 'filled', none: 'failed'), which is how a missed
   * release or a lapse is noticed, within about 250 ms. An entry alone ends no wait while a leader
   * holds the lock: it may be refreshing that entry (too old for a max-age). Closing the store
   * resolves its pending waits with 'failed'.
   */
  cacheWait(name: string, timeoutMs: number): Promise<'filled' | 'failed' | 'timeout'>;
  /**
   * Deletes cached responses: all of them, or those whose name starts with `scopePrefix` (a literal
   * prefix, no pattern: pass `<scope>:` for exactly one scope). Returns how many live entries it
   * deleted. Leadership locks are left alone.
   */
  cachePurge(scopePrefix?: string): Promise<number>;

  /**
   * Records a batch of usage events (the gateway sends one every USAGE_FLUSH_MS): adds them to the
   * aggregates of their hours (per key x model) and appends them, in order, to the capped event
   * stream. One script call per hour the batch spans, then one per chunk of 64 events that lists
   * them; called after the responses, never before them.
   * A batch is counted at most once: within an hour it is known by the list of its event ids, so
   * writing the same batch again (a replay after an outage, whose first try may have landed) is a
   * no-op. Its events are listed once as well, and never without being counted; a replay lists
   * a batch whose first write was counted but not listed (Redis ran it, its reply was lost).
   * An event must not be sent in two different batches. An empty batch writes nothing.
   * The hour is the UTC hour of `event.ts`; it is kept until the end of that hour plus `retentionMs`
   * (measured from when it is written, on the event's clock: see usage-math.ts `usageTtlMs`).
   * The stream keeps at least the newest `maxEvents` events (Redis trims approximately, so up to
   * about 100 more may remain; memory keeps exactly `maxEvents`). Only the UsageEvent fields are
   * stored. Throws a RangeError, writing nothing, if any event is not a UsageEvent (counts must be
   * non-negative integers) or the options are not positive integers.
   */
  recordUsage(events: readonly UsageEvent[], options: { retentionMs: number; maxEvents: number }): Promise<void>;
  /**
   * Aggregated rows of every hour from `fromHour` to `toHour` inclusive (hour ids: YYYY-MM-DDTHH, UTC),
   * ordered by hour, then key id, then model. None when `fromHour` is after `toHour`. Throws a
   * RangeError for a malformed hour id or a range of more than 20,000 hours (MAX_USAGE_ROW_HOURS).
   */
  usageRows(fromHour: string, toHour: string): Promise<UsageRow[]>;
  /**
   * Raw events in arrival order; at most `limit`, fewer only when there are no more.
   * `order: 'asc'` (the default), oldest first: those after the event `after` (an id this method
   * returned), or else from time `sinceMs`.
   * `order: 'desc'`, newest first: the newest events, or those listed after `after` in this order
   * (i.e. older than it), back to time `sinceMs` (which bounds every page in this order).
   * Either way a page's last id, passed as `after`, gives the next page in the same order.
   * Arrival is when the store recorded the event (the Redis server's clock, or the memory store's),
   * so `sinceMs` filters on that, not on `event.ts`. Ids are `<ms>-<seq>` and increase. Throws a
   * RangeError for a malformed `after`, a negative `sinceMs`, a `limit` that is not a positive
   * integer or an unknown `order`.
   */
  usageEvents(query: EventsQuery): Promise<{ id: string; event: UsageEvent }[]>;
  /**
   * True the first time a name is marked within ttlMs (alert thresholds fire once per period).
   * Throws a RangeError for an empty name or a ttlMs that is not a positive integer.
   */
  markOnce(name: string, ttlMs: number): Promise<boolean>;

  /**
   * Records which gateway key created a Responses API object (`resp_...`), for ttlMs (overwrites),
   * and the tokens of its conversation so far (ResponseOwner.contextTokens; 0 while unknown).
   * Throws a RangeError, writing nothing, for an empty responseId or keyId, a ttlMs that is not a
   * positive integer or contextTokens that are not a non-negative integer.
   */
  setResponseOwner(responseId: string, keyId: string, ttlMs: number, contextTokens?: number): Promise<void>;
  /** Who created `responseId` and what continuing it carries, or null (never recorded, expired or deleted). */
  getResponseOwner(responseId: string): Promise<ResponseOwner | null>;
  /** Forgets the owner of `responseId` (the response was deleted). Throws a RangeError for an empty id. */
  deleteResponseOwner(responseId: string): Promise<void>;

  /** Round trip to the backing store; throws when it does not answer in time. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

/** Calendar periods a request is charged to, as ids in the configured time zone. */
export interface Periods {
  day: string; // e.g. 2026-11-30
  month: string; // e.g. 2026-11
  /** How long the period's counters must live: until the period ends, plus a margin for reports. */
  dayTtlMs: number;
  monthTtlMs: number;
}

/** A key's limits as the store sees them: 0 means "not limited". Money is integer micro-dollars. */
export interface StoreLimits {
  rpm: number;
  tpm: number;
  tokensPerDay: number;
  tokensPerMonth: number;
  usdMicrosPerDay: number;
  usdMicrosPerMonth: number;
  maxConcurrent: number;
}

export interface AdmissionRequest {
  keyId: string;
  /** Unique per request; names the reservation and the concurrency lease. */
  reservationId: string;
  limits: StoreLimits;
  /** Worst case: estimated prompt tokens + maximum output tokens. */
  tokens: number;
  /** Worst-case cost, integer micro-dollars. */
  usdMicros: number;
  /** Epoch ms from the gateway's (injectable) clock. */
  now: number;
  periods: Periods;
  /** A lease not renewed within this long is dead (its instance crashed) and is released. */
  leaseTtlMs: number;
  /**
   * For a request that is over as soon as it is admitted (a cache hit): it is checked against
   * maxConcurrent and rpm and counts against rpm, but no reservation or lease is recorded, so there
   * is nothing to settle. tpm and the budgets do not apply, whether at their limit or past it: it
   * adds nothing to them. `tokens` and `usdMicros` must then be 0.
   */
  countOnly?: boolean;
  /**
   * The request was already counted against rpm, by a count-only admission (a cache hit whose entry
   * then could not answer it, so it goes upstream and needs a full admission): rpm is checked with
   * it already in the window, and it is not counted again. Not with countOnly.
   */
  rpmCounted?: boolean;
}

/** The cache name an admission is joined with (admitAndLookup), and how long its lead may last. */
export interface CacheLookup {
  name: string;
  leadTtlMs: number;
  /** The token to lead with, as cacheAcquire takes it (the store makes one if not given). */
  token?: string;
}

/**
 * What admitAndLookup found in the cache, and the admission it made (none while another leads):
 * the store's AdmissionResult, or what a layer above makes of it (Quota's Admission).
 */
export type JoinedLookup<A = AdmissionResult> =
  | { lookup: 'hit'; entry: CacheEntry; admission: A }
  | { lookup: 'miss'; leader: string | null; admission: A }
  | { lookup: 'wait' };

export type LimitName = 'rpm' | 'tpm' | 'maxConcurrent' | 'tokensPerDay' | 'tokensPerMonth' | 'usdPerDay' | 'usdPerMonth';

/** Rolling one-minute window state, for OpenAI's x-ratelimit-* headers. */
export interface WindowState {
  limit: number;
  remaining: number;
  /**
   * Requests: ms until the window holds fewer than `limit` requests, i.e. until one more request
   * would pass rpm (0 when it would pass now). Tokens: ms until every token now in the window has
   * left it, the window fully replenished (0 when it holds none). Both after this request if it was
   * admitted. Like OpenAI's `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens`.
   */
  resetMs: number;
}

export type AdmissionResult =
  | { admitted: true; requests?: WindowState; tokens?: WindowState }
  | {
      admitted: false;
      /**
       * The first limit that failed, in the order maxConcurrent, rpm, tpm, tokens/day, tokens/month,
       * usd/day, usd/month; among the budgets, one spent (no room left for the request) before one
       * only held by requests in flight.
       */
      limit: LimitName;
      /**
       * ms until the request could pass the limit that failed: rpm / tpm, until enough of the oldest
       * buckets have left the window for it to fit; maxConcurrent, a fixed 1000 ms hint (a slot frees
       * when some request ends); a day or month budget whose settled use leaves room for the request
       * but whose reservations (requests in flight) do not, the same 1000 ms hint (they settle at what
       * they used when they end). Undefined when waiting cannot help: a budget with no room left for
       * the request (the gateway computes the period reset), or more tokens than the whole tpm limit.
       */
      retryAfterMs?: number;
      requests?: WindowState;
      tokens?: WindowState;
    };

export interface Settlement {
  keyId: string;
  reservationId: string;
  /** Real usage (or the local estimate for a cut-short stream; 0 when nothing was generated). */
  tokens: number;
  usdMicros: number;
  now: number;
  /** Where usage goes if the reservation expired before settlement (normally the current periods). */
  fallbackPeriods: Periods;
}

export type SettleOutcome = 'settled' | 'already-settled' | 'expired';

export interface PeriodUsage {
  used: number;
  reserved: number;
}

export interface QuotaUsage {
  /** Requests and tokens in the rolling minute (reservations count in full until settled). */
  minute: { requests: number; tokens: number; /** ms until everything now in the window has left it. */ resetMs: number };
  inFlight: number;
  day: { tokens: PeriodUsage; usdMicros: PeriodUsage };
  month: { tokens: PeriodUsage; usdMicros: PeriodUsage };
}

/** A complete, successful upstream response kept by the cache. */
export interface CacheEntry {
  /** Epoch ms when it was stored (for Age and Cache-Control: max-age). */
  storedAt: number;
  /** The non-streamed JSON response body, exactly as served (streamed misses are assembled into it). */
  body: string;
  /** The model upstream answered with, and what the original call used: a hit saves this. */
  model: string;
  promptTokens: number;
  cachedPromptTokens: number;
  completionTokens: number;
}

/** One key x model x hour of aggregated usage. */
export interface UsageRow {
  hour: string; // YYYY-MM-DDTHH, UTC
  keyId: string; // '' for requests refused before a key was known
  model: string; // '' when the request named none
  requests: number;
  errors: number; // status >= 400, or an errorCode (a stream that broke, a hang-up, ...)
  cacheHits: number;
  /** Requests the cache could have answered and did not (MISS). */
  cacheMisses: number;
  /**
   * Requests the cache looked up (HIT or MISS): the hit rate among them, (cacheLookups - cacheMisses)
   * / cacheLookups, is not diluted by refusals or BYPASS. Both are 0 in hours recorded before they
   * were counted, so such hours add nothing to that rate (cacheHits counts their hits all the same).
   */
  cacheLookups: number;
  promptTokens: number;
  cachedPromptTokens: number;
  completionTokens: number;
  reasoningTokens: number;
  totalTokens: number;
  costMicros: number;
  savedTokens: number;
  savedMicros: number;
}
