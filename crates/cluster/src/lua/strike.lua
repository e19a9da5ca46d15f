-- KEYS: the key. ARGV: now_ms, threshold, window_ms, block_ms, and 1 to
-- refuse (count nothing) while the key is blocked (an attempt).
-- Returns: counted (0: locked), count, started a block (0/1), blocked until.
local k, now = KEYS[1], tonumber(ARGV[1])
if ARGV[5] == '1' then
  local b = num(redis.call('HGET', k, 'b'))
  if b > now then return {0, 0, 0, b} end
end
local r = strike(k, now, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
return {1, r[1], r[2], r[3]}
