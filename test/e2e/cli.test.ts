// The `tollgate` CLI against a real gateway: keys create, list, show, update (merging limits), revoke and
// rotate; errors and exit codes; help; the quota table; and the real entry run as a child process.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { main } from '../../src/cli/tollgate.js';
import { startGateway, ADMIN_TOKEN, type Gateway } from '../helpers/gateway.js';
import { freePort } from '../helpers/redis-server.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

let gw: Gateway;
/** Every line the CLI printed in this file, checked at the end for the admin token. */
const printed: string[] = [];

beforeAll(async () => {
  gw = await startGateway();
});
afterAll(() => gw.close());

type Env = Record<string, string | undefined>;
const gatewayEnv = (): Env => ({ TOLLGATE_URL: gw.url, TOLLGATE_ADMIN_TOKEN: ADMIN_TOKEN });

async function cli(args: string[], env: Env = gatewayEnv()) {
  let stdout = '';
  let stderr = '';
  const code = await main(args, { env, stdout: (s) => (stdout += s), stderr: (s) => (stderr += s) });
  printed.push(stdout, stderr);
  return { code, stdout, stderr };
}

/** Runs the CLI and expects success with nothing on stderr. */
async function ok(...args: string[]) {
  const r = await cli(args);
  expect(r.stderr, r.stderr).toBe('');
  expect(r.code).toBe(0);
  return r.stdout;
}

