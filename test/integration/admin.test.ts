// The admin API: keys are created, shown once, stored hashed, changed, revoked and rotated.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { startGateway, ADMIN_TOKEN, type Gateway } from '../helpers/gateway.js';
import { createRedisStore } from '../../src/store/redis-store.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';
import type { Store } from '../../src/store/store.js';
import { KeyChangeConflictError } from '../../src/store/store.js';
import { createMemoryStore } from '../../src/store/memory-store.js';

let gw: Gateway;
beforeAll(async () => {
  gw = await startGateway();
});
afterAll(() => gw.close());

const chatWith = (url: string, key: string) =>
  fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] }),
  });

describe('admin authentication', () => {
  it('refuses a missing or wrong admin token with 401', async () => {
    for (const authorization of [undefined, 'Bearer wrong-token-wrong-token', `Basic ${ADMIN_TOKEN}`, `Bearer ${ADMIN_TOKEN}x`]) {
      const res = await fetch(`${gw.url}/admin/keys`, { headers: authorization ? { authorization } : {} });
      expect(res.status).toBe(401);
      const body = (await res.json()) as { error: { type: string; message: string } };
      expect(body.error.type).toBe('invalid_request_error');
      expect(JSON.stringify(body)).not.toContain(ADMIN_TOKEN);
    }
  });

  it('marks every admin answer no-store and nosniff, errors included (a new secret must not be cached)', async () => {
    const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };
    const answers = [
      await fetch(`${gw.url}/admin/keys`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: '{"name":"cached?"}' }),
      await fetch(`${gw.url}/admin/keys`, { headers: auth }),
      await fetch(`${gw.url}/admin/usage`, { headers: auth }),
      await fetch(`${gw.url}/admin/usage/events?format=csv`, { headers: auth }),
      await fetch(`${gw.url}/admin/keys/key_missing`, { headers: auth }),
      await fetch(`${gw.url}/admin/keys`),
    ];
    expect(answers.map((r) => r.status)).toEqual([201, 200, 200, 200, 404, 401]);
    for (const res of answers) {
      expect(res.headers.get('cache-control'), res.url).toBe('no-store');
      expect(res.headers.get('x-content-type-options'), res.url).toBe('nosniff');
      await res.arrayBuffer();
    }
  });

  it('refuses a gateway key as an admin token', async () => {
    const { key } = await gw.createKey();
    const res = await fetch(`${gw.url}/admin/keys`, { headers: { authorization: `Bearer ${key}` } });
    expect(res.status).toBe(401);
  });

  it('is off when ADMIN_TOKEN is unset', async () => {
    const noAdmin = await startGateway({ env: { ADMIN_TOKEN: '' } });
    try {
      const res = await fetch(`${noAdmin.url}/admin/keys`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      expect(res.status).toBe(404);
    } finally {
      await noAdmin.close();
    }
  });
});

