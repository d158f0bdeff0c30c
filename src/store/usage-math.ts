// Usage accounting shared by both stores: event validation, hour ids, the aggregate field format
// (`<keyId>|<model>|<metric>`) and stream ids, so the memory and Redis stores read and write alike.
import { createHash } from 'node:crypto';
import { z } from 'zod';
import type { UsageEvent } from '../usage/event.js';
import type { UsageRow } from './store.js';

const HOUR_MS = 3_600_000;
/** First ms of year 10000: beyond it an hour id would no longer be `YYYY-MM-DDTHH`. */
const MAX_TS = Date.UTC(10000, 0, 1) - 1;
/**
 * Longest range usageRows reads (about 2.3 years): a range is one read per hour, whatever the
 * retention, so a typo such as `0000-01-01T00` must not become millions of them.
 */
export const MAX_USAGE_ROW_HOURS = 20_000;

/** The counters of a UsageRow, in the order rows are built. */
export const USAGE_METRICS = [
  'requests',
  'errors',
  'cacheHits',
  'cacheMisses',
  'cacheLookups',
  'promptTokens',
  'cachedPromptTokens',
  'completionTokens',
  'reasoningTokens',
  'totalTokens',
  'costMicros',
  'savedTokens',
  'savedMicros',
] as const satisfies readonly (keyof UsageRow)[];

export type UsageMetric = (typeof USAGE_METRICS)[number];
const METRIC_SET: ReadonlySet<string> = new Set(USAGE_METRICS);
/** What a metric name looks like (camelCase): one this version does not know is a later version's, skipped quietly. */
const WELL_FORMED_METRIC = /^[a-z][A-Za-z]{0,63}$/;

const count = z.number().int().nonnegative();

/**
 * A UsageEvent as written and as read back. Counts must be non-negative integers (they are added
 * with HINCRBY); durations are any finite numbers (a difference of two clocks may be fractional or
 * a hair below zero). Unknown fields are dropped, so both stores hand back exactly a UsageEvent.
 */
export const usageEventSchema = z.object({
  ts: z.number().nonnegative().max(MAX_TS),
  eventId: z.string().min(1).max(100),
  requestId: z.string(),
  keyId: z.string().nullable(),
  keyName: z.string().nullable(),
  endpoint: z.string().nullable(),
  model: z.string().nullable(),
  modelAnswered: z.string().nullable(),
  status: z.number().int(),
  stream: z.boolean(),
  cache: z.enum(['HIT', 'MISS', 'BYPASS']).nullable(),
  promptTokens: count,
  cachedPromptTokens: count,
  completionTokens: count,
  reasoningTokens: count,
  totalTokens: count,
  costMicros: count,
  savedTokens: count,
  savedMicros: count,
  estimated: z.boolean(),
  latencyMs: z.number(),
  ttfbMs: z.number().nullable(),
  upstreamMs: z.number().nullable(),
  overheadMs: z.number(),
  errorCode: z.string().nullable(),
}) satisfies z.ZodType<UsageEvent>;

export interface UsageOptions {
  retentionMs: number;
  maxEvents: number;
}

/**
 * The event as it will be stored (only the UsageEvent fields), or a RangeError naming the fields
 * that are wrong (not their values). Both stores call it before writing anything.
 */
export function checkUsage(event: UsageEvent, options: UsageOptions): UsageEvent {
  positiveInt(options?.retentionMs, 'retentionMs');
  positiveInt(options?.maxEvents, 'maxEvents');
  const parsed = usageEventSchema.safeParse(event);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(event)'}: ${i.message}`);
    throw new RangeError(`invalid usage event: ${issues.join('; ')}`);
  }
  return parsed.data;
}

/** What a stored event's JSON decodes to, or null when it is not a UsageEvent (a corrupt entry). */
export function decodeUsageEvent(json: string): UsageEvent | null {
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch {
    return null;
  }
  const parsed = usageEventSchema.safeParse(raw);
  return parsed.success ? parsed.data : null;
}

/** The UTC hour id (`YYYY-MM-DDTHH`) of an epoch ms. */
export function hourId(ms: number): string {
  return new Date(startOfHour(ms)).toISOString().slice(0, 13);
}