const modelsStatus = async (key: string) =>
  (await fetch(`${gw.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } })).status;

async function apiKey(id: string) {
  const res = await gw.admin('GET', `/admin/keys/${id}`);
  expect(res.status).toBe(200);
  return res.body;
}

const secretIn = (stdout: string) => /^ {4}(tg-[\w-]+)$/m.exec(stdout)?.[1];

describe('keys create', () => {
  it('creates a key and prints its secret once, with the note, in human form', async () => {
    const stdout = await ok(
      'keys', 'create', '--name', 'billing-app', '--models', 'gpt-4o-mini,text-embedding-3-*',
      '--rpm', '60', '--usd-per-day', '5', '--metadata', 'team=billing', '--metadata', 'env=prod',
    );
    const id = /^Created key (key_[\w-]+)\.$/m.exec(stdout)?.[1];
    const secret = secretIn(stdout);
    expect(id).toBeDefined();
    expect(secret).toMatch(/^tg-[\w-]{40,}$/);
    expect(stdout).toContain('it will not be shown again');
    expect(stdout).toMatch(/^name\s+billing-app$/m);
    expect(stdout).toMatch(/^models\s+gpt-4o-mini, text-embedding-3-\*$/m);
    expect(stdout).toMatch(/^limits\s+60 rpm, \$5\/day$/m);
    expect(stdout).toMatch(/^metadata\s+team=billing, env=prod$/m);
    expect(stdout.split(secret!).length).toBe(2); // printed exactly once

    expect(await apiKey(id!)).toMatchObject({
      name: 'billing-app',
      models: ['gpt-4o-mini', 'text-embedding-3-*'],
      limits: { rpm: 60, usdPerDay: 5 },
      metadata: { team: 'billing', env: 'prod' },
    });
    expect(await modelsStatus(secret!)).toBe(200);
  });

  it('prints the API JSON with --json', async () => {
    const stdout = await ok('keys', 'create', '--json', '--name', 'scripted', '--tokens-per-month', '1000000', '--max-concurrent', '2', '--tpm', '5_000');
    const body = JSON.parse(stdout);
    expect(body).toMatchObject({ name: 'scripted', models: null, limits: { tokensPerMonth: 1_000_000, maxConcurrent: 2, tpm: 5000 }, metadata: {} });
    expect(body.id).toMatch(/^key_/);
    expect(body.key).toMatch(/^tg-/);
    expect(await modelsStatus(body.key)).toBe(200);
  });
});

describe('keys list and show', () => {
  it('lists keys in an aligned table without secrets', async () => {
    const a = JSON.parse(await ok('keys', 'create', '--json', '--name', 'list-a', '--rpm', '7'));
    const b = JSON.parse(await ok('keys', 'create', '--json', '--name', 'list-b', '--models', 'gpt-4o*', '--usd-per-month', '12.5'));
    const stdout = await ok('keys', 'list');
    const lines = stdout.trimEnd().split('\n');
    const header = lines[0]!;
    expect(header).toMatch(/^ID\s+NAME\s+MODELS\s+LIMITS\s+CREATED\s+REVOKED$/);
    const rowA = lines.find((l) => l.startsWith(a.id))!;
    const rowB = lines.find((l) => l.startsWith(b.id))!;
    expect(rowA).toMatch(/list-a\s+all\s+7 rpm\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\s+-$/);
    expect(rowB).toMatch(/list-b\s+gpt-4o\*\s+\$12\.5\/month\s+/);
    // Columns line up under their headers.
    for (const [column, value] of [['NAME', 'list-a'], ['MODELS', 'all'], ['LIMITS', '7 rpm']] as const) {
      expect(rowA.indexOf(value, a.id.length)).toBe(header.indexOf(column));
    }
    expect(lines.every((l) => l === l.trimEnd())).toBe(true);
    expect(stdout).not.toContain(a.key);
    expect(stdout).not.toContain(b.key);

    const json = JSON.parse(await ok('keys', 'list', '--json'));
    expect(json.object).toBe('list');
    const listed = json.data.find((k: { id: string }) => k.id === a.id);
    expect(listed).toMatchObject({ name: 'list-a', limits: { rpm: 7 } });
    expect(listed.key).toBeUndefined();
  });

  it('shows one key as a key/value block, and its JSON with --json', async () => {
    const created = JSON.parse(await ok('keys', 'create', '--json', '--name', 'shown', '--rpm', '30', '--metadata', 'owner=ops'));
    const stdout = await ok('keys', 'show', created.id);
    expect(stdout).toMatch(new RegExp(`^id\\s+${created.id}$`, 'm'));
    expect(stdout).toMatch(/^name\s+shown$/m);
    expect(stdout).toMatch(/^hint\s+tg-\S{4}\.\.\.$/m);
    expect(stdout).toMatch(/^models\s+all$/m);
    expect(stdout).toMatch(/^limits\s+30 rpm$/m);
    expect(stdout).toMatch(/^metadata\s+owner=ops$/m);
    expect(stdout).toMatch(/^created\s+\d{4}-/m);
    expect(stdout).toMatch(/^revoked\s+-$/m);
    expect(stdout).not.toContain(created.key);
    // The quota table appears exactly when the gateway reports a quota.
    const api = await apiKey(created.id);
    const hasQuota = api.quota !== undefined && api.quota !== null && Object.keys(api.quota).length > 0;
    expect(stdout.includes('\nQuota:\n')).toBe(hasQuota);
    if (api.quota?.rpm) expect(stdout).toMatch(/^requests\/minute\s+30\s+0\s+0\s/m);

    const json = JSON.parse(await ok('keys', 'show', '--json', created.id));
    expect(json).toMatchObject({ id: created.id, name: 'shown', limits: { rpm: 30 }, metadata: { owner: 'ops' }, revokedAt: null });
  });
});

describe('keys update', () => {
  it('merges limit and metadata flags into the current ones', async () => {
    const { id } = JSON.parse(
      await ok('keys', 'create', '--json', '--name', 'before', '--rpm', '60', '--usd-per-day', '5', '--metadata', 'team=a'),
    );
    const stdout = await ok('keys', 'update', id, '--rpm', '10', '--tpm', '1000', '--name', 'after', '--metadata', 'env=prod');
    expect(stdout).toContain(`Updated key ${id}.`);
    expect(stdout).toMatch(/^limits\s+10 rpm, 1000 tpm, \$5\/day$/m);
    expect(await apiKey(id)).toMatchObject({ name: 'after', limits: { rpm: 10, tpm: 1000, usdPerDay: 5 }, metadata: { team: 'a', env: 'prod' } });

    await ok('keys', 'update', id, '--usd-per-day', 'none');
    expect((await apiKey(id)).limits).toEqual({ rpm: 10, tpm: 1000 });

    await ok('keys', 'update', id, '--models', 'gpt-4o*,gpt-4.1');
    expect((await apiKey(id)).models).toEqual(['gpt-4o*', 'gpt-4.1']);
    await ok('keys', 'update', id, '--models', 'all');
    expect((await apiKey(id)).models).toBeNull();
    expect((await apiKey(id)).limits).toEqual({ rpm: 10, tpm: 1000 }); // untouched by --models

    await ok('keys', 'update', id, '--clear-limits', '--max-concurrent', '3');
    expect((await apiKey(id)).limits).toEqual({ maxConcurrent: 3 });
    const json = JSON.parse(await ok('keys', 'update', id, '--clear-limits', '--json'));
    expect(json.limits).toEqual({});
    expect((await apiKey(id)).limits).toEqual({});

    await ok('keys', 'update', id, '--clear-metadata', '--metadata', 'only=this');
    expect((await apiKey(id)).metadata).toEqual({ only: 'this' });
    await ok('keys', 'update', id, '--clear-metadata');
    expect((await apiKey(id)).metadata).toEqual({});

    await ok('keys', 'update', id, '--rpm', '1_000', '--usd-per-month', '1_000.50');
    expect((await apiKey(id)).limits).toEqual({ rpm: 1000, usdPerMonth: 1000.5 });
  });

  it('refuses an update with nothing to change (exit 2)', async () => {
    const { id } = await gw.createKey();
    const r = await cli(['keys', 'update', id]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      "error: nothing to update: give --name, --models, a limit flag, --clear-limits, --metadata or --clear-metadata\nRun 'tollgate keys update --help' for usage.\n",
    );
  });
});

describe('keys revoke and rotate', () => {
  it('revokes a key: refused from then on, shown as revoked', async () => {
    const created = JSON.parse(await ok('keys', 'create', '--json', '--name', 'doomed'));
    expect(await modelsStatus(created.key)).toBe(200);
    expect(await ok('keys', 'revoke', created.id)).toContain(`Revoked key ${created.id}`);
    expect(await modelsStatus(created.key)).toBe(401);
    expect(await ok('keys', 'show', created.id)).toMatch(/^revoked\s+\d{4}-\d\d-\d\dT/m);
    const row = (await ok('keys', 'list')).split('\n').find((l) => l.startsWith(created.id))!;
    expect(row).toMatch(/Z\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);

    const again = await cli(['keys', 'rotate', created.id]);
    expect(again.code).toBe(1);
    expect(again.stderr).toBe('error: A revoked key cannot be rotated.\n');
    expect(again.stdout).toBe('');
  });

  it('rotates a key: the new secret is printed once and works, the old one gets 401', async () => {
    const created = JSON.parse(await ok('keys', 'create', '--json', '--name', 'rotating', '--rpm', '10'));
    const stdout = await ok('keys', 'rotate', created.id);
    const secret = secretIn(stdout);
    expect(secret).toMatch(/^tg-/);
    expect(secret).not.toBe(created.key);
    expect(stdout).toContain('it will not be shown again');
    expect(stdout).toContain('the old secret no longer works');
    expect(await modelsStatus(created.key)).toBe(401);
    expect(await modelsStatus(secret!)).toBe(200);

    const json = JSON.parse(await ok('keys', 'rotate', '--json', created.id));
    expect(json).toMatchObject({ id: created.id, name: 'rotating', limits: { rpm: 10 } });
    expect(await modelsStatus(secret!)).toBe(401);
    expect(await modelsStatus(json.key)).toBe(200);
  });
});

describe('errors', () => {
  it('reports a wrong admin token (exit 1) without printing any token', async () => {
    const wrong = 'wrong-admin-token-0123456789';
    const r = await cli(['keys', 'list'], { TOLLGATE_URL: gw.url, TOLLGATE_ADMIN_TOKEN: wrong });
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('error: A valid admin token is required.');
    expect(r.stderr).toContain('hint: check the admin token');
    expect(r.stderr).not.toContain(wrong);

    // --token wins over the environment, both ways.
    const flagWrong = await cli(['keys', 'list', '--token', wrong]);
    expect(flagWrong.code).toBe(1);
    expect(flagWrong.stderr).not.toContain(wrong);
    const flagRight = await cli(['--token', ADMIN_TOKEN, 'keys', 'list'], { TOLLGATE_URL: gw.url, TOLLGATE_ADMIN_TOKEN: wrong });
    expect(flagRight.code).toBe(0);
  });

  it('falls back to ADMIN_TOKEN, and asks for a token when there is none (exit 2)', async () => {
    expect((await cli(['keys', 'list'], { TOLLGATE_URL: gw.url, ADMIN_TOKEN })).code).toBe(0);
    const none = await cli(['keys', 'list'], { TOLLGATE_URL: gw.url });
    expect(none.code).toBe(2);
    expect(none.stderr).toContain('error: no admin token');
  });

  it('refuses an explicit empty --token (exit 2) instead of using the environment', async () => {
    for (const args of [['keys', 'list', '--token', ''], ['--token', '', 'keys', 'list'], ['keys', 'list', '--token=  '], ['keys', 'show', 'key_x', '--token=']]) {
      const r = await cli(args);
      expect(r.code, JSON.stringify(args)).toBe(2);
      expect(r.stderr, JSON.stringify(args)).toMatch(
        /^error: --token cannot be empty: give the admin token, or leave --token out to use TOLLGATE_ADMIN_TOKEN or ADMIN_TOKEN\nRun 'tollgate keys (list|show) --help' for usage\.\n$/,
      );
      expect(r.stdout).toBe('');
    }
  });

  it('reports an unknown id with the API message (exit 1)', async () => {
    for (const args of [['keys', 'show', 'key_nope'], ['keys', 'update', 'key_nope', '--rpm', '5'], ['keys', 'update', 'key_nope', '--name', 'x'], ['keys', 'revoke', 'key_nope'], ['keys', 'rotate', 'key_nope']]) {
      const r = await cli(args);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr).toBe("error: No key with id 'key_nope'.\n");
      expect(r.stdout).toBe('');
    }
  });

  it('rejects bad command lines with exit 2 and a pointer to the help', async () => {
    const cases: [string[], string][] = [
      [['keys', 'list', '--bogus'], "error: unknown option '--bogus'\nRun 'tollgate keys list --help' for usage.\n"],
      [['keys', 'create', '--name', 'x', '--rpm', 'abc'], "error: --rpm must be a positive whole number (got 'abc')"],
      [['keys', 'create', '--name', 'x', '--rpm', '0'], 'error: --rpm must be a positive whole number'],
      [['keys', 'create', '--name', 'x', '--rpm', '1.5'], 'error: --rpm must be a positive whole number'],
      [['keys', 'create', '--name', 'x', '--usd-per-day', '-3'], "error: --usd-per-day must be a positive amount of US dollars, e.g. 5 or 0.50 (got '-3')"],
      [['keys', 'create', '--name', 'x', '--rpm', '-1'], "error: --rpm must be a positive whole number (got '-1')\n"],
      [['keys', 'create', '--name', 'x', '--rpm=-1'], "error: --rpm must be a positive whole number (got '-1')\n"],
      [['keys', 'create', '--name', 'x', '--usd-per-day', '-.5'], "error: --usd-per-day must be a positive amount of US dollars, e.g. 5 or 0.50 (got '-.5')"],
      [['keys', 'update', 'key_nope', '--max-concurrent', '-2'], "error: --max-concurrent must be a positive whole number, or 'none' (got '-2')\n"],
      [['keys', 'create', '--name', '--rpm', '5'], "error: --name is missing its value (a value starting with '-' is written --name=VALUE)\n"],
      [['keys', 'create', '--name', 'x', '--rpm', '1_'], "error: --rpm must be a positive whole number (got '1_')"],
      [['keys', 'create', '--name', 'x', '--rpm', '1__0'], "error: --rpm must be a positive whole number (got '1__0')"],
      [['keys', 'create', '--name', 'x', '--tpm', '1_000_'], "error: --tpm must be a positive whole number (got '1_000_')"],
      [['keys', 'create', '--name', 'x', '--usd-per-day', '5_'], "error: --usd-per-day must be a positive amount of US dollars, e.g. 5 or 0.50 (got '5_')"],
      [['keys', 'create', '--name', 'x', '--usd-per-day', '5_.5'], "(got '5_.5')"],
      [['keys', 'create', '--name', 'x', '--rpm', 'none'], 'error: --rpm must be a positive whole number'],
      [['keys', 'create', '--name', 'x', '--metadata', 'novalue'], "error: --metadata takes KEY=VALUE (got 'novalue')"],
      [['keys', 'create', '--name', 'x', '--models', ','], 'error: --models needs'],
      [['keys', 'create'], 'error: --name is required'],
      [['keys', 'create', '--name'], "error: Option '--name <value>' argument missing"],
      [['keys', 'show'], "error: missing ID\nRun 'tollgate keys show --help' for usage.\n"],
      [['keys', 'show', 'a', 'b'], "error: unexpected argument 'b'"],
      [['keys', 'list', '--json=yes'], 'error: '],
      [['keys', 'frobnicate'], "error: unknown command 'frobnicate'\nRun 'tollgate keys --help' for usage.\n"],
      [['nope'], "error: unknown command 'nope'\nRun 'tollgate --help' for usage.\n"],
      [['keys', '--rpm', '5', 'update'], "error: unknown option '--rpm'"],
      [['keys', 'list', '--url', 'not a url'], 'error: --url is not a valid URL'],
      [['keys', 'list', '--url', 'ftp://example.com'], 'error: --url must be an http:// or https:// URL'],
    ];
    for (const [args, message] of cases) {
      const r = await cli(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toContain(message);
      expect(r.stdout).toBe('');
    }
    const noCommand = await cli(['keys']);
    expect(noCommand.code).toBe(2);
    expect(noCommand.stderr).toContain('error: missing command');
    expect(noCommand.stderr).toContain('rotate');
  });

  it('names the URL when nothing listens there (exit 1)', async () => {
    const url = `http://127.0.0.1:${await freePort()}`;
    const r = await cli(['keys', 'list'], { TOLLGATE_URL: url, TOLLGATE_ADMIN_TOKEN: ADMIN_TOKEN });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`error: cannot connect to Tollgate at ${url}: connection refused`);
    expect(r.stderr).not.toContain(ADMIN_TOKEN);
  });

  it('says so when the gateway has no admin API', async () => {
    const noAdmin = await startGateway({ env: { ADMIN_TOKEN: '' } });
    try {
      const r = await cli(['keys', 'list'], { TOLLGATE_URL: noAdmin.url, TOLLGATE_ADMIN_TOKEN: ADMIN_TOKEN });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('hint: is the admin API on?');
    } finally {
      await noAdmin.close();
    }
  });
});

