// The shared pipeline for every POST endpoint: validate, check the model, forward, relay, record.
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Endpoint } from '../openai/endpoints.js';
import { validateBody } from '../openai/endpoints.js';
import { relaySse } from '../openai/sse.js';
import { generatedText, readUsage, type Usage } from '../openai/usage.js';
import { countCompletionTokens } from '../openai/tokens.js';
import type { Admission, Consumption, Quota } from '../quota/quota.js';
import type { RelayResult } from '../openai/sse.js';
import { isModelAllowed } from '../keys.js';
import { modelNotFound } from '../errors.js';
import type { UpstreamClient, UpstreamResponse } from '../upstream/client.js';
import { upstreamFailure } from '../upstream/client.js';
import { clientHeadersForUpstream, upstreamHeadersForClient } from './headers.js';

export interface ForwardDeps {
  upstream: UpstreamClient;
  quota: Quota;
  logBodies: boolean;
}

export interface ForwardOptions {
  /** Replaces the body's model (legacy /engines/{engine}/completions). */
  model?: string;
}

/** An AbortSignal that fires when the client goes away before its response is complete. */
export function clientGone(reply: FastifyReply): AbortSignal {
  const controller = new AbortController();
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) controller.abort();
  });
  return controller.signal;
}

/**
 * The body sent upstream. It is the client's bytes unchanged, except where the gateway must change it:
 * the model named by a legacy engine path, and `stream_options.include_usage: true` on streams so
 * every streamed call can be accounted for.
 */
function upstreamBody(
  request: FastifyRequest,
  body: Record<string, unknown> & { stream?: boolean | null; stream_options?: { include_usage?: boolean | null } | null },
  options: ForwardOptions,
): { payload: Buffer | string; clientWantsUsage: boolean } {
  const clientWantsUsage = body.stream_options?.include_usage === true;
  const addUsage = body.stream === true && !clientWantsUsage;
  const sentModel = (request.body as { model?: unknown }).model;
  const changeModel = options.model !== undefined && sentModel !== options.model;
  if (!addUsage && !changeModel && request.rawBody) return { payload: request.rawBody, clientWantsUsage };
  const changed: Record<string, unknown> = { ...body };
  if (changeModel) changed.model = options.model;
  if (addUsage) changed.stream_options = { ...(body.stream_options ?? {}), include_usage: true };
  return { payload: JSON.stringify(changed), clientWantsUsage };
}

export async function forward(
  request: FastifyRequest,
  reply: FastifyReply,
  endpoint: Endpoint,
  deps: ForwardDeps,
  options: ForwardOptions = {},
) {
  const raw = request.body as Record<string, unknown> | undefined;
  const body = validateBody(endpoint.schema, options.model !== undefined && raw && typeof raw === 'object' ? { ...raw, model: options.model } : raw);
  const model = body.model;
  const key = request.gatewayKey!;
  const trace = request.trace;
  trace.endpoint = endpoint.name;
  trace.model = model;
  trace.stream = endpoint.streamable && body.stream === true;
  if (deps.logBodies) trace.requestBody = request.body;

  if (!isModelAllowed(key.models, model)) throw modelNotFound(model);

  const admission = await deps.quota.admit(key, endpoint, body as Record<string, unknown>, model);
  reply.headers(admission.headers);
  const settle = (consumption: Consumption) => {
    const charge = admission.settle(consumption);
    trace.costMicros = charge.costMicros;
    trace.estimated = charge.estimated || undefined;
  };

  const { payload, clientWantsUsage } = upstreamBody(request, body as Record<string, unknown>, options);
  const signal = clientGone(reply);
  const started = performance.now();
  let res: UpstreamResponse;
  try {
    res = await deps.upstream.send({
      method: 'POST',
      path: endpoint.upstreamPath,
      body: payload,
      headers: clientHeadersForUpstream(request.headers),
      signal,
    });
  } catch (err) {
    settle({ estimated: false }); // nothing reached upstream's model, or nothing came back: release
    if (signal.aborted) return clientClosed(reply);
    throw err;
  }
  trace.upstreamStatus = res.status;
  const headers = upstreamHeadersForClient(res.headers);
  trace.upstreamRequestId = headers['x-upstream-request-id'];
  reply.code(res.status).headers(headers);

  const isSse = String(res.headers['content-type'] ?? '').startsWith('text/event-stream');
  if (trace.stream && res.status === 200 && isSse) {
    const { stream, done } = relaySse(res.body, { dropUsageChunk: !clientWantsUsage });
    trace.completion = done.then((result) => {
      trace.streamIncomplete = !result.completed;
      trace.upstreamMs = performance.now() - started;
      trace.usage = result.usage ?? estimateCutShort(result, admission, model);
      settle({ usage: trace.usage, estimated: result.usage === undefined });
    });
    reply.header('cache-control', 'no-cache').header('x-accel-buffering', 'no');
    return reply.send(stream);
  }
  return sendBuffered(reply, res, started, deps.logBodies, settle);
}

/**
 * Usage of a stream that ended before upstream's usage chunk (client left, upstream broke): the
 * prompt as estimated at admission plus a local count of what was generated, as OpenAI bills it.
 */
function estimateCutShort(result: RelayResult, admission: Admission, model: string): Usage | undefined {
  if (result.events === 0) return undefined; // nothing generated: release everything
  const completionTokens = countCompletionTokens(generatedText(result.data), model);
  return {
    promptTokens: admission.promptTokens,
    completionTokens,
    totalTokens: admission.promptTokens + completionTokens,
    cachedPromptTokens: 0,
    reasoningTokens: 0,
  };
}

/** nginx's 499 "client closed request": only ever seen in our logs, since nobody is listening. */
export function clientClosed(reply: FastifyReply) {
  return reply.code(499).send();
}

/** Reads a whole (non-streamed or error) upstream body and sends it on unchanged. */
export async function sendBuffered(
  reply: FastifyReply,
  res: UpstreamResponse,
  started: number,
  logBodies: boolean,
  settle?: (consumption: Consumption) => void,
) {
  const trace = reply.request.trace;
  let bytes: Buffer;
  try {
    bytes = await readUpstreamBody(res);
  } catch (err) {
    settle?.({ estimated: false });
    if (reply.raw.destroyed) return clientClosed(reply);
    throw err;
  }
  trace.upstreamMs = performance.now() - started;
  if (res.status === 200 && String(res.headers['content-type'] ?? '').includes('json')) {
    try {
      const json: unknown = JSON.parse(bytes.toString('utf8'));
      trace.usage = readUsage(json);
      if (logBodies) trace.responseBody = json;
    } catch {
      // Not our business to judge upstream's JSON; pass it on as it came.
    }
  }
  // Upstream errors are not billed by OpenAI: their reservation is released in full.
  settle?.({ usage: res.status === 200 ? trace.usage : undefined, estimated: false });
  return reply.send(bytes);
}

/** The whole upstream body; a failure while reading it becomes the client's 502 or 504. */
export async function readUpstreamBody(res: UpstreamResponse): Promise<Buffer> {
  try {
    const chunks: Buffer[] = [];
    for await (const chunk of res.body) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  } catch (err) {
    throw upstreamFailure(err, res.timedOut());
  }
}
