-- KEYS: pair, account, trust, spacing. ARGV: now_ms, the pair's threshold,
-- window_ms and block_ms, spacing_ms.
-- Returns: admitted (0/1), then refused: pair locked (0/1); admitted:
-- started a lock (0/1), locked until.
local now = tonumber(ARGV[1])
if in_force(KEYS[1], now) then return {0, 1, 0} end
if in_force(KEYS[2], now) and not in_force(KEYS[3], now) then
  local sp = KEYS[4]
  if num(redis.call('HGET', sp, 'n')) > now then return {0, 0, 0} end
  local n = now + tonumber(ARGV[5])
  redis.call('HSET', sp, 'n', fmt(n))
  keep(sp, now, n)
end
local r = strike(KEYS[1], now, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
return {1, r[2], r[3]}
