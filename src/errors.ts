// The error family and the one place that shapes OpenAI error bodies ({error:{message,type,param,code}}).
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { isOutageError, StoreUnavailableError } from './resilience/store-health.js';
import { KeyedThrottledWarning } from './resilience/throttled-log.js';

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export function openAIErrorBody(
  message: string,
  type: string,
  code: string | null = null,
  param: string | null = null,
): OpenAIErrorBody {
  return { error: { message, type, param, code } };
}

/** An error the gateway answers on purpose. Its message is safe to show the client. */
export class GatewayError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly code: string | null = null,
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'GatewayError';
  }

  body(): OpenAIErrorBody {
    return openAIErrorBody(this.message, this.type, this.code, this.param);
  }
}

export const invalidRequest = (message: string, param: string | null = null, code: string | null = null) =>
  new GatewayError(400, message, 'invalid_request_error', code, param);

export const invalidApiKey = (message: string) =>
  new GatewayError(401, message, 'invalid_request_error', 'invalid_api_key');

export const notFound = (message: string, code: string | null = 'not_found', param: string | null = null) =>
  new GatewayError(404, message, 'invalid_request_error', code, param);

/** OpenAI's wording, so SDK users see what they would see without the gateway. */
export const modelNotFound = (model: string) =>
  new GatewayError(
    404,
    `The model \`${model}\` does not exist or you do not have access to it.`,
    'invalid_request_error',
    'model_not_found',
    'model',
  );

export const upstreamUnreachable = () =>
  new GatewayError(502, 'The gateway could not reach the upstream API. Please retry.', 'server_error', 'upstream_unreachable');

/** An answer that is not HTTP as a client can be sent it (a broken proxy in front of OpenAI): what it said is unknown. */
export const upstreamInvalidStatus = (status: number) =>
  new GatewayError(502, `The upstream API answered with an invalid HTTP status (${status}).`, 'server_error', 'upstream_invalid_response');

export const upstreamUndecodable = () =>
  new GatewayError(502, 'The upstream API answered with a body that does not decode as its content-encoding says.', 'server_error', 'upstream_invalid_response');

export const upstreamAuthFailed = () =>
  new GatewayError(502, 'The upstream API refused the gateway\'s credentials. Tell your gateway administrator.', 'server_error', 'upstream_auth_failed');

export const upstreamTimeout = () =>
  new GatewayError(504, 'The upstream API did not answer in time. Please retry.', 'server_error', 'upstream_timeout');

/** upstreamTimeout once upstream had the request: x-should-retry false (see upstream/client.ts upstreamFailure). */
export const upstreamTimeoutAfterSending = () =>
  new GatewayError(
    504,
    "The upstream API did not answer within the gateway's timeout. It may still be working on (and billing) this request, so it is not retried.",
    'server_error',
    'upstream_timeout',
    null,
    { 'x-should-retry': 'false' },
  );

export const serviceUnavailable = (message: string, code = 'service_unavailable') =>
  new GatewayError(503, message, 'server_error', code);

/** A request body sent compressed (Content-Encoding gzip, br...): the gateway reads JSON as sent. */
export const unsupportedContentEncoding = (encoding: string) =>
  new GatewayError(
    415,
    `Content-Encoding '${encoding.slice(0, 40)}' is not supported: send the request body uncompressed.`,
    'invalid_request_error',
    'unsupported_content_encoding',
  );

/** Fastify's own errors, mapped to what a client of OpenAI expects. */
function fromFastifyError(err: FastifyError): GatewayError | undefined {
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new GatewayError(413, 'Request body is too large.', 'invalid_request_error', 'request_too_large');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new GatewayError(415, 'Unsupported content type. Send application/json.', 'invalid_request_error', 'unsupported_media_type');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return invalidRequest(
        'We could not parse the JSON body of your request. The OpenAI API expects a JSON payload.',
        null,
        'invalid_json',
      );
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return invalidRequest('Request body size did not match Content-Length.', null, 'invalid_content_length');
  }
  if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) {
    // Other client errors Fastify raises (bad URL encoding, a path parameter too long...): safe to
    // describe. Their code is the status's name (400 bad_request, 414 uri_too_long), as the HTTP
    // parser's errors have (clientErrorHandler), so the log and usage event name what the client got.
    return new GatewayError(err.statusCode, err.message, 'invalid_request_error', statusCode(err.statusCode));
  }
  return undefined;
}

