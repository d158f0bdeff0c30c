// Store on Redis: records as JSON strings, a hash index, a creation-ordered ZSET, pub/sub for key changes.
import { Redis, type RedisOptions } from 'ioredis';
import { z } from 'zod';
import { limitsSchema, type KeyRecord } from '../keys.js';
import { redisKeys, type RedisKeys } from './redis-keys.js';
import type { KeyChangeListener, Store } from './store.js';

export interface RedisStoreLogger {
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface RedisStoreOptions {
  url: string;
  /** Prepended to every key and channel; default 'tg:'. */
  prefix?: string;
  /** Upper bound on every command, queued or sent; default 1000. */
  commandTimeoutMs?: number;
  /** Per connection attempt; default 2000. */
  connectTimeoutMs?: number;
  /** Defaults to silence; the gateway passes its pino logger. */
  logger?: RedisStoreLogger;
}

/** How often a persisting Redis outage is logged again. */
const ERROR_LOG_INTERVAL_MS = 30_000;
/** Reconnect backoff: 100 ms doubling to this cap, plus jitter so instances do not reconnect in step. */
const MAX_RECONNECT_DELAY_MS = 2_000;
const WILDCARD = { id: '*', hash: '*' } as const;

// Checks the shape the gateway relies on. Loose objects keep fields a newer version may have
// written, so an older instance updating a record during a rolling upgrade does not drop them.
const storedKeyRecordSchema = z.looseObject({
  id: z.string().min(1),
  name: z.string(),
  hash: z.string().min(1),
  hint: z.string(),
  models: z.array(z.string()).nullable(),
  limits: limitsSchema.loose(),
  metadata: z.record(z.string(), z.union([z.string(), z.number(), z.boolean(), z.null()])),
  createdAt: z.string(),
  updatedAt: z.string(),
  revokedAt: z.string().nullable(),
});

const keyChangeSchema = z.object({ id: z.string().min(1), hash: z.string().min(1) });

export class RedisStore implements Store {
  readonly kind = 'redis' as const;
  readonly #redis: Redis;
  /** Subscriber mode needs a connection of its own. */
  readonly #sub: Redis;
  readonly #keys: RedisKeys;
  readonly #log: RedisStoreLogger;
  readonly #timeoutMs: number;
  readonly #listeners = new Set<KeyChangeListener>();
  readonly #outage: OutageLog;
  #closed = false;

