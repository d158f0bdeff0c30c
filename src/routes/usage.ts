// The usage API under /admin (inside its token check): reports and the raw event export.
import { Readable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import type { Store } from '../store/store.js';
import type { UsageEvent } from '../usage/event.js';
import { buildReport, GROUPS, type Group } from '../usage/report.js';
import { EVENT_ORDERS, reportHours, startOfHour } from '../store/usage-math.js';
import { isoInstant } from '../usage/iso-instant.js';
import { invalidRequest } from '../errors.js';
import { parseInput } from './parse-input.js';

export interface UsageRouteOptions {
  store: Store;
  clock: () => number;
  timeZone: string;
}

const DAY_MS = 86_400_000;
const MAX_RANGE_MS = 400 * DAY_MS;
/** The last millisecond of year 9999: the stores key usage by hour ids (YYYY-MM-DDTHH), from 1970 on. */
const MAX_INSTANT_MS = Date.UTC(10_000, 0, 1) - 1;

/**
 * Epoch milliseconds: 0 (the start of 1970) or 12 digits or more (from 1973-03-03), so a number is
 * never a year (2026), a basic-format date (20261201) or epoch seconds (1764547200) read as milliseconds.
 */
const EPOCH_MS = /^(?:0|\d{12,})$/;
const INSTANT_FORMS =
  'expected an ISO 8601 date (2026-12-01, UTC midnight), a date-time with its zone (2026-12-01T10:00:00Z, ' +
  '2026-12-01T10:00%2B01:00: in a URL, + is written %2B) or epoch milliseconds (0, or 12 digits or more), from 1970-01-01T00:00:00Z up to the end of year 9999';

/**
 * The epoch ms of a strict ISO 8601 date or zoned date-time (isoInstant), or of epoch milliseconds
 * (EPOCH_MS); NaN when it is neither, or names no real time.
 */
function parseInstant(value: string): number {
  if (EPOCH_MS.test(value)) return Number(value);
  return isoInstant(value) ?? NaN;
}

/** An instant (parseInstant), within what the stores can look up. */
const instant = z
  .string()
  .transform((v, ctx) => {
    const ms = parseInstant(v);
    if (Number.isNaN(ms)) {
      ctx.addIssue({ code: 'custom', message: INSTANT_FORMS });
      return z.NEVER;
    }
    // Outside this range hourId() has no four-digit year and the stores throw: a 500, not the 400 it is.
    if (ms < 0 || ms > MAX_INSTANT_MS) {
      ctx.addIssue({ code: 'custom', message: 'expected a time from 1970-01-01T00:00:00Z up to the end of year 9999' });
      return z.NEVER;
    }
    return ms;
  });

const reportQuery = z.strictObject({
  from: instant.optional(),
  to: instant.optional(),
  keyId: z.string().min(1).max(200).optional(),
  model: z.string().min(1).max(256).optional(),
  groupBy: z
    .string()
    .optional()
    .transform((v, ctx) => {
      const groups = (v ?? 'key').split(',').map((g) => g.trim()).filter(Boolean);
      for (const g of groups) {
        if (!(GROUPS as readonly string[]).includes(g)) {
          ctx.addIssue({ code: 'custom', message: `unknown group '${g}': use ${GROUPS.join(', ')}` });
          return z.NEVER;
        }
      }
      if (groups.includes('day') && groups.includes('hour')) {
        ctx.addIssue({ code: 'custom', message: 'group by day or by hour, not both' });
        return z.NEVER;
      }
      return [...new Set(groups)] as Group[];
    }),
});

const eventsQuery = z.strictObject({
  since: instant.optional(),
  format: z.enum(['ndjson', 'csv']).default('ndjson'),
  limit: z.coerce.number().int().min(1).max(1_000_000).default(100_000),
  // Newest first ('desc') lets a viewer ask for only the latest few: `limit` then keeps the newest.
  order: z.enum(EVENT_ORDERS).default('asc'),
});

/**
 * Columns of the CSV export: every field of the event (and `time`, its ts as ISO 8601), in a fixed
 * order; fields added later go at the end, so the columns a spreadsheet reads stay where they were.
 */
const CSV_COLUMNS = [
  'id', 'time', 'requestId', 'keyId', 'keyName', 'endpoint', 'model', 'modelAnswered', 'status', 'stream', 'cache',
  'promptTokens', 'cachedPromptTokens', 'completionTokens', 'reasoningTokens', 'totalTokens', 'costMicros',
  'savedTokens', 'savedMicros', 'estimated', 'latencyMs', 'ttfbMs', 'upstreamMs', 'overheadMs', 'errorCode',
  'eventId', 'ts',
] as const satisfies readonly (keyof UsageEvent | 'id' | 'time')[];
// Does not compile when an event field has no column.
const everyEventField: [Exclude<keyof UsageEvent, (typeof CSV_COLUMNS)[number]>] extends [never] ? true : never = true;
void everyEventField;

function csvCell(value: unknown): string {
  if (value === null || value === undefined) return '';
  const text = String(value);
  // Quote what needs it, and defuse spreadsheet formulas in user-supplied text (key names, models).
  const safe = /^[=+\-@\t\r]/.test(text) && typeof value === 'string' ? `'${text}` : text;
  return /[",\n\r]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

export async function usageRoutes(app: FastifyInstance, opts: UsageRouteOptions) {
  const { store } = opts;

  app.get('/usage', async (request) => {
    const q = parseInput(reportQuery, request.query, 'query');
    const toMs = q.to ?? opts.clock();
    // A week back from the start of that hour (as the CLI's `--since 7d`), so the week's first hour
    // is counted; not before 1970 (a 'to' in the first week of 1970).
    const fromMs = q.from ?? Math.max(0, startOfHour(toMs - 7 * DAY_MS));
    if (fromMs > toMs) throw invalidRequest("'from' must not be after 'to'.", 'from', 'invalid_value');
    if (toMs - fromMs > MAX_RANGE_MS) {
      throw invalidRequest('The range may span at most 400 days: ask for a longer one in parts.', 'from', 'invalid_value');
    }
    // [from, to): the hours that start in it, each counted whole (reportHours).
    const hours = reportHours(fromMs, toMs);
    const [rows, keys] = await Promise.all([hours ? store.usageRows(hours[0], hours[1]) : [], store.listKeys()]);
    const names = new Map(keys.map((k) => [k.id, k.name]));
    return buildReport(rows, { fromMs, toMs, keyId: q.keyId, model: q.model, groupBy: q.groupBy, timeZone: opts.timeZone }, names);
  });

  app.get('/usage/events', async (request, reply) => {
    const q = parseInput(eventsQuery, request.query, 'query');
    const sinceMs = q.since ?? opts.clock() - 3_600_000;
    const PAGE = 1000;
    const nextPage = (after: string | undefined, sent: number) =>
      store.usageEvents({ sinceMs, after, limit: Math.min(PAGE, q.limit - sent), order: q.order });
    // The first page is read before anything is sent: a store that cannot answer is then a 503 in
    // OpenAI's shape (errorHandler), not a 200 whose body breaks off after the CSV header.
    const first = await nextPage(undefined, 0);
    async function* lines() {
      if (q.format === 'csv') yield `${CSV_COLUMNS.join(',')}\n`;
      let after: string | undefined;
      let sent = 0;
      while (sent < q.limit) {
        const page = sent === 0 ? first : await nextPage(after, sent);
        for (const { id, event } of page) {
          const row = { id, time: new Date(event.ts).toISOString(), ...event };
          yield q.format === 'csv' ? `${CSV_COLUMNS.map((c) => csvCell(row[c])).join(',')}\n` : `${JSON.stringify(row)}\n`;
        }
        sent += page.length;
        if (page.length === 0) break;
        after = page.at(-1)!.id;
      }
    }
    return reply
      .type(q.format === 'csv' ? 'text/csv; charset=utf-8' : 'application/x-ndjson')
      .send(Readable.from(lines()));
  });
}
