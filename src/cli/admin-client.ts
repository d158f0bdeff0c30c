// A small client for Tollgate's admin API (global fetch). It never puts the admin token in an error or a message.
import { MAX_KEY_PAGE } from '../store/key-page.js';

/** The admin API's view of a key (no secret; `key` only on create and rotate). Loosely typed: the CLI tolerates new fields. */
export interface AdminKey {
  id: string;
  name: string;
  hint?: string;
  models: string[] | null;
  limits: Record<string, number>;
  metadata: Record<string, string | number | boolean | null>;
  createdAt: string;
  updatedAt?: string;
  revokedAt: string | null;
  /** Only on create and rotate: the secret, shown this once. */
  key?: string;
  /** Usage against each limit, when the gateway reports it (GET /admin/keys/{id}). */
  quota?: unknown;
  [field: string]: unknown;
}

/** The most keys the admin API lists per request (GET /admin/keys `limit`): the store's page bound. */
export const MAX_KEYS_PAGE = MAX_KEY_PAGE;

export interface KeyInput {
  name?: string;
  models?: string[] | null;
  limits?: Record<string, number>;
  metadata?: Record<string, string | number | boolean | null>;
}

/** The gateway answered with an error status. `message` is the API's own (OpenAI shape `{error:{message}}`). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: string | null,
    readonly body: unknown,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  /**
   * A route the gateway does not serve: OpenAI's 404 'Invalid URL (GET /admin/...)' (code null), or
   * the code unknown_url that gateways before it sent.
   */
  get unknownRoute(): boolean {
    return this.status === 404 && (this.code === 'unknown_url' || /^Invalid URL \(/.test(this.message));
  }
}

/** The gateway could not be reached, or did not answer in time, or answered something that is not its API. */
export class ConnectionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConnectionError';
  }
}

export interface AdminClientOptions {
  /** Base URL of the gateway, e.g. http://127.0.0.1:8080 (a path prefix is kept). */
  url: string;
  token: string;
  timeoutMs?: number;
}

export class AdminClient {
  readonly url: string;
  readonly #token: string;
  readonly #timeoutMs: number;

  constructor(options: AdminClientOptions) {
    this.url = options.url.replace(/\/+$/, '');
    this.#token = options.token;
    this.#timeoutMs = options.timeoutMs ?? 30_000;
  }

  /** Calls the API and returns its parsed JSON body. Throws ApiError for an error status, ConnectionError otherwise. */
  async request<T = unknown>(method: string, path: string, body?: unknown, contentType = 'application/json'): Promise<T> {
    const { parsed } = await this.exchange<T>(method, path, body, contentType);
    return parsed;
  }

