"""The budget's one algorithm: one atomic step on a shared state (``step``).

Every budget runs these steps: the in-process one on a state in memory (``memory``), the
machine's on a state file under ``flock`` (``on_file``), every machine's in Redis, where
the Lua script in ``on_redis`` is this function's twin (``tests/test_budget_twin.py`` runs
both on the same random schedules, so they cannot drift).

How a grant is made. The shared state holds a log of recent grant and reservation times,
the time of the latest one (``last``), a pause, a slowed rate and an ``epoch``; every step
reads the coordinator's own clock, so the workers' clocks never matter.

1. **Reserve.** The caller gets the next free slot ``t = max(now, pause end, last + drip,
   the rate-th latest entry + window)``, written to the log at once. Slots are handed out
   in arrival order, so workers queue first come, first served, and each then sleeps until
   its own slot: no polling, no thundering herd. A slot that is ``now`` is a grant at once.
2. **Claim.** Woken at its slot, the caller asks again. The window is checked once more on
   the actual times (fewer than ``rate`` others in the window ending now: an earlier
   caller's late claim can make it wait a little longer) and the entry is re-stamped with
   the actual time: that is the grant. So the promise holds on the coordinator's clock for
   the whole window + margin, and the margin is left for the trip to the API. A claim more
   than ``tolerance`` after its slot (a stalled event loop) gives the slot up and queues
   again, which keeps the drip steady.
3. A reservation never claimed (its worker died, or lost the answer) stays in the log as
   if it had been sent: it costs a slot, never the promise. Dropping an unclaimed one is
   always safe, since nothing was sent for it: a cancelled caller gives its slot back.

A 429 seen by any worker pauses everyone: the pause and the halved rate go into the state,
the epoch moves on (so reservations made before the 429 are cancelled at their claim) and
future reservations are dropped. The rate recovers linearly over ``recovery_s``. 429s that
arrive during a pause (one burst answered together) extend it without halving again.

Low priority (order polling): a low-priority caller reserves nothing while another worker
has normal callers waiting (each worker registers itself in the state, with an expiry,
while it has normal callers waiting).

A state that is lost or was written by another coordinator (``boot`` differs: a restarted
Redis, a reboot) cannot tell what was granted just before: with ``cold_pause_us`` set, the
first grant after it waits one window, and the reply says ``cold``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import orjson

# What a step answers.
WAIT = 0  # a slot is reserved: sleep ``wait_us``, then claim it
GRANTED = 1  # send now
DEFER = 2  # low priority and normal callers are waiting elsewhere: ask again in ``wait_us``

# What a step does.
RESERVE = "reserve"
CLAIM = "claim"
RELEASE = "release"
RESTAMP = "restamp"
SLOW_DOWN = "slow"

US = 1_000_000


class Reply(NamedTuple):
    status: int  # WAIT, GRANTED or DEFER
    wait_us: int
    slot_us: int
    epoch: int
    rate: float  # the shared current rate
    # The coordinator found its state lost or written by another server (a restart, a
    # failover) and started over with one window's pause: decided on the coordinator's side,
    # whatever the client library did with the connection.
    cold: bool = False


@dataclass(frozen=True, slots=True)
class Params:
    """The constants of one budget, sent with every step."""

    rate: float
    window_us: int  # the window plus the margin
    recovery_us: int
    tolerance_us: int
    cold_pause_us: int  # after the state was lost
    defer_us: int
    normal_ttl_us: int = US

    @property
    def cap(self) -> int:
        return max(1, int(self.rate))


@dataclass(slots=True)
class SharedState:
    """The shared state, as the file backend stores it (the Redis backend keeps the same in
    a hash and two sorted sets). Times are microseconds of the coordinator's clock."""

    boot: str = ""
    epoch: int = 0
    last: int = 0
    paused: int = 0
    slowed: float = 0.0
    slowed_at: int = 0
    limited: int = 0
    grants: dict[str, int] = field(default_factory=dict)  # member: time (sent or reserved)
    normal: dict[str, int] = field(default_factory=dict)  # worker: expiry

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "boot": self.boot,
                "epoch": self.epoch,
                "last": self.last,
                "paused": self.paused,
                "slowed": self.slowed,
                "slowed_at": self.slowed_at,
                "limited": self.limited,
                "grants": self.grants,
                "normal": self.normal,
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> SharedState:
        raw = orjson.loads(data)
        return cls(
            boot=str(raw["boot"]),
            epoch=int(raw["epoch"]),
            last=int(raw["last"]),
            paused=int(raw["paused"]),
            slowed=float(raw["slowed"]),
            slowed_at=int(raw["slowed_at"]),
            limited=int(raw["limited"]),
            grants={str(k): int(v) for k, v in raw["grants"].items()},
            normal={str(k): int(v) for k, v in raw["normal"].items()},
        )


def drip_us(rate: float, nominal_rate: float) -> int:
    """``core.drip_interval`` in whole microseconds, computed as the Lua twin computes it (the
    same float operations, so the two never round apart)."""
    if rate >= nominal_rate:
        return math.ceil(500_000 / nominal_rate)
    return math.ceil(US / rate)


