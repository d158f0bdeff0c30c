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

    // Quota state of one gateway key. Everything below carries the key's `{id}` hash tag, so the
    // admit and settle scripts touch one cluster slot only.
    /** HASH of 1-second buckets of the rolling minute: `r:<epochSecond>` requests, `t:<epochSecond>` tokens. */
    window: (id: string) => perKey('win', id),
    /** HASH reservationId -> `tokens|usdMicros|admissionSecond|dayId|monthId`. */
    reservations: (id: string) => perKey('resv', id),
    /** ZSET reservationId -> lease expiry (epoch ms). Live leases are the requests in flight. */
    leases: (id: string) => perKey('lease', id),
    /** ZSET reservationId -> settle time (epoch ms), trimmed to two days: makes settle idempotent. */
    settled: (id: string) => perKey('settled', id),
    /**
     * HASH of one day's budget: `tu`/`tr` tokens used/reserved, `uu`/`ur` usd micros used/reserved.
     * `dayBudget(id, '')` is the stem the scripts append a stored reservation's day id to.
     */
    dayBudget: (id: string, day: string) => `${perKey('day', id)}:${day}`,
    /** Same fields as `dayBudget`, for a month; `monthBudget(id, '')` is the stem. */
    monthBudget: (id: string, month: string) => `${perKey('month', id)}:${month}`,

    /** STRING fixed-window counter (`hit`), e.g. failed authentications per client IP. Its own slot. */
    counter: (name: string) => `${prefix}counter:${name}`,
  } as const;
}

export type RedisKeys = ReturnType<typeof redisKeys>;
