// A small client for Tollgate's admin API (global fetch). It never puts the admin token in an error or a message.

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
  async request<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    let res: Response;
    try {
      res = await fetch(this.url + path, {
        method,
        headers: {
          authorization: `Bearer ${this.#token}`,
          accept: 'application/json',
          ...(body !== undefined && { 'content-type': 'application/json' }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.#timeoutMs),
        // A redirect is reported, not followed: following one could drop the token or send it elsewhere.
        redirect: 'manual',
      });
    } catch (err) {
      throw this.connectionError(err);
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
      throw this.connectionError(err);
    }
    let parsed: unknown;
    let isJson = true;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      isJson = false;
    }
    if (!res.ok) {
      const error = isJson ? apiErrorFields(parsed) : undefined;
      const message = error?.message ?? `HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''} from ${this.url}`;
      throw new ApiError(res.status, message, error?.code ?? null, parsed);
    }
    if (!isJson) throw new ConnectionError(`${this.url} answered ${method} ${path} with something other than JSON: is it a Tollgate gateway?`);
    return parsed as T;
  }

  private connectionError(err: unknown): ConnectionError {
    const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string; errors?: { code?: string }[] } };
    if (e?.name === 'TimeoutError') {
      return new ConnectionError(`no answer from Tollgate at ${this.url} within ${Math.round(this.#timeoutMs / 1000)}s`);
    }
    const code = e?.cause?.code ?? e?.cause?.errors?.[0]?.code;
    const reason =
      code === 'ECONNREFUSED'
        ? 'connection refused. Is the gateway running there? Set --url or TOLLGATE_URL to point elsewhere'
        : code === 'ENOTFOUND' || code === 'EAI_AGAIN'
          ? 'host not found'
          : code === 'ECONNRESET'
            ? 'connection reset'
            : (code ?? e?.cause?.message ?? e?.message ?? 'unknown error');
    return new ConnectionError(`cannot connect to Tollgate at ${this.url}: ${reason}`);
  }

  listKeys() {
    return this.request<{ object: string; data: AdminKey[] }>('GET', '/admin/keys');
  }
  getKey(id: string) {
    return this.request<AdminKey>('GET', `/admin/keys/${encodeURIComponent(id)}`);
  }
  createKey(input: KeyInput) {
    return this.request<AdminKey>('POST', '/admin/keys', input);
  }
  updateKey(id: string, patch: KeyInput) {
    return this.request<AdminKey>('PATCH', `/admin/keys/${encodeURIComponent(id)}`, patch);
  }
  revokeKey(id: string) {
    return this.request<{ id: string; object: string; deleted: boolean }>('DELETE', `/admin/keys/${encodeURIComponent(id)}`);
  }
  rotateKey(id: string) {
    return this.request<AdminKey>('POST', `/admin/keys/${encodeURIComponent(id)}/rotate`);
  }
}

function apiErrorFields(body: unknown): { message: string; code: string | null } | undefined {
  if (typeof body !== 'object' || body === null) return undefined;
  const error = (body as { error?: unknown }).error;
  if (typeof error !== 'object' || error === null) return undefined;
  const { message, code } = error as { message?: unknown; code?: unknown };
  if (typeof message !== 'string' || !message) return undefined;
  return { message, code: typeof code === 'string' ? code : null };
}
