-- dead -> ready with a fresh attempt budget.
-- KEYS: dead, ready
-- ARGV: prefix, id, now_ms, queue
local jk = ARGV[1] .. ':job:' .. ARGV[2]
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[2])
if redis.call('EXISTS', jk) == 0 then
  return 0
end
redis.call('HDEL', jk, 'err', 'died', 'worker')
redis.call('HSET', jk, 'attempt', 0, 'run_at', ARGV[3], 'state', 'queued')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('PUBLISH', ARGV[1] .. ':wake:' .. ARGV[4], 'redrive')
return 1
