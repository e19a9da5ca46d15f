-- KEYS: the key. ARGV: now_ms, until_ms. Holds the key in force until then.
local k, now, u = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local b = num(redis.call('HGET', k, 'b'))
if u > b then
  b = u
  redis.call('HSET', k, 'b', fmt(b))
end
keep(k, now, b)
return 0
