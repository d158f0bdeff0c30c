// The hour maths of usage reports lives once, in src/store/usage-math.ts: the stores' reportHours,
// the API's default `from` and the CLI's `--since` and its "whole hours" title all use it.
import { describe, expect, it } from 'vitest';
import { reportHours, reportSpan, startOfHour } from '../../src/store/usage-math.js';
import { usageTable, type UsageReport } from '../../src/cli/commands/usage.js';

const HOUR = 3_600_000;
const at = (iso: string) => Date.parse(iso);
const iso = (ms: number) => new Date(ms).toISOString();

describe('startOfHour', () => {
  it('is the start of the UTC hour an instant falls in', () => {
    expect(startOfHour(0)).toBe(0);
    expect(startOfHour(HOUR - 1)).toBe(0);
    expect(startOfHour(HOUR)).toBe(HOUR);
    expect(iso(startOfHour(at('2026-12-01T10:59:59.999Z')))).toBe('2026-12-01T10:00:00.000Z');
    // A zone half an hour off UTC: 05:30 in Asia/Kolkata is 00:00 UTC, 06:00 is 00:30 UTC.
    expect(iso(startOfHour(at('2026-12-01T06:00:00+05:30')))).toBe('2026-12-01T00:00:00.000Z');
  });
});

describe('reportSpan', () => {
  it('is the whole hours that start in [from, to), as reportHours names them', () => {
    const cases: [string, string, [string, string] | null][] = [
      ['2026-12-01T00:00:00Z', '2026-12-02T00:00:00Z', ['2026-12-01T00:00:00.000Z', '2026-12-02T00:00:00.000Z']],
      ['2026-11-30T18:30:00Z', '2026-12-01T18:30:00Z', ['2026-11-30T19:00:00.000Z', '2026-12-01T19:00:00.000Z']],
      ['2026-12-01T10:00:00Z', '2026-12-01T10:00:00.001Z', ['2026-12-01T10:00:00.000Z', '2026-12-01T11:00:00.000Z']],
      ['2026-12-01T10:00:00.001Z', '2026-12-01T11:00:00Z', null],
      ['2026-12-01T10:15:00Z', '2026-12-01T10:45:00Z', null],
    ];
    for (const [from, to, expected] of cases) {
      const span = reportSpan(at(from), at(to));
      expect(span && [iso(span[0]), iso(span[1])], `${from} ${to}`).toEqual(expected);
      const hours = reportHours(at(from), at(to));
      expect(hours, `${from} ${to}`).toEqual(span && [iso(span[0]).slice(0, 13), iso(span[1] - HOUR).slice(0, 13)]);
    }
  });
});

describe('the CLI report title', () => {
  it('names the hours the API counted', () => {
    const report = (from: string, to: string): UsageReport => ({
      object: 'usage', from, to, groupBy: ['key'], timeZone: 'UTC', data: [], totals: {},
    });
    const title = (from: string, to: string) => usageTable(report(from, to), ['key']).split('\n')[0];
    expect(title('2026-11-30T18:30:00.000Z', '2026-12-01T18:30:00.000Z')).toBe(
      'Usage from 2026-11-30T19:00:00Z to 2026-12-01T19:00:00Z (whole hours), by key',
    );
    // No hour starts in the range: the range as given.
    expect(title('2026-12-01T10:15:00.000Z', '2026-12-01T10:45:00.000Z')).toBe(
      'Usage from 2026-12-01T10:15:00Z to 2026-12-01T10:45:00Z, by key',
    );
  });
});
