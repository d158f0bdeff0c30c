// The one place Redis key names are built; per-gateway-key data is hash-tagged by key id.

/**
 * Key builders for one prefix. Anything that belongs to a single gateway key goes through
 * `perKey`, so it carries the `{id}` hash tag: a Lua script touching several of one key's
 * entries then stays in one Redis Cluster slot. Add new builders here, never inline a key name.
 */
export function redisKeys(prefix: string) {
  // A brace in the prefix would become the hash tag of every key and pin them all to one slot.
  if (prefix.includes('{') || prefix.includes('}')) {
    throw new Error(`redis key prefix must not contain '{' or '}': ${JSON.stringify(prefix)}`);
  }
  const perKey = (kind: string, id: string) => `${prefix}${kind}:{${id}}`;

  return {
    prefix,
    /** JSON of the KeyRecord. */
    keyRecord: (id: string) => perKey('key', id),
    /** sha256(secret) -> key id. Its own slot (it is found by hash, not id): single-key commands only. */
    keyHashIndex: (hash: string) => `${prefix}keyhash:${hash}`,
    /** ZSET of key ids scored by creation time (ms), for listing oldest first. */
    keyList: () => `${prefix}keys`,
    /** Pub/sub channel of `{id, hash}` messages, one per hash a key change affects. */
    keyChangesChannel: () => `${prefix}events:key-changes`,
  } as const;
}

export type RedisKeys = ReturnType<typeof redisKeys>;
