-- ratewall: one atomic, all-or-nothing rate limit check over every cell of one request.
--
-- This file is the contract shared by the Rust store (ratewall_core::store::redis::SCRIPT) and the
-- pure-Python engine of the gateway plugin (which runs this same text with EVALSHA via redis-py).
-- It mirrors core/src/algorithm/*.rs exactly: integer microseconds, the same formulas, the same
-- saturating subtractions. Lua numbers are IEEE doubles, exact integers below 2^53; integer
-- division is done as math.floor(a / b), which is exact for 0 <= a < 2^53, b >= 1 (the rounding
-- error of a / b is below 1 / b, the distance from a non-integer quotient to the next integer).
-- Counts reach 2^32 - 1 and windows 366 days (< 2^45 us), so the few products count x us that
-- reach 2^77 (token bucket refill and refill time, the sliding window counter's weight and retry
-- offsets) go through muldiv below, an exact long division whose every step stays below 2^53, as
-- core/src/algorithm/exact.rs does with u128; every value stored or returned stays below 2^53.
--
-- CALL
--   EVALSHA <sha1 of this text> <n> KEYS[1..n] ARGV[1..1+5n]
--
--   KEYS[i]      storage key of cell i, in plan order (core/src/key.rs). Every key of one call
--                carries the same Redis Cluster hash tag "{...}", so the call is valid on a cluster.
--   ARGV[1]      "now" in microseconds since the Unix epoch as a decimal integer (clock: client),
--                or the empty string "" to read the Redis server clock with TIME (clock: server).
--   then five values per cell i (i = 1..n):
--   ARGV[5i-3]   algorithm: "fixed_window" | "sliding_window" | "sliding_window_counter" |
--                "token_bucket" | "gcra".
--   ARGV[5i-2]   limit count L (decimal integer, 1 ..= 4294967295).
--   ARGV[5i-1]   window in whole seconds (decimal integer, 1 ..= 31622400).
--   ARGV[5i]     cost: units this cell consumes (decimal integer, 0 ..= 4294967295; 0 checks the
--                cell without consuming: allowed, remaining and reset of the current state).
--   ARGV[5i+1]   shadow: "1" if the cell is shadow (evaluated and reported, never denies), "0" if
--                it is enforced.
--
-- REPLY (array of integers, 2 + 4n entries)
--   [1]          1 if the request was admitted (no enforced cell denies it), 0 if denied (nothing
--                consumed anywhere: all-or-nothing, denied requests are never counted).
--                When admitted, cell i is consumed iff it admits the request itself and its cost
--                is above 0 (a shadow cell that would deny is not charged): the one commit rule of
--                ratewall_core::store::commits.
--   [2]          the "now" used, in microseconds (ARGV[1] or the server's TIME).
--   [4i-1]       cell i admits the request: 1 or 0.
--   [4i]         cell i remaining units (after this request if admitted, now if denied).
--   [4i+1]       cell i reset_at: when its quota is fully restored (microseconds since epoch).
--   [4i+2]       cell i retry_at: earliest instant the same request would pass this cell
--                (microseconds), or -1 if the cell admits it or never can (cost > L).
--   Combine the cells exactly like ratewall_core::decision::Decision::combine.
--   Errors (bad ARGV) are returned as Redis errors prefixed "ratewall:".
--
-- STATE (every key encodes algorithm and window, so no key is ever read by another algorithm)
--   fixed_window            hash  w = window index floor(t / W), c = units consumed in it
--   sliding_window          list  admission instants in microseconds, oldest first, one entry per
--                                 unit of cost (duplicates are fine: no member uniqueness needed)
--   sliding_window_counter  hash  w = window index, p = units in window w-1, c = units in window w
--   token_bucket            hash  t = whole tokens, l = instant of last refill, r = carried
--                                 fraction in 1/W token units (absent key = full bucket)
--   gcra                    string: the theoretical arrival time in microseconds
--
-- TTL: every write sets PEXPIRE to the state's expiry (CellState::expires_at) minus now, rounded up
-- to whole milliseconds; with clock: client 1000 ms are added to allow for clock skew between the
-- instances that share the key. A key touched once therefore always expires.

local floor = math.floor

local function idiv(a, b)
  return floor(a / b)
end

-- ceil(a / b) for integers a >= 0, b >= 1
local function cdiv(a, b)
  return floor((a + b - 1) / b)
end

-- a.saturating_sub(b)
local function sat(a, b)
  if a > b then
    return a - b
  end
  return 0
end

-- floor((a * b + c) / m) and the remainder, exact, for integers 0 <= a < 2^32, 0 <= b < 2^53,
-- 0 <= c < 2^52, 1 <= m < 2^46 and a quotient below 2^53. Directly when a b + c < 2^53; else
-- schoolbook long division of a b by m over the base-64 digits of b, high digit first: each step
-- t = r * 64 + a * digit < 2^52 + 2^38 < 2^53 (r < m), so every operation is exact.
local POW64 = { [0] = 1 }
for k = 1, 8 do
  POW64[k] = POW64[k - 1] * 64
end

local function muldiv(a, b, c, m)
  local n = a * b + c
  if n < 9007199254740992 then
    local q = floor(n / m)
    return q, n - q * m
  end
  local q, r = 0, 0
  for k = 8, 0, -1 do
    local digit = floor(b / POW64[k]) % 64
    local t = r * 64 + a * digit
    local d = floor(t / m)
    r = t - d * m
    q = q * 64 + d
  end
  r = r + c
  if r >= m then
    local d = floor(r / m)
    q = q + d
    r = r - d * m
  end
  return q, r
end

local function num(v)
  if v == false or v == nil then
    return nil
  end
  return tonumber(v)
end

-- Algorithms are built on first use in a call (Redis runs the whole chunk on every call, so only
-- the algorithms a request uses pay for their closures).
local MAKE = {}

-- fixed_window -----------------------------------------------------------------------------------
MAKE.fixed_window = function() return {
  load = function(key)
    local v = redis.call('HMGET', key, 'w', 'c')
    return { w = num(v[1]) or 0, c = num(v[2]) or 0 }
  end,
  peek = function(s, now, cost, l, w)
    local i = idiv(now, w)
    local used = 0
    if s.w == i then
      used = s.c
    end
    local e = (i + 1) * w
    if used + cost <= l then
      return 1, l - used - cost, e, -1
    end
    local retry = -1
    if cost <= l then
      retry = e
    end
    return 0, sat(l, used), e, retry
  end,
  commit = function(s, now, cost, l, w)
    local i = idiv(now, w)
    local used = 0
    if s.w == i then
      used = s.c
    end
    s.w = i
    s.c = used + cost
  end,
  save = function(key, s, ttl)
    redis.call('HSET', key, 'w', s.w, 'c', s.c)
    redis.call('PEXPIRE', key, ttl)
  end,
  expires_at = function(s, l, w)
    return (s.w + 1) * w
  end,
} end

-- gcra -------------------------------------------------------------------------------------------
MAKE.gcra = function()
local function gcra_params(l, w)
  local t = cdiv(w, l)
  return t, t * l
end

return {
  load = function(key)
    return { tat = num(redis.call('GET', key)) or 0 }
  end,
  peek = function(s, now, cost, l, w)
    local t, tau = gcra_params(l, w)
    local tat0 = math.max(s.tat, now)
    if cost <= l then
      local new_tat = tat0 + cost * t
      if new_tat <= now + tau then
        return 1, idiv(now + tau - new_tat, t), new_tat, -1
      end
      return 0, idiv(sat(now + tau, tat0), t), tat0, new_tat - tau
    end
    -- cost > L never fits (cost * T > tau): not computed, it could exceed 2^53.
    return 0, idiv(sat(now + tau, tat0), t), tat0, -1
  end,
  commit = function(s, now, cost, l, w)
    local t = gcra_params(l, w)
    s.tat = math.max(s.tat, now) + cost * t
  end,
  save = function(key, s, ttl)
    redis.call('SET', key, s.tat, 'PX', ttl)
  end,
  expires_at = function(s, l, w)
    return s.tat
  end,
} end

-- sliding_window ---------------------------------------------------------------------------------
MAKE.sliding_window = function()
local CHUNK = 128

return {
  -- Drops expired entries from the front (an expired entry is indistinguishable from an absent
  -- one, so this never changes a decision) and reads what peek needs.
  -- Reads only the oldest entry when nothing expired (the common case), then chunks that double
  -- from 8 to CHUNK entries while expired entries remain.
  load = function(key, now, w)
    local start = 0
    local first = redis.call('LINDEX', key, 0)
    if first and tonumber(first) + w <= now then
      local size = 8
      while true do
        local chunk = redis.call('LRANGE', key, start, start + size - 1)
        local k = 0
        for j = 1, #chunk do
          if tonumber(chunk[j]) + w <= now then
            k = j
          else
            break
          end
        end
        start = start + k
        if k < size then
          break
        end
        if size < CHUNK then
          size = size * 2
        end
      end
    end
    if start > 0 then
      redis.call('LTRIM', key, start, -1)
    end
    local n = redis.call('LLEN', key)
    local newest = nil
    if n > 0 then
      newest = tonumber(redis.call('LINDEX', key, -1))
    end
    return { key = key, n = n, newest = newest }
  end,
  peek = function(s, now, cost, l, w)
    local n = s.n
    if n + cost <= l then
      if cost == 0 then
        -- Nothing is added: the log's own expiry (load dropped the expired entries).
        local reset = now
        if s.newest ~= nil then
          reset = s.newest + w
        end
        return 1, l - n, reset, -1
      end
      local stamp = now
      if s.newest ~= nil then
        stamp = math.max(s.newest, now)
      end
      return 1, l - n - cost, stamp + w, -1
    end
    local retry = -1
    if cost <= l then
      local k = n + cost - l
      local t = num(redis.call('LINDEX', s.key, k - 1))
      if t ~= nil then
        retry = t + w
      end
    end
    local reset = now
    if s.newest ~= nil then
      reset = s.newest + w
    end
    return 0, sat(l, n), reset, retry
  end,
  commit = function(s, now, cost, l, w)
    local stamp = now
    if s.newest ~= nil then
      stamp = math.max(s.newest, now)
    end
    s.stamp = stamp
    s.push = cost
    s.newest = stamp
  end,
  save = function(key, s, ttl)
    local left = s.push
    while left > 0 do
      local m = math.min(left, 1000)
      local args = {}
      for j = 1, m do
        args[j] = s.stamp
      end
      redis.call('RPUSH', key, unpack(args))
      left = left - m
    end
    redis.call('PEXPIRE', key, ttl)
  end,
  expires_at = function(s, l, w)
    return s.newest + w
  end,
} end

-- sliding_window_counter -------------------------------------------------------------------------
MAKE.sliding_window_counter = function()
local function swc_view(s, now, w)
  local i = idiv(now, w)
  local e = now - i * w
  local p, k = 0, 0
  if s.w == i then
    p, k = s.p, s.c
  elseif s.w + 1 == i then
    p, k = s.c, 0
  end
  return i, p, k, e
end

-- W - min(floor(m W / d), W): when a weight of d units has shrunk to m (d >= 1)
local function swc_offset(m, d, w)
  if m >= d then
    return 0
  end
  local q = muldiv(m, w, 0, d)
  return w - q
end

local function swc_reset(i, p, k, w, now)
  if k > 0 then
    return (i + 2) * w
  elseif p > 0 then
    return (i + 1) * w
  end
  return now
end

return {
  load = function(key)
    local v = redis.call('HMGET', key, 'w', 'p', 'c')
    return { w = num(v[1]) or 0, p = num(v[2]) or 0, c = num(v[3]) or 0 }
  end,
  peek = function(s, now, cost, l, w)
    local i, p, k, e = swc_view(s, now, w)
    -- the previous window's weight, rounded up: ceil(p (W - e) / W)
    local q, r = muldiv(p, w - e, 0, w)
    local wp = q
    if r > 0 then
      wp = q + 1
    end
    local used = k + cost
    if used <= l and wp <= l - used then
      return 1, l - used - wp, swc_reset(i, p, used, w, now), -1
    end
    local remaining = sat(sat(l, k), wp)
    local retry = -1
    if cost > l then
      retry = -1
    elseif used <= l then
      retry = i * w + swc_offset(l - used, p, w)
    else
      retry = (i + 1) * w + swc_offset(l - cost, k, w)
    end
    return 0, remaining, swc_reset(i, p, k, w, now), retry
  end,
  commit = function(s, now, cost, l, w)
    local i, p, k = swc_view(s, now, w)
    s.w, s.p, s.c = i, p, k + cost
  end,
  save = function(key, s, ttl)
    redis.call('HSET', key, 'w', s.w, 'p', s.p, 'c', s.c)
    redis.call('PEXPIRE', key, ttl)
  end,
  expires_at = function(s, l, w)
    return (s.w + 2) * w
  end,
} end

-- token_bucket -----------------------------------------------------------------------------------
MAKE.token_bucket = function()
local function tb_refill(s, now, l, w)
  if not s.started then
    return l, 0
  end
  local d = math.min(sat(now, s.l), w)
  -- (d L + rem) / W and its remainder
  local q, r = muldiv(l, d, s.r, w)
  local tokens = s.t + q
  if tokens >= l then
    return l, 0
  end
  return tokens, r
end

-- ceil((need W - rem)^+ / L), with need W = q L + r (token_bucket.rs)
local function tb_time_for(need, rem, l, w)
  local q, r = muldiv(need, w, 0, l)
  if r >= rem then
    if r > rem then
      return q + 1
    end
    return q
  end
  return sat(q, idiv(rem - r, l))
end

return {
  load = function(key)
    local v = redis.call('HMGET', key, 't', 'l', 'r')
    local t = num(v[1])
    if t == nil then
      return { started = false, t = 0, l = 0, r = 0 }
    end
    return { started = true, t = t, l = num(v[2]) or 0, r = num(v[3]) or 0 }
  end,
  peek = function(s, now, cost, l, w)
    local tokens, rem = tb_refill(s, now, l, w)
    if tokens >= cost then
      local left = tokens - cost
      local rem_after = rem
      if left >= l then
        rem_after = 0
      end
      return 1, left, now + tb_time_for(l - left, rem_after, l, w), -1
    end
    local retry = -1
    if cost <= l then
      retry = now + tb_time_for(cost - tokens, rem, l, w)
    end
    return 0, tokens, now + tb_time_for(l - tokens, rem, l, w), retry
  end,
  commit = function(s, now, cost, l, w)
    local tokens, rem = tb_refill(s, now, l, w)
    s.t = tokens - math.min(cost, tokens)
    s.l = math.max(now, s.l)
    s.r = rem
    s.started = true
  end,
  save = function(key, s, ttl)
    redis.call('HSET', key, 't', s.t, 'l', s.l, 'r', s.r)
    redis.call('PEXPIRE', key, ttl)
  end,
  expires_at = function(s, l, w)
    return s.l + tb_time_for(l - math.min(s.t, l), s.r, l, w)
  end,
} end

-- the batch --------------------------------------------------------------------------------------
local n = #KEYS
if #ARGV ~= 1 + 5 * n then
  return redis.error_reply('ratewall: expected ' .. (1 + 5 * n) .. ' ARGV for ' .. n .. ' keys, got ' .. #ARGV)
end

local now
local skew_ms = 0
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
  skew_ms = 1000
  if now == nil or now < 0 or now ~= floor(now) then
    return redis.error_reply('ratewall: ARGV[1] (now) must be empty or a non-negative integer')
  end
end

local cells = {}
local reply = { 0, now }
local all = 1
local built = {}
for i = 1, n do
  local a = 5 * i - 4
  local name = ARGV[a + 1]
  local alg = built[name]
  if alg == nil and MAKE[name] ~= nil then
    alg = MAKE[name]()
    built[name] = alg
  end
  if alg == nil then
    return redis.error_reply('ratewall: unknown algorithm ' .. tostring(name))
  end
  local l = tonumber(ARGV[a + 2])
  local ws = tonumber(ARGV[a + 3])
  if l == nil or l < 1 or l > 4294967295 or l ~= floor(l)
    or ws == nil or ws < 1 or ws > 31622400 or ws ~= floor(ws) then
    return redis.error_reply('ratewall: bad limit or window for key ' .. KEYS[i])
  end
  local cost = tonumber(ARGV[a + 4])
  if cost == nil or cost < 0 or cost > 4294967295 or cost ~= floor(cost) then
    return redis.error_reply('ratewall: bad cost for key ' .. KEYS[i])
  end
  local shadow = ARGV[a + 5]
  if shadow ~= '0' and shadow ~= '1' then
    return redis.error_reply('ratewall: bad shadow flag for key ' .. KEYS[i])
  end
  local w = ws * 1000000
  local s = alg.load(KEYS[i], now, w)
  local ok, remaining, reset, retry = alg.peek(s, now, cost, l, w)
  if ok == 0 and shadow == '0' then
    all = 0
  end
  cells[i] = { alg = alg, s = s, l = l, w = w, cost = cost, ok = ok }
  local b = #reply
  reply[b + 1] = ok
  reply[b + 2] = remaining
  reply[b + 3] = reset
  reply[b + 4] = retry
end

if all == 1 then
  for i = 1, n do
    local c = cells[i]
    if c.ok == 1 and c.cost > 0 then
      c.alg.commit(c.s, now, c.cost, c.l, c.w)
      local ttl = cdiv(sat(c.alg.expires_at(c.s, c.l, c.w), now), 1000)
      if ttl < 1 then
        ttl = 1
      end
      c.alg.save(KEYS[i], c.s, ttl + skew_ms)
    end
  end
end
reply[1] = all
return reply
