-- record.lua: adds one batch of usage events (the part of a batch in this hour) to the hour's
-- aggregates, once. A batch whose write had an unknown outcome (Redis died mid-command) is written
-- again after the outage; the hour's set of counted batch ids makes that second write a no-op
-- instead of a double count. Listing the events is list.lua's step, with its own mark: the reply
-- of this script may be lost after it ran, and the replay must still list what it finds counted.
-- KEYS[1] the hour's hash of counters; KEYS[2] the hour's set of counted batch ids (same {hour} tag).
-- ARGV[1] batch id (usage-math.ts usageParts); ARGV[2] the hash's ttl ms; ARGV[3] the set's ttl ms;
-- ARGV[4..] field, increment pairs (the batch's sums).
-- Returns 1 if counted, 0 if the batch had been counted already.
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then
  return 0
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
for i = 4, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