/** Epoch ms at which an hour id begins; RangeError unless `id` is a real UTC hour as hourId writes it. */
export function hourStart(id: string): number {
  const m = typeof id === 'string' ? /^(\d{4})-(\d{2})-(\d{2})T(\d{2})$/.exec(id) : null;
  const ms = m ? Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4])) : NaN;
  // The round trip rejects what Date.UTC would roll over (2026-02-30, hour 24) and years below 100.
  if (!Number.isFinite(ms) || ms < 0 || hourId(ms) !== id) {
    throw new RangeError(`hour must be an hour id YYYY-MM-DDTHH (UTC), got ${JSON.stringify(id)}`);
  }
  return ms;
}

/**
 * Every hour id from `from` to `to` inclusive, oldest first (none when `from` is after `to`).
 * RangeError for a malformed id or a range longer than MAX_USAGE_ROW_HOURS.
 */
export function hourRange(from: string, to: string): string[] {
  const start = hourStart(from);
  const end = hourStart(to);
  const hours = (end - start) / HOUR_MS + 1;
  if (hours > MAX_USAGE_ROW_HOURS) {
    throw new RangeError(`usage rows cover at most ${MAX_USAGE_ROW_HOURS} hours, asked for ${hours}`);
  }
  const ids: string[] = [];
  for (let ms = start; ms <= end; ms += HOUR_MS) ids.push(hourId(ms));
  return ids;
}

/**
 * How long, from the moment it is written, the aggregate hour of an event must live: to the end of
 * its hour plus the retention, both measured on the event's own clock. A relative TTL (PEXPIRE,
 * not PEXPIREAT) does not care whether the store's clock agrees with the gateway's, and an event
 * written late (a long stream) only keeps its hour a little longer. Always > retentionMs.
 */
/** How long an hour remembers which events it counted: the hour, then long enough for any replay. */
export const USAGE_SEEN_AFTER_HOUR_MS = 6 * 3_600_000;

export function usageSeenTtlMs(ts: number): number {
  return Math.floor(ts / 3_600_000) * 3_600_000 + 3_600_000 - ts + USAGE_SEEN_AFTER_HOUR_MS;
}

export function usageTtlMs(ts: number, retentionMs: number): number {
  const hourEnd = (Math.floor(ts / HOUR_MS) + 1) * HOUR_MS;
  return Math.ceil(hourEnd - ts) + retentionMs;
}

/** `%` and `|` escaped, so `|` can separate the parts of a field whatever a key id or model holds. */
function escapePart(text: string): string {
  return text.replace(/%/g, '%25').replace(/\|/g, '%7C');
}

function unescapePart(text: string): string {
  // One pass, so an escaped `%257C` (a literal `%7C`) does not decode twice.
  return text.replace(/%(25|7C)/g, (_, code: string) => (code === '25' ? '%' : '|'));
}

/** The aggregate hash field of one key x model x metric (null key or model -> ''). */
export function usageField(keyId: string | null, model: string | null, metric: UsageMetric): string {
  return `${escapePart(keyId ?? '')}|${escapePart(model ?? '')}|${metric}`;
}

/**
 * What one (checked) event adds to its hour: `requests` always, every other metric only when
 * non-zero, so a hash holds no fields of zeros.
 */
export function usageIncrements(e: UsageEvent): [field: string, by: number][] {
  const amounts: Record<UsageMetric, number> = {
    requests: 1,
    // An error status, or a 200 that did not end normally (a stream upstream broke, cut or timed
    // out, or left by its client): its status was sent before the trouble, its error code says it.
    errors: e.status >= 400 || e.errorCode !== null ? 1 : 0,
    cacheHits: e.cache === 'HIT' ? 1 : 0,
    cacheMisses: e.cache === 'MISS' ? 1 : 0,
    cacheLookups: e.cache === 'HIT' || e.cache === 'MISS' ? 1 : 0,
    promptTokens: e.promptTokens,
    cachedPromptTokens: e.cachedPromptTokens,
    completionTokens: e.completionTokens,
    reasoningTokens: e.reasoningTokens,
    totalTokens: e.totalTokens,
    costMicros: e.costMicros,
    savedTokens: e.savedTokens,
    savedMicros: e.savedMicros,
  };
  const out: [string, number][] = [];
  for (const metric of USAGE_METRICS) {
    const by = amounts[metric];
    if (by !== 0 || metric === 'requests') out.push([usageField(e.keyId, e.model, metric), by]);
  }
  return out;
}

