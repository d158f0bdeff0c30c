// Turns hourly usage rows into the admin API's report: filtered, grouped, summed, in USD.
import type { UsageRow } from '../store/store.js';
import { USAGE_METRICS, type UsageMetric } from '../store/usage-math.js';
import { periodsAt } from '../quota/periods.js';

export const GROUPS = ['key', 'model', 'day', 'hour'] as const;
export type Group = (typeof GROUPS)[number];

const METRICS = USAGE_METRICS;
type Sums = Record<UsageMetric, number>;

const emptySums = (): Sums => Object.fromEntries(METRICS.map((m) => [m, 0])) as Sums;

function add(into: Sums, row: UsageRow) {
  for (const m of METRICS) into[m] += row[m];
}

/** Integer micro-dollars out, dollars in the report (summed as integers first: no float drift). */
function present(sums: Sums) {
  const { costMicros, savedMicros, ...counts } = sums;
  return { ...counts, costUsd: costMicros / 1e6, savedUsd: savedMicros / 1e6 };
}

export interface ReportQuery {
  fromMs: number;
  toMs: number;
  keyId?: string;
  model?: string;
  groupBy: Group[];
  timeZone: string;
}

export function buildReport(rows: UsageRow[], q: ReportQuery, keyNames: Map<string, string>) {
  const groups = new Map<string, { fields: Record<string, string | null>; sums: Sums; sortTime: string }>();
  const totals = emptySums();
  for (const row of rows) {
    if (q.keyId !== undefined && row.keyId !== q.keyId) continue;
    if (q.model !== undefined && row.model !== q.model) continue;
    add(totals, row);
    const hourStart = Date.parse(`${row.hour}:00:00.000Z`);
    const fields: Record<string, string | null> = {};
    for (const g of q.groupBy) {
      if (g === 'key') {
        fields.key = row.keyId || null;
        fields.keyName = row.keyId ? (keyNames.get(row.keyId) ?? null) : null;
      } else if (g === 'model') fields.model = row.model || null;
      // An hour is one bucket, so it belongs to one day: the local day its START is in. In a zone
      // whose midnight is not on a UTC hour (Asia/Kolkata, +05:30) the hour 18:00Z-19:00Z, 23:30 to
      // 00:30 there, is counted whole on the earlier day; the routes select hours by start as well
      // (reportHours), so a report from one local midnight to another shows only its own days.
      else if (g === 'day') fields.day = periodsAt(hourStart, q.timeZone).day;
      else fields.hour = new Date(hourStart).toISOString();
    }
    const id = JSON.stringify(fields);
    let group = groups.get(id);
    if (!group) groups.set(id, (group = { fields, sums: emptySums(), sortTime: fields.hour ?? fields.day ?? '' }));
    add(group.sums, row);
  }
  const data = [...groups.values()]
    // Over time: chronological; otherwise the biggest spenders first.
    .sort((a, b) => a.sortTime.localeCompare(b.sortTime) || b.sums.costMicros - a.sums.costMicros || b.sums.requests - a.sums.requests)
    .map((g) => ({ ...g.fields, ...present(g.sums) }));
  return {
    object: 'usage' as const,
    from: new Date(q.fromMs).toISOString(),
    to: new Date(q.toMs).toISOString(),
    groupBy: q.groupBy,
    timeZone: q.timeZone,
    data,
    totals: present(totals),
  };
}
