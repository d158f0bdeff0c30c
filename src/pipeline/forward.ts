// The shared pipeline for every POST endpoint: validate, check the model, cache lookup and admission
// (one store round trip when they can be joined), forward, relay, then settle and fill the cache
// once the answer is complete.
import type { Readable } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Endpoint } from '../openai/endpoints.js';
import { storedItemNamed, validateBody } from '../openai/endpoints.js';
import { isKeptAnswer } from '../openai/responses-convert.js';
import { MODEL_MAX_LENGTH } from '../openai/schemas.js';
import { maskSseText, relaySse, type RelayResult } from '../openai/sse.js';
import { errorCodeOf, type Usage } from '../openai/usage.js';
import { countCompletionTokens } from '../openai/tokens.js';
import type { Admission, Consumption, Quota } from '../quota/quota.js';
import { maxOutputTokens } from '../quota/quota.js';
import type { Cache, CachePlan, NewCacheEntry } from '../cache/cache.js';
import type { CacheEntry } from '../store/store.js';
import { isModelAllowed } from '../keys.js';
import { clientClosed, invalidRequest, modelNotFound, openAIErrorBody, upstreamAuthFailed, type OpenAIErrorBody } from '../errors.js';
import type { UpstreamClient, UpstreamResponse } from '../upstream/client.js';
import { abandonedAfterSending, endedByTimeout, mediaTypeOf, upstreamFailure } from '../upstream/client.js';
import { carriesError } from '../upstream/redact.js';
import { headModel, lastMembers } from '../openai/large-json.js';
import { exactSeedDigits, stringifyWithSeed } from '../openai/big-seed.js';
import { clientHeadersForUpstream, upstreamHeadersForClient } from './headers.js';
import { serveHit } from './serve-hit.js';
import type { ResponseOwners } from './response-owners.js';
import { waitOnStore } from '../request-context.js';

/** The most stored items a Responses request may name by id (each is a store read before upstream). */
export const MAX_ITEM_REFERENCES = 100;

export interface ForwardDeps {
  upstream: UpstreamClient;
  quota: Quota;
  cache: Cache;
  /** Who created each Responses API object (endpoints with `recordsOwner`). */
  owners: ResponseOwners;
  logBodies: boolean;
  /** The most objects, arrays and object fields a body may hold (BODY_MAX_NODES). */
  maxBodyNodes: number;
}

export interface ForwardOptions {
  /** Replaces the body's model (legacy /engines/{engine}/completions and /embeddings). */
  model?: string;
}

type Body = Record<string, unknown> & {
  model: string;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean | null } | null;
};

/**
 * An AbortSignal that fires when the client goes away before its response is complete, or has
 * fired already if it left while the request waited (on the store's admission, or on an identical
 * request in flight): its 'close' event is gone by then, and without this check the request went
 * upstream all the same, billed and recorded as a 200 nobody received.
 */
export function clientGone(reply: FastifyReply): AbortSignal {
  const controller = new AbortController();
  const gone = () => {
    if (!reply.raw.writableFinished) controller.abort();
  };
  if (reply.raw.destroyed) gone();
  else reply.raw.once('close', gone);
  return controller.signal;
}

/**
 * The body sent upstream. It is the client's bytes unchanged, except where the gateway must change it:
 * the model named by a legacy engine path, and `stream_options.include_usage: true` on streams so
 * every streamed call can be accounted for.
 */
function upstreamBody(request: FastifyRequest, endpoint: Endpoint, body: Body, options: ForwardOptions): Buffer | string {
  const addUsage = endpoint.usage.askInStream && body.stream === true && body.stream_options?.include_usage !== true;
  const sentModel = (request.body as { model?: unknown }).model;
  const changeModel = options.model !== undefined && sentModel !== options.model;
  if (!addUsage && !changeModel && request.rawBody) return request.rawBody;
  const changed: Record<string, unknown> = { ...body };
  if (changeModel) changed.model = options.model;
  if (addUsage) changed.stream_options = { ...(body.stream_options ?? {}), include_usage: true };
  return stringifyWithSeed(changed, exactSeedDigits(request, body));
}