/** The part of a usage batch that falls in one UTC hour, as both stores write it. */
export interface UsageHourPart {
  hour: string;
  /** In batch order. */
  events: UsageEvent[];
  /** What the part adds to the hour: the sum of its events' increments, one entry per field. */
  increments: Map<string, number>;
  /**
   * How the hour remembers it was counted: a digest of its event ids, so the same batch written
   * again (a replay) is recognised, whatever its size.
   */
  batchId: string;
  /** The longest time the hour's counters and its set of counted batches must live (its earliest event's). */
  ttlMs: number;
  seenTtlMs: number;
}

/** A batch of (checked) events split by UTC hour, hours in order of first appearance. */
export function usageParts(events: readonly UsageEvent[], retentionMs: number): UsageHourPart[] {
  const parts = new Map<string, UsageHourPart>();
  for (const e of events) {
    const hour = hourId(e.ts);
    let part = parts.get(hour);
    if (!part) parts.set(hour, (part = { hour, events: [], increments: new Map(), batchId: '', ttlMs: 0, seenTtlMs: 0 }));
    part.events.push(e);
    for (const [field, by] of usageIncrements(e)) part.increments.set(field, (part.increments.get(field) ?? 0) + by);
    part.ttlMs = Math.max(part.ttlMs, usageTtlMs(e.ts, retentionMs));
    part.seenTtlMs = Math.max(part.seenTtlMs, usageSeenTtlMs(e.ts));
  }
  for (const part of parts.values()) {
    part.batchId = createHash('sha256').update(JSON.stringify(part.events.map((e) => e.eventId))).digest('hex');
  }
  return [...parts.values()];
}

/**
 * The rows of one hour from its fields (as HGETALL returns them, or the memory store's map).
 * Fields that do not parse (wrong shape, unknown metric, a value that is not a safe integer) are
 * skipped and counted.
 */
export function usageRowsOfHour(
  hour: string,
  fields: Iterable<[field: string, value: string | number]>,
): { rows: UsageRow[]; skipped: number } {
  const rows = new Map<string, UsageRow>();
  let skipped = 0;
  for (const [field, value] of fields) {
    const parts = field.split('|');
    const n = typeof value === 'number' ? value : /^-?\d+$/.test(value) ? Number(value) : NaN;
    if (parts.length !== 3 || !Number.isSafeInteger(n)) {
      skipped++;
      continue;
    }
    // A metric a newer version counts (a rolling upgrade writes it beside this one): not corrupt,
    // just not this version's to report.
    if (!METRIC_SET.has(parts[2]!)) {
      if (!WELL_FORMED_METRIC.test(parts[2]!)) skipped++;
      continue;
    }
    const [key, model, metric] = parts as [string, string, UsageMetric];
    const id = `${key}|${model}`;
    let row = rows.get(id);
    if (!row) {
      row = emptyRow(hour, unescapePart(key), unescapePart(model));
      rows.set(id, row);
    }
    row[metric] += n;
  }
  return { rows: [...rows.values()], skipped };
}

