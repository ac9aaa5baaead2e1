-- The attempt failed retryably: leased -> scheduled at run_at_ms.
-- KEYS: leased, scheduled
-- ARGV: prefix, id, worker, run_at_ms, error, queue
local jk = ARGV[1] .. ':job:' .. ARGV[2]
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) or redis.call('HGET', jk, 'worker') ~= ARGV[3] then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HDEL', jk, 'worker')
redis.call('HSET', jk, 'state', 'scheduled', 'run_at', ARGV[4], 'err', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
-- idle workers re-read next_due_ms
redis.call('PUBLISH', ARGV[1] .. ':wake:' .. ARGV[6], 'retry')
return 1
