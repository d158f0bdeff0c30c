// Builds a request's usage event from what the pipeline recorded in request.trace.
import { randomUUID } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { UsageEvent } from './event.js';
import { CLIENT_CLOSED } from '../errors.js';

const round = (ms: number) => Math.round(ms * 100) / 100;

/**
 * Only the OpenAI-compatible API is metered; admin, probes and the dashboard are not, nor a
 * browser's CORS preflight (OPTIONS), which is the browser asking, not a call of the API.
 */
export function isMetered(request: FastifyRequest): boolean {
  return request.method !== 'OPTIONS' && (request.url.startsWith('/v1/') || request.url === '/v1');
}

export function usageEventOf(request: FastifyRequest, reply: FastifyReply): UsageEvent {
  const t = request.trace;
  const u = t.usage;
  const latencyMs = round(reply.elapsedTime);
  const upstreamMs = t.upstreamMs === undefined ? null : round(t.upstreamMs);
  const wroteSomething = reply.raw.headersSent;
  return {
    ts: t.arrivedAt,
    eventId: randomUUID(),
    requestId: request.id,
    keyId: request.gatewayKey?.id ?? null,
    keyName: request.gatewayKey?.name ?? null,
    endpoint: t.endpoint ?? null,
    model: t.model ?? null,
    modelAnswered: t.modelAnswered ?? null,
    status: reply.statusCode,
    stream: t.stream === true,
    cache: t.cache ?? null,
    promptTokens: u?.promptTokens ?? 0,
    cachedPromptTokens: u?.cachedPromptTokens ?? 0,
    completionTokens: u?.completionTokens ?? 0,
    reasoningTokens: u?.reasoningTokens ?? 0,
    totalTokens: u?.totalTokens ?? 0,
    costMicros: t.costMicros ?? 0,
    savedTokens: t.savedTokens ?? 0,
    savedMicros: t.savedMicros ?? 0,
    estimated: t.estimated === true,
    latencyMs,
    ttfbMs: t.ttfbMs !== undefined ? round(t.ttfbMs) : wroteSomething ? latencyMs : null,
    upstreamMs,
    overheadMs: round(Math.max(0, latencyMs - (upstreamMs ?? 0))),
    errorCode: t.errorCode ?? (reply.raw.writableFinished ? null : CLIENT_CLOSED),
  };
}