describe('keys', () => {
  it('creates a key whose secret is shown once and works at once', async () => {
    const res = await gw.admin('POST', '/admin/keys', {
      name: 'billing-app',
      models: ['gpt-4o-mini'],
      limits: { rpm: 60, usdPerDay: 5 },
      metadata: { team: 'billing' },
    });
    expect(res.status).toBe(201);
    const created = res.body;
    expect(created).toMatchObject({ name: 'billing-app', models: ['gpt-4o-mini'], limits: { rpm: 60, usdPerDay: 5 } });
    expect(created.id).toMatch(/^key_/);
    expect(created.key).toMatch(/^tg-[\w-]{40,}$/);
    expect(created.createdAt).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect(created.hash).toBeUndefined();
    expect((await chatWith(gw.url, created.key)).status).toBe(200);

    const list = await gw.admin('GET', '/admin/keys');
    const shown = await gw.admin('GET', `/admin/keys/${created.id}`);
    for (const body of [list.body, shown.body]) {
      const text = JSON.stringify(body);
      expect(text).not.toContain(created.key);
      expect(text).not.toContain(createHash('sha256').update(created.key).digest('hex'));
    }
    expect(list.body.data.some((k: { id: string }) => k.id === created.id)).toBe(true);
    expect(shown.body).toMatchObject({ id: created.id, name: 'billing-app', hint: created.key.slice(0, 7) + '...' });
  });

  it('validates what it is given', async () => {
    const cases = [
      {},
      { name: '' },
      { name: 'x', limits: { rpm: -1 } },
      { name: 'x', limits: { rpm: 1.5 } },
      // Rounds to 0 micro-dollars, which would be no budget at all.
      { name: 'x', limits: { usdPerDay: 0.0000004 } },
      { name: 'x', limits: { usdPerMonth: 1e-300 } },
      { name: 'x', limits: { requestsPerFortnight: 3 } },
      { name: 'x', models: 'gpt-4o' },
      { name: 'x', extra: true },
    ];
    for (const body of cases) {
      const res = await gw.admin('POST', '/admin/keys', body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.body.error.type).toBe('invalid_request_error');
    }
    const smallest = await gw.admin('POST', '/admin/keys', { name: 'x', limits: { usdPerDay: 0.000001 } });
    expect(smallest.status).toBe(201);
    expect((await gw.admin('PATCH', `/admin/keys/${smallest.body.id}`, { limits: { usdPerDay: 1e-7 } })).status).toBe(400);
    expect((await gw.admin('PATCH', '/admin/keys/key_nope', { name: 'y' })).status).toBe(404);
    expect((await gw.admin('GET', '/admin/keys/key_nope')).status).toBe(404);
  });

  it('refuses usd limits finer than a micro-dollar, naming the limit, since they would be enforced rounded', async () => {
    for (const [limits, param] of [
      [{ usdPerDay: 0.0000015 }, 'limits.usdPerDay'],
      [{ usdPerMonth: 20.1234567 }, 'limits.usdPerMonth'],
    ] as const) {
      const res = await gw.admin('POST', '/admin/keys', { name: 'x', limits });
      expect(res.status, param).toBe(400);
      expect(res.body.error, param).toMatchObject({ type: 'invalid_request_error', param });
      expect(res.body.error.message, param).toContain(param);
    }
    const exact = await gw.admin('POST', '/admin/keys', { name: 'x', limits: { usdPerDay: 0.000002, usdPerMonth: 20.123456 } });
    expect(exact.status).toBe(201);
    expect(exact.body.limits).toEqual({ usdPerDay: 0.000002, usdPerMonth: 20.123456 });
    const patched = await gw.admin('PATCH', `/admin/keys/${exact.body.id}`, { limits: { usdPerDay: 1.0000001 } });
    expect(patched.status).toBe(400);
    expect(patched.body.error.param).toBe('limits.usdPerDay');
  });

  it('refuses model patterns that can never match, naming models, and trims the spaces around an entry', async () => {
    for (const models of [['gpt-*-mini'], ['gpt-4o**'], ['**'], ['gpt-4o', '*gpt']]) {
      const res = await gw.admin('POST', '/admin/keys', { name: 'x', models });
      expect(res.status, JSON.stringify(models)).toBe(400);
      expect(res.body.error, JSON.stringify(models)).toMatchObject({ type: 'invalid_request_error', param: expect.stringMatching(/^models\[\d+\]$/) });
      expect(res.body.error.message).toMatch(/^Invalid 'models\[\d+\]'.*'\*'/);
    }
    expect((await gw.admin('POST', '/admin/keys', { name: 'x', models: ['  '] })).status).toBe(400);
    const created = await gw.admin('POST', '/admin/keys', { name: 'x', models: [' gpt-4o-mini ', 'text-embedding-3-*\t', '*'] });
    expect(created.status).toBe(201);
    expect(created.body.models).toEqual(['gpt-4o-mini', 'text-embedding-3-*', '*']);
    const { id, key } = await gw.createKey({ name: 'spaced' });
    const patched = await gw.admin('PATCH', `/admin/keys/${id}`, { models: [' gpt-4o-mini'] });
    expect(patched.body.models).toEqual(['gpt-4o-mini']);
    expect((await chatWith(gw.url, key)).status).toBe(200);
    expect((await gw.admin('PATCH', `/admin/keys/${id}`, { models: ['gpt-*'] })).status).toBe(200);
    expect((await gw.admin('PATCH', `/admin/keys/${id}`, { models: ['gpt-*-mini'] })).status).toBe(400);
  });

  it('updates name, models and limits', async () => {
    const { id, key } = await gw.createKey({ name: 'before' });
    const res = await gw.admin('PATCH', `/admin/keys/${id}`, {
      name: 'after',
      models: ['gpt-4o*'],
      limits: { tpm: 100_000, maxConcurrent: 2 },
    });
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ name: 'after', models: ['gpt-4o*'], limits: { tpm: 100_000, maxConcurrent: 2 } });
    // The allow-list holds at once on this instance.
    const denied = await fetch(`${gw.url}/v1/embeddings`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'text-embedding-3-small', input: 'x' }),
    });
    expect(denied.status).toBe(404);
    expect((await chatWith(gw.url, key)).status).toBe(200);
  });

  it('revokes a key: 401 from then on, with no echo of the key', async () => {
    const { id, key } = await gw.createKey();
    expect((await chatWith(gw.url, key)).status).toBe(200);
    const del = await gw.admin('DELETE', `/admin/keys/${id}`);
    expect(del.body).toEqual({ id, object: 'key', deleted: true });
    const res = await chatWith(gw.url, key);
    expect(res.status).toBe(401);
    const body = await res.text();
    expect(JSON.parse(body)).toMatchObject({ error: { type: 'invalid_request_error', code: 'invalid_api_key', param: null } });
    expect(body).not.toContain(key);
    expect((await gw.admin('GET', `/admin/keys/${id}`)).body.revokedAt).not.toBeNull();
    expect((await gw.admin('POST', `/admin/keys/${id}/rotate`)).status).toBe(409);
  });

  it('rotates a key: new secret, same id and limits, old secret refused', async () => {
    const { id, key } = await gw.createKey({ name: 'rotating', limits: { rpm: 10 } });
    expect((await chatWith(gw.url, key)).status).toBe(200);
    const res = await gw.admin('POST', `/admin/keys/${id}/rotate`);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ id, name: 'rotating', limits: { rpm: 10 } });
    expect(res.body.key).not.toBe(key);
    expect((await chatWith(gw.url, key)).status).toBe(401);
    expect((await chatWith(gw.url, res.body.key)).status).toBe(200);
  });

  it('answers 401 for a missing key in OpenAI shape', async () => {
    const res = await fetch(`${gw.url}/v1/models`);
    expect(res.status).toBe(401);
    expect(await res.json()).toMatchObject({ error: { code: 'invalid_api_key', type: 'invalid_request_error' } });
  });
});

