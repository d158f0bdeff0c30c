-- record.lua: adds one usage event to its hour's aggregates, once. An event whose write had an
-- unknown outcome (Redis died mid-command) is written again after the outage; the hour's set of
-- event ids makes that second write a no-op instead of a double count.
-- KEYS[1] the hour's hash of counters; KEYS[2] the hour's set of recorded event ids (same {hour} tag).
-- ARGV[1] event id; ARGV[2] the hash's ttl ms; ARGV[3] the set's ttl ms; ARGV[4..] field, increment pairs.
-- Returns 1 if counted, 0 if the event had been counted already.
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then
  return 0
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
for i = 4, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