export function forward(
  request: FastifyRequest,
  reply: FastifyReply,
  endpoint: Endpoint,
  deps: ForwardDeps,
  options: ForwardOptions = {},
) {
  const work = handle(request, reply, endpoint, deps, options);
  // The request's log line and usage event wait for this: a client that hangs up mid-request closes
  // the response long before the pipeline has settled what the request cost.
  request.trace.completion = work.then(
    () => request.trace.streamDone,
    () => undefined,
  );
  return work;
}

async function handle(
  request: FastifyRequest,
  reply: FastifyReply,
  endpoint: Endpoint,
  deps: ForwardDeps,
  options: ForwardOptions,
) {
  const raw = request.body as Record<string, unknown> | undefined;
  const trace = request.trace;
  // Before validation: a request refused as invalid is still recorded against its endpoint, and
  // its body is the one most worth reading.
  trace.endpoint = endpoint.name;
  if (deps.logBodies) trace.requestBody = raw;
  // Only an object takes the engine's model: an array spread into one would be validated as an
  // object with a model (a 400 for a missing prompt instead of "must be a JSON object").
  const isObject = typeof raw === 'object' && raw !== null && !Array.isArray(raw);
  const withModel = options.model !== undefined && isObject ? { ...raw, model: options.model } : raw;
  // The model a refused request named, recorded as app.ts records any refusal's: the price table's
  // id it is priced as, or none. Only a name of a model's size (the schema's bound): it is logged.
  const named = isObject ? (withModel as Record<string, unknown>).model : undefined;
  if (typeof named === 'string' && named.length > 0 && named.length <= MODEL_MAX_LENGTH) trace.model = named;
  const body = validateBody(endpoint.schema, withModel, deps.maxBodyNodes) as Body;
  const key = request.gatewayKey!;
  trace.model = body.model;
  trace.stream = endpoint.streamable && body.stream === true;

  if (!isModelAllowed(key.models, body.model)) throw modelNotFound(body.model);
  // A response may continue only a conversation its own key created: OpenAI sees one server key for
  // everybody, so without this check any key could read another's stored conversation back.
  // It also sends that conversation to OpenAI again, billed as input: its tokens join the estimate.
  const previous = body.previous_response_id;
  let carriedTokens = 0;
  if (endpoint.recordsOwner && typeof previous === 'string') {
    const owner = await waitOnStore(trace, deps.owners.ownerOf(previous));
    // OpenAI's answer, a 400: apps that resend the whole transcript when a stored response has
    // expired catch it as a bad request.
    if (owner?.keyId !== key.id) {
      throw invalidRequest(`Previous response with id '${previous}' not found.`, 'previous_response_id', 'previous_response_not_found');
    }
    carriedTokens = owner.contextTokens;
  }
  // The same for stored items named in the input (item_reference, an id alone, a reasoning item by
  // id): only those of this key's own responses, or any key could have another's messages and
  // reasoning put before the model. OpenAI's answer for an id it does not know.
  if (endpoint.recordsOwner && Array.isArray(body.input)) {
    const referenced = [...new Set(body.input.map(storedItemNamed).filter((id) => id !== undefined))];
    // One store read each: bounded, or one request could send tens of thousands at the store.
    if (referenced.length > MAX_ITEM_REFERENCES) {
      throw invalidRequest(`At most ${MAX_ITEM_REFERENCES} stored items may be referenced by id in one request; send the others' content instead.`, 'input', 'too_many_item_references');
    }
    if (referenced.length > 0) {
      const owners = await waitOnStore(trace, Promise.all(referenced.map((id) => deps.owners.ownerOf(id))));
      const foreign = referenced.find((_, i) => owners[i]?.keyId !== key.id);
      if (foreign !== undefined) throw invalidRequest(`Item with id '${foreign.slice(0, 100)}' not found.`, 'input', 'item_not_found');
    }
  }

  const plan = deps.cache.plan(request, key, endpoint, body);
  /** Made with the cache lookup when the two could go to the store together. */
  let admitted: Admission | undefined;
  /** Counted against rpm already, by the free admission of an entry that could not answer it. */
  let rpmCounted = false;
  if (plan) {
    const found = await waitOnStore(
      trace,
      deps.cache.lookupAndAdmit(plan, (lookup) => deps.quota.admitAndLookup(key, endpoint, body, body.model, lookup, { arrivedAt: trace.arrivedAt })),
    );
    if (
      found.entry &&
      canServe(endpoint, found.entry, trace.stream, body) &&
      (!endpoint.recordsOwner || (await waitOnStore(trace, deps.owners.answersKey(found.entry.body, key.id))))
    ) {
      return serveHit(request, reply, endpoint, body, found.entry, deps, found.admission);
    }
    // An entry that cannot answer this request came with a hit's free admission, which cannot
    // cover an upstream call: that request is admitted again, in full, without counting it against
    // rpm twice (rare: a stream asked of an answer that cannot be re-chunked, a stored response
    // since deleted or another key's).
    if (!found.entry) admitted = found.admission;
    else rpmCounted = found.admission !== undefined;
  }
  try {
    const admission =
      admitted ?? (await waitOnStore(trace, deps.quota.admit(key, endpoint, body, body.model, { rpmCounted, carriedTokens, arrivedAt: trace.arrivedAt })));
    return await callUpstream(request, reply, endpoint, body, deps, options, plan, admission);
  } catch (err) {
    // Whatever went wrong, identical requests waiting on this one must not wait for nothing.
    if (plan) void deps.cache.fill(plan, undefined);
    throw err;
  }
}

