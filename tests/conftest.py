"""Fixtures for every test: the sandbox (plugin), a private ledger folder, and real Redis
and PostgreSQL servers."""

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.servers import PostgresServer, RedisServer, server_versions

pytest_plugins = ["styldod_batch.sandbox.pytest_plugin"]


def pytest_report_header() -> list[str]:
    """What the run was tested against, in its output: the servers (Debian's packages) and
    the client libraries whose behaviour the promises rest on."""
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "missing"

    servers = ", ".join(f"{name} {v}" for name, v in server_versions().items())
    clients = ", ".join(f"{n} {of(n)}" for n in ("redis", "asyncpg", "aiohttp", "aiofiles"))
    return [f"servers: {servers}", f"clients: {clients}"]


@pytest.fixture(autouse=True)
def _own_ledgers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each test keeps its ledgers (the default state folder) and its keys' budget files to
    itself, runner children included: they inherit the environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
        patch.setenv("STYLDOD_BUDGET_DIR", str(tmp_path_factory.mktemp("budgets")))
        patch.delenv("STYLDOD_STATE", raising=False)
        yield


@pytest_asyncio.fixture(loop_scope="session")
async def redis_server() -> AsyncIterator[RedisServer]:
    """A fresh Redis per test (it starts in milliseconds): stop or restart it freely."""
    server = RedisServer()
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        server.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def _postgres_session() -> AsyncIterator[PostgresServer]:
    server = PostgresServer()
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        server.close()


@pytest_asyncio.fixture(loop_scope="session")
async def postgres_server(_postgres_session: PostgresServer) -> AsyncIterator[PostgresServer]:
    """One PostgreSQL per session (initdb takes a second or two); a test may stop or restart
    it, and it is running again for the next test. ``create_database()`` for a fresh DB."""
    yield _postgres_session
    await _postgres_session.start()
