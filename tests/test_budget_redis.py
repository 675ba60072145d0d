"""``RedisBudget`` against a real Redis on 127.0.0.1, shared by real worker processes that
send real requests to a recording server (the workers and checks of ``test_budget_file``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.exceptions import (
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)

from styldod_batch.budget import sent_trace
from styldod_batch.budget.on_redis import (
    RedisBudget,
    RedisBusy,
    classify_response_error,
    redact_url,
)
from styldod_batch.errors import ConfigurationError
from styldod_batch.sandbox.requestlog import most_in_window
from tests.servers import RedisServer
from tests.test_budget_file import (
    RATE,
    Recorder,
    assert_coordinator_kept_the_promise,
    check_a_429_in_one_process_pauses_all,
    check_low_priority_yields_across_processes,
    check_many_processes_share_the_rate,
    recording_server,
    report,
    spec_for,
    wait_until,
    workers,
)

API_KEY = "test-key-shared"  # spec_for's: the workers share this key's budget


def budget_for(url: str, *, api_key: str = API_KEY, rate: float = RATE) -> RedisBudget:
    return RedisBudget(url, rate, api_key=api_key)


async def warm_up(url: str) -> None:
    """On a Redis started less than a window ago, a key's first grant waits one window (what
    was granted just before is unknown); take it here, while the workers start, so their
    measured seconds are all steady state."""
    async with budget_for(url) as budget:
        await budget.acquire()


async def test_processes_share_a_redis_budget(redis_server: RedisServer) -> None:
    url = redis_server.url
    await check_many_processes_share_the_rate("redis", url, warm_up(url))


async def test_a_429_pauses_every_process_of_a_redis_budget(redis_server: RedisServer) -> None:
    url = redis_server.url
    await check_a_429_in_one_process_pauses_all("redis", url, warm_up(url))


async def test_low_priority_yields_across_processes_of_a_redis_budget(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url
    await check_low_priority_yields_across_processes("redis", url, warm_up(url))


async def test_redis_restarted_mid_run_keeps_the_promise_and_grants_resume(
    redis_server: RedisServer,
) -> None:
    """Redis crashes (SIGKILL) and comes back empty while three processes are busy: nothing
    is granted while it is down, the first grant after it waits one window (what was
    granted just before is lost), no window holds more than the rate, and grants resume."""
    async with recording_server(Recorder()) as server, workers() as group:
        specs = [spec_for("redis", redis_server.url, server.url) for _ in range(3)]
        await group.start(specs, warm_up(redis_server.url))
        began, end_at = group.go(4.0)
        await wait_until(lambda: len(server.arrivals) >= 20)
        stopped_at = time.monotonic()
        await redis_server.stop(kill=True)
        await redis_server.start()
        started_at = time.monotonic()
        results = await group.results()
    report("redis restarted", server.arrivals, began, end_at)
    assert most_in_window(server.arrivals) <= RATE
    # (The coordinator's clock is Redis's: across a restart, grants before and after are
    # on the same machine's clock.)
    assert_coordinator_kept_the_promise(results)
    grants = sorted(t for r in results for t in r.grants)
    # A claim answered just before the kill may be recorded a moment after it.
    assert [t for t in grants if stopped_at + 0.01 < t < started_at + 1.0] == []
    resumed = [t for t in grants if t >= started_at + 1.0]
    assert len(resumed) >= 10
    # Redis itself told the budget it had lost its state (whatever the client library saw).
    assert sum(r.coordinator_restarts for r in results) >= 1


async def test_redis_restarted_under_clients_that_retry_silently(
    redis_server: RedisServer,
) -> None:
    """The same crash, with clients that retry every connection failure by themselves for
    seconds (the budget never sees an error): the rule that a restarted Redis waits one
    window lives in the script, so a strict server still sees at most the rate in any second
    and refuses nothing, and the grants resume."""
    recorder = Recorder(limit=RATE)
    async with recording_server(recorder) as server, workers() as group:
        specs = [
            spec_for("redis", redis_server.url, server.url, client_retry="silent") for _ in range(3)
        ]
        await group.start(specs, warm_up(redis_server.url))
        began, end_at = group.go(4.0)
        await wait_until(lambda: len(server.arrivals) >= 20)
        stopped_at = time.monotonic()
        await redis_server.stop(kill=True)
        await redis_server.start()
        started_at = time.monotonic()
        results = await group.results()
    report("redis restarted, silent retries", server.arrivals, began, end_at)
    assert sum(r.coordinator_errors for r in results) == 0  # the clients hid the restart
    assert sum(r.coordinator_restarts for r in results) >= 1  # Redis did not
    assert most_in_window(server.arrivals) <= RATE
    assert recorder.refused == 0
    assert all(status == 200 for r in results for status in r.statuses)
    assert_coordinator_kept_the_promise(results)
    grants = sorted(t for r in results for t in r.grants)
    assert [t for t in grants if stopped_at + 0.01 < t < started_at + 1.0] == []
    assert len([t for t in grants if t >= started_at + 1.0]) >= 10


async def test_a_worker_sends_nothing_while_redis_is_down(redis_server: RedisServer) -> None:
    async with budget_for(redis_server.url) as budget:
        await budget.acquire()
        await redis_server.stop()
        waiter = asyncio.create_task(budget.acquire())
        await wait_until(lambda: budget.coordinator_errors >= 3)
        assert not waiter.done()  # fail closed: no grant without Redis
        await redis_server.start()
        await asyncio.wait_for(waiter, 30)
        assert budget.granted == 2


async def test_redis_down_at_open_is_a_clear_error_without_the_password(
    redis_server: RedisServer,
) -> None:
    await redis_server.stop()
    url = f"redis://:hunter2-secret@127.0.0.1:{redis_server.port}/0"
    with pytest.raises(ConfigurationError) as caught:
        await budget_for(url).open()
    message = str(caught.value)
    assert f"redis://:***@127.0.0.1:{redis_server.port}/0" in message
    assert "does not answer" in message
    assert "hunter2" not in message
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


async def test_acquire_before_open_is_refused(redis_server: RedisServer) -> None:
    with pytest.raises(RuntimeError, match="not open"):
        await budget_for(redis_server.url).acquire()


async def test_redis_holds_fingerprints_never_the_key(redis_server: RedisServer) -> None:
    secret = "sk-live-do-not-store"
    async with budget_for(redis_server.url, api_key=secret) as budget:
        await budget.acquire()
        await budget.acquire()
        budget.slow_down(0.01)
        await budget.flush()
        assert (await budget.shared_state())["limited"] == "1"
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        keys = await client.keys("*")
        assert keys
        assert all(secret.encode() not in key for key in keys)
        for key in keys:
            kind = await client.type(key)
            if kind == b"hash":
                dumped = repr(await client.hgetall(key))
            else:
                dumped = repr(await client.zrange(key, 0, -1, withscores=True))
            assert secret not in dumped
    finally:
        await client.aclose()


async def test_budgets_of_two_keys_are_apart(redis_server: RedisServer) -> None:
    """Another key has a budget of its own: its grants are logged, and counted, apart."""
    async with (
        budget_for(redis_server.url, api_key="key-a") as a,
        budget_for(redis_server.url, api_key="key-b") as b,
    ):
        await asyncio.gather(*(x.acquire() for x in (a, a, a, b, b)))
        assert a.scope != b.scope
        assert set(a.keys).isdisjoint(b.keys)
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            assert await client.zcard(a.keys[0]) == 3
            assert await client.zcard(b.keys[0]) == 2
        finally:
            await client.aclose()


async def test_a_new_key_waits_a_window_only_on_a_redis_started_within_one(
    redis_server: RedisServer,
) -> None:
    """A key with no state on a Redis that started less than a window ago may have lost
    grants made just before (a restart): its first grant waits a window. On a Redis up for
    longer, no state means no grant in the last window: the first grant goes at once."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await redis_server.restart()
        restarted_at = time.monotonic()
        async with budget_for(redis_server.url, api_key="key-after-restart") as budget:
            await budget.acquire()
            state = await budget.shared_state()
            assert int(state["paused"]) == int(state["epoch"]) + budget.params.cold_pause_us
        await asyncio.sleep(max(0.0, restarted_at + 2.1 - time.monotonic()))
        assert int((await client.info("server"))["uptime_in_seconds"]) >= 2
        async with budget_for(redis_server.url, api_key="key-long-after") as budget:
            await budget.acquire()
            assert (await budget.shared_state())["paused"] == "0"
    finally:
        await client.aclose()


