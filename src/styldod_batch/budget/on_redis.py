"""A rate budget shared by every worker of one API key, on every machine, through Redis.

The 20 requests per second belong to the key, not to a process: N workers with a budget of
their own each would send N x 20. ``RedisBudget`` has ``RateBudget``'s interface and keeps
its promise across every process that shares the key: at most ``rate`` grants in any sliding
window of 1 s + margin, in a steady drip (``core.drip_interval``). The algorithm (reserve a
slot in turn, sleep until it, claim it) is described in ``step``; here each step is one
Lua script, the twin of ``step.step``, which Redis runs atomically against its own clock
(``TIME``), so neither the workers' clocks nor their number matter.

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

Keys are named by the API key's fingerprint (``identity.budget_scope``), never by the key
itself, and not by the base URL: the 20 requests per second are the key's.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    MaxClientsReachedError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from styldod_batch.budget.core import WINDOW_MARGIN_S
from styldod_batch.budget.shared import SharedBudget
from styldod_batch.budget.step import Reply
from styldod_batch.errors import ConfigurationError
from styldod_batch.identity import budget_scope

DEFAULT_KEY_PREFIX = "styldod-batch:budget"

# The same steps as step.step, in Lua (Redis 6.2+: ZADD GT), beside it in the package.
LUA = (Path(__file__).parent / "step.lua").read_text()


class RedisBusy(RedisError):
    """Redis answered with a state that passes (it cannot write its snapshot, a script holds
    it, it is loading or has no primary): wait and ask again, sending nothing meanwhile."""


# The error replies of a server state that passes.
_PASSING_STATES = (
    "MISCONF",  # cannot write its snapshot (stop-writes-on-bgsave-error)
    "BUSY",  # a long script holds it
    "LOADING",
    "READONLY",  # a replica, during a failover
    "OOM",  # maxmemory with noeviction
    "MASTERDOWN",
    "NOREPLICAS",
    "TRYAGAIN",
    "CLUSTERDOWN",
)


_PASSING_CLASSES = (
    ReadOnlyError,
    OutOfMemoryError,
    BusyLoadingError,
    TryAgainError,
    ClusterDownError,
    MasterDownError,
)


def classify_response_error(exc: ResponseError, where: str) -> Exception:
    """A passing server state becomes ``RedisBusy`` (the budget waits and says so); any other
    error reply is misuse of this Redis (an ACL without EVALSHA, a key of another type):
    one clear line, never a traceback."""
    first = str(exc).split("\n", 1)[0].strip()
    # redis-py strips the code of the replies it has a class for (READONLY, OOM, LOADING...).
    if isinstance(exc, _PASSING_CLASSES) or first.upper().startswith(_PASSING_STATES):
        return RedisBusy(f"{type(exc).__name__}: {first}"[:160])
    if isinstance(exc, MaxClientsReachedError):
        return RedisBusy(first[:120])
    return ConfigurationError(f"the shared budget's {where} refused its script: {first[:200]}")


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

    ``async with RedisBudget(url, 20, api_key=...) as budget:`` (or ``open()``
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
        RedisBusy,  # MISCONF, BUSY, MASTERDOWN...: a server state that passes
        OSError,
    )

    def __init__(
        self,
        url: str,
        rate: float,
        *,
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
        self.scope = budget_scope(api_key, name)
        tag = f"{key_prefix}:{{{self.scope}}}"  # one hash tag: one cluster slot for all three
        self.keys = (f"{tag}:grants", f"{tag}:state", f"{tag}:normal")
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
        args = self.script_args(op, member, epoch, low, others_waiting, retry_after_us)
        try:
            raw = await self._script(keys=list(self.keys), args=args, client=self._client)
        except ResponseError as exc:
            raise classify_response_error(exc, self.describe()) from exc
        return parse_reply(raw)

    def script_args(
        self,
        op: str,
        member: str,
        epoch: int = 0,
        low: bool = False,
        others_waiting: bool = False,
        retry_after_us: int = 0,
    ) -> list[str]:
        """The script's ARGV for one step (a test may append a time, ARGV[15])."""
        p = self.params
        return [
            op,
            self.worker,
            member,
            str(epoch),
            "1" if low else "0",
            "1" if others_waiting else "0",
            str(retry_after_us),
            repr(p.rate),
            str(p.window_us),
            str(p.recovery_us),
            str(p.tolerance_us),
            str(p.cold_pause_us),
            str(p.defer_us),
            str(p.normal_ttl_us),
        ]

    async def shared_state(self) -> dict[str, str]:
        """The shared state as Redis holds it (for status reports and tests)."""
        if self._client is None:
            raise RuntimeError("the budget is not open")
        raw = await self._client.hgetall(self.keys[1])
        return {_text(k): _text(v) for k, v in raw.items()}


def parse_reply(raw: list[bytes | int | str]) -> Reply:
    status, wait_us, slot_us, new_epoch, rate, cold = raw
    return Reply(
        int(status), int(wait_us), int(slot_us), int(new_epoch), float(rate), bool(int(cold))
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
