-- The attempt succeeded: leased -> done (kept until purged).
-- KEYS: leased, done
-- ARGV: prefix, id, worker, now_ms
local jk = ARGV[1] .. ':job:' .. ARGV[2]
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) or redis.call('HGET', jk, 'worker') ~= ARGV[3] then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HDEL', jk, 'worker')
redis.call('HSET', jk, 'state', 'done', 'fin', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
return 1