@pytest.mark.parametrize("late", ["before the headers", "in the body's first read"])
async def test_a_request_that_leaves_late_has_its_grant_restamped(
    redis_server: RedisServer, late: str
) -> None:
    """A request that leaves well after its grant (60 ms here: opening a connection under
    load, or a file's first read, can take that long) moves its record in the shared log to
    when it left, so the next grants count from there."""

    async def slow_to_leave(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        await asyncio.sleep(0.06)
        return await handler(request)

    async def slow_body() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.06)
        yield b"photo"

    client = aioredis.Redis.from_url(redis_server.url)
    try:
        async with (
            recording_server(Recorder()) as server,
            budget_for(redis_server.url) as budget,
            aiohttp.ClientSession(trace_configs=[sent_trace()]) as session,
        ):
            if late == "before the headers":
                request = session.get(server.url, middlewares=(budget.middleware(), slow_to_leave))
            else:
                request = session.put(
                    server.url, data=slow_body(), middlewares=(budget.middleware(),)
                )
            async with request as resp:
                assert resp.status == 200
            granted_us = budget.last_grant_us
            await budget.flush()  # the re-stamp is sent beside the request
            assert budget.restamped >= 1  # twice when the headers were late too
            log = await client.zrange(budget.keys[0], 0, -1, withscores=True)
        assert len(log) == 1
        assert float(log[0][1]) - granted_us >= 55_000
    finally:
        await client.aclose()


