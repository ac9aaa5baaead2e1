-- Hand leased jobs back at once, without using up the attempt.
-- KEYS: leased, ready
-- ARGV: prefix, worker, queue, id...
local p, worker = ARGV[1], ARGV[2]
local n = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local jk = p .. ':job:' .. id
  if redis.call('ZSCORE', KEYS[1], id) and redis.call('HGET', jk, 'worker') == worker then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', jk, 'worker')
    redis.call('HINCRBY', jk, 'attempt', -1)
    redis.call('HSET', jk, 'state', 'queued')
    redis.call('ZADD', KEYS[2], redis.call('HGET', jk, 'run_at'), id)
    n = n + 1
  end
end
if n > 0 then
  redis.call('PUBLISH', p .. ':wake:' .. ARGV[3], 'release')
end
return n
