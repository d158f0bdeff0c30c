// `tollgate usage`: spend and tokens over a time range, grouped by model, key, day or hour (GET /admin/usage).
import { ApiError } from '../admin-client.js';
import { UsageError, type Command, type CommandContext, type OptionSpecs } from '../command.js';
import { formatTime } from '../format.js';
import { reportSpan, startOfHour } from '../../store/usage-math.js';
import { isoInstant } from '../../usage/iso-instant.js';
import { renderTable, truncate, type Align } from '../table.js';

export const USAGE_GROUPS = ['model', 'key', 'day', 'hour'] as const;
export type UsageGroup = (typeof USAGE_GROUPS)[number];

/** One row of the API's answer (only the group fields asked for are present). Loosely typed: the CLI tolerates new fields. */
export interface UsageRow {
  key?: string | null;
  keyName?: string | null;
  model?: string | null;
  day?: string;
  hour?: string;
  requests?: number;
  errors?: number;
  cacheHits?: number;
  promptTokens?: number;
  cachedPromptTokens?: number;
  completionTokens?: number;
  reasoningTokens?: number;
  totalTokens?: number;
  costUsd?: number;
  savedUsd?: number;
  [field: string]: unknown;
}

export interface UsageReport {
  object: 'usage';
  from: string;
  to: string;
  groupBy: UsageGroup[];
  timeZone: string;
  data: UsageRow[];
  totals: UsageRow;
}

const DEFAULT_SINCE = '7d';
const DEFAULT_GROUP: UsageGroup = 'key';
const UNIT_MS = { m: 60_000, h: 3_600_000, d: 86_400_000, w: 7 * 86_400_000 } as const;
const DURATION = /^(\d{1,6})([mhdw])$/;

const options: OptionSpecs = {
  since: {
    type: 'string',
    value: 'WHEN',
    description: `Start of the range: a time ago (30m, 24h, 7d, 2w) or an ISO date or\ndate-time with its zone (2026-11-01, 2026-11-30T10:00Z); default ${DEFAULT_SINCE}`,
  },
  until: { type: 'string', value: 'WHEN', description: "End of the range, in the same forms, or 'now' (the default)" },
  by: {
    type: 'string',
    value: 'GROUP',
    description: `Group rows by model, key, day or hour; several with commas\n(--by key,model); default ${DEFAULT_GROUP}`,
  },
  key: { type: 'string', value: 'ID', description: 'Only the usage of this key' },
  model: { type: 'string', value: 'MODEL', description: 'Only the usage of this model' },
};

/** An instant from a command-line value: `now`, a duration before `now`, or an ISO date (UTC midnight) or date-time. */
export function parseWhen(raw: string, now: number, flag: string, path: string[]): number {
  const value = raw.trim();
  if (value.toLowerCase() === 'now') return now;
  const duration = DURATION.exec(value);
  if (duration) return now - Number(duration[1]) * UNIT_MS[duration[2] as keyof typeof UNIT_MS];
  const ms = isoInstant(value);
  if (ms !== undefined) {
    if (Number.isFinite(ms)) return ms;
    throw new UsageError(`--${flag}: ${value} is not a ${/t/i.test(value) ? 'date-time' : 'date'}`, path);
  }
  throw new UsageError(
    `--${flag} takes a time ago (30m, 24h, 7d, 2w), an ISO date (2026-11-01) or a date-time with its zone (2026-11-30T10:00:00Z) (got '${raw}')`,
    path,
  );
}

function parseGroups(raw: string | undefined, path: string[]): UsageGroup[] {
  if (raw === undefined) return [DEFAULT_GROUP];
  const groups: UsageGroup[] = [];
  for (const part of raw.split(',')) {
    const g = part.trim().toLowerCase();
    if (!(USAGE_GROUPS as readonly string[]).includes(g)) {
      throw new UsageError(`--by takes ${USAGE_GROUPS.join(', ')} or a comma-separated list of them (got '${raw}')`, path);
    }
    if (!groups.includes(g as UsageGroup)) groups.push(g as UsageGroup);
  }
  if (groups.includes('day') && groups.includes('hour')) throw new UsageError('--by: group by day or by hour, not both', path);
  return groups;
}