/** The order usageRows returns: by hour, then key id, then model (UTF-16 code units, as `<`). */
export function sortUsageRows(rows: UsageRow[]): UsageRow[] {
  return rows.sort((a, b) => compare(a.hour, b.hour) || compare(a.keyId, b.keyId) || compare(a.model, b.model));
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function emptyRow(hour: string, keyId: string, model: string): UsageRow {
  const row = { hour, keyId, model } as UsageRow;
  for (const metric of USAGE_METRICS) row[metric] = 0;
  return row;
}

/** A stream id `<ms>-<seq>` as Redis writes them (and the memory store imitates). */
export interface StreamId {
  ms: number;
  seq: number;
}

/** Parses an event id a store returned; RangeError for anything else. */
export function parseStreamId(id: string): StreamId {
  const m = typeof id === 'string' ? /^(\d{1,15})-(\d{1,15})$/.exec(id) : null;
  if (!m) throw new RangeError(`after must be an event id returned by usageEvents, got ${JSON.stringify(id)}`);
  return { ms: Number(m[1]), seq: Number(m[2]) };
}

export function compareStreamIds(a: StreamId, b: StreamId): number {
  return a.ms - b.ms || a.seq - b.seq;
}

/** The orders usageEvents lists in: oldest first (the default) or newest first. */
export const EVENT_ORDERS = ['asc', 'desc'] as const;
export type EventOrder = (typeof EVENT_ORDERS)[number];

/** A usageEvents query, as both stores take it. */
export interface EventsQuery {
  sinceMs: number;
  after?: string;
  limit: number;
  order?: EventOrder;
}

/** Checks a usageEvents query (both stores refuse the same ones). */
export function checkEventsQuery(query: EventsQuery): StreamId | undefined {
  if (!Number.isSafeInteger(query?.sinceMs) || query.sinceMs < 0) {
    throw new RangeError(`sinceMs must be a non-negative integer, got ${query?.sinceMs}`);
  }
  positiveInt(query.limit, 'limit');
  if (query.order !== undefined && !(EVENT_ORDERS as readonly unknown[]).includes(query.order)) {
    throw new RangeError(`order must be 'asc' or 'desc', got ${JSON.stringify(query.order)}`);
  }
  return query.after === undefined ? undefined : parseStreamId(query.after);
}

/**
 * The hour ids a usage report over [fromMs, toMs) reads: those of the hours that START in it, as
 * [first, last] (inclusive, as usageRows takes them), or null when no hour starts in it.
 * An hour is one bucket: it is counted whole in the one range its start falls in, so back-to-back
 * ranges ([Nov 1, Dec 1) then [Dec 1, Jan 1)) never count the same hour twice, even when their
 * boundary is not on a whole UTC hour (a local midnight in Asia/Kolkata is hh:30 UTC).
 */
export function reportHours(fromMs: number, toMs: number): [first: string, last: string] | null {
  const span = reportSpan(fromMs, toMs);
  return span ? [hourId(span[0]), hourId(span[1] - 1)] : null;
}

/** Epoch ms at which the UTC hour holding `ms` starts. */
export function startOfHour(ms: number): number {
  return Math.floor(ms / HOUR_MS) * HOUR_MS;
}

/**
 * The whole hours a usage report over [fromMs, toMs) counts (see reportHours), as epoch ms
 * [start of the first, end of the last), or null when no hour starts in the range.
 */
export function reportSpan(fromMs: number, toMs: number): [firstStart: number, lastEnd: number] | null {
  const first = Math.ceil(fromMs / HOUR_MS) * HOUR_MS; // the first hour that starts at or after fromMs
  if (first >= toMs) return null;
  return [first, Math.ceil(toMs / HOUR_MS) * HOUR_MS];
}

/** Checks markOnce's arguments (both stores refuse the same ones). */
export function checkMark(name: string, ttlMs: number) {
  if (typeof name !== 'string' || name.length === 0) throw new RangeError('mark name must be a non-empty string');
  positiveInt(ttlMs, 'ttlMs');
}

export function checkResponseOwner(responseId: string, keyId?: string, ttlMs?: number, contextTokens = 0) {
  if (typeof responseId !== 'string' || responseId.length === 0) throw new RangeError('responseId must be a non-empty string');
  if (keyId === undefined) return;
  if (typeof keyId !== 'string' || keyId.length === 0) throw new RangeError('keyId must be a non-empty string');
  positiveInt(ttlMs, 'ttlMs');
  if (!Number.isSafeInteger(contextTokens) || contextTokens < 0) throw new RangeError(`contextTokens must be a non-negative integer, got ${String(contextTokens)}`);
}

/** Context tokens as stored (a decimal string, or null when none were recorded): 0 unless a positive safe integer. */
export function contextTokensOf(value: string | null): number {
  const tokens = Number(value);
  return Number.isSafeInteger(tokens) && tokens > 0 ? tokens : 0;
}

function positiveInt(value: number | undefined, name: string) {
  if (!Number.isSafeInteger(value) || (value as number) <= 0) {
    throw new RangeError(`${name} must be a positive integer, got ${String(value)}`);
  }
}
