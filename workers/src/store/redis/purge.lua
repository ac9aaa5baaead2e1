-- Delete at most `limit` finished jobs older than `before` and dead jobs
-- older than `dead_before`.
-- KEYS: done, dead
-- ARGV: prefix, before_ms, dead_before_ms, limit
local p = ARGV[1]
local left = tonumber(ARGV[4])
local n = 0
local function sweep(key, before)
  if left <= 0 then return end
  local ids = redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. before, 'LIMIT', 0, left)
  for _, id in ipairs(ids) do
    redis.call('DEL', p .. ':job:' .. id)
    redis.call('ZREM', key, id)
  end
  n = n + #ids
  left = left - #ids
end
sweep(KEYS[1], ARGV[2])
sweep(KEYS[2], ARGV[3])
return n