async function callUpstream(
  request: FastifyRequest,
  reply: FastifyReply,
  endpoint: Endpoint,
  body: Body,
  deps: ForwardDeps,
  options: ForwardOptions,
  plan: CachePlan | undefined,
  admission: Admission,
) {
  const trace = request.trace;
  reply.headers(admission.headers);
  // Said only of a request that goes upstream: a refused one (429, 400) was neither a hit nor a
  // miss, and counting it as one would skew every hit ratio. A request of a cacheable endpoint
  // that it never caches (state held upstream: Responses with store or previous_response_id, chat
  // with store: true) says BYPASS like any other.
  const cacheStatus = plan ? plan.status : endpoint.cacheable ? 'BYPASS' : undefined;
  // Not for a client that left while it waited: it goes nowhere (clientGone below), a 499.
  if (cacheStatus && !reply.raw.destroyed) {
    trace.cache = cacheStatus;
    reply.header('x-tollgate-cache', cacheStatus);
  }
  /** The end of every admitted request, once (later calls do nothing): settle the reservation, fill (or release) the cache. */
  let finished = false;
  const finish = (consumption: Consumption, entry?: NewCacheEntry) => {
    if (finished) return;
    finished = true;
    try {
      const charge = admission.settle({ ...consumption, model: trace.modelAnswered });
      trace.costMicros = charge.costMicros;
      trace.estimated = charge.estimated || undefined;
    } finally {
      // Even if settling threw, identical requests waiting on this one must be released.
      if (plan) void deps.cache.fill(plan, entry);
    }
  };

  /**
   * A request upstream read but never finished answering, because this side gave up on it (the
   * client hung up, or one of the gateway's own timeouts fired): OpenAI still bills the prompt it
   * read (and may even be generating). It is charged the prompt (estimated), or hanging up or
   * outwaiting the timeout would be a way around the budget.
   */
  const finishAbandoned = () => {
    trace.usage = promptPlus(admission, 0);
    finish({ usage: trace.usage, estimated: true });
  };

  /**
   * A 200 whose body never arrived whole (the gateway's idle or total timeout, the client gone, or
   * the connection lost mid-body), or arrived as something that is not JSON and reports no usage:
   * upstream had answered, i.e. generated the completion (a non-streamed answer's headers come once
   * it is done), and bills all of it, though its size never arrived. It is charged the
   * reservation's worst case, the prompt estimate plus the most output the request allowed
   * (estimated): charging less would make a slow read or a hang-up a way around the budget.
   */
  const finishCutAnswer = () => {
    trace.usage = promptPlus(admission, Math.max(0, admission.reservedTokens - admission.promptTokens));
    finish({ usage: trace.usage, estimated: true });
  };

  /** Upstream's answer, once there is one. */
  let answer: UpstreamResponse | undefined;
  try {
    const signal = clientGone(reply);
    const started = performance.now();
    let res: UpstreamResponse;
    try {
      res = await deps.upstream.send({
        method: 'POST',
        path: endpoint.upstreamPath,
        body: upstreamBody(request, endpoint, body, options),
        headers: clientHeadersForUpstream(request.headers),
        signal,
        log: request.log,
        tenant: request.gatewayKey!.id,
      });
    } catch (err) {
      // Failed or abandoned, it still went to upstream: the wait (attempts, backoff, a timeout) is
      // upstream time, not the gateway's overhead.
      trace.upstreamMs = performance.now() - started;
      // Sent and then given up on (the client hung up, or the gateway's first-byte or total timeout
      // fired while upstream worked on it): charged its prompt. Never sent (connection refused or
      // timed out, the client gone during a wait between attempts) or ended by upstream (a dropped
      // connection): nothing to bill, the reservation is released in full.
      const abandoned = abandonedAfterSending(err);
      if (signal.aborted) {
        if (abandoned) finishAbandoned();
        else finish({ estimated: false });
        return clientClosed(reply);
      }
      await admission.endLease(); // before the client sees the error (see the relay below)
      if (abandoned) finishAbandoned();
      else finish({ estimated: false });
      throw err;
    }
    answer = res;
    trace.upstreamStatus = res.status;
    if (res.status === 401) {
      trace.upstreamMs = performance.now() - started;
      // OpenAI refused the gateway's own key. Its message names that key (masked) and would make the
      // client think its gateway key is wrong: this is the gateway's failure, say so instead.
      res.body.resume();
      await admission.endLease();
      finish({ estimated: false });
      throw upstreamAuthFailed();
    }
    const headers = upstreamHeadersForClient(res.headers);
    trace.upstreamRequestId = headers['x-upstream-request-id'];
    reply.code(res.status).headers(headers);

    const isSse = mediaTypeOf(res) === 'text/event-stream';
    if (trace.stream && res.status === 200 && isSse) {
      const keyId = request.gatewayKey!.id;
      const { stream, done } = relaySse(res.body, {
        dropUsageChunk: endpoint.usage.askInStream && body.stream_options?.include_usage !== true,
        onFirstEvent: () => (trace.ttfbMs = reply.elapsedTime),
        readEvent: endpoint.usage.event,
        // A mid-stream error event is upstream error text: it may echo a server key (see redact.ts).
        maskError: res.maskSecrets,
        typedEvents: endpoint.typedEvents,
        // A long generation keeps the text it generated, not every event's JSON (see RelayOptions).
        textOf: endpoint.usage.generatedText,
        // The id is known from response.created on: recorded before the client can see (and use) it.
        onEvent: endpoint.recordsOwner ? (data, event) => deps.owners.recordFromEvent(data, event, keyId) : undefined,
        // Upstream is done: the key's concurrency lease is given back before the client sees the end
        // ([DONE] or the terminal event), or a strictly sequential client's next request could find
        // it still held; the settlement comes after the response.
        beforeEnd: () => admission.endLease(),
      });
      trace.streamDone = done.then((result) => {
        let consumption: Consumption = { estimated: false };
        let entry: NewCacheEntry | undefined;
        try {
          trace.streamIncomplete = !result.completed;
          trace.upstreamMs = performance.now() - started;
          // Closed from this side (the client left, or the gateway's idle or total timeout): upstream
          // has read the prompt, and bills it as a hang-up.
          const timedOut = endedByTimeout(res, result.error);
          const closedHere = signal.aborted || timedOut;
          trace.errorCode ??= result.failure ?? streamErrorCode(result, signal.aborted, timedOut);
          trace.usage = result.usage ?? estimateCutShort(endpoint, body, result, admission, closedHere);
          trace.modelAnswered = result.model;
          // Estimated when the gateway counted it; a stream released in full (nothing generated) was not.
          consumption = { usage: trace.usage, estimated: result.usage === undefined && trace.usage !== undefined };
          entry = streamEntry(endpoint, result, body.model);
        } finally {
          // Even if reading the stream failed (a bug; app.ts logs it): its reservation and lease must not be kept.
          finish(consumption, entry);
        }
      });
      return sendRelayed(reply, stream);
    }

    return sendBuffered(
      reply,
      res,
      started,
      deps.logBodies,
      (json, text, cut) => {
        if (res.status !== 200) return finish({ estimated: false }); // OpenAI does not bill errors: release
        // Upstream answered, and its body never arrived whole (cut from either side).
        if (cut) return finishCutAnswer();
        // A background response's create call: OpenAI bills the run when it finishes, never through
        // the gateway (keys with token or USD limits may not start one). 0 tokens, not an estimate.
        if (!trace.usage && endpoint.usage.unfinished?.(json)) return finish({ estimated: false });
        if (trace.usage || endpoint.usage.optional) {
          return finish({ usage: trace.usage, estimated: false }, jsonEntry(json, text, trace.usage ?? NO_USAGE));
        }
        // A 200 that reports no usage (a misbehaving upstream or proxy): billed by upstream all the
        // same, so estimated as a stream that ended without usage is, from the answer's text; a body
        // that is not JSON at all says nothing of its size, and is charged the worst case. Never
        // cached (an entry needs upstream's usage).
        if (text === undefined) return finishCutAnswer();
        trace.usage = estimatedUsage(endpoint, body, admission, endpoint.usage.answerText(json));
        finish({ usage: trace.usage, estimated: true });
      },
      {
        readUsage: endpoint.usage.body,
        // A large answer's text is kept only if the cache may store it.
        keepTextUpTo: plan ? deps.cache.maxEntryBytes : 0,
        // Recorded before the body (and its id) reaches the client.
        beforeSend: endpoint.recordsOwner ? (json) => deps.owners.recordFromBody(json, request.gatewayKey!.id) : undefined,
        // As for a stream: the concurrency lease is given back before the client has the answer.
        beforeEnd: () => admission.endLease(),
      },
    );
  } catch (err) {
    // Anything the paths above did not see coming (a bug, an answer Fastify will not send): the
    // reservation and the concurrency lease are given back, or the renewal timer would keep them for
    // as long as the instance runs, and upstream's body is dropped, or it would hold its connection.
    if (!finished) {
      answer?.body.on('error', () => undefined).destroy(); // undici's body errors when dropped unread
      finish({ estimated: false });
    }
    throw err;
  }
}

