// Local days and months in IANA time zones: DST days of 23 h and 25 h, month and year ends, leap years.
import { describe, expect, it } from 'vitest';
import { periodsAt, validTimeZone } from '../../src/quota/periods.js';

const at = (iso: string) => Date.parse(iso);
const iso = (ms: number) => new Date(ms).toISOString();
const HOUR = 3_600_000;

/** Start of the local day containing `ms`: where the previous day ends. */
const dayStart = (ms: number, tz: string) => {
  const { day } = periodsAt(ms, tz);
  let t = ms;
  while (periodsAt(t, tz).day === day) t -= HOUR;
  return periodsAt(t, tz).dayEndsAt;
};

// An independent reading of local date and time, for the property checks.
const readers = new Map<string, Intl.DateTimeFormat>();
function local(ms: number, tz: string) {
  let f = readers.get(tz);
  if (!f) {
    f = new Intl.DateTimeFormat('en-CA', { timeZone: tz, year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
    readers.set(tz, f);
  }
  const p = Object.fromEntries(f.formatToParts(ms).map((x) => [x.type, x.value]));
  return { date: `${p.year}-${p.month}-${p.day}`, time: `${p.hour}:${p.minute}` };
}

describe('UTC', () => {
  it('is the default zone', () => {
    expect(periodsAt(at('2026-01-15T12:34:56.789Z'))).toEqual({
      day: '2026-01-15',
      month: '2026-01',
      dayEndsAt: at('2026-01-16T00:00:00Z'),
      monthEndsAt: at('2026-02-01T00:00:00Z'),
    });
  });

  it('rolls Dec 31 over to Jan 1 of the next year', () => {
    const last = periodsAt(at('2026-12-31T23:59:59.999Z'), 'UTC');
    expect(last).toEqual({ day: '2026-12-31', month: '2026-12', dayEndsAt: at('2027-01-01T00:00:00Z'), monthEndsAt: at('2027-01-01T00:00:00Z') });
    const first = periodsAt(at('2027-01-01T00:00:00Z'), 'UTC');
    expect(first).toMatchObject({ day: '2027-01-01', month: '2027-01', dayEndsAt: at('2027-01-02T00:00:00Z'), monthEndsAt: at('2027-02-01T00:00:00Z') });
  });

  it('knows February 29 in the leap year 2028, and not in 2027', () => {
    expect(periodsAt(at('2028-02-28T12:00:00Z')).dayEndsAt).toBe(at('2028-02-29T00:00:00Z'));
    expect(periodsAt(at('2028-02-29T12:00:00Z'))).toEqual({
      day: '2028-02-29',
      month: '2028-02',
      dayEndsAt: at('2028-03-01T00:00:00Z'),
      monthEndsAt: at('2028-03-01T00:00:00Z'),
    });
    expect(periodsAt(at('2027-02-28T12:00:00Z')).dayEndsAt).toBe(at('2027-03-01T00:00:00Z'));
  });
});

describe('Europe/Paris', () => {
  const tz = 'Europe/Paris';

  it('is an hour ahead of UTC in winter, so its new year starts at 23:00 UTC', () => {
    expect(periodsAt(at('2026-12-31T22:59:59.999Z'), tz)).toMatchObject({ day: '2026-12-31', month: '2026-12' });
    expect(periodsAt(at('2026-12-31T23:30:00Z'), tz)).toEqual({
      day: '2027-01-01',
      month: '2027-01',
      dayEndsAt: at('2027-01-01T23:00:00Z'),
      monthEndsAt: at('2027-01-31T23:00:00Z'),
    });
  });

  it('has a 23 h day when summer time starts (2026-03-29) and a 25 h one when it ends (2026-10-25)', () => {
    const spring = periodsAt(at('2026-03-29T10:00:00Z'), tz);
    expect(spring.day).toBe('2026-03-29');
    expect(iso(spring.dayEndsAt)).toBe('2026-03-29T22:00:00.000Z'); // midnight CEST (+02)
    expect(spring.dayEndsAt - dayStart(at('2026-03-29T10:00:00Z'), tz)).toBe(23 * HOUR);
    expect(iso(spring.monthEndsAt)).toBe('2026-03-31T22:00:00.000Z');

    const autumn = periodsAt(at('2026-10-25T10:00:00Z'), tz);
    expect(autumn.day).toBe('2026-10-25');
    expect(iso(autumn.dayEndsAt)).toBe('2026-10-25T23:00:00.000Z'); // midnight CET (+01)
    expect(autumn.dayEndsAt - dayStart(at('2026-10-25T10:00:00Z'), tz)).toBe(25 * HOUR);
  });

  it('ends a leap February at local midnight of March 1', () => {
    expect(periodsAt(at('2028-02-29T22:59:00Z'), tz)).toMatchObject({ day: '2028-02-29', month: '2028-02', monthEndsAt: at('2028-02-29T23:00:00Z') });
    expect(periodsAt(at('2028-02-29T23:30:00Z'), tz)).toMatchObject({ day: '2028-03-01', month: '2028-03' });
  });
});

describe('America/New_York', () => {
  const tz = 'America/New_York';

  it('has a 23 h day on 2026-03-08 and a 25 h day on 2026-11-01', () => {
    const march = periodsAt(at('2026-03-08T12:00:00Z'), tz);
    expect(march.day).toBe('2026-03-08');
    expect(dayStart(at('2026-03-08T12:00:00Z'), tz)).toBe(at('2026-03-08T05:00:00Z')); // midnight EST (-05)
    expect(march.dayEndsAt).toBe(at('2026-03-09T04:00:00Z')); // midnight EDT (-04)
    expect(march.dayEndsAt - at('2026-03-08T05:00:00Z')).toBe(23 * HOUR);

    const november = periodsAt(at('2026-11-01T12:00:00Z'), tz);
    expect(november.day).toBe('2026-11-01');
    expect(dayStart(at('2026-11-01T12:00:00Z'), tz)).toBe(at('2026-11-01T04:00:00Z'));
    expect(november.dayEndsAt).toBe(at('2026-11-02T05:00:00Z'));
    expect(november.dayEndsAt - at('2026-11-01T04:00:00Z')).toBe(25 * HOUR);
  });

  it('keeps the local day inside the repeated hour of 2026-11-01', () => {
    // 05:30Z is 01:30 EDT, 06:30Z is 01:30 EST again: same local day either way.
    expect(periodsAt(at('2026-11-01T05:30:00Z'), tz).day).toBe('2026-11-01');
    expect(periodsAt(at('2026-11-01T06:30:00Z'), tz).day).toBe('2026-11-01');
  });

  it('is still in the old year and month when UTC is not', () => {
    expect(periodsAt(at('2027-01-01T03:00:00Z'), tz)).toEqual({
      day: '2026-12-31',
      month: '2026-12',
      dayEndsAt: at('2027-01-01T05:00:00Z'),
      monthEndsAt: at('2027-01-01T05:00:00Z'),
    });
    expect(periodsAt(at('2026-02-28T23:00:00Z'), tz).monthEndsAt).toBe(at('2026-03-01T05:00:00Z'));
  });
});

describe('every zone, hour by hour', () => {
  // Half-hour DST (Lord Howe), +13:45 (Chatham), +14 (Kiritimati), -03:30 (St John's), +05:45
  // (Kathmandu), and Santiago, where DST starts at midnight so some day begins at 01:00.
  const zones = ['UTC', 'Europe/Paris', 'America/New_York', 'America/Santiago', 'Australia/Lord_Howe', 'Pacific/Chatham', 'Pacific/Kiritimati', 'America/St_Johns', 'Asia/Kathmandu', 'Pacific/Pago_Pago'];

  it.each(zones)('%s: the day and month contain now and end where the next begin', (tz) => {
    const problems: string[] = [];
    const check = (ok: boolean, what: string, t: number) => {
      if (!ok) problems.push(`${iso(t)}: ${what}`);
    };
    const dayStartTimes = new Set<string>();
    // Every 5 h through 2026: each day is visited, at every hour of the day over the year.
    for (let t = at('2026-01-01T00:17:00Z'); t < at('2027-01-01T00:00:00Z'); t += 5 * HOUR) {
      const p = periodsAt(t, tz);
      const now = local(t, tz);
      check(p.day === now.date && p.month === now.date.slice(0, 7), `day ${p.day} month ${p.month}, local ${now.date}`, t);
      check(p.dayEndsAt > t && p.dayEndsAt - t <= 25 * HOUR, `dayEndsAt ${iso(p.dayEndsAt)}`, t);
      check(local(p.dayEndsAt - 1, tz).date === p.day, 'the last ms is not in the day', t);
      check(local(p.dayEndsAt, tz).date > p.day, 'dayEndsAt is still in the day', t);
      dayStartTimes.add(local(p.dayEndsAt, tz).time);
      check(p.monthEndsAt >= p.dayEndsAt, 'month ends before the day', t);
      check(local(p.monthEndsAt - 1, tz).date.slice(0, 7) === p.month, 'the last ms is not in the month', t);
      check(local(p.monthEndsAt, tz).date.slice(0, 7) > p.month, 'monthEndsAt is still in the month', t);
    }
    expect(problems).toEqual([]);
    if (tz === 'America/Santiago') expect([...dayStartTimes].sort()).toEqual(['00:00', '01:00']);
    else expect([...dayStartTimes]).toEqual(['00:00']);
  });
});

describe('caching and validation', () => {
  it('answers right when the clock goes backwards or jumps', () => {
    const tz = 'Europe/Paris';
    expect(periodsAt(at('2026-06-15T12:00:00Z'), tz).day).toBe('2026-06-15');
    expect(periodsAt(at('2026-06-14T12:00:00Z'), tz).day).toBe('2026-06-14');
    expect(periodsAt(at('2026-06-15T21:59:59.999Z'), tz).day).toBe('2026-06-15');
    expect(periodsAt(at('2026-06-15T22:00:00Z'), tz).day).toBe('2026-06-16');
    expect(periodsAt(at('2030-06-15T12:00:00Z'), tz).day).toBe('2030-06-15');
  });

  it('validates zones', () => {
    for (const tz of ['UTC', 'Europe/Paris', 'America/New_York', 'Asia/Kolkata']) expect(validTimeZone(tz)).toBe(true);
    for (const tz of ['', 'Mars/Olympus_Mons', 'Not a zone', 42, undefined]) expect(validTimeZone(tz)).toBe(false);
    expect(() => periodsAt(Date.now(), 'Mars/Olympus_Mons')).toThrow(RangeError);
    expect(() => periodsAt(Number.NaN)).toThrow(RangeError);
  });
});
