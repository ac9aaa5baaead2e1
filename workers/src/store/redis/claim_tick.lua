-- Claim one cron tick; exactly one caller wins. Remember the latest tick.
-- KEYS: tick claim key, last tick key
-- ARGV: tick_ms, claim_ttl_ms
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[2]) then
  return 0
end
local last = redis.call('GET', KEYS[2])
if not last or tonumber(last) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[1])
end
return 1
