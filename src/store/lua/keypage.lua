-- keypage.lua: the ids of one page of the key list (Store.listKeysPage), in one atomic step.
-- The list is a ZSET scored by creation time, whose ties Redis orders by id. Scores may tie (two
-- keys created in one millisecond), so a page cannot start at "score > the cursor's": it starts at
-- the rank just past the cursor's. Reading that rank and the range in one script means a key
-- created meanwhile can never shift the ranks in between (which would repeat or skip a key).
-- ZRANK and ZRANGE by rank: O(log N + page), whatever the number of keys.
--
-- KEYS[1] the key list   ARGV[1] the cursor's id ('' for the first page)   ARGV[2] ids to return
-- Returns up to ARGV[2] ids following the cursor, or nil when the cursor is not in the list.

local start = 0
if ARGV[1] ~= '' then
  local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
  if not rank then return false end
  start = rank + 1
end
return redis.call('ZRANGE', KEYS[1], start, start + tonumber(ARGV[2]) - 1)
