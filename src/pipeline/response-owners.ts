// Which gateway key created each Responses API object, so only that key may read, delete or cancel it.
import type { FastifyBaseLogger } from 'fastify';
import type { ResponseOwner, Store } from '../store/store.js';
import { storeUnavailable } from '../errors.js';
import { readResponsesUsage } from '../openai/usage.js';
import { ThrottledWarning } from '../resilience/throttled-log.js';

/** OpenAI keeps stored responses 30 days: the owner is remembered as long. */
export const RESPONSE_OWNER_TTL_MS = 30 * 86_400_000;

export type ResponseOwners = ReturnType<typeof createResponseOwners>;

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * A response's input plus output tokens, from its usage (0 before it has any): what a request that
 * continues it sends again. Output includes reasoning, which OpenAI may not carry into the next
 * turn; counting it errs towards reserving too much, never too little.
 */
function conversationTokens(response: Json): number {
  const usage = readResponsesUsage(response);
  if (!usage) return 0;
  // Bounded, or bogus usage would make the record unwritable (its creator would then get 404).
  return Math.min(usage.promptTokens + usage.completionTokens, Number.MAX_SAFE_INTEGER);
}

/** The stream events whose response is recorded: its creation (the id, at once) and its end (with usage). */
const RECORDED_EVENTS = new Set(['response.created', 'response.completed', 'response.incomplete']);
/** Tells those events from the many deltas without parsing each one. */
const RECORDED_TYPE = /"type"\s*:\s*"response\.(?:created|completed|incomplete)"/;

export function createResponseOwners(opts: { store: Store; logger: FastifyBaseLogger; ttlMs?: number }) {
  const ttlMs = opts.ttlMs ?? RESPONSE_OWNER_TTL_MS;
  // One of each per 30 s while the store is down (with how many were left out), not one per request.
  const notRecorded = new ThrottledWarning(opts.logger, 30_000);
  const lookupFailed = new ThrottledWarning(opts.logger, 30_000);
  const notForgotten = new ThrottledWarning(opts.logger, 30_000);

  /**
   * Records the owner of a response object, with its context tokens. A response created with
   * `store: false` cannot be fetched or continued later, so it costs no write. A failed write is
   * logged, not thrown: the answer is already paid for and must reach the client; its creator then
   * gets 404 when fetching it later.
   */
  async function record(response: unknown, keyId: string): Promise<void> {
    if (!isObject(response) || typeof response.id !== 'string' || response.id === '' || response.store === false) return;
    // Its output items too (msg_, rs_, fc_...): OpenAI resolves an item_reference to any item of the
    // project, and the project is everybody's here. Recorded like responses, in the same store.
    const itemIds = Array.isArray(response.output)
      ? response.output.flatMap((item) => (isObject(item) && typeof item.id === 'string' && item.id !== '' ? [item.id] : []))
      : [];
    try {
      await Promise.all([
        opts.store.setResponseOwner(response.id, keyId, ttlMs, conversationTokens(response)),
        ...itemIds.map((id) => opts.store.setResponseOwner(id, keyId, ttlMs, 0)),
      ]);
    } catch (err) {
      notRecorded.warn({ err: (err as Error).message, responseId: response.id, keyId }, 'response owner not recorded');
    }
  }

  return {
    /** From a non-streamed 200 body (the response object itself). */
    recordFromBody: (json: unknown, keyId: string) => record(json, keyId),

    /**
     * From a streamed event: `response.created` (the first event) names the id, recorded at once so
     * the client may use it while the stream runs; the terminal `response.completed` or
     * `response.incomplete` records it again with its usage, before the client sees that event.
     */
    recordFromEvent(data: string, event: string | undefined, keyId: string): Promise<void> | undefined {
      if (event !== undefined && event !== '' && !RECORDED_EVENTS.has(event)) return undefined;
      if (!RECORDED_TYPE.test(data)) return undefined;
      let parsed: unknown;
      try {
        parsed = JSON.parse(data);
      } catch {
        return undefined;
      }
      if (!isObject(parsed) || typeof parsed.type !== 'string' || !RECORDED_EVENTS.has(parsed.type)) return undefined;
      return record(parsed.response, keyId);
    },

    /**
     * Forgets the owner of a response upstream deleted, so that neither a GET nor a cached copy of
     * it (answersKey) outlives it. A failed write is logged: the id then answers its owner until
     * it expires, and upstream has the final word (404) on a GET.
     */
    async forget(responseId: string): Promise<void> {
      try {
        await opts.store.deleteResponseOwner(responseId);
      } catch (err) {
        notForgotten.warn({ err: (err as Error).message, responseId }, 'deleted response owner not forgotten');
      }
    },

    /**
     * Whether a cached Responses object may answer `keyId`. One that OpenAI stored (`store` not
     * false) carries an id that only its creator may use (retrieve, previous_response_id), and only
     * while the response exists: a copy served to another key (CACHE_SCOPE=global) or after a
     * delete would hand out an id that upstream no longer resolves for the caller. Such a request
     * goes upstream and gets a response of its own. Unreadable or not stored: yes.
     */
    async answersKey(cachedBody: string, keyId: string): Promise<boolean> {
      let cached: unknown;
      try {
        cached = JSON.parse(cachedBody);
      } catch {
        return true;
      }
      if (!isObject(cached) || cached.store === false || typeof cached.id !== 'string' || cached.id === '') return true;
      try {
        return (await opts.store.getResponseOwner(cached.id))?.keyId === keyId;
      } catch {
        return false; // the store cannot say: upstream answers instead
      }
    },

    /**
     * Who created `responseId` (and its context tokens), or null. An id no response can have
     * (empty: a route's `/responses/` or `"previous_response_id": ""`) has no owner: the caller's
     * answer for any unknown id (a route's 404, a continuation's 400), without asking the store. Throws 503 only when the store cannot say.
     */
    async ownerOf(responseId: string): Promise<ResponseOwner | null> {
      if (typeof responseId !== 'string' || responseId === '') return null;
      try {
        return await opts.store.getResponseOwner(responseId);
      } catch (err) {
        // The store refusing the id (checkResponseOwner's RangeError) is an answer, not an outage.
        if (err instanceof RangeError) return null;
        lookupFailed.warn({ err: (err as Error).message, responseId }, 'response owner lookup failed');
        throw storeUnavailable('Response lookups are temporarily unavailable. Please retry.');
      }
    },
  };
}
