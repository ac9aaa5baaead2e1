-- The newest `limit` dead jobs, newest first.
-- KEYS: dead
-- ARGV: prefix, limit
local ids = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #ids, 2 do
  local f = redis.call('HMGET', ARGV[1] .. ':job:' .. ids[i], 'payload', 'attempt', 'err')
  if f[1] then
    out[#out + 1] = { ids[i], f[1], f[2], f[3] or '', ids[i + 1] }
  end
end
return out
