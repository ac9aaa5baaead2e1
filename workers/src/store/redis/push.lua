-- Store a batch of new jobs (the caller caps the batch size).
-- ARGV: prefix, now_ms, dedupe_until_ms (now + window), dedupe_ttl_ms (0 =
--       no dedupe), n, then n x (id, queue, payload, run_at_ms, dedupe key or
--       '', max_attempts).
-- A dedupe key holds while the caller's clock is before the stored
-- `until` (the key's own TTL, longer than the window, only collects garbage).
-- Returns one {id, deduplicated 0/1} per job, in input order.
local p = ARGV[1]
local now = tonumber(ARGV[2])
local dedupe_until = ARGV[3]
local dedupe_ttl = ARGV[4]
local use_dedupe = tonumber(dedupe_ttl) > 0
local n = tonumber(ARGV[5])
local out = {}
local woken = {}
for i = 0, n - 1 do
  local b = 6 + i * 6
  local id, q, payload, run_at, dk, max =
    ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
  local holder = false
  if dk ~= '' and use_dedupe then
    local dkey = p .. ':dedupe:' .. q .. ':' .. dk
    local held = redis.call('GET', dkey)
    if held then
      local sep = string.find(held, ':', 1, true)
      if tonumber(string.sub(held, 1, sep - 1)) > now then
        holder = string.sub(held, sep + 1)
      end
    end
    if not holder then
      redis.call('SET', dkey, dedupe_until .. ':' .. id, 'PX', dedupe_ttl)
    end
  end
  if holder then
    out[#out + 1] = { holder, 1 }
  else
    local qk = p .. ':q:' .. q
    redis.call('HSET', p .. ':job:' .. id, 'q', q, 'payload', payload, 'attempt', 0,
      'max', max, 'enq', ARGV[2], 'run_at', run_at, 'dk', dk, 'state', 'queued')
    if tonumber(run_at) <= now then
      redis.call('ZADD', qk .. ':ready', run_at, id)
    else
      redis.call('ZADD', qk .. ':scheduled', run_at, id)
    end
    woken[q] = true
    out[#out + 1] = { id, 0 }
  end
end
for q in pairs(woken) do
  redis.call('PUBLISH', p .. ':wake:' .. q, 'push')
end
return out