/**
 * Sends a relayed upstream stream. Its headers go out at once, as upstream's came, not with its
 * first event: a model may think for a minute before that, and a client (or proxy) that waits as
 * long for headers times out and retries, each retry billed. Fastify sets them as it starts piping
 * the stream; Node would write them with its first byte.
 */
export function sendRelayed(reply: FastifyReply, stream: Readable) {
  reply.header('cache-control', 'no-cache').header('x-accel-buffering', 'no');
  reply.raw.once('pipe', () => {
    if (!reply.raw.headersSent && !reply.raw.destroyed) reply.raw.flushHeaders();
  });
  return reply.send(stream);
}

/** What an answer that reports no usage (moderations) used, for its cache entry. */
const NO_USAGE: Usage = { promptTokens: 0, completionTokens: 0, totalTokens: 0, cachedPromptTokens: 0, reasoningTokens: 0 };

/** A stored JSON answer can always be served as JSON; as a stream only if it can be re-chunked faithfully. */
function canServe(endpoint: Endpoint, entry: CacheEntry, stream: boolean, body: Body): boolean {
  // An answer that carries an error is never stored now; one stored before that was (unmasked
  // upstream error text) is not served: the request goes upstream and replaces it.
  if (carriesError(entry.body)) return false;
  // A Responses answer echoes the request's user; the cache name has kept it apart only since
  // 51a4bd5: an entry stored before from another user's request is not theirs to be served.
  if (endpoint.name === 'responses' && echoedUser(entry.body) !== (typeof body.user === 'string' ? body.user : null)) return false;
  if (!stream) return true;
  // A legacy completion with best_of cannot be streamed (OpenAI says so, and refuses it): a stream
  // made from the entry would answer 200 what upstream answers 400.
  if (typeof body.best_of === 'number' && body.best_of > 1) return false;
  if (!endpoint.convert) return false;
  try {
    return endpoint.convert.canSynthesize(JSON.parse(entry.body) as Record<string, unknown>);
  } catch {
    return false;
  }
}

