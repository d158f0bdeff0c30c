// `tollgate usage` against a stub admin API over real HTTP: the query it sends (durations and dates turned into
// from/to, groups, filters), the table and totals, --json, help, bad command lines (exit 2) and API errors (exit 1).
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { main } from '../../src/cli/tollgate.js';

const TOKEN = 'usage-admin-token-0123456789';
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

const metrics = (requests: number, totalTokens: number, costUsd: number, cacheHits = 0, savedUsd = 0) => ({
  requests,
  errors: 0,
  cacheHits,
  promptTokens: Math.round(totalTokens * 0.6),
  cachedPromptTokens: 0,
  completionTokens: totalTokens - Math.round(totalTokens * 0.6),
  reasoningTokens: 0,
  totalTokens,
  costUsd,
  savedUsd,
});

/** Canned rows per groupBy, deliberately not in the order the CLI shows them. */
const CANNED: Record<string, Record<string, unknown>[]> = {
  model: [
    { model: 'text-embedding-3-small', ...metrics(40, 8000, 0.00016) },
    { model: 'gpt-4o', ...metrics(12, 150_000, 1.875, 3, 0.25) },
    { model: 'gpt-4o-mini', ...metrics(300, 1_234_567, 0.4321, 20, 0.01) },
  ],
  key: [
    { key: 'key_small', keyName: 'reports', ...metrics(2, 100, 0.0001) },
    { key: null, keyName: null, ...metrics(5, 0, 0) },
    { key: 'key_big', keyName: 'billing-app', ...metrics(50, 90_000, 2.5, 4, 0.5) },
  ],
  day: [
    { day: '2026-11-30', ...metrics(10, 1000, 0.01) },
    { day: '2026-11-28', ...metrics(1, 10, 5) },
    { day: '2026-11-29', ...metrics(3, 300, 0.003) },
  ],
  'hour,model': [
    { hour: '2026-11-30T11:00:00.000Z', model: 'gpt-4o-mini', ...metrics(1, 10, 0.001) },
    { hour: '2026-11-30T10:00:00.000Z', model: 'gpt-4o-mini', ...metrics(2, 20, 0.002) },
    { hour: '2026-11-30T10:00:00.000Z', model: 'gpt-4o', ...metrics(3, 30, 0.3) },
  ],
  'key,model': [
    { key: 'key_big', keyName: 'billing-app', model: 'gpt-4o', ...metrics(1, 10, 0.1) },
    { key: 'key_big', keyName: 'billing-app', model: 'gpt-4o-mini', ...metrics(2, 20, 0.2) },
  ],
};

function totalsOf(rows: Record<string, unknown>[]) {
  const sum = (f: string) => rows.reduce((s, r) => s + ((r[f] as number) ?? 0), 0);
  const fields = ['requests', 'errors', 'cacheHits', 'promptTokens', 'cachedPromptTokens', 'completionTokens', 'reasoningTokens', 'totalTokens', 'costUsd', 'savedUsd'];
  return Object.fromEntries(fields.map((f) => [f, sum(f)]));
}

let stub: Server;
let url: string;
/** Every request the stub received: its parsed query string. */
let seen: URL[] = [];
/** What the next request gets instead of the canned report. */
let override: { status: number; body: unknown } | undefined;
const printed: string[] = [];

const ALLOWED = new Set(['from', 'to', 'groupBy', 'keyId', 'model']);
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

