"""A rate budget shared by every worker of one API key, on every machine, through Redis.

The 20 requests per second belong to the key, not to a process: N workers with a budget of
their own each would send N x 20. ``RedisBudget`` has ``RateBudget``'s interface and keeps
its promise across every process that shares the key: at most ``rate`` grants in any sliding
window of 1 s + margin, in a steady drip (``budget.drip_interval``). The algorithm (reserve a
slot in turn, sleep until it, claim it) is described in ``budget_file``; here each step is
one Lua script, which Redis runs atomically against its own clock (``TIME``), so neither the
workers' clocks nor their number matter.

Why not a token bucket such as ``aiolimiter.AsyncLimiter(rate, 1)``, locally or on Redis:
a bucket starts full, so ``rate`` requests leave at once and the bucket refills during the
next second while they still count, so nearly twice the rate fits in one sliding window
(39 were measured in one window with a 20/s bucket). The API counts a strict sliding
window, so the shared state is a log of the last grants (a sorted set), and the next slot
is never less than one window after the ``rate``-th latest.

What the ``redis`` package guarantees, and what it does not, for this promise:

* A Lua script runs atomically: no other command runs between its reads and writes, so two
  workers can never take the same slot. ``TIME`` and ``INFO`` in a writing script are fine
  since Redis 5 (scripts replicate by their effects); Redis 6.2 or newer is needed.
* ``register_script`` sends ``EVALSHA`` and loads the script again after ``NOSCRIPT``, as
  after a restart.
* The client's retries and reconnects decide nothing. redis-py re-sends a command that
  failed on a connection error or a timeout (up to 10 times by default), and from 8.2 it
  also replaces a pooled connection that died (a restart) before sending, so the client may
  never see an error across a restart. Whether the Redis that answers lost what was
  granted is therefore decided inside the script, on the server (``run_id``, uptime; the
  reply says ``cold`` when it paused for it), and a re-sent step is harmless: a reserve
  sent twice leaves one spent slot more (stricter), a claim sent twice grants the same
  member once more and moves its record later (the caller acts on one answer: one
  request), a slow-down halves once per pause, release and restamp are idempotent. The
  budget still turns the client's retries off (``Retry(NoBackoff(), 0)``) so that a
  failure reaches it at once and fails closed: only an answered "granted" is a grant, and
  while Redis does not answer nothing is granted.
* Redis promises nothing about keeping data: a restart without persistence, a failover to
  a replica that lags, or an eviction loses the recent grants. The script keeps the server's
  ``run_id`` in the state: when the state was written by another server, or is missing on
  a server that started less than a window ago, it waits one window before granting, since
  whatever was granted just before is unknown. Missing on a server up for longer means no
  grant in the last window (the log outlives its window), so a new key starts at once. Only
  a ``FLUSHALL`` or an eviction (``maxmemory`` with a ``volatile-*`` or ``allkeys-*``
  policy) could lose a live log without a restart: give the budget a Redis that does not
  evict.
* Keys carry a hash tag (``{...}``), so the script's three keys share one Redis Cluster slot.

Keys are named by the service's base URL (hashed) and the API key's fingerprint, never by
the key itself.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from styldod_batch.budget import WINDOW_MARGIN_S
from styldod_batch.budget_file import Reply, SharedBudget, budget_scope
from styldod_batch.errors import ConfigurationError

DEFAULT_KEY_PREFIX = "styldod-batch:budget"

# The same steps as budget_file.step, in Lua (Redis 6.2+: ZADD GT). Answers WAIT=0,
# GRANTED=1, DEFER=2 as budget_file does. KEYS: the log of grants and
# reservations (sorted set: member -> time), the state (hash), the workers with normal
# callers waiting (sorted set: worker -> expiry). Times are microseconds of Redis's clock.
# Numbers go to Redis as '%.0f' strings: Lua would print large ones in exponent form.
LUA = """
local grants, state, normal = KEYS[1], KEYS[2], KEYS[3]
local op, worker, member = ARGV[1], ARGV[2], ARGV[3]
local epoch_arg, low, others = tonumber(ARGV[4]), ARGV[5] == '1', ARGV[6] == '1'
local retry_after, rate_n = tonumber(ARGV[7]), tonumber(ARGV[8])
local window, recovery, tolerance = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local cold_pause, defer, normal_ttl = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local WAIT, GRANTED, DEFER = 0, 1, 2
local cap = math.max(1, math.floor(rate_n))

