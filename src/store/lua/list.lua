-- list.lua: appends a batch's events to the event stream, each hour's part of the batch once.
-- record.lua counts a part once; this lists it once, and apart from the count: a batch whose
-- counting ran but whose reply was lost (a stall, a dropped connection) is replayed, finds itself
-- counted, and must still be listed. The stream lives in another cluster slot than the hours, so
-- the marks of listed parts live next to the stream (their keys carry its name as hash tag) and
-- the mark and the appends of a part are one atomic step: listed once, never half.
-- KEYS[1] the stream; KEYS[1 + i] the set of listed batch ids of the i-th part's hour.
-- ARGV[1] the stream's MAXLEN (trimmed with `~`); ARGV[2] n, the number of parts;
-- ARGV[3 .. 2 + 2n] per part: batch id (usage-math.ts usageParts), the set's ttl ms;
-- then per event, in batch order: its part's index (1-based), its JSON.
-- Returns the number of events appended.
local parts = tonumber(ARGV[2])
local fresh = {}
for i = 1, parts do
  local id, ttl = ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  if redis.call('SADD', KEYS[1 + i], id) == 1 then
    redis.call('PEXPIRE', KEYS[1 + i], ttl)
    fresh[i] = true
  end
end
local appended = 0
for j = 3 + 2 * parts, #ARGV, 2 do
  if fresh[tonumber(ARGV[j])] then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[j + 1])
    appended = appended + 1
  end
end
return appended
