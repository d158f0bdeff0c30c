-- fill.lua: Store.cacheFill in one round trip: store the entry, end leadership, wake the waiters.
-- KEYS[1] the entry; KEYS[2] its lock; KEYS[3] its waiters mark (all one hash tag).
-- ARGV[1] entry JSON ('' for none); ARGV[2] its ttl ms; ARGV[3] the leader's token ('' for none);
-- ARGV[4] the cache-fills channel; ARGV[5] the cache name.
-- The lock is deleted only if the token still holds it: a slow leader whose lock lapsed and was
-- taken over must not end the new leader's. The waiters hear of it only if some waiter marked the
-- name (cacheWait): most misses have none, and a message every instance's subscriber must parse
-- would cost each of them for every miss of every other.
if ARGV[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
if redis.call('EXISTS', KEYS[3]) == 1 then
  local filled = redis.call('EXISTS', KEYS[1]) == 1
  redis.call('PUBLISH', ARGV[4], cjson.encode({ name = ARGV[5], filled = filled }))
end
return 1