describe('help', () => {
  it('prints help for every level, on stdout with exit 0', async () => {
    for (const args of [['--help'], ['help'], ['-h']]) {
      const stdout = await ok(...args);
      expect(stdout).toContain('Usage:\n  tollgate <command> [options]');
      expect(stdout).toMatch(/^ {2}keys\s+Create, list, show, update, revoke and rotate gateway keys$/m);
      expect(stdout).toContain('TOLLGATE_ADMIN_TOKEN');
    }
    for (const args of [['help', 'keys'], ['keys', '--help'], ['keys', 'help']]) {
      const stdout = await ok(...args);
      for (const sub of ['create', 'list', 'show', 'update', 'revoke', 'rotate']) expect(stdout).toMatch(new RegExp(`^ {2}${sub}\\s`, 'm'));
    }
    const update = await ok('keys', 'update', '--help');
    expect(update).toContain('Usage:\n  tollgate keys update ID [options]');
    expect(update).toContain('Limits are merged');
    expect(update).toContain('--clear-limits');
    expect(await ok('help', 'keys', 'create')).toMatch(/--tokens-per-day N\s+Tokens per day/);
    // Help wins over anything else on the line, and needs no gateway.
    expect((await cli(['keys', 'create', '--bogus', '--help'], {})).code).toBe(0);
  });
});

