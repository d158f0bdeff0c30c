// The `tollgate` CLI against a real gateway: keys create, list, show, update (merging limits), revoke and
// rotate; errors and exit codes; help; the quota table; and the real entry run as a child process.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { describeNetworkError } from '../../src/cli/admin-client.js';
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

  it('lists every key however many pages the API answers in, each once, in the API order', async () => {
    for (let i = 0; i < 5; i++) await ok('keys', 'create', '--name', `paged-${i}`);
    const all = await gw.admin('GET', '/admin/keys?limit=1000');
    const ids = (all.body.data as { id: string }[]).map((k) => k.id);
    expect(ids.length).toBeGreaterThan(5);
    const listRequests = () => gw.logs.requests().filter((l) => l.method === 'GET' && l.path === '/admin/keys').length;

    const before = listRequests();
    const stdout = await ok('keys', 'list', '--page-size', '2');
    expect(listRequests() - before).toBe(Math.ceil(ids.length / 2));
    expect(stdout.split('\n').filter((l) => l.startsWith('key_')).map((l) => l.split(' ')[0])).toEqual(ids);

    const json = JSON.parse(await ok('keys', 'list', '--json', '--page-size', '1'));
    expect(json).toEqual({ object: 'list', data: all.body.data });
    // By default the API's largest page: one request for these few keys.
    const beforeDefault = listRequests();
    await ok('keys', 'list');
    expect(listRequests() - beforeDefault).toBe(1);
  });

  it('refuses a page size the API does not take, before asking it anything', async () => {
    for (const size of ['0', '1001', 'abc', '1.5', '-2', '']) {
      const r = await cli(['keys', 'list', '--page-size', size]);
      expect(r.code, size).toBe(2);
      expect(r.stderr, size).toContain(`error: --page-size must be a whole number from 1 to 1000 (got '${size}')`);
    }
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

  it('updates of different limits run at once all hold: the gateway merges each into the key as it stands', async () => {
    const { id } = await gw.createKey({ name: 'concurrent', metadata: { keep: 'me' } });
    const flags = [['--rpm', '1'], ['--tpm', '2'], ['--tokens-per-day', '3'], ['--max-concurrent', '4'], ['--metadata', 'a=1'], ['--metadata', 'b=2']];
    await Promise.all(flags.map((f) => ok('keys', 'update', id, ...f)));
    const key = await apiKey(id);
    expect(key.limits).toEqual({ rpm: 1, tpm: 2, tokensPerDay: 3, maxConcurrent: 4 });
    expect(key.metadata).toEqual({ keep: 'me', a: '1', b: '2' });
  });

  it('against a gateway that takes no merge patch (no Accept-Patch), sends the merged limits whole', async () => {
    const patches: { type: string | undefined; body: Record<string, unknown> }[] = [];
    const key = { id: 'key_old1', name: 'old', models: null, limits: { rpm: 60, usdPerDay: 5 }, metadata: { team: 'a' }, revokedAt: null };
    const older = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        if (req.method === 'PATCH') patches.push({ type: req.headers['content-type'], body: JSON.parse(body) as Record<string, unknown> });
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(key));
      });
    });
    older.listen(0, '127.0.0.1');
    await once(older, 'listening');
    try {
      const env = { TOLLGATE_URL: `http://127.0.0.1:${(older.address() as AddressInfo).port}`, TOLLGATE_ADMIN_TOKEN: ADMIN_TOKEN };
      const r = await cli(['keys', 'update', 'key_old1', '--rpm', '10', '--metadata', 'env=prod'], env);
      expect(r.code, r.stderr).toBe(0);
      expect(patches).toEqual([{ type: 'application/json', body: { limits: { rpm: 10, usdPerDay: 5 }, metadata: { team: 'a', env: 'prod' } } }]);
    } finally {
      await new Promise<void>((resolve) => older.close(() => resolve()));
    }
  });

  it("in a rolling upgrade, a merge patch reaching an older instance is refused there, not misread: the whole fields follow", async () => {
    // The GET reached an instance that takes merge patches; the PATCH reaches an older one, which
    // reads every body as whole fields and refuses unknown fields (as this gateway's versions before did).
    const patches: { type: string | undefined; body: Record<string, any> }[] = [];
    const key = { id: 'key_mixed1', name: 'mixed', models: null, limits: { rpm: 60, usdPerDay: 5 }, metadata: {}, revokedAt: null };
    const mixed = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        if (req.method === 'GET') return res.writeHead(200, { 'content-type': 'application/json', 'accept-patch': 'application/merge-patch+json, application/json' }).end(JSON.stringify(key));
        const parsed = JSON.parse(body) as Record<string, any>;
        patches.push({ type: req.headers['content-type'], body: parsed });
        if ('merge' in parsed) {
          return res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { message: 'Invalid \'body\': Unrecognized key: "merge".', type: 'invalid_request_error', param: null, code: 'invalid_value' } }));
        }
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ ...key, ...parsed }));
      });
    });
    mixed.listen(0, '127.0.0.1');
    await once(mixed, 'listening');
    try {
      const env = { TOLLGATE_URL: `http://127.0.0.1:${(mixed.address() as AddressInfo).port}`, TOLLGATE_ADMIN_TOKEN: ADMIN_TOKEN };
      const r = await cli(['keys', 'update', 'key_mixed1', '--rpm', '10'], env);
      expect(r.code, r.stderr).toBe(0);
      expect(patches.map((p) => p.type)).toEqual(['application/merge-patch+json', 'application/json']);
      // The older instance kept the key's USD limit: it got the whole, merged limits.
      expect(patches[1]!.body).toEqual({ limits: { rpm: 10, usdPerDay: 5 } });
    } finally {
      await new Promise<void>((resolve) => mixed.close(() => resolve()));
    }
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

  it('takes a blank TOLLGATE_ADMIN_TOKEN as unset and falls back to ADMIN_TOKEN', async () => {
    const { id } = await gw.createKey({ name: 'blank-env' });
    for (const blank of [' ', '', '\t \n']) {
      const r = await cli(['keys', 'show', id], { TOLLGATE_URL: gw.url, TOLLGATE_ADMIN_TOKEN: blank, ADMIN_TOKEN });
      expect(r.stderr, JSON.stringify(blank)).toBe('');
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^name\s+blank-env$/m);
    }
    const both = await cli(['keys', 'list'], { TOLLGATE_URL: gw.url, TOLLGATE_ADMIN_TOKEN: ' ', ADMIN_TOKEN: '  ' });
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('error: no admin token');
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
    expect(update).toMatch(/^The gateway merges them itself \(a JSON merge patch\), so two updates of one key run at once both$/m);
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

const BIDI = ['\u202a', '\u202b', '\u202c', '\u202d', '\u202e', '\u2066', '\u2067', '\u2068', '\u2069', '\u200e', '\u200f'];
const INVISIBLE = [...BIDI, '\u200b', '\u2060', '\ufeff', '\u061c', '\u00ad', '\u2028', '\u{e0041}'];
/** No bidi control, invisible format character or control character other than a newline. */
const UNSAFE = /[\p{Cf}\p{Zl}\p{Zp}\p{Cs}\u0000-\u0009\u000b-\u001f\u007f-\u009f]/u;

describe('names that could spoof the terminal (Trojan Source)', () => {
  const spoof = `adm\u202ein\u2066x\u2069\u200fy\u200b\u{e0041}`;
  const escaped = 'adm\\u202ein\\u2066x\\u2069\\u200fy\\u200b\\u{e0041}';

  it('escapes bidi and invisible format characters in every human output of keys', async () => {
    const created = await cli(['keys', 'create', '--name', spoof, '--metadata', `team=\u202ered`]);
    expect(created.code).toBe(0);
    const id = /^Created key (key_[\w-]+)\.$/m.exec(created.stdout)![1]!;
    const outputs = [
      created.stdout,
      await ok('keys', 'list'),
      await ok('keys', 'show', id),
      await ok('keys', 'update', id, '--rpm', '5'),
      await ok('keys', 'rotate', id),
    ];
    for (const stdout of outputs) {
      expect(stdout).not.toMatch(UNSAFE);
      expect(stdout).toContain(escaped);
    }
    expect(outputs[2]).toMatch(/^metadata\s+team=\\u202ered$/m);
    expect(outputs[4]).toContain(`(${escaped})`);
    // --json keeps the API's data as it is.
    expect(JSON.parse(await ok('keys', 'show', id, '--json')).name).toBe(spoof);
    // Every character of the list is escaped, each on its own.
    for (const c of INVISIBLE) {
      const code = c.codePointAt(0)!;
      const want = code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : code <= 0xffff ? `\\u${code.toString(16).padStart(4, '0')}` : `\\u{${code.toString(16)}}`;
      const { id: other } = await gw.createKey({ name: `n${c}m` });
      const shown = await ok('keys', 'show', other);
      expect(shown, want).not.toMatch(UNSAFE);
      expect(shown).toMatch(new RegExp(`^name\\s+n${want.replace(/[\\{}]/g, '\\$&')}m$`, 'm'));
    }
  });

  it('escapes them in the usage report too, title and table', async () => {
    const stub = createServer((_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(
        JSON.stringify({
          object: 'usage',
          from: '2026-11-01T00:00:00.000Z',
          to: '2026-11-02T00:00:00.000Z',
          groupBy: ['day', 'key'],
          timeZone: `UTC\u202e\u001b[2J`,
          data: [{ day: '2026-11-01', key: 'key_a', keyName: spoof, requests: 1, totalTokens: 10, costUsd: 0.01, cacheHits: 0, savedUsd: 0 }],
          totals: { requests: 1, totalTokens: 10, costUsd: 0.01, cacheHits: 0, savedUsd: 0 },
        }),
      );
    });
    stub.listen(0, '127.0.0.1');
    await once(stub, 'listening');
    try {
      const url = `http://127.0.0.1:${(stub.address() as AddressInfo).port}`;
      const r = await cli(['usage', '--since', '2026-11-01', '--until', '2026-11-02', '--by', 'day,key'], { TOLLGATE_URL: url, TOLLGATE_ADMIN_TOKEN: ADMIN_TOKEN });
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(r.stdout).not.toMatch(UNSAFE);
      expect(r.stdout).toContain('(days in UTC\\u202e\\x1b[2J)');
      expect(r.stdout).toContain(escaped);
    } finally {
      await new Promise<void>((resolve) => stub.close(() => resolve()));
    }
  });
});

describe('answers that are not the admin API', () => {
  let stub: Server;
  let stubUrl: string;
  let answer = 'null';
  beforeAll(async () => {
    stub = createServer((_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(answer);
    });
    stub.listen(0, '127.0.0.1');
    await once(stub, 'listening');
    stubUrl = `http://127.0.0.1:${(stub.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((resolve) => stub.close(() => resolve())));

  it('says the answer is not the admin API, naming the URL (exit 1), for every command', async () => {
    const commands: [string[], string][] = [
      [['keys', 'list'], 'GET /admin/keys'],
      [['keys', 'show', 'key_a'], 'GET /admin/keys/key_a'],
      [['keys', 'create', '--name', 'x'], 'POST /admin/keys'],
      [['keys', 'update', 'key_a', '--name', 'x'], 'PATCH /admin/keys/key_a'],
      [['keys', 'update', 'key_a', '--rpm', '5'], 'GET /admin/keys/key_a'],
      [['keys', 'revoke', 'key_a'], 'DELETE /admin/keys/key_a'],
      [['keys', 'rotate', 'key_a'], 'POST /admin/keys/key_a/rotate'],
      [['usage'], 'GET /admin/usage'],
    ];
    for (const body of ['null', '[]', '"a string"', '42', 'true', '{}', '{"id":7}', '{"data":{}}', '']) {
      answer = body;
      for (const [args, request] of commands) {
        for (const json of [false, true]) {
          const r = await cli(json ? [...args, '--json'] : args, { TOLLGATE_URL: stubUrl, TOLLGATE_ADMIN_TOKEN: ADMIN_TOKEN });
          const what = `${body} ${args.join(' ')}${json ? ' --json' : ''}`;
          expect(r.code, what).toBe(1);
          expect(r.stdout, what).toBe('');
          expect(r.stderr, what).toBe(
            `error: ${stubUrl} answered ${request} with ${body === '' ? 'something other than JSON' : "JSON that is not the admin API's answer"}: is it a Tollgate gateway?${body === '' ? '' : ' Check --url or TOLLGATE_URL'}\n`,
          );
          expect(r.stderr).not.toContain('Cannot read properties');
          expect(r.stderr).not.toContain(ADMIN_TOKEN);
        }
      }
    }
  });
});

describe('a key list whose pages do not move on', () => {
  it('stops with an error instead of asking for the same page forever', async () => {
    const pages: string[] = [];
    const stub = createServer((req, res) => {
      pages.push(req.url!);
      res.setHeader('content-type', 'application/json');
      // A page that says more follow, but names no key to go on after, or the one just asked after.
      const after = new URL(req.url!, 'http://x').searchParams.get('after');
      res.end(JSON.stringify({ object: 'list', data: [], has_more: true, last_id: pages.length === 1 ? 'key_a' : after }));
    });
    stub.listen(0, '127.0.0.1');
    await once(stub, 'listening');
    try {
      const stubUrl = `http://127.0.0.1:${(stub.address() as AddressInfo).port}`;
      const r = await cli(['keys', 'list'], { TOLLGATE_URL: stubUrl, TOLLGATE_ADMIN_TOKEN: ADMIN_TOKEN });
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(`error: ${stubUrl} answered GET /admin/keys with JSON that is not the admin API's answer: is it a Tollgate gateway? Check --url or TOLLGATE_URL\n`);
      expect(pages).toEqual(['/admin/keys?limit=1000', '/admin/keys?limit=1000&after=key_a']);
    } finally {
      await new Promise<void>((resolve) => stub.close(() => resolve()));
    }
  });
});