/** `bad_request` for 400, `uri_too_long` for 414: the HTTP reason phrase as an error code. */
function statusCode(status: number): string {
  return (STATUS_CODES[status] ?? `http_${status}`).toLowerCase().replace(/[^a-z0-9]+/g, '_');
}

/**
 * The 503 of a store (Redis) that cannot answer, for the routes that have no outage policy of their
 * own (the admin and usage APIs): the store's fail-fast error while it is known to be down, or the
 * error of the call that found it down (a command timeout, a lost connection, a server not serving).
 * Retry-After is about when the health probe looks again (STORE_PROBE_INTERVAL_MS, 1 s by default).
 */
export const storeUnavailable = (message = 'The gateway\'s store is temporarily unavailable. Please retry.') =>
  new GatewayError(
    503,
    message,
    'server_error',
    'store_unavailable',
    null,
    { 'retry-after': '1' },
  );

function isStoreOutage(err: Error): boolean {
  if (err instanceof StoreUnavailableError) return true;
  // An error Fastify gave a status (a client's), or an AbortError (a client's abort), is no outage.
  if ((err as FastifyError).statusCode !== undefined || err.name === 'AbortError') return false;
  return isOutageError(err);
}

/** The error code of a request whose client hung up (status 499, nginx's "client closed request"). */
export const CLIENT_CLOSED = 'client_closed_request';
/** The error code of a request whose connection the shutdown deadline cut: the gateway's doing, not its client's. */
export const CUT_AT_SHUTDOWN = 'cut_at_shutdown';

/**
 * nginx's 499 "client closed request": only ever seen in our logs, since nobody is listening. Unless
 * the shutdown deadline closed the connection (app.ts has said so by then): a 503 cut_at_shutdown,
 * the gateway's doing.
 */
export function clientClosed(reply: FastifyReply) {
  const trace = reply.request.trace; // missing only for errors Fastify raises before the request hooks run
  if (trace?.errorCode === CUT_AT_SHUTDOWN) return reply.code(503).send();
  if (trace) trace.errorCode = CLIENT_CLOSED;
  return reply.code(499).send();
}

/**
 * Why a request's connection is gone before its response began, if it is. Two errors say so:
 * - a premature close: a streamed response's headers go out with its first byte, and a client that
 *   hangs up before then (a stream still waiting for the model's first token) makes Fastify destroy
 *   the stream it was given and report that as the route's error;
 * - Node's `aborted` (ECONNRESET) on the request: the connection closed while the body was still
 *   arriving, which Fastify's body reader reports as a 400, although nobody is left to read one.
 * The connection is the client's doing ('client_closed'), unless clientErrorHandler closed it after
 * answering 408 to an upload slower than CLIENT_REQUEST_TIMEOUT_MS ('request_timeout').
 */
function connectionGone(err: Error, request: FastifyRequest, reply: FastifyReply): 'client_closed' | 'request_timeout' | undefined {
  const code = (err as NodeJS.ErrnoException).code;
  if (err instanceof GatewayError || (code !== 'ERR_STREAM_PREMATURE_CLOSE' && code !== 'ECONNRESET')) return undefined;
  // The response is destroyed with the connection: nobody is left to read an answer.
  if (!reply.raw.destroyed || reply.raw.headersSent) return undefined;
  const socketError = request.raw.socket?.errored as NodeJS.ErrnoException | null | undefined;
  return socketError?.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'request_timeout' : 'client_closed';
}

/** How often an expected 5xx (an outage's 503, an upstream's 502 or 504) is warned about, per error code. */
const EXPECTED_5XX_WARN_INTERVAL_MS = 30_000;

/**
 * The throttled warnings of expected 5xx, one set per gateway (keyed by its HTTP server, which
 * every encapsulated Fastify context shares), so that one gateway's outage never hides another's.
 */
const expected5xxWarnings = new WeakMap<object, KeyedThrottledWarning>();

function expected5xxWarning(request: FastifyRequest): KeyedThrottledWarning {
  const owner = (request.server?.server ?? request.server) as object;
  let warning = expected5xxWarnings.get(owner);
  if (!warning) expected5xxWarnings.set(owner, (warning = new KeyedThrottledWarning(request.log, EXPECTED_5XX_WARN_INTERVAL_MS)));
  return warning;
}