/** The `user` a stored Responses answer carries (null when none, or when it cannot be read). */
function echoedUser(stored: string): string | null {
  try {
    const user = (JSON.parse(stored) as { user?: unknown }).user;
    return typeof user === 'string' ? user : null;
  } catch {
    return null;
  }
}

/** A cache entry from a complete non-streamed answer, if it is one. */
function jsonEntry(json: unknown, text: string | undefined, usage: Usage | undefined): NewCacheEntry | undefined {
  if (text === undefined || !usage || typeof json !== 'object' || json === null) return undefined;
  // A 200 that reports an error (a Responses object that failed) did not complete normally.
  if ((json as { error?: unknown }).error != null) return undefined;
  if (partial(json as Record<string, unknown>)) return undefined;
  return {
    body: text,
    model: String((json as { model?: unknown }).model ?? ''),
    promptTokens: usage.promptTokens,
    cachedPromptTokens: usage.cachedPromptTokens,
    completionTokens: usage.completionTokens,
  };
}

/**
 * An answer the content filter cut (a chat or legacy choice with finish_reason content_filter, a
 * Responses object incomplete for that reason): a retry may get it whole, so it is not kept for the
 * whole TTL. A cut the request itself asked for (max_tokens: finish_reason length; Responses
 * incomplete for max_output_tokens) is its answer, and is kept. A Responses object in any other
 * state (failed, cancelled, queued) is not an answer to keep either: isKeptAnswer, the rule a
 * Responses stream is kept by.
 */
