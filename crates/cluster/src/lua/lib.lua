-- Shared by every script. Times are the caller's milliseconds (ns in
-- bucket arithmetic), so the scripts agree with the in-process state
-- whatever the Redis server's clock says. Lua numbers are doubles: every
-- value kept here stays below 2^53 (bucket times are split into ms and ns).
local SLACK = 1000
local function num(v)
  if v then return tonumber(v) or 0 end
  return 0
end
local function fmt(x) return string.format('%.0f', x) end
-- Keeps k until at least until_ms, never shortening its life.
local function keep(k, now, until_ms)
  local want = until_ms - now + SLACK
  if want < SLACK then want = SLACK end
  if redis.call('PTTL', k) < want then redis.call('PEXPIRE', k, fmt(want)) end
end
local function in_force(k, now) return num(redis.call('HGET', k, 'b')) > now end
-- A strike: t (strike times, oldest first), b (blocked until), n (noticed until).
local function strike(k, now, thr, win, blk)
  local h = redis.call('HMGET', k, 't', 'b', 'n')
  local times = {}
  if h[1] then
    for t in string.gmatch(h[1], '%-?%d+') do
      local v = tonumber(t)
      if v > now - win then times[#times + 1] = v end
    end
  end
  times[#times + 1] = now
  local cap = math.max(thr, 1)
  while #times > cap do table.remove(times, 1) end
  local count = #times
  local b = num(h[2])
  local started = 0
  if count >= thr and b <= now then
    b = now + blk
    times = {}
    started = 1
  end
  local parts = {}
  for i, v in ipairs(times) do parts[i] = fmt(v) end
  redis.call('HSET', k, 't', table.concat(parts, ' '), 'b', fmt(b))
  keep(k, now, math.max(now + win, b, num(h[3])))
  return {count, started, b}
end
