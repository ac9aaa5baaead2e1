-- Lease up to `limit` ready jobs to a worker. Before that, move at most
-- `batch` due scheduled jobs to ready and reclaim at most `batch` expired
-- leases, so one call never touches an unbounded number of jobs.
-- KEYS: ready, scheduled, leased, dead
-- ARGV: prefix, worker, limit, now_ms, lease_until_ms, batch
local p, worker = ARGV[1], ARGV[2]
local limit = tonumber(ARGV[3])
local now, lease_until = ARGV[4], ARGV[5]
local batch = tonumber(ARGV[6])

-- 1. promote due scheduled jobs (score = run_at)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'WITHSCORES', 'LIMIT', 0, batch)
if #due > 0 then
  local add, rem = {}, {}
  for i = 1, #due, 2 do
    add[#add + 1] = due[i + 1]
    add[#add + 1] = due[i]
    rem[#rem + 1] = due[i]
  end
  redis.call('ZADD', KEYS[1], unpack(add))
  redis.call('ZREM', KEYS[2], unpack(rem))
end

-- 2. reclaim expired leases (score = lease_until; held while now < lease_until)
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, batch)
for _, id in ipairs(expired) do
  local jk = p .. ':job:' .. id
  local f = redis.call('HMGET', jk, 'attempt', 'max', 'run_at')
  redis.call('ZREM', KEYS[3], id)
  if f[1] then
    redis.call('HDEL', jk, 'worker')
    if tonumber(f[1]) >= tonumber(f[2]) then
      redis.call('HSET', jk, 'state', 'dead', 'err', 'lease expired after final attempt', 'died', now)
      redis.call('ZADD', KEYS[4], now, id)
    else
      redis.call('HSET', jk, 'state', 'queued', 'err', 'lease expired')
      redis.call('ZADD', KEYS[1], f[3], id)
    end
  end
end

-- 3. lease ready jobs in due order
local out = {}
if limit > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[1], limit)
  for i = 1, #popped, 2 do
    local id = popped[i]
    local jk = p .. ':job:' .. id
    if redis.call('EXISTS', jk) == 1 then
      local attempt = redis.call('HINCRBY', jk, 'attempt', 1)
      redis.call('HSET', jk, 'worker', worker, 'state', 'leased')
      redis.call('ZADD', KEYS[3], lease_until, id)
      local f = redis.call('HMGET', jk, 'payload', 'max', 'enq', 'run_at')
      out[#out + 1] = { id, f[1], attempt, f[2], f[3], f[4] }
    end
  end
end
return out
