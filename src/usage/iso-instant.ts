// Strict ISO 8601 instants, as the usage API's from/to/since and the CLI's --since/--until take them.
// Date.parse is not used: it reads `foo 1` as 2001, `2026` as a year or as ms, a zoneless time as the
// local one, and rolls impossible values over (2026-02-30 is March 2nd).

const ISO_DATE = /^(\d{4})-(\d{2})-(\d{2})$/;
// A date-time must say its zone: a bare one would mean the local time of whoever reads it.
const ISO_DATE_TIME = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(?:Z|([+-])(\d{2}):?(\d{2}))$/i;

/** Days in a month of the proleptic Gregorian calendar. */
function daysInMonth(year: number, month: number): number {
  return month === 2 ? (year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28) : [4, 6, 9, 11].includes(month) ? 30 : 31;
}

/**
 * The epoch ms of an ISO 8601 date (`2026-12-01`, UTC midnight) or date-time with its zone
 * (`2026-12-01T10:00:00.5+01:00`; seconds and fractions optional). Undefined when the text has
 * neither form; NaN when it has one but names no real time (2026-02-30, T24:00, an offset past
 * 23:59); -Infinity for years 0-99 (before 1970 whatever the offset; Date.UTC would read them as 19xx).
 */
export function isoInstant(value: string): number | undefined {
  const m = ISO_DATE.exec(value) ?? ISO_DATE_TIME.exec(value);
  if (!m) return undefined;
  const [year, month, day, hour, minute, second] = [m[1], m[2], m[3], m[4] ?? '0', m[5] ?? '0', m[6] ?? '0'].map(Number) as [number, number, number, number, number, number];
  const offsetH = Number(m[9] ?? 0);
  const offsetM = Number(m[10] ?? 0);
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month)) return NaN;
  if (hour > 23 || minute > 59 || second > 59 || offsetH > 23 || offsetM > 59) return NaN;
  if (year < 100) return -Infinity;
  const millis = Number((m[7] ?? '').padEnd(3, '0').slice(0, 3)); // finer digits are dropped
  const offset = (m[8] === '-' ? -1 : 1) * (offsetH * 60 + offsetM) * 60_000;
  return Date.UTC(year, month - 1, day, hour, minute, second, millis) - offset;
}