  constructor(opts: RedisStoreOptions) {
    this.#keys = redisKeys(opts.prefix ?? 'tg:');
    this.#log = opts.logger ?? silentLogger;
    this.#timeoutMs = opts.commandTimeoutMs ?? 1000;
    this.#outage = new OutageLog(this.#log);

    const options: RedisOptions = {
      // Every command, including those queued while disconnected, fails after this: nothing hangs.
      // A timed-out write may still land later (it was sent, or sits in the offline queue), so a
      // timeout means "outcome unknown" (updateKey is safe to retry; createKey may then say the id exists).
      commandTimeout: this.#timeoutMs,
      connectTimeout: opts.connectTimeoutMs ?? 2000,
      // Commands that outlive a lost connection are retried once, then failed; together with the
      // reconnect backoff this also bounds how much the offline queue can hold during an outage.
      maxRetriesPerRequest: 1,
      // Never give up: the gateway must recover by itself once Redis is back.
      retryStrategy: (times) =>
        Math.min(100 * 2 ** Math.min(times - 1, 10), MAX_RECONNECT_DELAY_MS) + Math.floor(Math.random() * 100),
      // Connects in the background, so a Redis that is down at start only makes /readyz fail.
      lazyConnect: false,
      connectionName: 'tollgate',
    };
    this.#redis = new Redis(opts.url, options);
    // We subscribe ourselves on every 'ready', to learn when the subscription is live again.
    this.#sub = this.#redis.duplicate({ autoResubscribe: false, connectionName: 'tollgate:sub' });

    for (const [name, conn] of [['command', this.#redis], ['subscriber', this.#sub]] as const) {
      // Without a listener ioredis reports every failed reconnect on stderr.
      conn.on('error', (err: unknown) => this.#outage.error(name, err));
      conn.on('ready', () => this.#outage.recovered(name));
    }
    this.#sub.on('ready', () => void this.#subscribe());
    this.#sub.on('message', (channel: string, message: string) => this.#onMessage(channel, message));
  }

  async createKey(record: KeyRecord): Promise<void> {
    const score = creationScore(record);
    // The writes land in different cluster slots, so no MULTI: they go one by one, in an order
    // where a partial failure leaves inert garbage, never a usable key that ops cannot list.
    const created = await this.#redis.set(this.#keys.keyRecord(record.id), JSON.stringify(record), 'NX');
    if (created === null) throw new Error(`key ${record.id} already exists`);
    await this.#redis.zadd(this.#keys.keyList(), score, record.id);
    // Last: from here on the secret authenticates.
    await this.#redis.set(this.#keys.keyHashIndex(record.hash), record.id);
  }

  async getKeyById(id: string): Promise<KeyRecord | null> {
    const key = this.#keys.keyRecord(id);
    const raw = await this.#redis.get(key);
    return raw === null ? null : this.#parseRecord(raw, key, id);
  }

  async getKeyByHash(hash: string): Promise<KeyRecord | null> {
    const id = await this.#redis.get(this.#keys.keyHashIndex(hash));
    if (id === null) return null;
    const record = await this.getKeyById(id);
    // The record, not the index, is the truth: an index entry left behind by an interrupted
    // rotation must not let the old secret in.
    return record !== null && record.hash === hash ? record : null;
  }

  async listKeys(): Promise<KeyRecord[]> {
    const ids = await this.#redis.zrange(this.#keys.keyList(), 0, '-1');
    // One GET per record: they sit in different cluster slots, so no MGET.
    const records = await Promise.all(ids.map((id) => this.getKeyById(id)));
    return records.filter((r): r is KeyRecord => r !== null);
  }

  async updateKey(record: KeyRecord, previousHash: string): Promise<void> {
    // Record first (XX: never resurrect a key that is gone): once written, a revocation holds
    // and the old hash stops resolving even if the index updates below never happen.
    const updated = await this.#redis.set(this.#keys.keyRecord(record.id), JSON.stringify(record), 'XX');
    if (updated === null) throw new Error(`key ${record.id} not found`);
    if (record.hash !== previousHash) {
      await this.#redis.set(this.#keys.keyHashIndex(record.hash), record.id);
      await this.#redis.del(this.#keys.keyHashIndex(previousHash));
    }
    const changes = [...new Set([previousHash, record.hash])].map((hash) => ({ id: record.id, hash }));
    // Local listeners hear it at once, without waiting for our own subscriber's copy, so a
    // revocation holds on this instance as soon as the call returns.
    for (const change of changes) this.#notify(change);
    const channel = this.#keys.keyChangesChannel();
    await Promise.all(changes.map((change) => this.#redis.publish(channel, JSON.stringify(change))));
  }

  onKeyChange(listener: KeyChangeListener): void {
    this.#listeners.add(listener);
  }

  async ping(): Promise<void> {
    const reply = await this.#redis.ping();
    if (reply !== 'PONG') throw new Error(`unexpected PING reply: ${String(reply)}`);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#listeners.clear();
    await Promise.all([shutdown(this.#redis, this.#timeoutMs), shutdown(this.#sub, this.#timeoutMs)]);
  }

  async #subscribe(): Promise<void> {
    if (this.#closed) return;
    try {
      await this.#sub.subscribe(this.#keys.keyChangesChannel());
    } catch (err) {
      if (this.#closed) return;
      this.#outage.error('subscriber', err);
      // Reconnecting brings another 'ready', hence another attempt.
      this.#sub.disconnect(true);
      return;
    }
    // Changes published while we were not subscribed are lost; on the first subscription too, as
    // the command connection may have served (and callers cached) reads before it.
    this.#notify(WILDCARD);
  }

  #onMessage(channel: string, message: string) {
    if (this.#closed || channel !== this.#keys.keyChangesChannel()) return;
    const change = keyChangeSchema.safeParse(safeJson(message));
    if (!change.success) {
      this.#log.warn({ channel }, 'ignoring malformed key-change message');
      return;
    }
    this.#notify(change.data);
  }

  #notify(change: { id: string; hash: string }) {
    for (const listener of [...this.#listeners]) {
      try {
        listener(change);
      } catch (err) {
        this.#log.error({ err }, 'key-change listener threw');
      }
    }
  }

  #parseRecord(raw: string, key: string, id: string): KeyRecord | null {
    const parsed = storedKeyRecordSchema.safeParse(safeJson(raw));
    if (!parsed.success || parsed.data.id !== id) {
      // Treated as missing: a bad record must cost one key, not crash the gateway. The value is
      // not logged; the issues name the fields.
      const issues = parsed.success ? ['id does not match the key'] : parsed.error.issues.map((i) => i.path.join('.') || i.message);
      this.#log.error({ key, issues }, 'corrupt key record in redis; treating it as missing');
      return null;
    }
    return parsed.data;
  }
}

/** Returns at once: both connections are made in the background and retried until Redis answers. */
export async function createRedisStore(opts: RedisStoreOptions): Promise<RedisStore> {
  return new RedisStore(opts);
}

/**
 * Logs the first error of an outage, then at most one per interval with a count of the rest, and
 * one line when the connection is back: ioredis emits an error on every failed reconnect.
 */
class OutageLog {
  #lastLoggedAt = -Infinity;
  #suppressed = 0;
  #down = false;

  constructor(private readonly log: RedisStoreLogger) {}

  error(connection: string, err: unknown) {
    this.#down = true;
    const now = Date.now();
    if (now - this.#lastLoggedAt < ERROR_LOG_INTERVAL_MS) {
      this.#suppressed++;
      return;
    }
    this.log.error({ err, connection, suppressed: this.#suppressed }, 'redis connection error');
    this.#lastLoggedAt = now;
    this.#suppressed = 0;
  }

  recovered(connection: string) {
    if (!this.#down) return;
    this.#down = false;
    this.log.warn({ connection, suppressed: this.#suppressed }, 'redis connection restored');
    this.#lastLoggedAt = -Infinity;
    this.#suppressed = 0;
  }
}

/** QUIT lets replies in flight arrive; a connection that is not up has none, so it is just cut. */
async function shutdown(conn: Redis, timeoutMs: number): Promise<void> {
  if (conn.status === 'ready') {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeoutMs);
    });
    await Promise.race([conn.quit().catch(() => {}), timeout]);
    clearTimeout(timer);
  }
  if (conn.status !== 'end') conn.disconnect();
}

function creationScore(record: KeyRecord): number {
  const ms = Date.parse(record.createdAt);
  if (!Number.isFinite(ms)) throw new Error(`key ${record.id} has an invalid createdAt`);
  return ms;
}

function safeJson(raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch {
    return undefined;
  }
}

const silentLogger: RedisStoreLogger = { warn() {}, error() {} };