def current_rate(state: SharedState, now: int, p: Params) -> float:
    if state.slowed <= 0 or state.slowed >= p.rate:
        return p.rate
    regained = (p.rate - state.slowed) * (now - state.slowed_at) / p.recovery_us
    return min(p.rate, state.slowed + regained)


def step(
    state: SharedState,
    now: int,
    boot: str,
    p: Params,
    op: str,
    *,
    worker: str,
    member: str,
    epoch: int = 0,
    low: bool = False,
    others_waiting: bool = False,
    retry_after_us: int = 0,
) -> Reply:
    """One atomic step on the shared state (the module docstring tells the algorithm).

    ``others_waiting``: the worker still has normal callers waiting after this one. The
    reply is ``cold`` when the step found the state lost or foreign and started it over.
    """
    cold = state.boot != boot and p.cold_pause_us > 0
    reply = _step(
        state,
        now,
        boot,
        p,
        op,
        worker=worker,
        member=member,
        epoch=epoch,
        low=low,
        others_waiting=others_waiting,
        retry_after_us=retry_after_us,
    )
    return reply._replace(cold=True) if cold else reply


def _step(
    state: SharedState,
    now: int,
    boot: str,
    p: Params,
    op: str,
    *,
    worker: str,
    member: str,
    epoch: int = 0,
    low: bool = False,
    others_waiting: bool = False,
    retry_after_us: int = 0,
) -> Reply:
    if state.boot != boot:
        # Unknown or lost state: whatever was granted just before is unknown, so wait.
        state.grants.clear()
        state.normal.clear()
        state.boot, state.epoch, state.last = boot, now, 0
        state.paused = now + p.cold_pause_us if p.cold_pause_us else 0
        state.slowed, state.slowed_at = 0.0, 0
    cutoff = now - p.window_us
    state.grants = {m: t for m, t in state.grants.items() if t > cutoff}
    state.normal = {w: e for w, e in state.normal.items() if e > now}
    rate = current_rate(state, now, p)

    if op == SLOW_DOWN:
        if now >= state.paused:
            state.slowed = max(rate / 2, min(1.0, p.rate))
            state.slowed_at = now
        state.paused = max(state.paused, now + retry_after_us)
        state.epoch += 1
        state.limited += 1
        state.grants = {m: t for m, t in state.grants.items() if t <= now}
        state.last = max(state.grants.values(), default=0)
        return Reply(GRANTED, 0, 0, state.epoch, current_rate(state, now, p))
    if op == RELEASE:
        state.grants.pop(member, None)
        return Reply(GRANTED, 0, 0, state.epoch, rate)
    if op == RESTAMP:
        # Its request left late: count it from now, never earlier than it was.
        if member in state.grants:
            state.grants[member] = max(state.grants[member], now)
        return Reply(GRANTED, 0, now, state.epoch, rate)
    if op == CLAIM:
        reserved = state.grants.get(member)
        if epoch == state.epoch and reserved is not None:
            if now < reserved:
                return Reply(WAIT, reserved - now, reserved, epoch, rate)
            if now - reserved <= p.tolerance_us:
                # The promise, checked on the actual times: fewer than the cap others in the
                # window ending now. (An earlier caller's late claim can make this wait.)
                recent = sorted(
                    (
                        t
                        for m, t in state.grants.items()
                        if m != member and now - p.window_us < t <= now
                    ),
                    reverse=True,
                )
                if len(recent) >= p.cap:
                    later = recent[p.cap - 1] + p.window_us
                    state.grants[member] = later  # moved: its lateness counts from there
                    state.last = max(state.last, later)
                    return Reply(WAIT, later - now, later, epoch, rate)
                # The log gets the actual time (the window counts it); the drip goes on
                # from the slot, so latency does not add up from grant to grant.
                state.grants[member] = now
                _granted(state, now, p, worker, others_waiting)
                return Reply(GRANTED, 0, now, epoch, rate)
        # Cancelled by a 429, lost, or too late: never sent, so dropping it is safe.
        state.grants.pop(member, None)

    # RESERVE (or a claim that must queue again).
    if low and any(w != worker for w in state.normal):
        return Reply(DEFER, p.defer_us, 0, state.epoch, rate)
    t = max(now, state.paused, state.last + drip_us(rate, p.rate))
    if state.grants:
        # Never before a logged time (a late claim, at high rates), and never the cap-th
        # within one window: then no window ending at t or later holds more than the cap.
        times = sorted(state.grants.values())
        t = max(t, times[-1])
        if len(times) >= p.cap:
            t = max(t, times[-p.cap] + p.window_us)
    state.grants[member] = t
    state.last = t
    if t <= now:
        _granted(state, now, p, worker, others_waiting)
        return Reply(GRANTED, 0, t, state.epoch, rate)
    if not low:
        state.normal[worker] = max(state.normal.get(worker, 0), t + p.normal_ttl_us)
    return Reply(WAIT, t - now, t, state.epoch, rate)


def _granted(state: SharedState, now: int, p: Params, worker: str, others_waiting: bool) -> None:
    if others_waiting:
        state.normal[worker] = max(state.normal.get(worker, 0), now + p.normal_ttl_us)
    else:
        state.normal.pop(worker, None)
