-- KEYS: the blocks to check, then the buckets.
-- ARGV: now_ms, notice_ms, number of blocks (numbers in hexadecimal, as
-- below), each block's refuses (0/1), then each bucket's interval_ns,
-- tolerance_ns and observe_only (0/1).
-- Returns: active blocks (bits), blocked index (-1), blocked until,
-- refused index (-1), refusal is new (0/1), spike index (-1), then each
-- bucket's reset_ns and retry_after_ns.
local now = tonumber(ARGV[1], 16)
local notice = tonumber(ARGV[2], 16)
local nb = tonumber(ARGV[3], 16)
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
-- A bucket is one string key, "m s" or "m s n" in hexadecimal: its
-- theoretical arrival time (ms, and the ns past it) and until when its
-- refusals are noticed (ms; absent when that has passed). All are read at
-- once. Hexadecimal because converting numbers is most of a script's cost,
-- and strtoul and %x cost a fraction of strtod and %.0f.
local nk = #KEYS - nb
local base = 3 + nb
local out = {active, -1, 0, -1, 0, -1}
local rel, admit, exists, noticed, obs = {}, {}, {}, {}, {}
local refused, worst, spike = -1, 0, -1
local got = nk > 0 and redis.call('MGET', unpack(KEYS, nb + 1)) or {}
for j = 1, nk do
  local a = base + 3 * (j - 1)
  local interval, tol = tonumber(ARGV[a + 1], 16), tonumber(ARGV[a + 2], 16)
  obs[j] = ARGV[a + 3] == '1'
  local m, s, n
  if got[j] then
    m, s, n = string.match(got[j], '^(%x+) (%x+) ?(%x*)$')
    -- Not ours: an error (the failure policy decides), never a fresh bucket.
    if not m then return redis.error_reply('a rate bucket is unreadable') end
  end
  local r = 0
  exists[j] = m ~= nil
  noticed[j] = 0
  if exists[j] then
    r = (tonumber(m, 16) - now) * 1000000 + tonumber(s, 16)
    if r < 0 then r = 0 end
    if n ~= '' then noticed[j] = tonumber(n, 16) end
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
-- Charge every bucket if none refused; observed ones always. A write sets
-- the key's life to when it stops mattering; that only moves later (the
-- arrival time and the notice only grow), so it never cuts a life short
-- (given the instances' clocks agree within SLACK).
for j = 1, nk do
  local charge = admit[j] and (refused < 0 or obs[j])
  if charge or newn[j] then
    local tat = rel[j]
    if charge then tat = admit[j] end
    local ms = math.floor(tat / 1000000)
    local n = newn[j] or noticed[j]
    local v
    if n > now then
      v = string.format('%x %x %x', now + ms, tat - ms * 1000000, n)
    else
      v = string.format('%x %x', now + ms, tat - ms * 1000000)
    end
    local life = math.max(ms + 1, n - now) + SLACK
    redis.call('SET', KEYS[nb + j], v, 'PX', string.format('%d', life))
  end
end
return out
