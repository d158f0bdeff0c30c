-- list.lua: appends one chunk of a batch's events to the event stream, each event once.
-- record.lua counts a part (the batch's events of one hour) once; this lists it once, and apart
-- from the count: a batch whose counting ran but whose reply was lost (a stall, a dropped
-- connection) is replayed, finds itself counted, and must still be listed. The stream lives in
-- another cluster slot than the hours, so the marks of listed parts live next to the stream
-- (their keys carry its name as hash tag).
-- A batch is listed in chunks of a few dozen events, one call each (redis-store.ts
-- LIST_CHUNK_EVENTS), so a large batch never holds Redis for long in one script. The mark of a
-- part is how many of its events are listed so far: a chunk appends its part's events only when
-- the mark says every earlier event of that part is listed and none of these, then moves it on.
-- The chunking of a batch is deterministic, so a replay finds its chunks where the first try put
-- them and lists exactly what that try did not.
-- KEYS[1] the stream; KEYS[1 + i] the HASH of batch id -> events listed, of the i-th part's hour.
-- ARGV[1] the stream's MAXLEN (trimmed with `~`); ARGV[2] n, the number of parts in this chunk;
-- ARGV[3 .. 2 + 4n] per part: batch id (usage-math.ts usageParts), the hash's ttl ms, the number
-- of the part's events in earlier chunks, the number in this chunk;
-- then per event of the chunk, in batch order: its part's index (1-based, in this chunk), its JSON.
-- Returns the number of events appended.
local parts = tonumber(ARGV[2])
local fresh = {}
for i = 1, parts do
  local base = 4 * i - 1
  local id, ttl = ARGV[base], ARGV[base + 1]
  local before, count = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local listed = tonumber(redis.call('HGET', KEYS[1 + i], id) or '0')
  -- listed == before: this chunk is next. More: listed already. Less: an earlier chunk is
  -- missing (it failed); the replay lists both, in order.
  if listed == before then
    redis.call('HSET', KEYS[1 + i], id, before + count)
    redis.call('PEXPIRE', KEYS[1 + i], ttl)
    fresh[i] = true
  end
end
local appended = 0
for j = 3 + 4 * parts, #ARGV, 2 do
  if fresh[tonumber(ARGV[j])] then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[j + 1])
    appended = appended + 1
  end
end
return appended