function partial(json: Record<string, unknown>): boolean {
  if (typeof json.status === 'string') return !isKeptAnswer(json);
  return Array.isArray(json.choices) && json.choices.some((c) => (c as { finish_reason?: unknown } | null)?.finish_reason === 'content_filter');
}

/** A cache entry from a stream that ended normally ([DONE], finish reasons, usage), assembled into JSON. */
function streamEntry(endpoint: Endpoint, result: RelayResult, model: string): NewCacheEntry | undefined {
  if (!result.completed || !result.usage || result.error || result.dataDropped) return undefined;
  if (!endpoint.convert) return undefined;
  const assembled = endpoint.convert.assemble(result.data);
  if (!assembled) return undefined;
  return jsonEntry({ model, ...assembled }, JSON.stringify(assembled), result.usage);
}

/**
 * Usage of a stream that ended before upstream's usage chunk (client left, upstream broke): the
 * prompt as estimated at admission plus a local count of what was generated, as OpenAI bills it.
 */
function estimateCutShort(endpoint: Endpoint, body: Body, result: RelayResult, admission: Admission, closedHere: boolean): Usage | undefined {
  const generated = (result.text ?? '') + endpoint.usage.generatedText(result.data);
  // Nothing generated that shows (events without output, a role chunk or response.created, are no
  // token; an in-band error is not output). If upstream broke or refused the stream, release
  // everything. If the connection was closed from this side (the client hung up, or a gateway
  // timeout), upstream has read the prompt and bills it, as for a non-streamed hang-up (or leaving
  // before the first token would be a way around the budget); and a stream that ended normally
  // without usage was served (a reasoning model may spend all it may on reasoning, unseen).
  const brokenByUpstream = result.upstreamError === true || (!result.completed && !closedHere);
  if (generated === '' && brokenByUpstream) return undefined;
  return estimatedUsage(endpoint, body, admission, generated);
}

/**
 * Why a stream did not end normally, for its usage event and log line: upstream broke it off with
 * an in-band error event, the gateway's own idle or total timeout ended it, or upstream's
 * connection ended before its terminal event. Nothing when it completed, or when this side closed it
 * (the client left, or the shutdown deadline cut it: those codes are recorded when the response closes).
 */
function streamErrorCode(result: RelayResult, closedByClient: boolean, timedOut: boolean): string | undefined {
  if (result.upstreamError) return 'upstream_stream_error';
  if (closedByClient || result.completed) return undefined;
  return timedOut ? 'upstream_timeout' : 'upstream_stream_cut';
}

/**
 * Usage the gateway counts itself for an answer upstream reported none for: the prompt as estimated
 * at admission plus a local count of the text generated.
 */
function estimatedUsage(endpoint: Endpoint, body: Body, admission: Admission, generated: string): Usage {
  // Never past the most the request let upstream generate, when it says (or the endpoint's default
  // does): a legacy completion with `echo` has its prompt in the text too.
  return promptPlus(admission, Math.min(countCompletionTokens(generated, body.model), maxOutputTokens(endpoint, body, Infinity)));
}

/** An estimated usage: the prompt as estimated at admission, plus `completionTokens`. */
function promptPlus(admission: Admission, completionTokens: number): Usage {
  const prompt = admission.promptTokens;
  return { promptTokens: prompt, completionTokens, totalTokens: prompt + completionTokens, cachedPromptTokens: 0, reasoningTokens: 0 };
}

