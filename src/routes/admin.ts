// The admin API: gateway keys. Registered only when ADMIN_TOKEN is set; every route needs that token.
import type { FastifyInstance } from 'fastify';
import { KeyChangeConflictError, type KeyChange, type KeyPage, type Store } from '../store/store.js';
import type { Quota } from '../quota/quota.js';
import type { Cache } from '../cache/cache.js';
import type { FailedAuthGuard } from '../auth/failed-auth-guard.js';
import { usageRoutes } from './usage.js';
import { bearerToken, safeEqual } from '../auth/bearer.js';
import { GatewayError, notFound, invalidRequest, notFoundHandler } from '../errors.js';
import {
  createKeySchema,
  updateKeySchema,
  mergedKeySchema,
  hashSecret,
  newKeyId,
  newSecret,
  publicKey,
  secretHint,
  type KeyRecord,
} from '../keys.js';
import { parseInput } from './parse-input.js';
import { MAX_KEY_PAGE } from '../store/key-page.js';
import { z } from 'zod';

export interface AdminOptions {
  adminToken: string;
  store: Store;
  quota: Quota;
  cache: Cache;
  authGuard: FailedAuthGuard;
  clock: () => number;
  /** Budgets' and reports' calendar days are in this zone. */
  timeZone: string;
  /** Called after a PATCH that set a live key's limits (the budget alerts look again: usage may now be past one). */
  onLimitsChanged?: (key: KeyRecord) => void;
}


/** A key id as newKeyId makes them (with room for longer ones): anything else cannot name a key. */
const KEY_ID = /^key_[A-Za-z0-9_-]{1,64}$/;

/**
 * GET /admin/keys: a page of keys, as OpenAI's list endpoints page (`limit`, `after`). Without a
 * limit, every key (from `after` on): what this route answered before it paged, so a script
 * written then is not cut short at a first page it does not know about.
 */
const listKeysQuery = z.strictObject({
  limit: z.coerce.number().int().min(1).max(MAX_KEY_PAGE).optional(),
  after: z.string().regex(KEY_ID, 'expected a key id (key_...)').optional(),
  include: z.literal('quota').optional(),
});

/** DELETE /admin/cache: everything, or one key's entries. */
const purgeQuery = z.strictObject({ keyId: z.string().min(1).max(200).optional() });

const isJsonObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The PATCH formats of /admin/keys/{id}, as its GET announces them (Accept-Patch). */
const ACCEPT_PATCH = 'application/merge-patch+json, application/json';

/** Whether a request's body is a JSON merge patch (RFC 7396), by its content type. */
function isMergePatch(contentType: string | undefined): boolean {
  return contentType?.split(';')[0]!.trim().toLowerCase() === 'application/merge-patch+json';
}

/**
 * How deep a merge patch is merged into a key's limits, cache or metadata: their members only. None
 * of those members is an object (numbers, strings, booleans), so a member's value replaces whatever
 * was there (an object is then the schema's to refuse): the merge never recurses on a patch nested
 * thousands of levels deep (a 500 once, the stack exhausted).
 */
const MERGE_DEPTH = 1;

/** RFC 7396: `patch` applied to `target` (objects merged member by member, null removes a member). */
function mergePatch(target: unknown, patch: unknown, depth = 1): unknown {
  if (!isJsonObject(patch) || depth > MERGE_DEPTH) return patch;
  const out: Record<string, unknown> = isJsonObject(target) ? { ...target } : {};
  for (const [name, value] of Object.entries(patch)) {
    if (value === null) delete out[name];
    else out[name] = mergePatch(out[name], value, depth + 1);
  }
  return out;
}

/**
 * A merge patch without its optional `merge: true`: a client that may reach a gateway from before
 * merge patches (a rolling upgrade) sends it, so that such a gateway refuses the patch (an unknown
 * field) rather than reading it as whole fields. Anything but true there is refused here too.
 */
function withoutMergeMarker(patch: Record<string, unknown>): Record<string, unknown> {
  if (!Object.hasOwn(patch, 'merge')) return patch;
  if (patch.merge !== true) throw invalidRequest("Invalid 'merge': a merge patch's marker is true, or absent.", 'merge', 'invalid_value');
  const { merge: _marker, ...rest } = patch;
  return rest;
}

/** An object's members that are not null (a merge patch's nulls remove; the rest is what it sets). */
function withoutNulls(o: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== null));
}

/**
 * The fields a merge patch names, as they are once merged into the key (to validate as a PATCH
 * body): limits, cache and metadata merged, a removed one empty (cache: left out, the route drops it); name and models as given (null
 * models: every model, as when it is absent); any other member as given, for the schema to refuse.
 */
