-- release.lua: ends single-flight leadership of one cache name, only if the caller still holds it.
-- A leader whose lock lapsed (it was slow) and was taken by another instance must not delete the
-- new leader's lock. KEYS[1] the lock; ARGV[1] the token cacheAcquire returned. Returns 1 if deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