/**
 * Reads a whole (non-streamed or error) upstream body and sends it on unchanged. `onBody` hears
 * the parsed JSON of a 200 and its text (for usage and the cache), or nothing if reading failed;
 * then `cutHere` says whether this side ended the read (the client left, or the gateway's idle or
 * total timeout fired) rather than upstream.
 */
export async function sendBuffered(
  reply: FastifyReply,
  res: UpstreamResponse,
  started: number,
  logBodies: boolean,
  /** `cut`: the body never arrived whole (a timeout, the client gone, the connection lost). */
  onBody?: (json: unknown, text: string | undefined, cut?: boolean) => void,
  read: {
    /**
     * How this endpoint reports usage in a 200 body. Without it none is recorded: reading a stored
     * response back (which carries its usage, as OpenAI's does) is not another use of its tokens.
     */
    readUsage?: (json: unknown) => Usage | undefined;
    /** Awaited after a 200 body is read and before it is sent. */
    beforeSend?: (json: unknown) => Promise<void>;
    /**
     * Called once upstream's body is read (any status, or a failed read), before the client gets
     * anything; a returned promise is awaited (alongside beforeSend's) first. It must not reject.
     */
    beforeEnd?: () => Promise<void> | undefined;
    /**
     * A 2xx body larger than WHOLE_PARSE_MAX_BYTES and than this (the cache's largest entry, when it
     * may store the answer; default 0) is not parsed whole, nor its text kept: see readLargeJsonBody.
     */
    keepTextUpTo?: number;
  } = {},
) {
  const trace = reply.request.trace;
  let bytes: Buffer;
  try {
    bytes = await readBody(res);
  } catch (err) {
    trace.upstreamMs = performance.now() - started; // the body was being read from upstream
    if (reply.raw.destroyed) {
      onBody?.(undefined, undefined, true);
      return clientClosed(reply);
    }
    await read.beforeEnd?.();
    onBody?.(undefined, undefined, true);
    throw upstreamFailure(err, res.timedOut(), reply.request.method === 'POST');
  }
  trace.upstreamMs = performance.now() - started;
  // A 2xx body that carries an error is masked before anything reads it (non-2xx bodies come masked).
  bytes = maskSuccessBody(res, bytes);
  const beforeSend = res.status === 200 ? read.beforeSend : undefined;
  const isError = res.status >= 400;
  // The answer goes out as it came; what the gateway reads from it (usage, model, error code) is
  // parsed after, off the client's path, unless something must see it first (beforeSend, and
  // errors: rare, and one that is not JSON is replaced below).
  // Started first, so its store round trip overlaps beforeSend's (both leave in one write).
  const ending = read.beforeEnd?.();
  let body: { text: string | undefined; json: unknown } | undefined = beforeSend || isError ? readJsonBody(res, bytes) : undefined;
  if (beforeSend) await beforeSend(body?.json);
  if (ending) await ending;
  trace.ttfbMs = reply.elapsedTime;
  if (isError && body === undefined) reply.type('application/json; charset=utf-8').send(unreadableUpstreamError(res));
  else reply.send(bytes);
  if (!beforeSend && !isError) {
    // A large answer the cache may store is parsed whole: its entry is the whole text, so it must be JSON.
    const large = bytes.length > Math.max(WHOLE_PARSE_MAX_BYTES, read.keepTextUpTo ?? 0);
    body = large ? readLargeJsonBody(res, bytes, read.readUsage) : readJsonBody(res, bytes);
  }
  const json = body?.json;
  const error = (json as { error?: unknown } | undefined)?.error;
  if (res.status === 200) {
    if (read.readUsage) trace.usage = read.readUsage(json);
    const model = (json as { model?: unknown } | undefined)?.model;
    if (typeof model === 'string') trace.modelAnswered = model;
    if (logBodies) trace.responseBody = json;
    // A 200 that reports an error (a Responses object that failed): an error in the log, the usage
    // report and the metrics, though it is billed like any answer.
    if (error != null) trace.errorCode = errorCodeOf(error, 'response_failed');
  } else {
    trace.errorCode = errorCodeOf(error, `upstream_${res.status}`);
  }
  // Settling and filling the cache come after the answer is on its way: the client never waits for
  // them (the request's log line and usage event are written on 'close', after this has run).
  onBody?.(res.status === 200 ? json : undefined, body?.text);
  return reply;
}