/** The one error funnel: every error leaves the gateway in OpenAI's shape; 5xx never echo internals. */
export function errorHandler(this: unknown, err: FastifyError | Error, request: FastifyRequest, reply: FastifyReply) {
  const gone = connectionGone(err, request, reply);
  if (gone === 'client_closed') {
    // Nothing failed but the connection: recorded as every other hang-up is (nginx's 499, error
    // code client_closed_request), not as an error of the client's request or of the gateway.
    request.log.debug({ err: err.message }, 'client closed the connection before the response began');
    return clientClosed(reply);
  }
  if (gone === 'request_timeout') {
    // The client was sent 408 request_timeout (clientErrorHandler) and its connection closed.
    if (request.trace) request.trace.errorCode = 'request_timeout';
    return reply.code(408).send();
  }
  const outage = !(err instanceof GatewayError) && isStoreOutage(err);
  const known = err instanceof GatewayError ? err : outage ? storeUnavailable() : fromFastifyError(err as FastifyError);
  // The code of the body sent (every gateway error has one), so the log, the usage event and the
  // metrics say what the client was told.
  if (request.trace) request.trace.errorCode = known ? (known.code ?? known.type) : 'internal_error';
  // An error body is JSON and must never be sniffed into something a browser would render.
  reply.header('x-content-type-options', 'nosniff');
  closeIfBodyUnread(request, reply);
  if (known) {
    // Expected trouble (a store outage, an upstream that fails or does not answer): the request's own
    // line says what the client got (status, errorCode); beyond it, at most one warning per error
    // code per interval, with how many were left out, the cause, and the request id of the one
    // logged. An outage is also logged once by the health monitor: never a stack trace.
    if (known.status >= 500) {
      const cause = outage ? err : known.cause;
      expected5xxWarning(request).warn(
        known.code ?? known.type,
        { status: known.status, code: known.code, ...(cause instanceof Error && { err: cause.message }) },
        known.message,
        request.log,
      );
    }
    return reply.code(known.status).headers(known.headers).send(known.body());
  }
  request.log.error({ err }, 'unhandled error');
  return reply
    .code(500)
    .send(openAIErrorBody(`The gateway had an internal error (request id ${request.id}).`, 'server_error', 'internal_error'));
}

/**
 * An answer sent before the request's body has all arrived (a 404 for an unknown URL, a 401 from
 * authentication) closes the connection: kept alive, Node would read and discard the rest of the
 * body, however large it says it is, for as long as the client sends it (CLIENT_REQUEST_TIMEOUT_MS).
 */
function closeIfBodyUnread(request: FastifyRequest, reply: FastifyReply) {
  if (!request.raw.complete) reply.header('connection', 'close');
}

export function notFoundHandler(request: FastifyRequest, reply: FastifyReply) {
  closeIfBodyUnread(request, reply);
  // The code of the body sent, for the request's log line and usage event, as errorHandler sets it.
  if (request.trace) request.trace.errorCode = 'unknown_url';
  return reply
    .code(404)
    .header('x-content-type-options', 'nosniff')
    // OpenAI's body has code null; the log line and usage event keep the reason (unknown_url).
    .send(openAIErrorBody(`Invalid URL (${request.method} ${request.url.split("?")[0]!.slice(0, 200)})`, 'invalid_request_error', null));
}


/**
 * Fastify's `frameworkErrors`: errors its router raises before any route or hook runs (a URL that
 * does not decode, a path parameter over maxParamLength). Without it they leave in Fastify's shape.
 */
export function frameworkErrorHandler(err: FastifyError, request: FastifyRequest, reply: FastifyReply) {
  return errorHandler.call(undefined, err, request, reply);
}

/**
 * Fastify's `clientErrorHandler`: what Node's HTTP parser refuses before Fastify sees a request
 * (CR/LF or other bad bytes in a header, headers over the size limit, a body shorter than its
 * Content-Length, an unknown method). Fastify's default answers in its own shape; this one in OpenAI's.
 */
export function clientErrorHandler(err: Error & { code?: string }, socket: Socket) {
  // A reset connection has nobody left to answer.
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const [status, message, code] =
    err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
      ? [408, 'The request took too long to arrive.', 'request_timeout']
      : err.code === 'HPE_HEADER_OVERFLOW'
        ? [431, 'Request headers are too large.', 'headers_too_large']
        : [400, 'The HTTP request is malformed.', 'bad_request'];
  const body = JSON.stringify(openAIErrorBody(message, 'invalid_request_error', code));
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
        `Content-Type: application/json; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy(err);
}
