-- The budget's step (step.py's ``step``) as one Redis script, run atomically on Redis's
-- own clock. tests/test_budget_twin.py holds the two to the same answers.
-- The same steps as step.step, in Lua (Redis 6.2+: ZADD GT). Answers WAIT=0,
-- GRANTED=1, DEFER=2 as step does. KEYS: the log of grants and
-- reservations (sorted set: member -> time), the state (hash), the workers with normal
-- callers waiting (sorted set: worker -> expiry). Times are microseconds of Redis's clock.
-- Numbers go to Redis as '%.0f' strings: Lua would print large ones in exponent form.
local grants, state, normal = KEYS[1], KEYS[2], KEYS[3]
local op, worker, member = ARGV[1], ARGV[2], ARGV[3]
local epoch_arg, low, others = tonumber(ARGV[4]), ARGV[5] == '1', ARGV[6] == '1'
local retry_after, rate_n = tonumber(ARGV[7]), tonumber(ARGV[8])
local window, recovery, tolerance = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local cold_pause, defer, normal_ttl = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local WAIT, GRANTED, DEFER = 0, 1, 2
local cap = math.max(1, math.floor(rate_n))

local function n(x) return string.format('%.0f', x) end

local now = tonumber(ARGV[15])  -- only tests give the time (the twin test); else Redis's
if not now then
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
end
local info = redis.call('INFO', 'server')
local boot = string.match(info, 'run_id:(%w+)')
local uptime_us = (tonumber(string.match(info, 'uptime_in_seconds:(%d+)')) or 0) * 1000000

local s = redis.call('HMGET', state, 'boot', 'epoch', 'last', 'paused', 'slowed', 'slowed_at',
                     'limited')
local epoch, last, paused = tonumber(s[2]) or 0, tonumber(s[3]) or 0, tonumber(s[4]) or 0
local slowed, slowed_at = tonumber(s[5]) or 0, tonumber(s[6]) or 0
local limited = tonumber(s[7]) or 0
local cold = 0  -- 1: the state was lost or foreign, and this step paused one window
if s[1] ~= boot then
  -- Written by another server (a restart that kept its data, a failover), or missing just
  -- after a start: whatever was granted just before is unknown, so wait. Missing on a
  -- server up for longer than a window: this key granted nothing in the last window.
  redis.call('DEL', grants, normal)
  epoch, last, paused, slowed, slowed_at = now, 0, 0, 0, 0
  if cold_pause > 0 and (s[1] or uptime_us < window) then
    paused = now + cold_pause
    cold = 1
  end
end
redis.call('ZREMRANGEBYSCORE', grants, '-inf', n(now - window))
redis.call('ZREMRANGEBYSCORE', normal, '-inf', n(now))

local function rate_now()
  if slowed <= 0 or slowed >= rate_n then return rate_n end
  return math.min(rate_n, slowed + (rate_n - slowed) * (now - slowed_at) / recovery)
end
local rate = rate_now()

local function finish(status, wait, at)
  redis.call('HSET', state, 'boot', boot, 'epoch', n(epoch), 'last', n(last),
             'paused', n(paused), 'slowed', string.format('%.17g', slowed),
             'slowed_at', n(slowed_at), 'limited', n(limited))
  redis.call('PEXPIRE', state, 86400000)
  local until_ms = math.ceil((math.max(last, paused, now) - now + window) / 1000) + 1000
  redis.call('PEXPIRE', grants, until_ms)
  redis.call('PEXPIRE', normal, until_ms + math.ceil(normal_ttl / 1000))
  return {status, wait, at, epoch, tostring(rate), cold}
end

local function mark(waiting_until)
  if waiting_until then
    redis.call('ZADD', normal, 'GT', n(waiting_until), worker)
  else
    redis.call('ZREM', normal, worker)
  end
end

if op == 'slow' then
  -- One halving per pause: the 429s of one burst arrive together.
  if now >= paused then
    slowed, slowed_at = math.max(rate / 2, math.min(1, rate_n)), now
  end
  paused = math.max(paused, now + retry_after)
  epoch = epoch + 1
  limited = limited + 1
  redis.call('ZREMRANGEBYSCORE', grants, '(' .. n(now), '+inf')
  local top = redis.call('ZRANGE', grants, -1, -1, 'WITHSCORES')
  last = tonumber(top[2]) or 0
  rate = rate_now()
  return finish(GRANTED, 0, 0)
end
if op == 'release' then
  redis.call('ZREM', grants, member)
  return finish(GRANTED, 0, 0)
end
if op == 'restamp' then
  -- Its request left late: count it from now, never earlier than it was.
  if redis.call('ZSCORE', grants, member) then redis.call('ZADD', grants, 'GT', n(now), member) end
  return finish(GRANTED, 0, now)
end
if op == 'claim' then
  local reserved = tonumber(redis.call('ZSCORE', grants, member))
  if epoch_arg == epoch and reserved then
    if now < reserved then return finish(WAIT, reserved - now, reserved) end
    if now - reserved <= tolerance then
      -- The promise, on the actual times: fewer than the cap others in the window ending now.
      local recent = redis.call('ZREVRANGEBYSCORE', grants, n(now), '(' .. n(now - window),
                                'WITHSCORES', 'LIMIT', 0, cap + 1)
      local seen = 0
      for i = 1, #recent, 2 do
        if recent[i] ~= member then
          seen = seen + 1
          if seen == cap then
            local later = tonumber(recent[i + 1]) + window
            redis.call('ZADD', grants, n(later), member)  -- its lateness counts from there
            last = math.max(last, later)
            return finish(WAIT, later - now, later)
          end
        end
      end
      -- The log gets the actual time; the drip goes on from the slot.
      redis.call('ZADD', grants, n(now), member)
      mark(others and now + normal_ttl)
      return finish(GRANTED, 0, now)
    end
  end
  -- Cancelled by a 429, lost, or too late: never sent, so dropping it is safe.
  redis.call('ZREM', grants, member)
end

-- Reserve (or a claim that must queue again).
if low then
  local mine = redis.call('ZSCORE', normal, worker) and 1 or 0
  if redis.call('ZCARD', normal) - mine > 0 then return finish(DEFER, defer, 0) end
end
-- The drip (core.drip_interval): half of 1 / rate at the full rate, 1 / rate if slowed.
local drip = 1000000 / rate
if rate >= rate_n then drip = 500000 / rate_n end
local t = math.max(now, paused, last + math.ceil(drip))
local top = redis.call('ZRANGE', grants, -1, -1, 'WITHSCORES')
if top[2] then t = math.max(t, tonumber(top[2])) end
if redis.call('ZCARD', grants) >= cap then
  local nth = redis.call('ZRANGE', grants, -cap, -cap, 'WITHSCORES')
  t = math.max(t, tonumber(nth[2]) + window)
end
redis.call('ZADD', grants, n(t), member)
last = t
if t <= now then
  mark(others and now + normal_ttl)
  return finish(GRANTED, 0, t)
end
if not low then mark(t + normal_ttl) end
return finish(WAIT, t - now, t)