local function n(x) return string.format('%.0f', x) end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
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
  if s[1] or uptime_us < window then
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
-- The drip (budget.drip_interval): half of 1 / rate at the full rate, 1 / rate if slowed.
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
"""


def redact_url(url: str) -> str:
    """The URL for messages: any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        netloc = f"{user}:***@{host}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "(an unparsable URL)"


class RedisBudget(SharedBudget):
    """``RateBudget``'s interface, shared through Redis by every worker of one API key.

    ``async with RedisBudget(url, 20, base_url=..., api_key=...) as budget:`` (or ``open()``
    and ``close()``); ``open()`` raises ``ConfigurationError`` when Redis does not answer.
    Once open, a Redis that goes away stops the grants (nothing is sent) until it is back.
    """

    _transient = (
        RedisConnectionError,  # refused, reset, still loading after a restart
        RedisTimeoutError,
        ReadOnlyError,  # a replica, during a failover
        TryAgainError,
        ClusterDownError,
        OutOfMemoryError,
        OSError,
    )

    def __init__(
        self,
        url: str,
        rate: float,
        *,
        base_url: str,
        api_key: str | None,
        name: str = "api",
        key_prefix: str = DEFAULT_KEY_PREFIX,
        window_s: float = 1.0,
        margin_s: float = WINDOW_MARGIN_S,
        recovery_s: float = 10.0,
        tolerance_s: float | None = None,
        timeout_s: float = 2.0,
        client_retry: Retry | None = None,
    ) -> None:
        super().__init__(
            rate,
            window_s=window_s,
            margin_s=margin_s,
            recovery_s=recovery_s,
            tolerance_s=tolerance_s,
            cold_pause=True,
            name=name,
        )
        self._url = url
        self.timeout_s = timeout_s
        # None: no retries by the client (the module docstring says why any would be safe).
        self._client_retry = client_retry
        # The API key itself is not kept: only its fingerprint, inside the scope.
        self.scope = budget_scope(base_url, api_key, name)
        tag = f"{key_prefix}:{{{self.scope}}}"  # one hash tag: one cluster slot for all three
        self.keys = (f"{tag}:grants", f"{tag}:state", f"{tag}:normal")
        p = self.params
        self._constants = [
            repr(p.rate),
            str(p.window_us),
            str(p.recovery_us),
            str(p.tolerance_us),
            str(p.cold_pause_us),
            str(p.defer_us),
            str(p.normal_ttl_us),
        ]
        self._client: Redis | None = None
        self._script: AsyncScript | None = None

    def __repr__(self) -> str:
        return f"RedisBudget({self.describe()}, rate={self.nominal_rate}, scope={self.scope!r})"

    def describe(self) -> str:
        return f"Redis at {redact_url(self._url)}"

    async def _connect(self) -> None:
        try:
            client = Redis.from_url(
                self._url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                # Explicit, whatever the redis-py version's default: no silent re-sends, so a
                # failure reaches _obtain at once, which fails closed. (A re-send would be
                # safe too: the restart rule lives in the script.)
                retry=self._client_retry or Retry(NoBackoff(), 0),
                client_name=f"styldod-batch-budget-{self.worker}",
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"the shared budget's Redis URL {redact_url(self._url)} is invalid: {exc}"
            ) from exc
        try:
            await client.ping()
            self._script = client.register_script(LUA)
            await client.script_load(LUA)
        except (RedisError, OSError) as exc:
            await client.aclose()
            message = str(exc).replace(urlsplit(self._url).password or "\0", "***")
            raise ConfigurationError(
                f"the shared rate budget's Redis at {redact_url(self._url)} does not answer "
                f"({type(exc).__name__}: {message}); nothing is sent without it"
            ) from exc
        self._client = client

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _call(
        self,
        op: str,
        member: str,
        *,
        epoch: int = 0,
        low: bool = False,
        others_waiting: bool = False,
        retry_after_us: int = 0,
    ) -> Reply:
        if self._client is None or self._script is None:
            raise RedisConnectionError("the budget is closed")
        args = [
            op,
            self.worker,
            member,
            str(epoch),
            "1" if low else "0",
            "1" if others_waiting else "0",
            str(retry_after_us),
            *self._constants,
        ]
        raw = await self._script(keys=list(self.keys), args=args, client=self._client)
        status, wait_us, slot_us, new_epoch, rate, cold = raw
        return Reply(
            int(status), int(wait_us), int(slot_us), int(new_epoch), float(rate), bool(int(cold))
        )

    async def shared_state(self) -> dict[str, str]:
        """The shared state as Redis holds it (for status reports and tests)."""
        if self._client is None:
            raise RuntimeError("the budget is not open")
        raw = await self._client.hgetall(self.keys[1])
        return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
