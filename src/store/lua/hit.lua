-- hit.lua: Store.hit, a fixed-window counter. INCR and its PEXPIRE in one step, so a crash between
-- them cannot leave a counter that never expires.
--
-- KEYS[1] counter   ARGV[1] window ms
-- Returns {count in the current window, ms left in it}

local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if count == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
