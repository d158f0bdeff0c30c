-- admit.lua: Store.admit for one gateway key in one atomic step. Mirrors quota-math.ts and
-- MemoryStore.admit; the contract suite holds all three to the same answers.
--
-- KEYS[1] window        HASH  r:<epochSecond> requests, t:<epochSecond> tokens (1-second buckets)
-- KEYS[2] reservations  HASH  reservationId -> "tokens|usdMicros|admissionSecond|dayId|monthId"
-- KEYS[3] leases        ZSET  reservationId -> lease expiry (epoch ms); 1e15 + expiry once ended before settling
-- KEYS[4] day budget    HASH  of the request's day:   tu tr uu ur (tokens used/reserved, usd micros used/reserved)
-- KEYS[5] month budget  HASH  of the request's month: same fields
-- ARGV[1] day stem      dayBudget(keyId, '')   (redis-keys.ts)
-- ARGV[2] month stem    monthBudget(keyId, '')
-- ARGV[3] reservationId
-- ARGV[4] now (epoch ms)          ARGV[5] leaseTtlMs
-- ARGV[6] tokens                  ARGV[7] usdMicros
-- ARGV[8] dayId                   ARGV[9] monthId
-- ARGV[10] dayTtlMs               ARGV[11] monthTtlMs
-- ARGV[12..18] limits, 0 = not set: rpm, tpm, tokensPerDay, tokensPerMonth, usdMicrosPerDay,
--              usdMicrosPerMonth, maxConcurrent
-- ARGV[19] 1: count only (a cache hit: checked against maxConcurrent and rpm and counted in rpm; tpm
--          and the budgets do not apply; no reservation, lease or budget write)
--          2: in full, but already counted in rpm (a hit whose entry could not answer it): rpm is
--          checked with it already in the window, and it is not counted again
--          0: in full
--
-- Joined with the cache lookup (Store.admitAndLookup, the command tollgateAdmitLookup declares two
-- more keys, both tagged `{keyId}` like the rest: a cache name in the key's own scope):
-- KEYS[6] the cache entry   KEYS[7] its single-flight lock   ARGV[20] the token to lead with
-- ARGV[21] the lock's ttl ms
-- An entry makes the request a cache hit, admitted count-only (ARGV[6]/ARGV[7] are not reserved).
-- No entry and a lock another caller holds: returns at once (lookup 3), nothing checked or written.
-- Otherwise a full admission that, only if admitted, takes the lock (lookup 2).
--
-- Undeclared keys: releasing a dead lease gives its reserved amounts back to the budget hashes of
-- the periods it was reserved in, which may be an earlier day or month than KEYS[4]/KEYS[5] and so
-- cannot be known before the script reads the reservation. Their names are built here as
-- stem .. periodId. The stems come from the same builders as KEYS[4]/KEYS[5] and carry the same
-- `{keyId}` hash tag as every declared key (the prefix may not contain braces), so these keys hash
-- to the same Redis Cluster slot and the script never leaves the node that serves it.
--
-- Returns {admitted (1|0), limitCode (0 | 1-based index in quota-math LIMIT_ORDER),
--          retryAfterMs (-1: none), rpm, requestsRemaining, requestsResetMs, tpm, tokensRemaining, tokensResetMs,
--          lookup (joined only: 0 no lead taken, 1 hit, 2 lead taken, 3 another caller leads), entry JSON (hit only)}

local winKey, resvKey, leaseKey, dayKey, monthKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local dayStem, monthStem, rid = ARGV[1], ARGV[2], ARGV[3]
local now = tonumber(ARGV[4])
local leaseTtl = tonumber(ARGV[5])
local tokens = tonumber(ARGV[6])
local usd = tonumber(ARGV[7])
local dayId, monthId = ARGV[8], ARGV[9]
local dayTtl, monthTtl = tonumber(ARGV[10]), tonumber(ARGV[11])
local rpm, tpm = tonumber(ARGV[12]), tonumber(ARGV[13])
local tokensPerDay, tokensPerMonth = tonumber(ARGV[14]), tonumber(ARGV[15])
local usdPerDay, usdPerMonth = tonumber(ARGV[16]), tonumber(ARGV[17])
local maxConcurrent = tonumber(ARGV[18])
local countOnly = ARGV[19] == '1'
-- What this request adds to the window's requests: nothing when it is already in it.
local counting = ARGV[19] == '2' and 0 or 1

if redis.call('HEXISTS', resvKey, rid) == 1 then
  return redis.error_reply('reservation ' .. rid .. ' already exists')
end

local entryKey, lockKey = KEYS[6], KEYS[7]
local entry, lookup = nil, 0
if entryKey then
  entry = redis.call('GET', entryKey)
  if entry then
    countOnly, tokens, usd, lookup = true, 0, 0, 1
  elseif redis.call('EXISTS', lockKey) == 1 then
    return {0, 0, -1, 0, 0, 0, 0, 0, 0, 3}
  end
end

-- Gives reserved amounts back to a budget hash that still exists (a write to a missing one would
-- create it without a TTL), never below 0.
local function unreserve(key, field, amount)
  if amount > 0 and redis.call('EXISTS', key) == 1 then
    if redis.call('HINCRBY', key, field, -amount) < 0 then redis.call('HSET', key, field, 0) end
  end
end

-- 1. Release dead leases (expiry <= now): their instance stopped renewing them. A lease ended
-- before its settlement (Store.endLease) is scored ENDED + expiry: it no longer counts in flight,
-- and is dead once its expiry passes too (no settlement came). Offset upwards, not negated: an
-- instance still running an older admit.lua (a rolling upgrade) sees such a lease as in flight,
-- never as dead, so it cannot give its reservation back before the settlement. ENDED is
-- redis-store.ts ENDED_LEASE_OFFSET; scores are integers far below 2^53, exact as doubles.
local ENDED = 1e15
local dead = redis.call('ZRANGEBYSCORE', leaseKey, 0, now)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', leaseKey, ENDED, ENDED + now)) do dead[#dead + 1] = id end
for _, id in ipairs(dead) do
  local rec = redis.call('HGET', resvKey, id)
  if rec then
    local t, u, _, d, m = string.match(rec, '^(%d+)|(%d+)|(%d+)|([^|]*)|(.*)$')
    if t then
      unreserve(dayStem .. d, 'tr', tonumber(t))
      unreserve(dayStem .. d, 'ur', tonumber(u))
      unreserve(monthStem .. m, 'tr', tonumber(t))
      unreserve(monthStem .. m, 'ur', tonumber(u))
    end
    redis.call('HDEL', resvKey, id)
  end
end
if #dead > 0 then
  redis.call('ZREMRANGEBYSCORE', leaseKey, 0, now)
  redis.call('ZREMRANGEBYSCORE', leaseKey, ENDED, ENDED + now)
end
local inFlight = redis.call('ZCOUNT', leaseKey, now + 1, ENDED - 1)

-- 2. The rolling minute: buckets of seconds >= sec - 59 (at most 120 fields: older ones are
-- deleted on every admission and the hash expires 61 s after the last one).
local sec = math.floor(now / 1000)
local oldest = sec - 59
local reqs, toks, seconds, stale = {}, {}, {}, {}
local flat = redis.call('HGETALL', winKey)
for i = 1, #flat, 2 do
  local kind, s = string.match(flat[i], '^([rt]):(%d+)$')
  s = tonumber(s)
  if s then
    if s < oldest then
      stale[#stale + 1] = flat[i]
    else
      if reqs[s] == nil and toks[s] == nil then seconds[#seconds + 1] = s end
      if kind == 'r' then reqs[s] = tonumber(flat[i + 1]) else toks[s] = tonumber(flat[i + 1]) end
    end
  end
end
table.sort(seconds)

local totalReqs, totalToks = 0, 0
for _, s in ipairs(seconds) do
  totalReqs = totalReqs + (reqs[s] or 0)
  totalToks = totalToks + (toks[s] or 0)
end

-- ms until at least `amount` has left the window, oldest buckets first; 0 if amount <= 0, -1 if never.
local function freedIn(by, amount)
  if amount <= 0 then return 0 end
  local freed = 0
  for _, s in ipairs(seconds) do
    freed = freed + (by[s] or 0)
    if freed >= amount then return (s + 60) * 1000 - now end
  end
  return -1
end

-- ms until the newest non-empty bucket has left the window; 0 if empty.
local function emptyIn(by)
  for i = #seconds, 1, -1 do
    if (by[seconds[i]] or 0) > 0 then return (seconds[i] + 60) * 1000 - now end
  end
  return 0
end

local function budget(key)
  local v = redis.call('HMGET', key, 'tu', 'tr', 'uu', 'ur')
  return tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0, tonumber(v[4]) or 0
end

-- 3. Limits, first failure wins.
local limit, retry = 0, -1
if maxConcurrent > 0 and inFlight + 1 > maxConcurrent then
  limit, retry = 1, 1000 -- quota-math CONCURRENCY_RETRY_MS
elseif rpm > 0 and totalReqs + counting > rpm then
  limit, retry = 2, freedIn(reqs, totalReqs + counting - rpm)
elseif countOnly then
  -- A count-only request (a cache hit) adds nothing to tpm or a budget: neither refuses it, at its
  -- limit or past it (settled usage can overshoot), where `used + 0 > limit` alone would refuse it.
elseif tpm > 0 and totalToks + tokens > tpm then
  limit = 3
  -- A request larger than the whole limit never fits, however long it waits.
  if tokens <= tpm then retry = freedIn(toks, totalToks + tokens - tpm) end
else
  local dtu, dtr, duu, dur = budget(dayKey)
  local mtu, mtr, muu, mur = budget(monthKey)
  -- {limit code, its value, settled use plus this request, reserved by requests in flight, this
  -- request alone}; the months first: a spent month outlasts a spent day, and naming the day would
  -- send the client back at midnight (or at once, when the day it arrived in has ended since) to be
  -- refused again.
  local budgets = {
    {5, tokensPerMonth, mtu + tokens, mtr, tokens},
    {7, usdPerMonth, muu + usd, mur, usd},
    {4, tokensPerDay, dtu + tokens, dtr, tokens},
    {6, usdPerDay, duu + usd, dur, usd},
  }
  -- The first budget whose amount(b) is over its value, by code; 0 when none.
  local function firstOver(amount)
    for _, b in ipairs(budgets) do
      if b[2] > 0 and amount(b) > b[2] then return b[1] end
    end
    return 0
  end
  -- Each question is asked of every budget before the next: larger than a whole budget (no period's
  -- end lets it through: the client must ask for less); past what is left of one (no retry hint: one
  -- merely held must not hide one that is spent); only requests in flight standing in the way
  -- (quota-math BUDGET_HELD_RETRY_MS).
  limit = firstOver(function(b) return b[5] end)
  if limit == 0 then limit = firstOver(function(b) return b[3] end) end
  if limit == 0 then
    limit = firstOver(function(b) return b[3] + b[4] end)
    if limit ~= 0 then retry = 1000 end
  end
end

-- 4. Record, only if everything passed.
if limit == 0 then
  if #stale > 0 then redis.call('HDEL', winKey, unpack(stale)) end
  local secField = string.format('%d', sec)
  if counting > 0 then redis.call('HINCRBY', winKey, 'r:' .. secField, counting) end
  redis.call('HINCRBY', winKey, 't:' .. secField, tokens)
  redis.call('PEXPIRE', winKey, 61000) -- quota-math WINDOW_TTL_MS

  if reqs[sec] == nil and toks[sec] == nil then
    seconds[#seconds + 1] = sec
    table.sort(seconds)
  end
  reqs[sec] = (reqs[sec] or 0) + counting
  toks[sec] = (toks[sec] or 0) + tokens
  totalReqs = totalReqs + counting
  totalToks = totalToks + tokens
end
-- A count-only request (a cache hit) is over once admitted: nothing to reserve, no lease to hold.
if limit == 0 and not countOnly then
  redis.call('HINCRBY', dayKey, 'tr', tokens)
  redis.call('HINCRBY', dayKey, 'ur', usd)
  redis.call('PEXPIRE', dayKey, dayTtl)
  redis.call('HINCRBY', monthKey, 'tr', tokens)
  redis.call('HINCRBY', monthKey, 'ur', usd)
  redis.call('PEXPIRE', monthKey, monthTtl)

  -- The amounts as given (integer strings): Lua's number-to-string turns 1e14 and up into exponents.
  redis.call('HSET', resvKey, rid, ARGV[6] .. '|' .. ARGV[7] .. '|' .. string.format('%d', sec) .. '|' .. dayId .. '|' .. monthId)
  redis.call('ZADD', leaseKey, now + leaseTtl, rid)
  -- Outlive every budget hash a held reservation points into, so its amounts can be given back.
  local keep = math.max(dayTtl, monthTtl) + leaseTtl
  redis.call('PEXPIRE', resvKey, keep)
  redis.call('PEXPIRE', leaseKey, keep)
  if entryKey then
    redis.call('SET', lockKey, ARGV[20], 'PX', ARGV[21])
    lookup = 2
  end
end

-- 5. Header states (see quota-math windowStates), after this request if it was admitted.
local reqRemaining, reqReset, tokRemaining, tokReset = 0, 0, 0, 0
if rpm > 0 then
  reqRemaining = math.max(0, rpm - totalReqs)
  reqReset = math.max(0, freedIn(reqs, totalReqs - rpm + 1))
end
if tpm > 0 then
  tokRemaining = math.max(0, tpm - totalToks)
  tokReset = emptyIn(toks)
end

return {limit == 0 and 1 or 0, limit, retry, rpm, reqRemaining, reqReset, tpm, tokRemaining, tokReset, lookup, entry}
