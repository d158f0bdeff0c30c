-- lookup.lua: Store.cacheLookup in one round trip: the stored entry, or else single-flight leadership.
-- KEYS[1] the entry; KEYS[2] its lock (same hash tag).
-- ARGV[1] the token to lead with; ARGV[2] the lock's ttl ms.
-- Returns {1, entry JSON} | {2, token} (this caller leads) | {0} (another caller leads).
local entry = redis.call('GET', KEYS[1])
if entry then return {1, entry} end
if redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2], 'NX') then return {2, ARGV[1]} end
return {0}