function filter(ctx: CommandContext, name: string): string | undefined {
  const value = ctx.string(name);
  if (value === undefined) return undefined;
  if (!value.trim()) throw new UsageError(`--${name} cannot be empty`, ctx.path);
  return value.trim();
}

const isNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const count = (v: unknown) => (isNumber(v) ? Math.round(v).toLocaleString('en-US') : '-');
/** Dollars to 4 decimals, so a column lines up; a cost too small to show is not shown as zero. */
const dollars = (v: unknown) => (!isNumber(v) ? '-' : v > 0 && v < 0.00005 ? '<0.0001' : v.toFixed(4));
const text = (v: unknown, absent: string) => (typeof v === 'string' && v ? v : v === null ? absent : '-');

const GROUP_COLUMNS: Record<UsageGroup, { headers: string[]; cells: (row: UsageRow) => string[] }> = {
  day: { headers: ['DAY'], cells: (r) => [text(r.day, '-')] },
  hour: { headers: ['HOUR'], cells: (r) => [typeof r.hour === 'string' ? formatTime(r.hour) : '-'] },
  key: {
    headers: ['KEY', 'NAME'],
    cells: (r) => [text(r.key, '(no key)'), r.key === null ? '' : truncate(text(r.keyName, '-'), 40)],
  },
  model: { headers: ['MODEL'], cells: (r) => [truncate(text(r.model, '(none)'), 60)] },
};

/** Chronological when grouped by day or hour; otherwise the biggest spenders first. */
function sortRows(rows: UsageRow[], groups: UsageGroup[]): UsageRow[] {
  const time = (r: UsageRow) => (groups.includes('hour') ? String(r.hour ?? '') : groups.includes('day') ? String(r.day ?? '') : '');
  const cost = (r: UsageRow) => (isNumber(r.costUsd) ? r.costUsd : 0);
  const tokens = (r: UsageRow) => (isNumber(r.totalTokens) ? r.totalTokens : 0);
  return rows
    .map((row, index) => ({ row, index }))
    .sort((a, b) => time(a.row).localeCompare(time(b.row)) || cost(b.row) - cost(a.row) || tokens(b.row) - tokens(a.row) || a.index - b.index)
    .map((x) => x.row);
}

/**
 * The whole hours the API counted: those that start in [from, to) (src/store/usage-math.ts
 * `reportHours`), as [start of the first, end of the last]; undefined when the report's times
 * cannot be read or no hour starts in its range (the CLI never asks for such a range).
 */
function countedHours(report: UsageReport): [string, string] | undefined {
  const from = typeof report.from === 'string' ? Date.parse(report.from) : NaN;
  const to = typeof report.to === 'string' ? Date.parse(report.to) : NaN;
  if (!Number.isFinite(from) || !Number.isFinite(to)) return undefined;
  const span = reportSpan(from, to);
  if (!span) return undefined;
  const hour = (ms: number) => formatTime(new Date(ms).toISOString());
  return [hour(span[0]), hour(span[1])];
}

