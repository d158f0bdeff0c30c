// The one place Redis key names are built; per-gateway-key data is hash-tagged by key id.

/** The cache scope shared by every gateway key (the cache module's `scope: 'global'`). */
export const GLOBAL_CACHE_SCOPE = 'global';

/**
 * Splits a cache name `<scope>:<id>` (scope: a gateway key id or `global`; id: the request hash).
 * Both stores check names with it, so they accept and refuse the same ones: a scope must be
 * non-empty and free of `{`/`}` (it becomes a hash tag), the id non-empty. Throws a RangeError.
 */
export function cacheNameParts(name: string): { scope: string; id: string } {
  const colon = name.indexOf(':');
  const scope = name.slice(0, colon);
  const id = name.slice(colon + 1);
  if (colon <= 0 || id === '' || /[{}]/.test(scope)) {
    throw new RangeError(`cache name must be '<scope>:<id>' with no braces in the scope, got ${JSON.stringify(name)}`);
  }
  return { scope, id };
}

/** Escapes what SCAN MATCH would read as a pattern (`* ? [ ] \`). */
function globEscape(text: string): string {
  return text.replace(/[*?[\]\\]/g, '\\$&');
}

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
  const cacheKey = (kind: string, name: string) => {
    const { scope, id } = cacheNameParts(name);
    return scope === GLOBAL_CACHE_SCOPE ? `${prefix}${kind}:${scope}:{${id}}` : `${prefix}${kind}:{${scope}}:${id}`;
  };

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
    /**
     * ZSET reservationId -> lease expiry (epoch ms). Live leases are the requests in flight. A lease
     * ended before its settlement (Store.endLease) is scored 1e15 + expiry: no longer in flight, but its
     * reservation is still released by an admission once that expiry passes.
     */
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

    // Response cache. A name is `<scope>:<hash>` (see cacheNameParts). Layout, for prefix `tg:`:
    //   key_abc:<hash>   entry tg:cache:{key_abc}:<hash>      lock tg:cachelock:{key_abc}:<hash>
    //   global:<hash>    entry tg:cache:global:{<hash>}       lock tg:cachelock:global:{<hash>}
    // Per-key entries carry the key's tag, so one key's entries share a cluster slot (and a purge of
    // one key scans for one tag); global entries are tagged by their hash instead, so the shared
    // cache spreads over the cluster rather than piling into one slot. An entry and its lock always
    // share a tag (and so does its waiters mark), so one script can touch them all. `cachelock:` and
    // `cachewait:` never match `cache:*`.
    /** STRING: JSON of a CacheEntry, PX ttl. */
    cacheEntry: (name: string) => cacheKey('cache', name),
    /** STRING: single-flight leadership of `name` (SET NX PX); the value names the holding instance. */
    cacheLock: (name: string) => cacheKey('cachelock', name),
    /** STRING: someone waits on `name` (cacheWait sets it, PX its wait): only then does a fill publish. */
    cacheWaiters: (name: string) => cacheKey('cachewait', name),
    /**
     * SCAN MATCH pattern covering every entry whose name starts with `namePrefix` (all entries when
     * it is empty). It may cover more (e.g. a prefix without ':'): filter with cacheNameOf.
     */
    cacheEntryPattern: (namePrefix = '') => {
      const all = `${globEscape(prefix)}cache:*`;
      const colon = namePrefix.indexOf(':');
      if (colon > 0) {
        const scope = namePrefix.slice(0, colon);
        const rest = globEscape(namePrefix.slice(colon + 1));
        if (/[{}]/.test(scope)) return all;
        return scope === GLOBAL_CACHE_SCOPE
          ? `${globEscape(prefix)}cache:${GLOBAL_CACHE_SCOPE}:{${rest}*`
          : `${globEscape(prefix)}cache:{${globEscape(scope)}}:${rest}*`;
      }
      // A bare scope prefix: per-key scopes only, unless it could also be the start of `global`.
      if (colon < 0 && namePrefix !== '' && !GLOBAL_CACHE_SCOPE.startsWith(namePrefix) && !/[{}]/.test(namePrefix)) {
        return `${globEscape(prefix)}cache:{${globEscape(namePrefix)}*`;
      }
      return all;
    },
    /** The cache name an entry key was built from (the inverse of cacheEntry), or null if it is not one. */
    cacheNameOf: (key: string): string | null => {
      const stem = `${prefix}cache:`;
      if (!key.startsWith(stem)) return null;
      const rest = key.slice(stem.length);
      const globalStem = `${GLOBAL_CACHE_SCOPE}:{`;
      if (rest.startsWith(globalStem) && rest.endsWith('}') && rest.length > globalStem.length + 1) {
        return `${GLOBAL_CACHE_SCOPE}:${rest.slice(globalStem.length, -1)}`;
      }
      const close = rest.indexOf('}:');
      if (!rest.startsWith('{') || close < 2 || close + 2 === rest.length) return null;
      return `${rest.slice(1, close)}:${rest.slice(close + 2)}`;
    },
    /** Pub/sub channel of `{name, filled}` messages: `name` was filled while someone waited on it (fill.lua). */
    cacheFillsChannel: () => `${prefix}events:cache-fills`,

    // Usage accounting. Not per gateway key: one hash per UTC hour holds every key x model, so a
    // report reads one key per hour (a week: 168 HGETALLs, pipelined) however many keys exist. No
    // hash tag: each hour is its own slot, spreading the hours over a cluster; every command on
    // them touches one key.
    /**
     * HASH of one UTC hour (`YYYY-MM-DDTHH`): `<keyId>|<model>|<metric>` -> count, with `%` and `|`
     * inside the key id and model escaped as `%25` / `%7C` (see usage-math.ts). PX: the end of the
     * hour plus the retention.
     */
    // The hour's counters and its set of recorded event ids share the {hour} tag: record.lua touches both.
    usageHour: (hour: string) => `${prefix}usage:hour:{${hour}}`,
    usageSeen: (hour: string) => `${prefix}usage:seen:{${hour}}`,
    /** STREAM of usage events, trimmed with MAXLEN ~: one field `e`, the event's JSON. */
    usageEvents: () => `${prefix}usage:events`,
    /**
     * HASH batch id -> how many events of its part in this hour list.lua appended to the stream so
     * far. Tagged with the stream's whole name (which has no braces, so it hashes as a whole), so
     * it shares the stream's cluster slot and list.lua can mark and append in one step.
     */
    usageListed: (hour: string) => `${prefix}usage:listedcount:{${prefix}usage:events}:${hour}`,
    /** STRING: the gateway key id that created a Responses API object, PX ttl. Its own slot. */
    responseOwner: (responseId: string) => `${prefix}respowner:${responseId}`,
    /** A response's context tokens, apart from its owner so that the owner's value stays the bare key id older instances read. */
    responseContext: (responseId: string) => `${prefix}respctx:${responseId}`,
    /** STRING set once (SET NX PX) by markOnce. Its own slot. */
    mark: (name: string) => `${prefix}mark:${name}`,
  } as const;
}

export type RedisKeys = ReturnType<typeof redisKeys>;