describe('listing keys a page at a time', () => {
  let paged: Gateway;
  let store: Store;
  /** Ids of the keys whose quota usage was read, in call order. */
  const quotaReads: string[] = [];
  /** Every key id, in the list's order (creation time, then id). */
  let ids: string[];

  beforeAll(async () => {
    store = await createRedisStore({ url: testRedisUrl(), prefix: uniquePrefix() });
    // The real store, with its quota reads noted (a Proxy: its methods use private fields).
    const observed = new Proxy(store, {
      get(target, prop) {
        if (prop === 'quotaUsage') {
          return (...args: Parameters<Store['quotaUsage']>) => {
            quotaReads.push(args[0]);
            return target.quotaUsage(...args);
          };
        }
        const value: unknown = Reflect.get(target, prop);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    paged = await startGateway({ store: observed });
    for (let i = 0; i < 7; i++) await paged.createKey({ name: `app-${i}`, limits: { usdPerDay: 5 } });
    await paged.admin('DELETE', `/admin/keys/${(await store.listKeys())[3]!.id}`);
    ids = (await store.listKeys()).map((k) => k.id);
  });
  afterAll(async () => {
    await paged.close();
    await store.close();
  });

  const list = async (query = '') => {
    const res = await paged.admin('GET', `/admin/keys${query}`);
    return { status: res.status, body: res.body, ids: (res.body.data as { id: string }[] | undefined)?.map((k) => k.id) };
  };

  it('answers in OpenAI list shape, revoked keys included, without secrets: every key when no limit is given (as before paging)', async () => {
    const { status, body } = await list();
    expect(status).toBe(200);
    expect(body).toEqual({ object: 'list', data: expect.any(Array), first_id: ids[0], last_id: ids[6], has_more: false });
    expect(body.data.map((k: { id: string }) => k.id)).toEqual(ids);
    expect(body.data[3].revokedAt).toEqual(expect.any(String));
    expect(body.data.every((k: Record<string, unknown>) => k.hash === undefined && k.key === undefined && k.quota === undefined)).toBe(true);
  });

  it('follows limit and after page by page, each key once, has_more false on the last page', async () => {
    const first = await list('?limit=3');
    expect(first.ids).toEqual(ids.slice(0, 3));
    expect(first.body).toMatchObject({ first_id: ids[0], last_id: ids[2], has_more: true });
    const second = await list(`?limit=3&after=${first.body.last_id}`);
    expect(second.ids).toEqual(ids.slice(3, 6));
    expect(second.body).toMatchObject({ first_id: ids[3], last_id: ids[5], has_more: true });
    const last = await list(`?limit=3&after=${second.body.last_id}`);
    expect(last.ids).toEqual(ids.slice(6));
    expect(last.body).toMatchObject({ first_id: ids[6], last_id: ids[6], has_more: false });
    // A limit the keys fill exactly, and a page after the last key.
    expect((await list('?limit=7')).body).toMatchObject({ last_id: ids[6], has_more: false });
    expect((await list(`?after=${ids[6]}`)).body).toEqual({ object: 'list', data: [], first_id: null, last_id: null, has_more: false });
    expect((await list('?limit=1000')).ids).toEqual(ids);
  });

  it('with include=quota, reads the quota of the page\'s keys only', async () => {
    quotaReads.length = 0;
    const { body } = await list(`?include=quota&limit=2&after=${ids[1]}`);
    expect(body.data.map((k: { id: string }) => k.id)).toEqual([ids[2], ids[3]]);
    for (const key of body.data) expect(key.quota.usdPerDay).toMatchObject({ limit: 5, used: 0, reserved: 0 });
    expect(body).toMatchObject({ first_id: ids[2], last_id: ids[3], has_more: true });
    expect(quotaReads.sort()).toEqual([ids[2]!, ids[3]!].sort());
  });

  it('refuses a bad limit or a malformed after with a 400 naming it', async () => {
    const cases: [string, string][] = [
      ['?limit=0', 'limit'],
      ['?limit=1001', 'limit'],
      ['?limit=abc', 'limit'],
      ['?limit=1.5', 'limit'],
      ['?limit=', 'limit'],
      ['?limit=-5', 'limit'],
      ['?limit=2&limit=3', 'limit'],
      ['?after=', 'after'],
      ['?after=not-a-key-id', 'after'],
      ['?after=key_%7Bx%7D', 'after'],
      [`?after=key_${'a'.repeat(65)}`, 'after'],
      ['?include=bogus', 'include'],
    ];
    for (const [query, param] of cases) {
      const { status, body } = await list(query);
      expect(status, query).toBe(400);
      expect(body.error, query).toMatchObject({ type: 'invalid_request_error', param, code: 'invalid_value' });
      expect(body.error.message, query).toContain(`'${param}'`);
    }
  });

  it('refuses a query parameter it does not know, naming it, rather than answer as if it were not there', async () => {
    for (const [path, param] of [
      ['/admin/keys?limit=2&lmit=3', 'lmit'],
      ['/admin/usage?form=2026-11-01', 'form'],
      ['/admin/usage?format=csv', 'format'],
      ['/admin/usage/events?after=1-0', 'after'],
      ['/admin/cache?key=key_x', 'key'],
    ] as const) {
      const { status, body } = await gw.admin(path.startsWith('/admin/cache') ? 'DELETE' : 'GET', path);
      expect(status, path).toBe(400);
      expect(body.error, path).toEqual({ type: 'invalid_request_error', param, code: 'unknown_parameter', message: `Unrecognized query parameter: '${param}'.` });
    }
  });

  it('refuses an after that names no key (keys are never removed from the list) with a 400 naming after', async () => {
    const { status, body } = await list('?after=key_AAAAAAAAAAAAAAAAAAAAAA');
    expect(status).toBe(400);
    expect(body.error).toMatchObject({ type: 'invalid_request_error', param: 'after', code: 'key_not_found' });
    expect(body.error.message).toBe("No key with id 'key_AAAAAAAAAAAAAAAAAAAAAA' to list after.");
  });
});

describe('two instances on one Redis', () => {
  let a: Gateway;
  let b: Gateway;
  let storeA: Store;
  let storeB: Store;

  beforeAll(async () => {
    const prefix = uniquePrefix();
    storeA = await createRedisStore({ url: testRedisUrl(), prefix });
    storeB = await createRedisStore({ url: testRedisUrl(), prefix });
    // A long auth cache TTL: only the change feed can make B notice in time.
    a = await startGateway({ store: storeA, env: { AUTH_CACHE_TTL_MS: '60000' } });
    b = await startGateway({ store: storeB, fake: a.fake, env: { AUTH_CACHE_TTL_MS: '60000' } });
  });
  afterAll(async () => {
    await b.close();
    await a.close();
    await storeA.close();
    await storeB.close();
  });

  it('sees a revocation made on the other instance within one second', async () => {
    const { id, key } = await a.createKey();
    expect((await chatWith(b.url, key)).status).toBe(200); // now cached on B
    await a.admin('DELETE', `/admin/keys/${id}`);
    await expect.poll(async () => (await chatWith(b.url, key)).status, { timeout: 1000, interval: 50 }).toBe(401);
  });

  it('sees a change of allowed models made on the other instance within one second', async () => {
    const { id, key } = await a.createKey();
    expect((await chatWith(b.url, key)).status).toBe(200);
    await a.admin('PATCH', `/admin/keys/${id}`, { models: ['gpt-4.1'] });
    await expect.poll(async () => (await chatWith(b.url, key)).status, { timeout: 1000, interval: 50 }).toBe(404);
  });

  it('admin calls racing on the two instances never undo each other: a revocation holds, a rotated secret works', async () => {
    for (let round = 0; round < 10; round++) {
      const revoked = await a.createKey();
      const [patched, deleted] = await Promise.all([
        b.admin('PATCH', `/admin/keys/${revoked.id}`, { limits: { rpm: 1000 } }),
        a.admin('DELETE', `/admin/keys/${revoked.id}`),
      ]);
      expect([patched.status, deleted.status]).toEqual([200, 200]);
      const after = (await a.admin('GET', `/admin/keys/${revoked.id}`)).body;
      expect(after.revokedAt, `round ${round}`).not.toBeNull();
      expect(after.limits).toEqual({ rpm: 1000 });
      expect((await chatWith(a.url, revoked.key)).status).toBe(401);

      const rotated = await a.createKey();
      const [renamed, rotation] = await Promise.all([
        b.admin('PATCH', `/admin/keys/${rotated.id}`, { name: `renamed-${round}` }),
        a.admin('POST', `/admin/keys/${rotated.id}/rotate`),
      ]);
      expect([renamed.status, rotation.status]).toEqual([200, 200]);
      expect((await a.admin('GET', `/admin/keys/${rotated.id}`)).body.name).toBe(`renamed-${round}`);
      expect((await chatWith(a.url, rotation.body.key)).status, `round ${round}`).toBe(200);
      expect((await chatWith(a.url, rotated.key)).status).toBe(401);
    }
  });

  it('sees a rotation made on the other instance within one second', async () => {
    const { id, key } = await a.createKey();
    expect((await chatWith(b.url, key)).status).toBe(200);
    const rotated = await a.admin('POST', `/admin/keys/${id}/rotate`);
    await expect.poll(async () => (await chatWith(b.url, key)).status, { timeout: 1000, interval: 50 }).toBe(401);
    expect((await chatWith(b.url, rotated.body.key)).status).toBe(200);
  });
});

describe('PATCH with a JSON merge patch (application/merge-patch+json)', () => {
  const mergePatch = (gw: Gateway, id: string, body: unknown) =>
    fetch(`${gw.url}/admin/keys/${id}`, {
      method: 'PATCH',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/merge-patch+json' },
      body: JSON.stringify(body),
    }).then(async (res) => ({ status: res.status, body: (await res.json()) as Record<string, any> }));

  it('merges limits, cache and metadata member by member (null removes one); other fields are replaced', async () => {
    const { id } = await gw.createKey({ name: 'merge-me', limits: { rpm: 10, tpm: 1000 }, metadata: { team: 'a', env: 'dev' } });
    const merged = await mergePatch(gw, id, { name: 'merged', limits: { rpm: 20, usdPerDay: 5 }, metadata: { env: 'prod' } });
    expect(merged.status).toBe(200);
    expect(merged.body).toMatchObject({ name: 'merged', limits: { rpm: 20, tpm: 1000, usdPerDay: 5 }, metadata: { team: 'a', env: 'prod' } });
    // RFC 7396 within a field: null removes a member, others are set, the rest stay.
    expect((await mergePatch(gw, id, { metadata: { team: null, owner: 'x' } })).body.metadata).toEqual({ env: 'prod', owner: 'x' });
    await mergePatch(gw, id, { metadata: { team: 'a', owner: null } });
    const removed = await mergePatch(gw, id, { limits: { tpm: null }, metadata: { team: null }, cache: { ttlSeconds: 60 } });
    expect(removed.body).toMatchObject({ limits: { rpm: 20, usdPerDay: 5 }, metadata: { env: 'prod' }, cache: { ttlSeconds: 60 } });
    expect(removed.body.limits.tpm).toBeUndefined();
    expect((await mergePatch(gw, id, { limits: null, models: ['gpt-4o*'] })).body).toMatchObject({ limits: {}, models: ['gpt-4o*'] });
    // `merge: true` (for gateways from before merge patches to refuse, rather than misread) is accepted and not kept.
    const marked = await mergePatch(gw, id, { merge: true, limits: { rpm: 7 } });
    expect(marked.body).toMatchObject({ limits: { rpm: 7 } });
    expect(marked.body.merge).toBeUndefined();
    expect((await mergePatch(gw, id, { merge: false, limits: { rpm: 8 } })).status).toBe(400);
    // A plain PATCH (whole fields) refuses it, as gateways from before do.
    expect((await gw.admin('PATCH', `/admin/keys/${id}`, { merge: true, limits: { rpm: 9 } })).status).toBe(400);
  });

  it('refuses what the merged key would break, in OpenAI shape, changing nothing', async () => {
    const { id } = await gw.createKey({ name: 'strict', limits: { rpm: 10 } });
    // Metadata nested 10,000 levels deep: a 500 once (the merge exhausted the stack).
    const deep = await fetch(`${gw.url}/admin/keys/${id}`, {
      method: 'PATCH',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/merge-patch+json' },
      body: `{"metadata":${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)}}`,
    });
    expect(deep.status).toBe(400);
    expect(((await deep.json()) as { error: { type: string } }).error.type).toBe('invalid_request_error');
    for (const body of [{ limits: { rpm: -1 } }, { limits: { bogus: 1 } }, { limits: 5 }, { name: null }, { color: 'red' }, [1, 2]]) {
      const res = await mergePatch(gw, id, body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.body.error.type).toBe('invalid_request_error');
    }
    expect((await gw.admin('GET', `/admin/keys/${id}`)).body).toMatchObject({ name: 'strict', limits: { rpm: 10 } });
  });

  it('leaves limits it does not name alone, even one an earlier version stored finer than today allows; cache null removes it', async () => {
    const store = createMemoryStore();
    const legacy = await startGateway({ store });
    try {
      const at = new Date().toISOString();
      // Earlier versions took USD limits finer than a micro-dollar; such records still load.
      await store.createKey({ id: 'key_legacy1', name: 'legacy', hash: 'a'.repeat(64), hint: 'tg-aaaa...', models: null, limits: { usdPerDay: 0.0000015 }, metadata: {}, cache: { ttlSeconds: 60 }, createdAt: at, updatedAt: at, revokedAt: null });
      const res = await mergePatch(legacy, 'key_legacy1', { limits: { rpm: 12 }, cache: null });
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      expect(res.body.limits).toEqual({ usdPerDay: 0.0000015, rpm: 12 });
      expect(res.body.cache).toBeUndefined();
      // What the patch itself sets is checked as strictly as ever.
      expect((await mergePatch(legacy, 'key_legacy1', { limits: { usdPerMonth: 0.0000015 } })).status).toBe(400);
    } finally {
      await legacy.close();
    }
  });

  it('keeps every one of several concurrent merges of different limits, on Redis', async () => {
    const store = await createRedisStore({ url: testRedisUrl(), prefix: uniquePrefix() });
    const onRedis = await startGateway({ store });
    try {
      const { id } = await onRedis.createKey({ name: 'busy' });
      const changes = [{ rpm: 1 }, { tpm: 2 }, { tokensPerDay: 3 }, { tokensPerMonth: 4 }, { usdPerDay: 5 }, { usdPerMonth: 6 }, { maxConcurrent: 7 }];
      const answers = await Promise.all(changes.map((limits) => mergePatch(onRedis, id, { limits })));
      expect(answers.map((a) => a.status)).toEqual(changes.map(() => 200));
      expect((await onRedis.admin('GET', `/admin/keys/${id}`)).body.limits).toEqual(Object.assign({}, ...changes));
    } finally {
      await onRedis.close();
      await store.close();
    }
  });
});

describe('listing keys without a limit', () => {
  it('answers every key, past any page size, as before paging: a script written then is not cut short', async () => {
    const many = await startGateway();
    try {
      for (let i = 0; i < 101; i++) await many.createKey({ name: `k${i}` });
      const all = await many.admin('GET', '/admin/keys');
      expect(all.body.data).toHaveLength(101);
      expect(all.body).toMatchObject({ has_more: false, last_id: all.body.data[100].id });
      const after = await many.admin('GET', `/admin/keys?after=${all.body.data[49].id}`);
      expect(after.body.data).toHaveLength(51);
      const paged = await many.admin('GET', '/admin/keys?limit=100');
      expect(paged.body.data).toHaveLength(100);
      expect(paged.body.has_more).toBe(true);
    } finally {
      await many.close();
    }
  });
});

describe('a key change that keeps losing its compare-and-set', () => {
  it('is a 409 to retry, not a 500, and changes nothing', async () => {
    const memory = createMemoryStore();
    // Every write of this store loses, as when other writes to the key keep landing in between.
    const contended = new Proxy(memory, {
      get(target, prop) {
        if (prop === 'updateKey') return async (id: string) => Promise.reject(new KeyChangeConflictError(id, 10));
        const value: unknown = Reflect.get(target, prop);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const gw = await startGateway({ store: contended });
    try {
      const { id } = await gw.createKey({ name: 'busy' });
      for (const [method, path, body] of [
        ['PATCH', `/admin/keys/${id}`, { name: 'renamed' }],
        ['POST', `/admin/keys/${id}/rotate`, undefined],
        ['DELETE', `/admin/keys/${id}`, undefined],
      ] as const) {
        const res = await gw.admin(method, path, body);
        expect(res.status, `${method} ${path}`).toBe(409);
        expect(res.body.error).toMatchObject({ type: 'invalid_request_error', code: 'key_changing' });
      }
      expect((await gw.admin('GET', `/admin/keys/${id}`)).body).toMatchObject({ name: 'busy', revokedAt: null });
    } finally {
      await gw.close();
    }
  });
});