describe('show with a quota (stub admin API)', () => {
  let stub: Server;
  let stubUrl: string;
  const base = {
    name: 'metered',
    hint: 'tg-abcd...',
    models: null,
    limits: { rpm: 60, usdPerDay: 5, maxConcurrent: 2 },
    metadata: {},
    createdAt: '2025-01-01T00:00:00.000Z',
    updatedAt: '2025-01-01T00:00:00.000Z',
    revokedAt: null,
  };
  const bodies: Record<string, unknown> = {
    key_full: {
      ...base,
      id: 'key_full',
      quota: {
        rpm: { limit: 60, used: 3, reserved: 0, resetsAt: '2025-01-01T00:01:00.000Z' },
        tpm: { limit: null, used: 1200, reserved: 300, resetsAt: '2025-01-01T00:01:00.000Z' },
        usdPerDay: { limit: 5, used: 0.0123, reserved: 0.002, resetsAt: '2025-01-02T00:00:00.000Z' },
        maxConcurrent: { limit: 2, used: 1, reserved: 0, resetsAt: null },
      },
    },
    // Missing and unexpected fields: shown as '-', unknown entries by their own name, junk skipped.
    key_partial: { id: 'key_partial', name: 'partial', models: ['gpt-4o'], limits: {}, createdAt: 'not a date', revokedAt: null, quota: { rpm: { used: 3 }, usdPerMonth: { limit: 100 }, tokensPerWeek: { limit: 10, used: 1 }, broken: 'x', alsoBroken: null } },
    key_none: { ...base, id: 'key_none' },
    key_empty: { ...base, id: 'key_empty', quota: {} },
  };

  beforeAll(async () => {
    stub = createServer((req, res) => {
      const id = req.url?.split('/').pop() ?? '';
      res.setHeader('content-type', 'application/json');
      if (id === 'key_echo') {
        // A misbehaving server that echoes the credential: the CLI still must not print it.
        res.statusCode = 401;
        return res.end(JSON.stringify({ error: { message: `bad credential: ${req.headers.authorization}`, type: 'x', code: null, param: null } }));
      }
      if (id === 'key_html') {
        res.statusCode = 502;
        res.setHeader('content-type', 'text/html');
        return res.end('<html>bad gateway</html>');
      }
      const body = bodies[id];
      res.statusCode = body ? 200 : 404;
      res.end(JSON.stringify(body ?? { error: { message: `No key with id '${id}'.`, type: 'invalid_request_error', code: 'key_not_found', param: 'id' } }));
    });
    stub.listen(0, '127.0.0.1');
    await once(stub, 'listening');
    stubUrl = `http://127.0.0.1:${(stub.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((resolve) => stub.close(() => resolve())));

  const stubCli = (...args: string[]) => cli(args, { TOLLGATE_URL: stubUrl, TOLLGATE_ADMIN_TOKEN: ADMIN_TOKEN });

  it('shows limit, used, reserved in flight and resets at', async () => {
    const r = await stubCli('keys', 'show', 'key_full');
    expect(r.code).toBe(0);
    const [, quota] = r.stdout.split('\nQuota:\n');
    const lines = quota!.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^QUOTA\s+LIMIT\s+USED\s+RESERVED \(IN FLIGHT\)\s+RESETS AT$/);
    expect(lines[1]).toMatch(/^requests\/minute\s+60\s+3\s+0\s+2025-01-01T00:01:00Z$/);
    expect(lines[2]).toMatch(/^tokens\/minute\s+none\s+1200\s+300\s+2025-01-01T00:01:00Z$/);
    expect(lines[3]).toMatch(/^usd\/day\s+\$5\s+\$0\.0123\s+\$0\.002\s+2025-01-02T00:00:00Z$/);
    expect(lines[4]).toMatch(/^concurrent\s+2\s+1\s+0\s+-$/);
    expect(lines).toHaveLength(5);
    // --json passes the quota through untouched.
    expect(JSON.parse((await stubCli('keys', 'show', 'key_full', '--json')).stdout).quota).toEqual((bodies.key_full as { quota: unknown }).quota);
  });

  it('tolerates missing fields and skips an absent or empty quota', async () => {
    const partial = await stubCli('keys', 'show', 'key_partial');
    expect(partial.code).toBe(0);
    expect(partial.stdout).toMatch(/^models\s+gpt-4o$/m);
    expect(partial.stdout).toMatch(/^limits\s+none$/m);
    expect(partial.stdout).toMatch(/^metadata\s+-$/m);
    expect(partial.stdout).toMatch(/^created\s+not a date$/m);
    expect(partial.stdout).toMatch(/^requests\/minute\s+-\s+3\s+-\s+-$/m);
    expect(partial.stdout).toMatch(/^usd\/month\s+\$100\s+-\s+-\s+-$/m);
    expect(partial.stdout).toMatch(/^tokensPerWeek\s+10\s+1\s+-\s+-$/m);
    expect(partial.stdout).not.toMatch(/broken/i);

    for (const id of ['key_none', 'key_empty']) {
      const r = await stubCli('keys', 'show', id);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^limits\s+60 rpm, \$5\/day, 2 concurrent$/m);
      expect(r.stdout).not.toContain('Quota');
    }
  });

  it('never prints the token, even when a server echoes it', async () => {
    const r = await stubCli('keys', 'show', 'key_echo');
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('error: bad credential: Bearer [redacted]');
    expect(r.stderr).not.toContain(ADMIN_TOKEN);
  });

  it('reports a non-JSON error answer by its status', async () => {
    const r = await stubCli('keys', 'show', 'key_html');
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`error: HTTP 502 Bad Gateway from ${stubUrl}\n`);
  });
});

describe('the real entry', () => {
  function run(args: string[], env: Env) {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/tollgate.ts', ...args], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    return once(child, 'close').then(([code]) => {
      printed.push(stdout, stderr);
      return { code: code as number, stdout, stderr };
    });
  }

  it('runs `keys list --json` in a child process', async () => {
    const { id } = await gw.createKey({ name: 'from-child' });
    const r = await run(['keys', 'list', '--json'], gatewayEnv() as Record<string, string>);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const body = JSON.parse(r.stdout);
    expect(body.object).toBe('list');
    expect(body.data.some((k: { id: string }) => k.id === id)).toBe(true);
  });

  it('exits with the status main returns', async () => {
    const notFound = await run(['keys', 'show', 'key_nope'], gatewayEnv() as Record<string, string>);
    expect(notFound.code).toBe(1);
    expect(notFound.stderr).toBe("error: No key with id 'key_nope'.\n");
    const usage = await run(['keys', 'list', '--bogus'], {});
    expect(usage.code).toBe(2);
  });
});

describe('the admin token', () => {
  it('was never printed by any command in this file', () => {
    expect(printed.length).toBeGreaterThan(50);
    for (const text of printed) expect(text).not.toContain(ADMIN_TOKEN);
  });
});