beforeAll(async () => {
  stub = createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://stub');
    seen.push(u);
    res.setHeader('content-type', 'application/json');
    const fail = (status: number, message: string, code: string | null = 'invalid_value') => {
      res.statusCode = status;
      res.end(JSON.stringify({ error: { message, type: 'invalid_request_error', param: null, code } }));
    };
    if (req.headers.authorization !== `Bearer ${TOKEN}`) return fail(401, 'A valid admin token is required.', 'invalid_admin_token');
    if (req.method !== 'GET' || u.pathname !== '/admin/usage') return fail(404, `Invalid URL (${req.method} ${u.pathname})`, 'unknown_url');
    if (override) {
      const o = override;
      override = undefined;
      res.statusCode = o.status;
      return res.end(JSON.stringify(o.body));
    }
    // Validate the query the way the real endpoint does.
    for (const name of u.searchParams.keys()) if (!ALLOWED.has(name)) return fail(400, `unknown parameter '${name}'`);
    const from = u.searchParams.get('from');
    const to = u.searchParams.get('to');
    const groupBy = u.searchParams.get('groupBy');
    if (!from || !ISO.test(from) || !to || !ISO.test(to)) return fail(400, 'from and to must be ISO instants');
    if (Date.parse(from) >= Date.parse(to)) return fail(400, "'from' must not be after 'to'.");
    if (!groupBy || !(groupBy in CANNED)) return fail(400, `no canned answer for groupBy=${groupBy}`);
    for (const name of ['keyId', 'model']) if (u.searchParams.get(name) === '') return fail(400, `empty ${name}`);
    const data = CANNED[groupBy]!;
    res.end(JSON.stringify({ object: 'usage', from, to, groupBy: groupBy.split(','), timeZone: 'UTC', data, totals: totalsOf(data) }));
  });
  stub.listen(0, '127.0.0.1');
  await once(stub, 'listening');
  url = `http://127.0.0.1:${(stub.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((resolve) => stub.close(() => resolve())));
beforeEach(() => {
  seen = [];
  override = undefined;
});

async function cli(args: string[], env: Record<string, string | undefined> = { TOLLGATE_URL: url, TOLLGATE_ADMIN_TOKEN: TOKEN }) {
  let stdout = '';
  let stderr = '';
  const code = await main(args, { env, stdout: (s) => (stdout += s), stderr: (s) => (stderr += s) });
  printed.push(stdout, stderr);
  return { code, stdout, stderr };
}

async function ok(...args: string[]) {
  const r = await cli(args);
  expect(r.stderr, r.stderr).toBe('');
  expect(r.code).toBe(0);
  return r.stdout;
}

/** The one request the last command sent, with its from/to as epoch ms. */
function lastQuery() {
  expect(seen).toHaveLength(1);
  const q = seen[0]!.searchParams;
  return { q, from: Date.parse(q.get('from')!), to: Date.parse(q.get('to')!) };
}

describe('the query', () => {
  it('defaults to the last 7 days, by key, without filters', async () => {
    const before = Date.now();
    await ok('usage');
    const after = Date.now();
    const { q, from, to } = lastQuery();
    expect([...q.keys()].sort()).toEqual(['from', 'groupBy', 'to']);
    expect(q.get('groupBy')).toBe('key');
    expect(to).toBeGreaterThanOrEqual(before);
    expect(to).toBeLessThanOrEqual(after);
    // A week back from the start of that hour, as the API's own default: that hour counts too.
    expect(from).toBe(Math.floor((to - 7 * DAY) / HOUR) * HOUR);
  });

  it('turns durations into from/to before now', async () => {
    const cases: [string[], number, number][] = [
      [['--since', '24h'], 24 * HOUR, 0],
      [['--since', '30m'], 30 * 60_000, 0],
      [['--since', '2w', '--until', '1d'], 14 * DAY, DAY],
      [['--since', '90m', '--until', '30m'], 90 * 60_000, 30 * 60_000],
      [['--since', '3d', '--until', 'now'], 3 * DAY, 0],
    ];
    for (const [args, sinceAgo, untilAgo] of cases) {
      seen = [];
      const before = Date.now();
      await ok('usage', ...args, '--by', 'model');
      const after = Date.now();
      const { from, to } = lastQuery();
      // The same "now" for both ends; --since moved back to the start of its hour.
      expect(from, args.join(' ')).toBe(Math.floor((to + untilAgo - sinceAgo) / HOUR) * HOUR);
      expect(to + untilAgo).toBeGreaterThanOrEqual(before);
      expect(to + untilAgo).toBeLessThanOrEqual(after);
    }
  });

  it('takes ISO dates (UTC midnight) and date-times with a zone', async () => {
    await ok('usage', '--since', '2026-11-01', '--until', '2026-11-30T12:00:00Z', '--by', 'day');
    expect(lastQuery().q.get('from')).toBe('2026-11-01T00:00:00.000Z');
    expect(lastQuery().q.get('to')).toBe('2026-11-30T12:00:00.000Z');
    seen = [];
    await ok('usage', '--since', '2026-11-30T10:00+02:00', '--until', '2026-11-30T10:30:15.5-05:00', '--by', 'day');
    expect(lastQuery().q.get('from')).toBe('2026-11-30T08:00:00.000Z');
    // --until is sent as given (exclusive); --since moves back to the start of its hour.
    seen = [];
    await ok('usage', '--since', '2026-11-30T10:45+02:00', '--until', '2026-11-30T10:30:15.5-05:00', '--by', 'day');
    expect(lastQuery().q.get('from')).toBe('2026-11-30T08:00:00.000Z');
    expect(lastQuery().q.get('to')).toBe('2026-11-30T15:30:15.500Z');
  });

  it('takes real calendar dates, whatever the zone does to the UTC day', async () => {
    const cases: [string, string][] = [
      ['2028-02-29', '2028-02-29T00:00:00.000Z'], // a leap day
      ['2026-12-01T01:00+02:00', '2026-11-30T23:00:00.000Z'], // the day before, in UTC
      ['2026-11-30T22:30-02:00', '2026-12-01T00:00:00.000Z'], // the day after, in UTC (00:30, from the start of its hour)
      ['2026-11-30T23:59:59.999Z', '2026-11-30T23:00:00.000Z'],
      ['2026-11-30t10:00+0130', '2026-11-30T08:00:00.000Z'], // 08:30Z
    ];
    for (const [since, from] of cases) {
      seen = [];
      await ok('usage', '--since', since, '--until', '2028-03-01', '--by', 'day');
      expect(lastQuery().q.get('from'), since).toBe(from);
    }
  });

  it('sends the groups and filters asked for', async () => {
    await ok('usage', '--by', 'key,model', '--key', 'key_big', '--model', 'gpt-4o-mini');
    const { q } = lastQuery();
    expect(q.get('groupBy')).toBe('key,model');
    expect(q.get('keyId')).toBe('key_big');
    expect(q.get('model')).toBe('gpt-4o-mini');
    seen = [];
    await ok('usage', '--by', ' Hour , model,hour ');
    expect(lastQuery().q.get('groupBy')).toBe('hour,model');
  });
});

describe('human output', () => {
  it('shows a table by model, biggest cost first, with a totals row', async () => {
    const stdout = await ok('usage', '--by', 'model', '--since', '2026-11-01', '--until', '2026-12-01');
    const lines = stdout.trimEnd().split('\n');
    // The API counts the whole hours that start in [--since, --until): not the one that starts at --until.
    expect(lines[0]).toBe('Usage from 2026-11-01T00:00:00Z to 2026-12-01T00:00:00Z (whole hours), by model');
    expect(lines[1]).toBe('');
    expect(lines[2]).toMatch(/^MODEL\s+REQUESTS\s+TOKENS\s+COST \$\s+CACHE HITS\s+SAVED \$$/);
    expect(lines.slice(3)).toHaveLength(4);
    expect(lines[3]).toMatch(/^gpt-4o\s+12\s+150,000\s+1\.8750\s+3\s+0\.2500$/);
    expect(lines[4]).toMatch(/^gpt-4o-mini\s+300\s+1,234,567\s+0\.4321\s+20\s+0\.0100$/);
    expect(lines[5]).toMatch(/^text-embedding-3-small\s+40\s+8,000\s+0\.0002\s+0\s+0\.0000$/);
    expect(lines[6]).toMatch(/^TOTAL\s+352\s+1,392,567\s+2\.3073\s+23\s+0\.2600$/);
    // Numbers are right-aligned under their headers; no trailing spaces.
    const header = lines[2]!;
    for (const line of lines.slice(3)) {
      expect(line.length).toBe(header.length);
      expect(line).toBe(line.trimEnd());
    }
  });

  it('shows key ids and names, and the requests no key was known for', async () => {
    const stdout = await ok('usage');
    const lines = stdout.trimEnd().split('\n');
    expect(lines[2]).toMatch(/^KEY\s+NAME\s+REQUESTS\s+TOKENS\s+COST \$\s+CACHE HITS\s+SAVED \$$/);
    expect(lines[3]).toMatch(/^key_big\s+billing-app\s+50\s+90,000\s+2\.5000\s+4\s+0\.5000$/);
    expect(lines[4]).toMatch(/^key_small\s+reports\s+2\s+100\s+0\.0001\s+0\s+0\.0000$/);
    expect(lines[5]).toMatch(/^\(no key\)\s+5\s+0\s+0\.0000\s+0\s+0\.0000$/);
    expect(lines[6]).toMatch(/^TOTAL\s+57\s+90,100\s+2\.5001\s+4\s+0\.5000$/);
  });

  it('sorts by time when grouped by day or hour', async () => {
    const days = (await ok('usage', '--by', 'day', '--since', '2026-11-28', '--until', '2026-12-01')).trimEnd().split('\n');
    expect(days[0]).toBe('Usage from 2026-11-28T00:00:00Z to 2026-12-01T00:00:00Z (whole hours), by day (days in UTC)');
    expect(days.slice(3).map((l) => l.split(/\s+/)[0])).toEqual(['2026-11-28', '2026-11-29', '2026-11-30', 'TOTAL']);

    const hours = (await ok('usage', '--by', 'hour,model', '--since', '2d')).trimEnd().split('\n');
    expect(hours[2]).toMatch(/^HOUR\s+MODEL\s+REQUESTS/);
    expect(hours.slice(3, 6).map((l) => l.split(/\s+/).slice(0, 2).join(' '))).toEqual([
      '2026-11-30T10:00:00Z gpt-4o', // the same hour: costlier first
      '2026-11-30T10:00:00Z gpt-4o-mini',
      '2026-11-30T11:00:00Z gpt-4o-mini',
    ]);
  });

  it('says so when there is no usage, and tolerates missing fields', async () => {
    override = { status: 200, body: { object: 'usage', from: '2026-11-01T00:00:00.000Z', to: '2026-11-02T00:00:00.000Z', groupBy: ['model'], timeZone: 'UTC', data: [], totals: metrics(0, 0, 0) } };
    expect(await ok('usage', '--by', 'model')).toBe('Usage from 2026-11-01T00:00:00Z to 2026-11-02T00:00:00Z (whole hours), by model\n\nNo usage in this range.\n');

    override = { status: 200, body: { object: 'usage', from: 'x', to: 'y', groupBy: ['model'], data: [{ model: null, requests: 1 }, 'junk'] } };
    const lines = (await ok('usage', '--by', 'model')).trimEnd().split('\n');
    expect(lines[3]).toMatch(/^\(none\)\s+1\s+-\s+-\s+-\s+-$/);
    expect(lines[4]).toMatch(/^TOTAL\s+-\s+-\s+-\s+-\s+-$/);
    expect(lines[0]).toBe('Usage from x to y, by model'); // times it cannot read: shown as they are
  });

  it('names the whole hours counted, not the instants asked for', async () => {
    const lines = (await ok('usage', '--since', '2026-12-01T05:26:00Z', '--until', '2026-12-01T05:26:30Z', '--by', 'model')).split('\n');
    expect(lastQuery().q.get('from')).toBe('2026-12-01T05:00:00.000Z');
    expect(lastQuery().q.get('to')).toBe('2026-12-01T05:26:30.000Z');
    expect(lines[0]).toBe('Usage from 2026-12-01T05:00:00Z to 2026-12-01T06:00:00Z (whole hours), by model');
    seen = [];
    const across = (await ok('usage', '--since', '2026-11-30T23:59Z', '--until', '2026-12-01T02:00:01+01:00', '--by', 'model')).split('\n');
    expect(across[0]).toBe('Usage from 2026-11-30T23:00:00Z to 2026-12-01T02:00:00Z (whole hours), by model');
    // --until on a whole hour: the hour that starts there is the next range's, not this one's.
    seen = [];
    const month = (await ok('usage', '--since', '2026-11-01', '--until', '2026-12-01', '--by', 'model')).split('\n');
    expect(month[0]).toBe('Usage from 2026-11-01T00:00:00Z to 2026-12-01T00:00:00Z (whole hours), by model');
    // A report the API answered from a from/to not on whole hours (not one this CLI sends): the hours that start in it.
    override = { status: 200, body: { object: 'usage', from: '2026-12-01T05:26:00.000Z', to: '2026-12-01T07:10:00.000Z', groupBy: ['model'], timeZone: 'UTC', data: [], totals: metrics(0, 0, 0) } };
    expect((await ok('usage', '--by', 'model')).split('\n')[0]).toBe('Usage from 2026-12-01T06:00:00Z to 2026-12-01T08:00:00Z (whole hours), by model');
  });
});

describe('--json', () => {
  it("prints the API's answer unchanged", async () => {
    const stdout = await ok('usage', '--by', 'key,model', '--json', '--since', '2026-11-01', '--until', '2026-11-30');
    expect(JSON.parse(stdout)).toEqual({
      object: 'usage',
      from: '2026-11-01T00:00:00.000Z',
      to: '2026-11-30T00:00:00.000Z',
      groupBy: ['key', 'model'],
      timeZone: 'UTC',
      data: CANNED['key,model'],
      totals: totalsOf(CANNED['key,model']!),
    });
  });
});

describe('help and bad command lines', () => {
  it('has help, and is listed in the root help', async () => {
    const help = await ok('usage', '--help');
    expect(help).toContain('Usage:\n  tollgate usage [--since 7d|24h|30m|ISO] [--until WHEN] [--by model|key|day|hour] [--key ID] [--model M] [options]');
    for (const flag of ['--since WHEN', '--until WHEN', '--by GROUP', '--key ID', '--model MODEL', '--json']) expect(help).toContain(flag);
    expect(help).toContain('tollgate usage --since 24h --by model');
    expect(await ok('help', 'usage')).toBe(help);
    expect(await ok('--help')).toMatch(/^ {2}usage\s+Report requests, tokens and spend over a time range$/m);
    expect(seen).toHaveLength(0);
  });

  it('rejects bad flags with exit 2 and a pointer to the help, without calling the API', async () => {
    const cases: [string[], string][] = [
      [['--since', 'yesterday'], "error: --since takes a time ago (30m, 24h, 7d, 2w), an ISO date (2026-11-01) or a date-time with its zone (2026-11-30T10:00:00Z) (got 'yesterday')"],
      [['--since', '7'], "(got '7')"],
      [['--since', '5y'], "(got '5y')"],
      [['--since=-1d'], 'error: --since takes'],
      [['--since', '2026-11-30T10:00'], "error: --since takes a time ago (30m, 24h, 7d, 2w), an ISO date (2026-11-01) or a date-time with its zone"],
      [['--since', '2026-13-45'], "error: --since: 2026-13-45 is not a date\n"],
      [['--since', '2026-02-30'], "error: --since: 2026-02-30 is not a date\n"],
      [['--since', '2026-02-29'], "error: --since: 2026-02-29 is not a date\n"],
      [['--since', '2026-11-31', '--until', '2026-12-01'], "error: --since: 2026-11-31 is not a date\n"],
      [['--until', '2026-11-30T24:00Z'], "error: --until: 2026-11-30T24:00Z is not a date-time\n"],
      [['--until', '2026-04-31T10:00+02:00'], "error: --until: 2026-04-31T10:00+02:00 is not a date-time\n"],
      [['--since', '2026-11-30T10:00:60Z'], "error: --since: 2026-11-30T10:00:60Z is not a date-time\n"],
      [['--since', '2026-11-30T10:00+05:75'], "error: --since: 2026-11-30T10:00+05:75 is not a date-time\n"],
      [['--since', '-1d'], "error: --since takes a time ago (30m, 24h, 7d, 2w), an ISO date (2026-11-01) or a date-time with its zone (2026-11-30T10:00:00Z) (got '-1d')"],
      [['--until', 'later'], "error: --until takes a time ago"],
      [['--since', '1h', '--until', '2h'], 'error: --since ('],
      [['--since', '0m'], 'must be before --until'],
      [['--by', 'colour'], "error: --by takes model, key, day, hour or a comma-separated list of them (got 'colour')"],
      [['--by', 'model,'], 'error: --by takes'],
      [['--by', 'day,hour'], 'error: --by: group by day or by hour, not both'],
      [['--key', ' '], 'error: --key cannot be empty'],
      [['--model', ''], 'error: --model cannot be empty'],
      [['--bogus'], "error: unknown option '--bogus'\nRun 'tollgate usage --help' for usage.\n"],
      [['extra'], "error: unexpected argument 'extra'"],
      [['--since'], "error: Option '--since <value>' argument missing"],
      [['--json=yes'], 'error: '],
    ];
    for (const [args, message] of cases) {
      const r = await cli(['usage', ...args]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toContain(message);
      expect(r.stderr).toContain("Run 'tollgate usage --help' for usage.");
      expect(r.stdout).toBe('');
    }
    expect(seen).toHaveLength(0);
  });
});

describe('API errors', () => {
  it('reports a refusal with the API message (exit 1)', async () => {
    override = { status: 400, body: { error: { message: 'The range may span at most 400 days.', type: 'invalid_request_error', param: 'from', code: 'invalid_value' } } };
    const r = await cli(['usage', '--since', '2020-01-01']);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe('error: The range may span at most 400 days.\n');

    const wrong = await cli(['usage'], { TOLLGATE_URL: url, TOLLGATE_ADMIN_TOKEN: 'wrong-token-0123456789' });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain('hint: check the admin token');
  });

  it('explains a gateway without the usage endpoint', async () => {
    const r = await cli(['usage'], { TOLLGATE_URL: `${url}/older`, TOLLGATE_ADMIN_TOKEN: TOKEN });
    expect(r.code).toBe(1);
    // A gateway of today answers an unknown route as OpenAI does (code null): the same explanation.
    override = { status: 404, body: { error: { message: 'Invalid URL (GET /admin/usage)', type: 'invalid_request_error', param: null, code: null } } };
    const today = await cli(['usage'], { TOLLGATE_URL: url, TOLLGATE_ADMIN_TOKEN: TOKEN });
    override = undefined;
    expect(today.stderr).toContain('this gateway has no usage report');
    expect(r.stderr).toBe(
      'error: this gateway has no usage report (GET /admin/usage): it is older than this CLI, or its admin API is off (ADMIN_TOKEN unset)\n',
    );
  });

  it('never printed the admin token', () => {
    expect(printed.length).toBeGreaterThan(20);
    for (const text of printed) expect(text).not.toContain(TOKEN);
  });
});
