-- KEYS: the key. ARGV: now_ms, period_ms. Returns 1 the first time in a period.
local k, now = KEYS[1], tonumber(ARGV[1])
if num(redis.call('HGET', k, 'n')) > now then return 0 end
local n = now + tonumber(ARGV[2])
redis.call('HSET', k, 'n', fmt(n))
keep(k, now, n)
return 1
