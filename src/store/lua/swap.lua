-- swap.lua: compare-and-set of one string key (Store.updateKey). Writes only if the key still holds
-- what the caller read, so two read-modify-write cycles that overlap cannot undo each other (a PATCH
-- writing back a revocation's or a rotation's old record).
--
-- KEYS[1] the key   ARGV[1] the value read   ARGV[2] the value to write
-- Returns 1 written, 0 the key changed (or is gone) since it was read

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
