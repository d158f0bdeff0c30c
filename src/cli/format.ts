// Human output for keys: one-line summaries for tables, key/value blocks, and the quota table.
// Everything here tolerates missing or unexpected fields: the API may grow, and older gateways send less.
import { renderFields, renderTable, truncate } from './table.js';

export interface LimitField {
  /** The API's name, in `limits` and `quota`. */
  field: string;
  /** The CLI flag, without dashes. */
  flag: string;
  kind: 'count' | 'usd';
  /** Shown in the quota table. */
  label: string;
  /** Formats a value of this limit for a one-line summary. */
  summary: (value: string) => string;
  help: string;
}

/** Every limit the API knows, in display order. */
export const LIMIT_FIELDS: readonly LimitField[] = [
  { field: 'rpm', flag: 'rpm', kind: 'count', label: 'requests/minute', summary: (v) => `${v} rpm`, help: 'Requests per minute' },
  { field: 'tpm', flag: 'tpm', kind: 'count', label: 'tokens/minute', summary: (v) => `${v} tpm`, help: 'Tokens per minute' },
  { field: 'tokensPerDay', flag: 'tokens-per-day', kind: 'count', label: 'tokens/day', summary: (v) => `${v} tokens/day`, help: 'Tokens per day' },
  { field: 'tokensPerMonth', flag: 'tokens-per-month', kind: 'count', label: 'tokens/month', summary: (v) => `${v} tokens/month`, help: 'Tokens per month' },
  { field: 'usdPerDay', flag: 'usd-per-day', kind: 'usd', label: 'usd/day', summary: (v) => `${v}/day`, help: 'Spend per day, in US dollars' },
  { field: 'usdPerMonth', flag: 'usd-per-month', kind: 'usd', label: 'usd/month', summary: (v) => `${v}/month`, help: 'Spend per month, in US dollars' },
  { field: 'maxConcurrent', flag: 'max-concurrent', kind: 'count', label: 'concurrent', summary: (v) => `${v} concurrent`, help: 'Requests in flight at once' },
];

const byField = new Map(LIMIT_FIELDS.map((l) => [l.field, l]));

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A number as the CLI shows it: US dollars with `$` and at most 6 decimals, counts as they are. */
export function formatAmount(value: unknown, kind: 'count' | 'usd' = 'count'): string {
  if (typeof value === 'number' && Number.isFinite(value)) {
    return kind === 'usd' ? `$${Number(value.toFixed(6))}` : String(value);
  }
  if (typeof value === 'string' && value) return value;
  return '-';
}

/** An ISO timestamp without milliseconds (`2025-01-31T12:00:00Z`); `-` when absent. */
export function formatTime(value: unknown): string {
  if (typeof value !== 'string' || !value) return '-';
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? value : date.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export function formatModels(models: unknown, separator = ', '): string {
  if (models === null || models === undefined) return 'all';
  if (!Array.isArray(models)) return String(models);
  return models.length === 0 ? 'none' : models.map(String).join(separator);
}

/** `60 rpm, $5/day, 2 concurrent`, or `none`. */
export function formatLimits(limits: unknown): string {
  if (!isRecord(limits)) return 'none';
  const known = LIMIT_FIELDS.filter((l) => limits[l.field] !== undefined && limits[l.field] !== null).map((l) =>
    l.summary(formatAmount(limits[l.field], l.kind)),
  );
  const other = Object.entries(limits)
    .filter(([k, v]) => !byField.has(k) && v !== undefined && v !== null)
    .map(([k, v]) => `${k}=${formatScalar(v)}`);
  const parts = [...known, ...other];
  return parts.length ? parts.join(', ') : 'none';
}

export function formatMetadata(metadata: unknown): string {
  if (!isRecord(metadata)) return '-';
  const parts = Object.entries(metadata).map(([k, v]) => `${k}=${formatScalar(v)}`);
  return parts.length ? parts.join(', ') : '-';
}

function formatScalar(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

/** The table of `keys list`. */
export function keysTable(keys: unknown[]): string {
  const rows = keys.filter(isRecord).map((k) => [
    formatScalar(k.id ?? '-'),
    truncate(formatScalar(k.name ?? '-'), 40),
    truncate(formatModels(k.models, ','), 40),
    formatLimits(k.limits),
    formatTime(k.createdAt),
    formatTime(k.revokedAt),
  ]);
  return renderTable(['ID', 'NAME', 'MODELS', 'LIMITS', 'CREATED', 'REVOKED'], rows);
}

const SHOWN = new Set(['id', 'name', 'hint', 'models', 'limits', 'metadata', 'createdAt', 'updatedAt', 'revokedAt', 'key', 'quota', 'object']);

/** The key/value block of one key (never its secret), then its quota table when the API sent one. */
export function keyDetails(key: Record<string, unknown>): string {
  const fields: [string, string][] = [
    ['id', formatScalar(key.id ?? '-')],
    ['name', formatScalar(key.name ?? '-')],
  ];
  if (key.hint !== undefined) fields.push(['hint', formatScalar(key.hint)]);
  fields.push(
    ['models', formatModels(key.models)],
    ['limits', formatLimits(key.limits)],
    ['metadata', formatMetadata(key.metadata)],
    ['created', formatTime(key.createdAt)],
  );
  if (key.updatedAt !== undefined) fields.push(['updated', formatTime(key.updatedAt)]);
  fields.push(['revoked', formatTime(key.revokedAt)]);
  // Fields a newer gateway may add.
  for (const [name, value] of Object.entries(key)) {
    if (!SHOWN.has(name) && value !== undefined) fields.push([name, formatScalar(value)]);
  }
  const quota = quotaTable(key.quota);
  return quota ? `${renderFields(fields)}\n\nQuota:\n${quota}` : renderFields(fields);
}

/**
 * The quota table: for each limit, its value, what is used, what is reserved by requests in flight, and when
 * the window resets. Undefined when there is no quota object (older gateways) or it has no entries.
 */
export function quotaTable(quota: unknown): string | undefined {
  if (!isRecord(quota)) return undefined;
  const names = [
    ...LIMIT_FIELDS.map((l) => l.field).filter((f) => f in quota),
    ...Object.keys(quota).filter((f) => !byField.has(f)),
  ];
  const rows: string[][] = [];
  for (const name of names) {
    const entry = quota[name];
    if (!isRecord(entry)) continue;
    const spec = byField.get(name);
    const kind = spec?.kind ?? 'count';
    rows.push([
      spec?.label ?? name,
      entry.limit === null ? 'none' : formatAmount(entry.limit, kind),
      formatAmount(entry.used, kind),
      formatAmount(entry.reserved, kind),
      formatTime(entry.resetsAt),
    ]);
  }
  if (rows.length === 0) return undefined;
  return renderTable(['QUOTA', 'LIMIT', 'USED', 'RESERVED (IN FLIGHT)', 'RESETS AT'], rows, ['left', 'right', 'right', 'right', 'left']);
}
