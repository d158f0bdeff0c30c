-- settle.lua: Store.settle for one reservation in one atomic step. Mirrors MemoryStore.settle.
--
-- KEYS[1] window        HASH  r:<epochSecond> / t:<epochSecond> buckets
-- KEYS[2] reservations  HASH  reservationId -> "tokens|usdMicros|admissionSecond|dayId|monthId"
-- KEYS[3] leases        ZSET  reservationId -> lease expiry (epoch ms); 1e15 + expiry once ended (Store.endLease)
-- KEYS[4] settled       ZSET  reservationId -> settle time (epoch ms)
-- KEYS[5] day budget    HASH  of fallbackPeriods.day:   tu tr uu ur
-- KEYS[6] month budget  HASH  of fallbackPeriods.month: same fields
-- ARGV[1] day stem      dayBudget(keyId, '')   (redis-keys.ts)
-- ARGV[2] month stem    monthBudget(keyId, '')
-- ARGV[3] reservationId
-- ARGV[4] tokens                  ARGV[5] usdMicros (real usage)
-- ARGV[6] now (epoch ms)
-- ARGV[7] fallback day TTL ms     ARGV[8] fallback month TTL ms
-- ARGV[9] how long settled ids are remembered (ms)
--
-- Undeclared keys: a reservation is settled in the budget hashes of the periods it was reserved in
-- (a request admitted at 23:59 and settled at 00:01 counts in the day it started), which are known
-- only once the reservation is read. Their names are stem .. periodId; the stems come from the same
-- builders as KEYS[5]/KEYS[6] and carry the same `{keyId}` hash tag as every declared key, so they
-- hash to the same Redis Cluster slot.
--
-- Returns 1 settled, 2 already-settled, 3 expired (no reservation: usage counted in the fallback periods).

local winKey, resvKey, leaseKey, settledKey, fallbackDayKey, fallbackMonthKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local dayStem, monthStem, rid = ARGV[1], ARGV[2], ARGV[3]
local tokens, usd = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = tonumber(ARGV[6])
local dayTtl, monthTtl = tonumber(ARGV[7]), tonumber(ARGV[8])
local retention = tonumber(ARGV[9])

if redis.call('ZSCORE', settledKey, rid) then return 2 end

-- Same as in admit.lua: only budget hashes that still exist, never below 0.
local function unreserve(key, field, amount)
  if amount > 0 and redis.call('EXISTS', key) == 1 then
    if redis.call('HINCRBY', key, field, -amount) < 0 then redis.call('HSET', key, field, 0) end
  end
end

-- The fallback periods' hashes get their TTL refreshed, as on every write. Another period's hash
-- keeps its own; only if it had already expired (this write recreated it) does it get the
-- fallback TTL of its kind, so no budget hash is left without one.
local function addUsed(key, isFallback, ttl)
  redis.call('HINCRBY', key, 'tu', tokens)
  redis.call('HINCRBY', key, 'uu', usd)
  if isFallback or redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, ttl) end
end

local outcome = 3
local rec = redis.call('HGET', resvKey, rid)
local t, u, s, d, m
if rec then t, u, s, d, m = string.match(rec, '^(%d+)|(%d+)|(%d+)|([^|]*)|(.*)$') end
if t then
  t, u, s = tonumber(t), tonumber(u), tonumber(s)
  redis.call('HDEL', resvKey, rid)
  redis.call('ZREM', leaseKey, rid)
  local dayKey, monthKey = dayStem .. d, monthStem .. m
  unreserve(dayKey, 'tr', t)
  unreserve(dayKey, 'ur', u)
  unreserve(monthKey, 'tr', t)
  unreserve(monthKey, 'ur', u)
  addUsed(dayKey, dayKey == fallbackDayKey, dayTtl)
  addUsed(monthKey, monthKey == fallbackMonthKey, monthTtl)
  -- The tpm window counted the worst case; make it count the real tokens while the bucket is in it.
  if s >= math.floor(now / 1000) - 59 then
    local field = 't:' .. string.format('%d', s)
    local current = redis.call('HGET', winKey, field)
    if current then
      redis.call('HSET', winKey, field, math.max(0, tonumber(current) + tokens - t))
    end
  end
  outcome = 1
else
  if rec then redis.call('HDEL', resvKey, rid) end -- unreadable record: nothing to give back
  redis.call('ZREM', leaseKey, rid)
  addUsed(fallbackDayKey, true, dayTtl)
  addUsed(fallbackMonthKey, true, monthTtl)
end

redis.call('ZREMRANGEBYSCORE', settledKey, '-inf', '(' .. string.format('%d', now - retention))
redis.call('ZADD', settledKey, now, rid)
redis.call('PEXPIRE', settledKey, retention)
return outcome
