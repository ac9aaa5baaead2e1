-- Extend the leases `worker` still holds; return the ids it lost.
-- KEYS: leased
-- ARGV: prefix, worker, lease_until_ms, id...
local p, worker, lease_until = ARGV[1], ARGV[2], ARGV[3]
local lost = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], id) and redis.call('HGET', p .. ':job:' .. id, 'worker') == worker then
    redis.call('ZADD', KEYS[1], 'XX', lease_until, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
