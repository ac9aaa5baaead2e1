-- Give up: leased -> dead.
-- KEYS: leased, dead
-- ARGV: prefix, id, worker, now_ms, error
local jk = ARGV[1] .. ':job:' .. ARGV[2]
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) or redis.call('HGET', jk, 'worker') ~= ARGV[3] then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HDEL', jk, 'worker')
redis.call('HSET', jk, 'state', 'dead', 'err', ARGV[5], 'died', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
return 1
