"""The test servers themselves: real Redis and PostgreSQL on 127.0.0.1 that answer, survive a
restart on the same URL, die with the test process and leave nothing behind."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.helpers import REPO
from tests.servers import (
    PostgresServer,
    RedisServer,
    remove_postgres_leftovers,
    server_versions,
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still has a pid; it is dead all the same.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


async def _wait_dead(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still alive after {timeout} s"
        await asyncio.sleep(0.02)


async def test_redis_answers_and_loses_its_keys_on_restart(redis_server: RedisServer) -> None:
    assert redis_server.url.startswith("redis://127.0.0.1:")
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.set("k", "v")
        assert await client.get("k") == b"v"
        old_pid = redis_server.pid
        await redis_server.restart()
        assert redis_server.pid != old_pid
        # The pool's connection died with the old server. redis-py before 8.2 fails the next
        # command once and then reconnects; 8.2 and later replace the dead connection before
        # sending, silently. Either way, what the test is about: the new server is empty.
        try:
            value = await client.get("k")
        except RedisConnectionError:
            value = await client.get("k")
        assert value is None  # no persistence: a restart is a cold cache
        await redis_server.stop()
        with pytest.raises(RedisConnectionError):
            await client.ping()
        await redis_server.start()
        assert await client.ping()
    finally:
        await client.aclose()


async def test_postgres_answers_and_keeps_its_data_over_a_restart(
    postgres_server: PostgresServer,
) -> None:
    assert postgres_server.url.startswith("postgresql://styldod@127.0.0.1:")
    url = await postgres_server.create_database("restart_check")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE t (v int)")
        await conn.execute("INSERT INTO t VALUES (42)")
    finally:
        await conn.close()
    await postgres_server.restart()
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT v FROM t") == 42
        assert await conn.fetchval("SELECT current_user") == "styldod"
    finally:
        await conn.close()
    await postgres_server.stop()
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(url, timeout=5)
    # The fixture starts it again for the next test.


async def test_servers_die_with_their_owner_and_leave_no_folder(tmp_path: Path) -> None:
    """A process that starts both servers is killed with SIGKILL (no cleanup code runs): the
    servers die with it (PR_SET_PDEATHSIG). Their folders are what a SIGKILL cannot remove."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        from tests.servers import PostgresServer, RedisServer, remove_postgres_leftovers

        async def main() -> None:
            redis, postgres = RedisServer(), PostgresServer()
            await redis.start()
            await postgres.start()
            print(redis.pid, postgres.pid, redis.root, postgres.root, flush=True)
            await asyncio.Event().wait()

        asyncio.run(main())
        """
    )
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=REPO, stdout=subprocess.PIPE
    )
    assert owner.stdout is not None
    line = await asyncio.wait_for(owner.stdout.readline(), 60)
    redis_pid, postgres_pid, *roots = line.decode().split()
    assert _alive(int(redis_pid))
    assert _alive(int(postgres_pid))
    owner.kill()
    await owner.wait()
    await _wait_dead(int(redis_pid))
    await _wait_dead(int(postgres_pid))
    # Each server led a process group of its own: PostgreSQL's other processes (checkpointer,
    # writers...) notice their postmaster's death and exit too.
    deadline = time.monotonic() + 10
    while _group_members(int(postgres_pid)) or _group_members(int(redis_pid)):
        assert time.monotonic() < deadline, "a server's process outlived its owner"
        await asyncio.sleep(0.02)
    for root in roots:
        remove_postgres_leftovers(Path(root))
        shutil.rmtree(root)


def _group_members(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # pid (comm) state ppid pgrp ...: split after the command name, which may hold spaces.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


async def test_close_removes_everything() -> None:
    server = RedisServer()
    await server.start()
    pid, root = server.pid, server.root
    assert pid is not None
    await server.stop()
    server.close()
    assert not _alive(pid)
    assert not root.exists()


def test_the_servers_tested_are_the_versions_the_readme_promises() -> None:
    """The README names the oldest Redis and PostgreSQL the shared budget and ledger work
    with, and the versions the tests run against; the servers started here are those."""
    readme = (REPO / "README.md").read_text()
    promise = re.search(
        r"needs Redis (\d+\.\d+) or newer and the shared ledger PostgreSQL (\d+) or newer; "
        r"the tests run against Debian's packages \(Redis (\d+\.\d+), PostgreSQL (\d+)\)",
        readme,
    )
    assert promise, "README: the 'Server versions' sentence is missing or reworded"
    redis_min, postgres_min, redis_tested, postgres_tested = promise.groups()
    found = server_versions()
    redis_version = tuple(int(p) for p in found["Redis"].split(".")[:2])
    postgres_major = int(found["PostgreSQL"].split(".")[0])
    assert redis_version >= tuple(int(p) for p in redis_min.split("."))
    assert postgres_major >= int(postgres_min)
    assert found["Redis"].startswith(redis_tested + "."), found
    assert postgres_major == int(postgres_tested), found