  /** request(), with the answer's headers. */
  private async exchange<T>(method: string, path: string, body: unknown, contentType: string): Promise<{ parsed: T; headers: Headers }> {
    let res: Response;
    try {
      res = await fetch(this.url + path, {
        method,
        headers: {
          authorization: `Bearer ${this.#token}`,
          accept: 'application/json',
          ...(body !== undefined && { 'content-type': contentType }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.#timeoutMs),
        // A redirect is reported, not followed: following one could drop the token or send it elsewhere.
        redirect: 'manual',
      });
    } catch (err) {
      throw this.connectionError(err, 'connect');
    }
    if (res.status >= 300 && res.status < 400) {
      const location = res.headers.get('location');
      throw new ConnectionError(
        `${this.url} answered with a redirect${location ? ` to ${location}` : ''}: pass the gateway's own address with --url`,
      );
    }
    let text: string;
    try {
      text = await res.text();
    } catch (err) {
      throw this.connectionError(err, 'body');
    }
    let parsed: unknown;
    let isJson = true;
    try {
      parsed = JSON.parse(text); // an empty body is not JSON either: every admin API answer has one
    } catch {
      isJson = false;
    }
    if (!res.ok) {
      const error = isJson ? apiErrorFields(parsed) : undefined;
      const message = error?.message ?? `HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''} from ${this.url}`;
      throw new ApiError(res.status, message, error?.code ?? null, parsed);
    }
    if (!isJson) throw new ConnectionError(`${this.url} answered ${method} ${path.split('?')[0]} with something other than JSON: is it a Tollgate gateway?`);
    return { parsed: parsed as T, headers: res.headers };
  }

  private connectionError(err: unknown, phase: 'connect' | 'body'): ConnectionError {
    return new ConnectionError(describeNetworkError(err, this.url, phase, this.#timeoutMs));
  }

  /** The answer of `method path` is not what the admin API returns there (e.g. `null`, `[]`, a string). */
  private notTheApi(method: string, path: string): ConnectionError {
    return new ConnectionError(`${this.url} answered ${method} ${path} with JSON that is not the admin API's answer: is it a Tollgate gateway? Check --url or TOLLGATE_URL`);
  }

  /**
   * An answer naming a key: a key as create, show, update and rotate return it, or revoke's receipt; an object
   * with a string id (more is not checked: fields may be missing).
   */
  private async keyRequest<T = AdminKey>(method: string, path: string, body?: unknown, contentType?: string): Promise<T> {
    const key = await this.request<unknown>(method, path, body, contentType);
    if (!isObject(key) || typeof key.id !== 'string') throw this.notTheApi(method, path);
    return key as T;
  }

  /**
   * Every key, oldest first, in one list: follows the API's pages (has_more, last_id) to the last,
   * asking for `pageSize` keys at a time.
   */
  async listKeys(pageSize = MAX_KEYS_PAGE): Promise<{ object: 'list'; data: AdminKey[] }> {
    const data: AdminKey[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await this.keysPage(pageSize, after);
      data.push(...page.data);
      // A gateway from before pages says nothing of more: its one answer held every key.
      if (page.has_more !== true) return { object: 'list', data };
      // A cursor that does not move on would ask for the same page forever.
      if (typeof page.last_id !== 'string' || page.last_id === after) throw this.notTheApi('GET', '/admin/keys');
      after = page.last_id;
    }
  }

  /** One page of GET /admin/keys: `limit` keys after the key `after` (from the first when none). */
  private async keysPage(limit: number, after: string | undefined) {
    const query = new URLSearchParams({ limit: String(limit), ...(after !== undefined && { after }) });
    const res = await this.request<unknown>('GET', `/admin/keys?${query}`);
    if (!isObject(res) || !Array.isArray(res.data)) throw this.notTheApi('GET', '/admin/keys');
    return res as { data: AdminKey[]; has_more?: unknown; last_id?: unknown };
  }
  getKey(id: string) {
    return this.keyRequest('GET', `/admin/keys/${encodeURIComponent(id)}`);
  }
  /** The key, and whether its gateway takes merge patches (RFC 7396; its Accept-Patch says so). */
  async getKeyForUpdate(id: string): Promise<{ key: AdminKey; takesMergePatch: boolean }> {
    const path = `/admin/keys/${encodeURIComponent(id)}`;
    const { parsed, headers } = await this.exchange<unknown>('GET', path, undefined, 'application/json');
    if (!isObject(parsed) || typeof parsed.id !== 'string') throw this.notTheApi('GET', path);
    const formats = (headers.get('accept-patch') ?? '').split(',').map((f) => f.trim().toLowerCase());
    return { key: parsed as AdminKey, takesMergePatch: formats.includes('application/merge-patch+json') };
  }
  /** PATCH as a JSON merge patch: limits and metadata merged into the key's own by the gateway, atomically. */
  mergeKey(id: string, patch: Record<string, unknown>) {
    return this.keyRequest('PATCH', `/admin/keys/${encodeURIComponent(id)}`, patch, 'application/merge-patch+json');
  }
  createKey(input: KeyInput) {
    return this.keyRequest('POST', '/admin/keys', input);
  }
  updateKey(id: string, patch: KeyInput) {
    return this.keyRequest('PATCH', `/admin/keys/${encodeURIComponent(id)}`, patch);
  }
  revokeKey(id: string) {
    return this.keyRequest<{ id: string; object: string; deleted: boolean }>('DELETE', `/admin/keys/${encodeURIComponent(id)}`);
  }
  rotateKey(id: string) {
    return this.keyRequest('POST', `/admin/keys/${encodeURIComponent(id)}/rotate`);
  }
  /** GET /admin/usage?query: an object with a `data` array (its rows and the totals are read leniently). */
  async usageReport<T>(query: URLSearchParams): Promise<T> {
    const path = `/admin/usage?${query}`;
    const res = await this.request<unknown>('GET', path);
    if (!isObject(res) || !Array.isArray(res.data)) throw this.notTheApi('GET', '/admin/usage');
    return res as T;
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Error codes of a failed fetch: undici puts them on `cause` (or on each of `cause.errors` when every address failed). */
function errorCode(err: unknown): string | undefined {
  const e = err as { code?: unknown; cause?: { code?: unknown; errors?: { code?: unknown }[]; cause?: { code?: unknown } } } | null;
  const code = e?.cause?.code ?? e?.cause?.errors?.[0]?.code ?? e?.cause?.cause?.code ?? e?.code;
  return typeof code === 'string' ? code : undefined;
}

/**
 * A human message for a failed request to `url`, by undici's or the system's error code. `phase` says whether
 * the answer had started (`body`: the status was received, the body was being read) or not (`connect`).
 * The message names the URL only: never a header, so never the admin token.
 */
export function describeNetworkError(err: unknown, url: string, phase: 'connect' | 'body', timeoutMs: number): string {
  const e = err as { name?: unknown; message?: unknown; cause?: { message?: unknown } } | null;
  const seconds = `${Math.round(timeoutMs / 1000)}s`;
  if (e?.name === 'TimeoutError') {
    return phase === 'body'
      ? `Tollgate at ${url} did not finish its answer within ${seconds}`
      : `no answer from Tollgate at ${url} within ${seconds}`;
  }
  const code = errorCode(err);
  const host = (() => {
    try {
      return new URL(url).hostname;
    } catch {
      return url;
    }
  })();
  const unfinished = phase === 'body' ? 'before the answer was complete' : 'before answering';
  switch (code) {
    case 'ECONNREFUSED':
      return `cannot connect to Tollgate at ${url}: connection refused. Is the gateway running there? Set --url or TOLLGATE_URL to point elsewhere`;
    case 'ENOTFOUND':
      return `cannot connect to Tollgate at ${url}: host '${host}' not found. Check --url or TOLLGATE_URL`;
    case 'EAI_AGAIN':
      return `cannot connect to Tollgate at ${url}: could not look up host '${host}' (DNS not answering). Try again, or check --url or TOLLGATE_URL`;
    case 'UND_ERR_SOCKET':
    case 'EPIPE':
      return `the connection to ${url} was closed ${unfinished}`;
    case 'ECONNRESET':
      return `the connection to ${url} was reset ${unfinished}`;
    case 'UND_ERR_HEADERS_TIMEOUT':
      return `Tollgate at ${url} accepted the connection but sent no answer in time`;
    case 'UND_ERR_BODY_TIMEOUT':
      return `Tollgate at ${url} stopped sending its answer part-way (timed out waiting for the rest)`;
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'ETIMEDOUT':
      return `cannot connect to Tollgate at ${url}: the connection timed out`;
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return `cannot connect to Tollgate at ${url}: the network cannot reach '${host}'`;
    case 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH':
    case 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH':
      return `the answer from ${url} was cut short or malformed (its length does not match Content-Length)`;
    case 'HPE_INVALID_CONSTANT':
    case 'HPE_INVALID_VERSION':
    case 'EPROTO':
    case 'ERR_SSL_WRONG_VERSION_NUMBER':
      return `${url} did not answer in HTTP as expected: is it the gateway, and is the scheme (http:// or https://) right?`;
    default:
      break;
  }
  if (code?.startsWith('HPE_')) return `${url} sent an answer that is not valid HTTP (${code}): is it a Tollgate gateway?`;
  if (code && /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS/.test(code)) return `cannot connect to Tollgate at ${url}: its TLS certificate was refused (${code})`;
  const detail = code ?? (typeof e?.cause?.message === 'string' ? e.cause.message : undefined) ?? (typeof e?.message === 'string' ? e.message : undefined) ?? 'unknown error';
  return phase === 'body' ? `the answer from ${url} could not be read: ${detail}` : `cannot connect to Tollgate at ${url}: ${detail}`;
}

function apiErrorFields(body: unknown): { message: string; code: string | null } | undefined {
  if (typeof body !== 'object' || body === null) return undefined;
  const error = (body as { error?: unknown }).error;
  if (typeof error !== 'object' || error === null) return undefined;
  const { message, code } = error as { message?: unknown; code?: unknown };
  if (typeof message !== 'string' || !message) return undefined;
  return { message, code: typeof code === 'string' ? code : null };
}
