// Calendar day and month of an instant in an IANA time zone, and when each ends, via Intl (Node 20 has no Temporal).

export interface CalendarPeriods {
  /** Local date, YYYY-MM-DD. */
  day: string;
  /** Local month, YYYY-MM. */
  month: string;
  /** Epoch ms of the first instant of the next local day (23 h or 25 h away on DST change days). */
  dayEndsAt: number;
  /** Epoch ms of the first instant of the next local month. */
  monthEndsAt: number;
}

/** True when Intl knows the zone (IANA names such as 'UTC', 'Europe/Paris', 'America/New_York'). */
export function validTimeZone(tz: unknown): boolean {
  if (typeof tz !== 'string' || tz.length === 0) return false;
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

const HOUR = 3_600_000;
const pad = (n: number, width = 2) => String(n).padStart(width, '0');
const dayKey = (y: number, m: number, d: number) => `${pad(y, 4)}-${pad(m)}-${pad(d)}`;

interface Wall {
  year: number;
  month: number;
  day: number;
  hour: number;
  minute: number;
  second: number;
}

const formatters = new Map<string, Intl.DateTimeFormat>();

function formatter(timeZone: string): Intl.DateTimeFormat {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    });
    formatters.set(timeZone, f);
  }
  return f;
}

/** The local wall-clock time of an instant. */
function wallAt(ms: number, timeZone: string): Wall {
  const wall: Wall = { year: 0, month: 0, day: 0, hour: 0, minute: 0, second: 0 };
  for (const part of formatter(timeZone).formatToParts(ms)) {
    if (part.type in wall) wall[part.type as keyof Wall] = Number(part.value);
  }
  if (wall.hour === 24) wall.hour = 0; // some ICU versions say 24:00 for midnight despite h23
  return wall;
}

/** Local date as a sortable number (YYYYMMDD). */
function localDateNumber(ms: number, timeZone: string): number {
  const w = wallAt(ms, timeZone);
  return w.year * 10_000 + w.month * 100 + w.day;
}

/** Local time minus UTC at an instant, in ms (whole seconds, as every zone's offsets are). */
function offsetAt(ms: number, timeZone: string): number {
  const w = wallAt(ms, timeZone);
  const wallMs = Date.UTC(w.year, w.month - 1, w.day, w.hour, w.minute, w.second);
  return wallMs - (ms - (((ms % 1000) + 1000) % 1000));
}

/**
 * The first instant whose local date is (year, month, day); out-of-range parts roll over as in
 * Date.UTC (day 32 is the next month's 1st, month 13 next January).
 *
 * Usually local midnight, found from the offset in force (two rounds, since the offset at the guess
 * may differ). Where a zone skips midnight (DST starting at 00:00, e.g. America/Santiago, the day
 * starts at 01:00) neither guess is the start, so the boundary is found by bisection instead.
 */
function startOfLocalDate(year: number, month: number, day: number, timeZone: string): number {
  const wall = Date.UTC(year, month - 1, day);
  const d = new Date(wall);
  const target = d.getUTCFullYear() * 10_000 + (d.getUTCMonth() + 1) * 100 + d.getUTCDate();
  const isStart = (t: number) => localDateNumber(t, timeZone) >= target && localDateNumber(t - 1, timeZone) < target;

  const first = wall - offsetAt(wall, timeZone);
  const second = wall - offsetAt(first, timeZone);
  if (isStart(second)) return second;
  if (second !== first && isStart(first)) return first;

  // UTC offsets lie within -12 h..+14 h: 16 h either side brackets the boundary.
  let before = wall - 16 * HOUR; // local date still earlier than target
  let after = wall + 16 * HOUR; // local date already target (or later)
  while (after - before > 1) {
    const mid = Math.floor((before + after) / 2);
    if (localDateNumber(mid, timeZone) >= target) after = mid;
    else before = mid;
  }
  return after;
}

function utcPeriods(nowMs: number): CalendarPeriods {
  const d = new Date(nowMs);
  const y = d.getUTCFullYear();
  const m = d.getUTCMonth();
  return {
    day: dayKey(y, m + 1, d.getUTCDate()),
    month: `${pad(y, 4)}-${pad(m + 1)}`,
    dayEndsAt: Date.UTC(y, m, d.getUTCDate() + 1),
    monthEndsAt: Date.UTC(y, m + 1, 1),
  };
}

// One entry per zone: the periods last computed and the instant they were computed for. Any later
// instant before dayEndsAt is in the same day and month, so requests reuse it (a few Intl calls saved).
const lastByZone = new Map<string, { from: number; periods: Readonly<CalendarPeriods> }>();

/**
 * The local day and month of `nowMs` in `timeZone` (default UTC), with the instants they end.
 * Throws a RangeError for a zone Intl does not know (check config with validTimeZone).
 */
export function periodsAt(nowMs: number, timeZone = 'UTC'): Readonly<CalendarPeriods> {
  if (!Number.isFinite(nowMs)) throw new RangeError(`periodsAt: not a time: ${nowMs}`);
  const cached = lastByZone.get(timeZone);
  if (cached && nowMs >= cached.from && nowMs < cached.periods.dayEndsAt) return cached.periods;

  let periods: CalendarPeriods;
  if (timeZone === 'UTC') {
    periods = utcPeriods(nowMs);
  } else {
    const w = wallAt(nowMs, timeZone);
    periods = {
      day: dayKey(w.year, w.month, w.day),
      month: `${pad(w.year, 4)}-${pad(w.month)}`,
      dayEndsAt: startOfLocalDate(w.year, w.month, w.day + 1, timeZone),
      monthEndsAt: startOfLocalDate(w.year, w.month + 1, 1, timeZone),
    };
  }
  const frozen = Object.freeze(periods);
  lastByZone.set(timeZone, { from: nowMs, periods: frozen });
  return frozen;
}
