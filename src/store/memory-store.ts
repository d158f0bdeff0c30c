// In-process Store for the embedded single-instance default; same contract as the Redis store.
import type { KeyRecord } from '../keys.js';
import type { KeyChangeListener, Store } from './store.js';

export class MemoryStore implements Store {
  readonly kind = 'memory' as const;
  readonly #byId = new Map<string, KeyRecord>();
  readonly #idByHash = new Map<string, string>();
  readonly #listeners = new Set<KeyChangeListener>();

  async createKey(record: KeyRecord): Promise<void> {
    creationScore(record);
    if (this.#byId.has(record.id)) throw new Error(`key ${record.id} already exists`);
    // Cloned on the way in and out so no caller shares an object with the store.
    this.#byId.set(record.id, structuredClone(record));
    this.#idByHash.set(record.hash, record.id);
  }

  async getKeyById(id: string): Promise<KeyRecord | null> {
    const record = this.#byId.get(id);
    return record ? structuredClone(record) : null;
  }

  async getKeyByHash(hash: string): Promise<KeyRecord | null> {
    const id = this.#idByHash.get(hash);
    const record = id === undefined ? undefined : this.#byId.get(id);
    return record && record.hash === hash ? structuredClone(record) : null;
  }

  async listKeys(): Promise<KeyRecord[]> {
    // Same order as the Redis ZSET: creation time, ties broken by id.
    return [...this.#byId.values()]
      .sort((a, b) => creationScore(a) - creationScore(b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
      .map((r) => structuredClone(r));
  }

  async updateKey(record: KeyRecord, previousHash: string): Promise<void> {
    if (!this.#byId.has(record.id)) throw new Error(`key ${record.id} not found`);
    this.#byId.set(record.id, structuredClone(record));
    if (record.hash !== previousHash) {
      this.#idByHash.set(record.hash, record.id);
      if (this.#idByHash.get(previousHash) === record.id) this.#idByHash.delete(previousHash);
    }
    const hashes = previousHash === record.hash ? [record.hash] : [previousHash, record.hash];
    // After the write but before the caller resumes, like a change feed that is never late.
    queueMicrotask(() => {
      for (const hash of hashes) this.#notify({ id: record.id, hash });
    });
  }

  onKeyChange(listener: KeyChangeListener): void {
    this.#listeners.add(listener);
  }

  async ping(): Promise<void> {}

  async close(): Promise<void> {
    this.#listeners.clear();
  }

  #notify(change: { id: string; hash: string }) {
    for (const listener of [...this.#listeners]) {
      // A throwing listener must not break the others, nor escape a microtask and kill the process.
      try {
        listener(change);
      } catch {
        /* the listener's own failure; nothing the store can do */
      }
    }
  }
}

export function createMemoryStore(): MemoryStore {
  return new MemoryStore();
}

/** Creation time in ms: the list order. Rejects what Redis could not score, so both stores agree. */
function creationScore(record: KeyRecord): number {
  const ms = Date.parse(record.createdAt);
  if (!Number.isFinite(ms)) throw new Error(`key ${record.id} has an invalid createdAt`);
  return ms;
}