/**
 * What the client gets for an upstream error that is not JSON (an HTML page from a proxy in front
 * of OpenAI, an empty body): the same status, with an error in OpenAI's shape that SDKs can read.
 * Upstream's body is not quoted: nothing says what it holds.
 */
function unreadableUpstreamError(res: UpstreamResponse): OpenAIErrorBody {
  const type = mediaTypeOf(res) || 'no content type';
  return openAIErrorBody(
    `The upstream API answered ${res.status} with a body that is not JSON (${type}).`,
    res.status >= 500 ? 'server_error' : 'invalid_request_error',
    'upstream_error',
  );
}

/**
 * Above this size an answer (an embeddings batch: 2,048 inputs of 3,072 floats are ~85 MB of JSON)
 * is not parsed whole: JSON.parse held the event loop ~0.9 s for one such body, every other request
 * waiting, and its numbers took several times its size in heap.
 */
const WHOLE_PARSE_MAX_BYTES = 1024 * 1024;
/**
 * A large JSON answer, too large to be cached, read from its last top-level members (OpenAI writes
 * `usage` after `data` and `choices`) and its `model` (after `data` in embeddings, before `choices`
 * in chat and completions), without parsing the rest. Parsed whole after all when no usage that
 * `readUsage` takes is found there (none, null, malformed): estimates need the whole answer.
 */
function readLargeJsonBody(res: UpstreamResponse, bytes: Buffer, readUsage: ((json: unknown) => Usage | undefined) | undefined): { text: undefined; json: unknown } | ReturnType<typeof readJsonBody> {
  if (!mediaTypeOf(res).includes('json')) return undefined;
  // Without a usage reader (a stored response read back, the model list) nothing says what to read.
  const members = readUsage ? lastMembers(bytes) : undefined;
  if (!members || readUsage?.(members) === undefined) return readJsonBody(res, bytes);
  if (members.model === undefined) {
    const model = headModel(bytes);
    if (model !== undefined) members.model = model;
  }
  return { text: undefined, json: members };
}

/** A JSON answer's text and parsed body; undefined when it is not JSON (not ours to judge: it passes as it came). */
function readJsonBody(res: UpstreamResponse, bytes: Buffer): { text: string; json: unknown } | undefined {
  if (!mediaTypeOf(res).includes('json')) return undefined;
  const text = bytes.toString('utf8');
  try {
    return { text, json: JSON.parse(text) };
  } catch {
    return undefined;
  }
}

/** The whole body of an answer to a GET; a failure while reading it becomes the client's 502 or 504 (a retry is safe). */
export async function readUpstreamBody(res: UpstreamResponse): Promise<Buffer> {
  let bytes: Buffer;
  try {
    bytes = await readBody(res);
  } catch (err) {
    throw upstreamFailure(err, res.timedOut(), false);
  }
  return maskSuccessBody(res, bytes);
}

/**
 * A whole 2xx body with its upstream error text masked (see redact.ts): all of a body that carries
 * an error (a failed Responses object's `error`), the error events of an event stream, and the
 * server keys themselves anywhere. Anything else (nearly every body, after one native search or
 * two) is returned as it came, the same bytes, never re-serialised. Non-2xx bodies come masked
 * from the upstream client.
 */
function maskSuccessBody(res: UpstreamResponse, bytes: Buffer): Buffer {
  if (res.status < 200 || res.status >= 300) return bytes;
  const mask = res.maskSecrets;
  let out: string;
  if (mediaTypeOf(res) === 'text/event-stream') {
    if (bytes.indexOf('error') === -1 && !mask.hasServerKey(bytes)) return bytes;
    const text = bytes.toString('utf8');
    out = maskSseText(text, mask);
    if (out === text) return bytes;
  } else if (carriesError(bytes)) {
    const text = bytes.toString('utf8');
    out = mask(text);
    if (out === text) return bytes;
  } else if (mask.hasServerKey(bytes)) {
    out = mask.maskServerKeys(bytes.toString('utf8'));
  } else {
    return bytes;
  }
  return Buffer.from(out, 'utf8');
}

/** The whole upstream body; a failure while reading it rejects with undici's own error. */
async function readBody(res: UpstreamResponse): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of res.body) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
