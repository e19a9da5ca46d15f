-- KEYS: the key. ARGV: 1 when the attempt started a block, and its end.
local k = KEYS[1]
if redis.call('EXISTS', k) == 1 then
  redis.call('HSET', k, 't', '')
  if ARGV[1] == '1' and num(redis.call('HGET', k, 'b')) == tonumber(ARGV[2]) then
    redis.call('HSET', k, 'b', '0')
  end
end
return 0