async def _waits_then_resumes(budget: RedisBudget, clear: Callable[[], Awaitable[object]]) -> None:
    waiter = asyncio.create_task(budget.acquire())
    await wait_until(lambda: budget.coordinator_errors >= 2)
    assert not waiter.done()  # fail closed, and no traceback: it waits
    await clear()
    await asyncio.wait_for(waiter, 30)


async def test_a_redis_that_is_busy_full_or_read_only_is_waited_for(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """BUSY (a long script) and READONLY (a replica) are states that pass: the budget sends
    nothing, says so in one line, and goes on when they pass. (Each ended the run with a
    traceback.) MISCONF and OOM are classified by ``test_passing_states_are_transient``:
    a script that has written once may write on under OOM, so Redis lets this one run.)"""
    admin = aioredis.Redis.from_url(redis_server.url)
    async with budget_for(redis_server.url) as budget:
        await budget.acquire()

        # READONLY: the server became a replica (of nobody reachable).
        await admin.replicaof("127.0.0.1", "1")
        await _waits_then_resumes(budget, lambda: admin.replicaof("NO", "ONE"))

        # BUSY: another client's script holds the server.
        await admin.config_set("busy-reply-threshold", "50")
        blocker = aioredis.Redis.from_url(redis_server.url)
        spin = asyncio.ensure_future(blocker.eval("while true do end", 0))
        await asyncio.sleep(0.2)
        killer = aioredis.Redis.from_url(redis_server.url)
        await _waits_then_resumes(budget, lambda: killer.script_kill())
        with contextlib.suppress(Exception):
            await spin
        for client in (blocker, killer):
            await client.aclose()
    await admin.aclose()
    said = [r.getMessage() for r in caplog.records if "not ready" in r.getMessage()]
    assert any("read only" in m for m in said) and any("BUSY" in m for m in said), said
    assert all(r.exc_info is None for r in caplog.records)


async def test_a_redis_that_refuses_the_script_is_one_clear_line(
    redis_server: RedisServer,
) -> None:
    """An error reply that is not a passing state (here an ACL user without EVALSHA) is
    misuse: one ConfigurationError naming Redis and its words."""
    admin = aioredis.Redis.from_url(redis_server.url)
    await admin.acl_setuser(
        "noscript",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        commands=["+@all", "-evalsha", "-eval"],
    )
    url = redis_server.url.replace("redis://", "redis://noscript:pw@")
    budget = budget_for(url)
    with pytest.raises(ConfigurationError) as caught:
        async with budget:
            await budget.acquire()
    assert "NOPERM" in str(caught.value) or "permission" in str(caught.value).lower()
    assert "pw@" not in str(caught.value)
    await admin.aclose()


@pytest.mark.parametrize(
    "reply",
    [
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist",
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
        "OOM command not allowed when used memory > 'maxmemory'.",
        "READONLY You can't write against a read only replica.",
        "LOADING Redis is loading the dataset in memory",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    ],
)
def test_passing_states_are_transient(reply: str) -> None:
    classified = classify_response_error(ResponseError(reply), "Redis at x")
    assert isinstance(classified, RedisBusy)
    code, message = reply.split(" ", 1)
    mapped: dict[str, type[ResponseError]] = {"OOM": OutOfMemoryError, "READONLY": ReadOnlyError}
    if code in mapped:  # as redis-py raises it: its own class, the code stripped
        assert isinstance(classify_response_error(mapped[code](message), "R"), RedisBusy)
    assert isinstance(classified, RedisBudget._transient)
    misuse = classify_response_error(ResponseError("WRONGTYPE Operation against a key"), "R")
    assert isinstance(misuse, ConfigurationError)
