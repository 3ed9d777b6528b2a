"""The Lua scripts of the shared budget (see ``redis_budget.py`` for the rules).

Each runs atomically in Redis and reads the time from Redis (``TIME``). State of
one budget, in the hash ``KEYS[1]`` (numbers as ``%.17g`` strings, seconds on
Redis' clock)::

    learned_rpm, learned_tpm   limits announced by responses (learn())
    req, tok                   bucket levels at ``ts`` (negative: owed)
    ts                         when the levels were last brought up to date
    closed_until               the shared cool-down ends here
    cooldowns                  cool-downs started so far
    next_wake                  when the last queued waiter was told to come back

The process registry is a sorted set (process id -> last heartbeat).
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "COOLING", "COOL_DOWN", "CORRECT", "REGISTER"]

# Shared by the scripts that touch the levels: read the state, refill to now.
# ARGV[1..5] of every such script: rpm ceiling, tpm ceiling (0: none), headroom, burst_s,
# seconds the state outlives its last use.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HMGET', KEYS[1], 'closed_until', 'learned_rpm', 'learned_tpm',
                     'req', 'tok', 'ts', 'cooldowns', 'next_wake')
local closed_until = tonumber(s[1]) or 0
local headroom = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local ts = tonumber(s[6]) or now
local elapsed = math.max(0, now - ts)
local function limit(ceiling, learned)
  ceiling = tonumber(ceiling) or 0
  learned = tonumber(learned) or 0
  if ceiling > 0 and learned > 0 then return math.min(ceiling, learned) end
  if ceiling > 0 then return ceiling end
  if learned > 0 then return learned end
  return nil
end
local function bucket(per_minute, stored)
  if not per_minute then return nil end
  local rate = per_minute / 60 * headroom
  local cap = math.max(1, rate * burst)
  local level = tonumber(stored)
  if level == nil then level = cap end
  return {rate = rate, cap = cap, level = math.min(cap, level + elapsed * rate)}
end
local rpm = limit(ARGV[1], s[2])
local tpm = limit(ARGV[2], s[3])
local req = bucket(rpm, s[4])
local tok = bucket(tpm, s[5])
local function num(x) return string.format('%.17g', x) end
local function save(new_ts)
  local fields = {'ts', num(new_ts)}
  if req then table.insert(fields, 'req'); table.insert(fields, num(req.level)) end
  if tok then table.insert(fields, 'tok'); table.insert(fields, num(tok.level)) end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
end
local function show(x) if x then return num(x) end return '' end
"""

# ARGV[6], ARGV[7]: requests and tokens to charge; ARGV[8]: 1 to take a place in the
# queue of waiters when refused, 0 only to ask. Returns {wait_us, rpm, tpm}: wait_us 0 =
# admitted and charged. A queued waiter is told to come back when the bucket will hold
# enough for it after everyone queued before it ('next_wake' is the last place given),
# so waiters of many processes come back one after the other instead of all at once.
ACQUIRE = (
    _PRELUDE
    + """
if now < closed_until then
  return {math.ceil((closed_until - now) * 1000000), show(rpm), show(tpm)}
end
local requests = tonumber(ARGV[6])
local tokens = tonumber(ARGV[7])
local wait = 0
local step = 0
if req and requests > 0 then
  local need = math.min(requests, req.cap)
  step = need / req.rate
  if req.level < need then wait = math.max(wait, (need - req.level) / req.rate) end
end
if tok and tokens > 0 then
  local need = math.min(tokens, tok.cap)
  step = math.max(step, need / tok.rate)
  if tok.level < need then wait = math.max(wait, (need - tok.level) / tok.rate) end
end
if wait > 0 then
  if ARGV[8] == '1' then
    local wake = math.max(now + wait, (tonumber(s[8]) or 0) + step)
    redis.call('HSET', KEYS[1], 'next_wake', num(wake))
    wait = wake - now
  end
  return {math.max(1, math.ceil(wait * 1000000)), show(rpm), show(tpm)}
end
if req then req.level = req.level - requests end
if tok then tok.level = tok.level - tokens end
save(math.max(now, ts))
return {0, show(rpm), show(tpm)}
"""
)

# ARGV[6]: tokens to charge (> 0) or refund (< 0). Returns the token level after.
CORRECT = (
    _PRELUDE
    + """
if not tok then return '' end
tok.level = math.min(tok.cap, tok.level - tonumber(ARGV[6]))
save(math.max(now, ts))
return num(tok.level)
"""
)

# ARGV[6]: seconds. Empties both buckets until the budget reopens.
# Returns {started (1/0), remaining_us, cooldowns}.
COOL_DOWN = (
    _PRELUDE
    + """
local started = 0
local cooldowns = tonumber(s[7]) or 0
if closed_until <= now then
  started = 1
  cooldowns = cooldowns + 1
end
local until_ = math.max(closed_until, now + tonumber(ARGV[6]))
if req then req.level = 0 end
if tok then tok.level = 0 end
redis.call('HSET', KEYS[1], 'closed_until', num(until_), 'cooldowns', cooldowns)
save(until_)
return {started, math.ceil((until_ - now) * 1000000), cooldowns}
"""
)

# Returns the microseconds until the budget reopens (0: open).
COOLING = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local closed_until = tonumber(redis.call('HGET', KEYS[1], 'closed_until')) or 0
return math.max(0, math.ceil((closed_until - now) * 1000000))
"""

# ARGV: process id, ttl_s. Returns the processes seen within ttl_s (this one included).
REGISTER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('EXPIRE', KEYS[1], math.ceil(ttl * 2))
return redis.call('ZCARD', KEYS[1])
"""