function mergedFields(current: KeyRecord, patch: Record<string, unknown>): Record<string, unknown> {
  const editable: Record<string, unknown> = { limits: current.limits, cache: current.cache ?? {}, metadata: current.metadata };
  const fields: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(patch)) {
    if (name === 'cache' && value === null) continue; // removed whole: see the PATCH route
    fields[name] = Object.hasOwn(editable, name) ? (mergePatch(editable[name], value) ?? {}) : value;
  }
  return fields;
}

/** Every key after `after` (all without it), as one last page; null when `after` names none of them. */
function everyKeyAfter(keys: KeyRecord[], after: string | undefined): KeyPage | null {
  const from = after === undefined ? 0 : keys.findIndex((k) => k.id === after) + 1;
  if (from === 0 && after !== undefined) return null;
  const rest = keys.slice(from);
  return { keys: rest, hasMore: false, lastId: rest.at(-1)?.id ?? null };
}

export async function adminRoutes(app: FastifyInstance, opts: AdminOptions) {
  const { store } = opts;
  const now = () => new Date(opts.clock()).toISOString();

  app.addHook('onRequest', async (request) => {
    // Wrong tokens count against the operators' per-IP failure limit (wrong gateway keys have their
    // own); an address over it is refused before its token is even compared, so guessing cannot go on.
    opts.authGuard.check(request);
    const token = bearerToken(request.headers.authorization);
    if (token && safeEqual(token, opts.adminToken)) return;
    if (token) await opts.authGuard.fail(request);
    throw new GatewayError(401, 'A valid admin token is required.', 'invalid_request_error', 'invalid_admin_token');
  });

  // Every answer of this scope, errors included: no cache may keep one (a new key's secret, usage,
  // key lists), and none is sniffed as anything but what it says it is.
  app.addHook('onSend', async (_request, reply, payload) => {
    reply.header('cache-control', 'no-store').header('x-content-type-options', 'nosniff');
    return payload;
  });

  // Unknown paths and methods under /admin answer 404 only to the token holder (this scope's hook runs
  // first): without it, a 401 for routes that exist and a 404 for the rest would map the API.
  app.setNotFoundHandler(notFoundHandler);

  /** The key `id`, or a 404 naming the parameter that gave the id. */
  async function load(id: string, param: 'id' | 'keyId' = 'id'): Promise<KeyRecord> {
    const record = await store.getKeyById(id);
    if (!record) throw notFound(`No key with id '${id}'.`, 'key_not_found', param);
    return record;
  }

  /** Changes a key atomically (Store.updateKey: overlapping admin calls never undo each other); 404 if none. */
  async function change(id: string, fn: KeyChange) {
    const result = await store.updateKey(id, fn).catch((err: unknown) => {
      // Other writes to this key kept winning (a script looping over it?): nothing changed, retry.
      if (!(err instanceof KeyChangeConflictError)) throw err;
      throw new GatewayError(409, `Key '${id}' kept changing while this change was applied; nothing was changed. Please retry.`, 'invalid_request_error', 'key_changing', null, {
        'retry-after': '1',
      });
    });
    if (!result) throw notFound(`No key with id '${id}'.`, 'key_not_found', 'id');
    return result;
  }

  app.post('/keys', async (request, reply) => {
    const input = parseInput(createKeySchema, request.body);
    const secret = newSecret();
    const at = now();
    const record: KeyRecord = {
      id: newKeyId(),
      name: input.name,
      hash: hashSecret(secret),
      hint: secretHint(secret),
      models: input.models ?? null,
      limits: input.limits ?? {},
      ...(input.cache !== undefined && { cache: input.cache }),
      metadata: input.metadata ?? {},
      createdAt: at,
      updatedAt: at,
      revokedAt: null,
    };
    await store.createKey(record);
    request.log.info({ keyId: record.id }, 'key created');
    // The only time the secret is ever shown.
    return reply.code(201).send({ ...publicKey(record), key: secret });
  });

  app.get('/keys', async (request) => {
    const { limit, after, include } = parseInput(listKeysQuery, request.query, 'query');
    const page = limit === undefined ? everyKeyAfter(await store.listKeys(), after) : await store.listKeysPage({ limit, after });
    // Keys are never removed from the list, so an unknown cursor is a mistake (a typo, another
    // gateway's key), not a key deleted between pages: say so rather than guess where to go on.
    if (!page) throw invalidRequest(`No key with id '${after}' to list after.`, 'after', 'key_not_found');
    // For the dashboard's budget bars: the page's keys with their quota usage, in one call.
    const data = await Promise.all(
      page.keys.map(async (k) => (include === 'quota' ? { ...publicKey(k), quota: await opts.quota.view(k) } : publicKey(k))),
    );
    return { object: 'list', data, first_id: data[0]?.id ?? null, last_id: page.lastId, has_more: page.hasMore };
  });

  app.get<{ Params: { id: string } }>('/keys/:id', async (request, reply) => {
    const record = await load(request.params.id);
    // RFC 5789: the formats PATCH takes here. The CLI sends a merge patch only when it sees this
    // (a gateway from before would read one as a whole-field replacement and drop the other limits).
    reply.header('accept-patch', ACCEPT_PATCH);
    return { ...publicKey(record), quota: await opts.quota.view(record) };
  });

  app.patch<{ Params: { id: string } }>('/keys/:id', async (request) => {
    // application/merge-patch+json (RFC 7396): limits, cache and metadata are merged into the key's
    // own, member by member (null removes one), inside the same compare-and-set as the write, so
    // two changes of different limits made at once both hold. Otherwise each given field is
    // replaced as a whole.
    const merge = isMergePatch(request.headers['content-type']);
    if (merge && !isJsonObject(request.body)) throw invalidRequest('A merge patch must be a JSON object.', null, 'invalid_value');
    const replacing = merge ? undefined : parseInput(updateKeySchema, request.body);
    let limitsGiven = false;
    const patch = merge ? withoutMergeMarker(request.body as Record<string, unknown>) : undefined;
    // The limits a merge patch sets are checked as strictly as a replacement's.
    if (patch && isJsonObject(patch.limits)) parseInput(updateKeySchema, { limits: withoutNulls(patch.limits) });
    const { record: updated } = await change(request.params.id, (current) => {
      const input = replacing ?? parseInput(mergedKeySchema, mergedFields(current, patch!));
      limitsGiven = input.limits !== undefined;
      const next: KeyRecord = {
        ...current,
        ...(input.name !== undefined && { name: input.name }),
        ...(input.models !== undefined && { models: input.models }),
        ...(input.limits !== undefined && { limits: input.limits }),
        ...(input.cache !== undefined && { cache: input.cache }),
        ...(input.metadata !== undefined && { metadata: input.metadata }),
        updatedAt: now(),
      };
      // Removed by the merge patch: the gateway's cache defaults again.
      if (patch?.cache === null) delete next.cache;
      return next;
    });
    request.log.info({ keyId: updated.id }, 'key updated');
    if (limitsGiven && updated.revokedAt === null) opts.onLimitsChanged?.(updated);
    return publicKey(updated);
  });

  app.delete<{ Params: { id: string } }>('/keys/:id', async (request) => {
    const at = now();
    // Already revoked: left as it is (the first revocation's time stands).
    const { record, changed } = await change(request.params.id, (current) =>
      current.revokedAt === null ? { ...current, revokedAt: at, updatedAt: at } : null,
    );
    if (changed) request.log.info({ keyId: record.id }, 'key revoked');
    return { id: record.id, object: 'key', deleted: true };
  });

  app.post<{ Params: { id: string } }>('/keys/:id/rotate', async (request) => {
    const secret = newSecret();
    const { record: updated } = await change(request.params.id, (current) => {
      // Checked on the record being changed, so a revocation that lands first always wins.
      if (current.revokedAt !== null) {
        throw new GatewayError(409, 'A revoked key cannot be rotated.', 'invalid_request_error', 'key_revoked');
      }
      return { ...current, hash: hashSecret(secret), hint: secretHint(secret), updatedAt: now() };
    });
    request.log.info({ keyId: updated.id }, 'key rotated');
    return { ...publicKey(updated), key: secret };
  });

  await app.register(usageRoutes, { store, clock: opts.clock, timeZone: opts.timeZone });

  app.delete('/cache', async (request) => {
    const { keyId } = parseInput(purgeQuery, request.query, 'query');
    if (keyId !== undefined) {
      if (opts.cache.scope === 'global') {
        throw invalidRequest('With CACHE_SCOPE=global, entries are shared and belong to no key: purge them all instead.', 'keyId', 'invalid_value');
      }
      await load(keyId, 'keyId');
    }
    const deleted = await opts.cache.purge(keyId);
    request.log.info({ keyId, deleted }, 'cache purged');
    return { object: 'cache.purge', keyId: keyId ?? null, deleted };
  });
}
