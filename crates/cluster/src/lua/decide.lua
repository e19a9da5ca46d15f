-- KEYS: the blocks to check, then the buckets.
-- ARGV: now_ms, notice_ms, number of blocks, each block's refuses (0/1),
-- then each bucket's interval_ns, tolerance_ns, observe_only (0/1).
-- Returns: active blocks (bits), blocked index (-1), blocked until,
-- refused index (-1), refusal is new (0/1), spike index (-1), then each
-- bucket's reset_ns and retry_after_ns.
local now = tonumber(ARGV[1])
local notice = tonumber(ARGV[2])
local nb = tonumber(ARGV[3])
local active, bi, bu = 0, -1, 0
for i = 1, nb do
  local b = num(redis.call('HGET', KEYS[i], 'b'))
  if b > now then
    active = active + 2 ^ (i - 1)
    if bi < 0 and ARGV[3 + i] == '1' then
      bi = i - 1
      bu = b
    end
  end
end
if bi >= 0 then return {active, bi, bu, -1, 0, -1} end
-- A bucket: m and s (theoretical arrival time, ms and the ns past it),
-- n (noticed until, ms).
local nk = #KEYS - nb
local base = 3 + nb
local out = {active, -1, 0, -1, 0, -1}
local rel, admit, exists, noticed, obs = {}, {}, {}, {}, {}
local refused, worst, spike = -1, 0, -1
for j = 1, nk do
  local a = base + 3 * (j - 1)
  local interval, tol = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  obs[j] = ARGV[a + 3] == '1'
  local h = redis.call('HMGET', KEYS[nb + j], 'm', 's', 'n')
  local r = 0
  exists[j] = h[1] ~= false
  noticed[j] = 0
  if exists[j] then
    r = (tonumber(h[1]) - now) * 1000000 + num(h[2])
    if r < 0 then r = 0 end
    noticed[j] = num(h[3])
  end
  rel[j] = r
  local ahead = r + interval
  if ahead <= tol then
    admit[j] = ahead
    out[5 + 2 * j] = ahead
    out[6 + 2 * j] = 0
  else
    admit[j] = false
    out[5 + 2 * j] = r
    out[6 + 2 * j] = ahead - tol
    if obs[j] then
      if spike < 0 then spike = j end
    elseif refused < 0 or ahead - tol > worst then
      worst = ahead - tol
      refused = j
    end
  end
end
-- A refusal or spike is reported once per notice period.
local newn = {}
local function noted(j)
  if exists[j] and noticed[j] <= now then
    newn[j] = now + notice
    return true
  end
  return false
end
if refused > 0 then
  out[4] = refused - 1
  if noted(refused) then out[5] = 1 end
end
if spike > 0 and noted(spike) then out[6] = spike - 1 end
-- Charge every bucket if none refused; observed ones always.
for j = 1, nk do
  local k = KEYS[nb + j]
  local charge = admit[j] and (refused < 0 or obs[j])
  local tat = rel[j]
  if charge then
    local ms = math.floor(admit[j] / 1000000)
    redis.call('HSET', k, 'm', fmt(now + ms), 's', fmt(admit[j] - ms * 1000000))
    tat = admit[j]
  end
  if newn[j] then redis.call('HSET', k, 'n', fmt(newn[j])) end
  if charge or newn[j] then
    keep(k, now, math.max(now + math.ceil(tat / 1000000), newn[j] or noticed[j]))
  end
end
return out
