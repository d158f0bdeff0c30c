// The Store interface: everything Tollgate keeps outside the process. Redis in production,
// memory for the embedded single-instance default. One contract suite tests both.
import type { KeyRecord } from '../keys.js';

/**
 * Told which key changed and which secret hash it affects (a rotation reports the old and the
 * new hash separately). Delivery is at least once: drop cache entries, don't count calls.
 * `{ id: '*', hash: '*' }` is a wildcard: changes may have been missed (e.g. the change feed
 * reconnected), so drop everything cached.
 */
export type KeyChangeListener = (change: { id: string; hash: string }) => void;

export interface Store {
  /** 'redis' or 'memory': reported by /readyz and the start-up log. */
  readonly kind: 'redis' | 'memory';

  /** Inserts a new key record and its hash index. Fails if the id exists. */
  createKey(record: KeyRecord): Promise<void>;
  getKeyById(id: string): Promise<KeyRecord | null>;
  /** Looks a key up by the sha256 of its secret. Returns revoked keys too; callers decide. */
  getKeyByHash(hash: string): Promise<KeyRecord | null>;
  /** All keys, revoked included, oldest first. */
  listKeys(): Promise<KeyRecord[]>;
  /**
   * Replaces a key record. When the hash changed (rotation), the old hash stops resolving.
   * Every instance is told (onKeyChange) for the old and the new hash.
   */
  updateKey(record: KeyRecord, previousHash: string): Promise<void>;

  /** Called on every instance when any instance changes or revokes a key, so auth caches drop it. */
  onKeyChange(listener: KeyChangeListener): void;

  /** Round trip to the backing store; throws when it does not answer in time. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