/** The human report: a line naming the range, the table, and a totals row. */
export function usageTable(report: UsageReport, asked: UsageGroup[]): string {
  const groups = Array.isArray(report.groupBy) && report.groupBy.every((g) => g in GROUP_COLUMNS) ? report.groupBy : asked;
  const rows = sortRows(Array.isArray(report.data) ? report.data.filter((r) => typeof r === 'object' && r !== null) : [], groups);
  const zone = typeof report.timeZone === 'string' && groups.includes('day') ? ` (days in ${report.timeZone})` : '';
  const hours = countedHours(report);
  const range = hours ? `${hours[0]} to ${hours[1]} (whole hours)` : `${formatTime(report.from)} to ${formatTime(report.to)}`;
  const title = `Usage from ${range}, by ${groups.join(', ')}${zone}`;
  if (rows.length === 0) return `${title}\n\nNo usage in this range.`;

  const groupHeaders = groups.flatMap((g) => GROUP_COLUMNS[g].headers);
  const metrics = (r: UsageRow) => [count(r.requests), count(r.totalTokens), dollars(r.costUsd), count(r.cacheHits), dollars(r.savedUsd)];
  const headers = [...groupHeaders, 'REQUESTS', 'TOKENS', 'COST $', 'CACHE HITS', 'SAVED $'];
  const align: Align[] = [...groupHeaders.map((): Align => 'left'), 'right', 'right', 'right', 'right', 'right'];
  const body = rows.map((r) => [...groups.flatMap((g) => GROUP_COLUMNS[g].cells(r)), ...metrics(r)]);
  const totals = report.totals && typeof report.totals === 'object' ? report.totals : {};
  const totalRow = [...groupHeaders.map((_, i) => (i === 0 ? 'TOTAL' : '')), ...metrics(totals)];
  return `${title}\n\n${renderTable(headers, [...body, totalRow], align)}`;
}

export const usageCommand: Command = {
  name: 'usage',
  summary: 'Report requests, tokens and spend over a time range',
  usage: '[--since 7d|24h|30m|ISO] [--until WHEN] [--by model|key|day|hour] [--key ID] [--model M] [options]',
  description: `Reports what was used between --since and --until, grouped as asked, from the gateway's
usage records. They are hourly: an hour counts, whole, when it starts in the range. So --since is
moved back to the start of its hour, and --until is exclusive: the hour it falls in counts whole, the
hour starting at it does not (--until 2026-12-01, then --since 2026-12-01, count each hour once).
Days are the gateway's QUOTA_TIME_ZONE days; an hour counts on the day it starts. Without --json, a
table sorted by cost (by time when grouped by day or hour) with a totals row; amounts in US dollars.
--json prints the API answer:
  {"object":"usage","from","to","groupBy","timeZone","data":[...],"totals":{...}}

Examples:
  tollgate usage                              # the last 7 days, by key
  tollgate usage --since 24h --by model
  tollgate usage --since 2026-11-01 --until 2026-12-01 --by day --key key_abc
  tollgate usage --since 30m --by hour,model --model gpt-4o-mini --json`,
  options,
  async run(ctx) {
    const now = Date.now();
    const since = ctx.string('since');
    const until = ctx.string('until');
    const asked = parseWhen(since ?? DEFAULT_SINCE, now, 'since', ctx.path);
    const to = until === undefined ? now : parseWhen(until, now, 'until', ctx.path);
    if (asked >= to) throw new UsageError(`--since (${new Date(asked).toISOString()}) must be before --until (${new Date(to).toISOString()})`, ctx.path);
    // The API counts the hours that start in [from, to): back to the start of the hour --since falls
    // in, so that hour counts too (--since 30m always shows the current hour; 7d is the API's default).
    const from = startOfHour(asked);
    const groups = parseGroups(ctx.string('by'), ctx.path);
    const query = new URLSearchParams({ from: new Date(from).toISOString(), to: new Date(to).toISOString(), groupBy: groups.join(',') });
    const keyId = filter(ctx, 'key');
    const model = filter(ctx, 'model');
    if (keyId !== undefined) query.set('keyId', keyId);
    if (model !== undefined) query.set('model', model);

    let report: UsageReport;
    try {
      report = await ctx.client().usageReport<UsageReport>(query);
    } catch (err) {
      // A gateway without this endpoint answers like one without an admin API: say which it may be.
      if (err instanceof ApiError && err.unknownRoute) {
        throw new ApiError(
          404,
          'this gateway has no usage report (GET /admin/usage): it is older than this CLI, or its admin API is off (ADMIN_TOKEN unset)',
          'usage_unavailable',
          err.body,
        );
      }
      throw err;
    }
    if (ctx.json) return ctx.printJson(report);
    ctx.out(usageTable(report, groups));
  },
};
