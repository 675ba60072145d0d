"""The Lua script (Redis's budget) is the twin of ``step.step`` (the in-process and file
budgets): both run the same random schedules of steps, at the same times, from the same
state, and must answer the same and keep the same state, step for step. A change to one
that is not made to the other fails here."""

from __future__ import annotations

import dataclasses
import random

import pytest
import redis.asyncio as aioredis

from styldod_batch.budget.on_redis import LUA, RedisBudget, parse_reply
from styldod_batch.budget.step import (
    CLAIM,
    RELEASE,
    RESERVE,
    RESTAMP,
    SLOW_DOWN,
    US,
    WAIT,
    Reply,
    SharedState,
    step,
)
from tests.servers import RedisServer

WORKERS = ("w1", "w2", "w3")


async def lua_state(client: aioredis.Redis, keys: tuple[str, ...]) -> SharedState:
    grants_key, state_key, normal_key = keys
    raw = {text(k): text(v) for k, v in (await client.hgetall(state_key)).items()}
    grants = await client.zrange(grants_key, 0, -1, withscores=True)
    normal = await client.zrange(normal_key, 0, -1, withscores=True)
    return SharedState(
        boot=raw.get("boot", ""),
        epoch=int(raw.get("epoch", 0)),
        last=int(raw.get("last", 0)),
        paused=int(raw.get("paused", 0)),
        slowed=float(raw.get("slowed", 0)),
        slowed_at=int(raw.get("slowed_at", 0)),
        limited=int(raw.get("limited", 0)),
        grants={text(pair[0]): int(pair[1]) for pair in grants},
        normal={text(pair[0]): int(pair[1]) for pair in normal},
    )


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def same_reply(python: Reply, lua: Reply) -> bool:
    exact = python._replace(rate=0.0) == lua._replace(rate=0.0)
    return exact and lua.rate == pytest.approx(python.rate, rel=1e-12)


@pytest.mark.parametrize("seed", range(12))
async def test_the_lua_script_and_the_step_function_are_twins(
    redis_server: RedisServer, seed: int
) -> None:
    rng = random.Random(seed)
    rate = rng.choice([1.0, 3.5, 5.0, 20.0, 20.0])
    client = aioredis.Redis.from_url(redis_server.url)
    budget = RedisBudget(redis_server.url, rate, api_key=f"twin-{seed}", recovery_s=3.0)
    # No first-use pause: the Lua side's depends on Redis's uptime, the step's on nothing.
    budget.params = dataclasses.replace(budget.params, cold_pause_us=0)
    p = budget.params
    try:
        script = client.register_script(LUA)
        info = await client.info("server")
        boot = str(info["run_id"])
        state = SharedState()
        now = 10**15 + rng.randrange(US)
        reserved: dict[str, int] = {}  # member -> epoch, of reservations to claim
        granted: list[str] = []
        for number in range(80):
            now += rng.choice([0, 1, 500, 20_000, 25_000, 60_000, 300_000, 1_200_000])
            op = rng.choices(
                [RESERVE, CLAIM, RELEASE, RESTAMP, SLOW_DOWN], weights=[8, 8, 1, 2, 1]
            )[0]
            worker = rng.choice(WORKERS)
            member, epoch = f"{worker}:{number}", 0
            if op == CLAIM and reserved:
                member = rng.choice(sorted(reserved))
                worker, epoch = member.split(":")[0], reserved[member]
            elif op in (RELEASE, RESTAMP) and (reserved or granted):
                member = rng.choice(sorted(reserved) + granted)
                worker = member.split(":")[0]
            low = op == RESERVE and rng.random() < 0.2
            others = rng.random() < 0.5
            retry_after_us = rng.choice([0, 500_000, 2_000_000]) if op == SLOW_DOWN else 0
            budget.worker = worker
            args = budget.script_args(op, member, epoch, low, others, retry_after_us)
            lua = parse_reply(await script(keys=list(budget.keys), args=[*args, str(now)]))
            python = step(
                state,
                now,
                boot,
                p,
                op,
                worker=worker,
                member=member,
                epoch=epoch,
                low=low,
                others_waiting=others,
                retry_after_us=retry_after_us,
            )
            where = f"seed {seed}, step {number}: {op} {member} at {now}"
            assert same_reply(python, lua), f"{where}: step {python}, Lua {lua}"
            kept = await lua_state(client, budget.keys)
            assert kept.grants == state.grants, where
            assert kept.normal == state.normal, where
            assert (kept.epoch, kept.last, kept.paused, kept.limited) == (
                state.epoch,
                state.last,
                state.paused,
                state.limited,
            ), where
            assert kept.slowed == state.slowed and kept.slowed_at == state.slowed_at, where
            reserved.pop(member, None)
            if python.status == WAIT:
                reserved[member] = python.epoch
            elif op in (RESERVE, CLAIM) and python.slot_us:
                granted.append(member)
    finally:
        await client.aclose()