describe('connections that fail', () => {
  /** A raw TCP server: `onRequest` gets the socket once the request arrives. */
  async function rawServer(onRequest: (socket: Socket) => void) {
    const sockets = new Set<Socket>();
    const server = createNetServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => {});
      socket.once('data', () => onRequest(socket));
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const close = () => {
      for (const s of sockets) s.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    };
    return { url, close };
  }
  const partial = 'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"object":"list","da';

  const esc = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  // A reset may reach the client as a reset or, when the partial answer was already read, as a close.
  const cases: [string, (socket: Socket) => void, (url: string) => RegExp][] = [
    ['closed mid-answer', (s) => s.write(partial, () => s.destroy()), (url) => new RegExp(`^error: the connection to ${esc(url)} was closed before the answer was complete\n$`)],
    ['reset mid-answer', (s) => s.write(partial, () => setImmediate(() => s.resetAndDestroy())), (url) => new RegExp(`^error: the connection to ${esc(url)} was (reset|closed) before the answer was complete\n$`)],
    ['closed without answering', (s) => s.destroy(), (url) => new RegExp(`^error: the connection to ${esc(url)} was closed before answering\n$`)],
    ['reset without answering', (s) => s.resetAndDestroy(), (url) => new RegExp(`^error: the connection to ${esc(url)} was (reset|closed) before answering\n$`)],
    ['answering something that is not HTTP', (s) => s.end('hello\r\n\r\n'), (url) => new RegExp(`^error: ${esc(url)} did not answer in HTTP as expected`)],
  ];
  for (const [name, behave, message] of cases) {
    it(`says so in words when the connection is ${name} (exit 1)`, async () => {
      const server = await rawServer(behave);
      try {
        for (const args of [['keys', 'list'], ['keys', 'show', 'key_a', '--json']]) {
          const r = await cli(args, { TOLLGATE_URL: server.url, TOLLGATE_ADMIN_TOKEN: ADMIN_TOKEN });
          expect(r.code, args.join(' ')).toBe(1);
          expect(r.stdout).toBe('');
          expect(r.stderr, args.join(' ')).toMatch(message(server.url));
          expect(r.stderr).not.toMatch(/UND_ERR|ECONN|HPE_|terminated|fetch failed/);
          expect(r.stderr).not.toContain(ADMIN_TOKEN);
        }
      } finally {
        await server.close();
      }
    });
  }

  it('reads well for every error code the CLI can meet', () => {
    const url = 'http://gateway.example:8080';
    const failed = (code: string) => Object.assign(new TypeError('fetch failed'), { cause: Object.assign(new Error(code), { code }) });
    const expected: [string, 'connect' | 'body', string][] = [
      ['ECONNREFUSED', 'connect', `cannot connect to Tollgate at ${url}: connection refused. Is the gateway running there?`],
      ['ENOTFOUND', 'connect', `cannot connect to Tollgate at ${url}: host 'gateway.example' not found. Check --url or TOLLGATE_URL`],
      ['EAI_AGAIN', 'connect', `cannot connect to Tollgate at ${url}: could not look up host 'gateway.example'`],
      ['ECONNRESET', 'connect', `the connection to ${url} was reset before answering`],
      ['ECONNRESET', 'body', `the connection to ${url} was reset before the answer was complete`],
      ['UND_ERR_SOCKET', 'body', `the connection to ${url} was closed before the answer was complete`],
      ['UND_ERR_SOCKET', 'connect', `the connection to ${url} was closed before answering`],
      ['UND_ERR_HEADERS_TIMEOUT', 'connect', `Tollgate at ${url} accepted the connection but sent no answer in time`],
      ['UND_ERR_BODY_TIMEOUT', 'body', `Tollgate at ${url} stopped sending its answer part-way`],
      ['UND_ERR_CONNECT_TIMEOUT', 'connect', `cannot connect to Tollgate at ${url}: the connection timed out`],
      ['EHOSTUNREACH', 'connect', `cannot connect to Tollgate at ${url}: the network cannot reach 'gateway.example'`],
      ['DEPTH_ZERO_SELF_SIGNED_CERT', 'connect', `cannot connect to Tollgate at ${url}: its TLS certificate was refused`],
    ];
    for (const [code, phase, message] of expected) {
      const text = describeNetworkError(failed(code), url, phase, 30_000);
      expect(text, `${code} ${phase}`).toContain(message);
    }
    // Every address refused (undici's AggregateError), and a timeout of our own.
    const aggregate = Object.assign(new TypeError('fetch failed'), { cause: Object.assign(new AggregateError([]), { errors: [{ code: 'ECONNREFUSED' }] }) });
    expect(describeNetworkError(aggregate, url, 'connect', 30_000)).toContain('connection refused');
    const timeout = Object.assign(new Error('The operation was aborted due to timeout'), { name: 'TimeoutError' });
    expect(describeNetworkError(timeout, url, 'connect', 30_000)).toBe(`no answer from Tollgate at ${url} within 30s`);
    expect(describeNetworkError(timeout, url, 'body', 30_000)).toBe(`Tollgate at ${url} did not finish its answer within 30s`);
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
