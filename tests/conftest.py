"""Fixtures for every test: the sandbox (plugin), a private ledger folder, and real Redis
and PostgreSQL servers."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

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


# Tests whose assertions are about time: rate windows ("at most 20 in any second"), a pace, a
# wall-clock bound. They run alone (scripts/test runs them after the others, in one process),
# never beside another test that takes the CPU; under xdist they also share one worker.
SERIAL_MODULES = frozenset(
    {
        "test_many_workers.py",
        "test_budget_file.py",
        "test_budget_redis.py",
        "test_pace.py",
        "test_download_pace.py",
    }
)
SERIAL_TESTS = frozenset(
    {
        "test_engine.py::test_rate_limited_job_uploads_each_image_once_in_one_of_20_orders_without_429",
        "test_lifecycle.py::test_polling_reaches_the_same_end_within_the_rate_budget",
        "test_sandbox.py::test_calls_spread_within_the_limit_are_never_limited",
        "test_sandbox.py::test_burst_beyond_the_rate_limit_gets_429_with_retry_after",
    }
)


# The longest tests (tens of seconds each, most of it in processes of their own), longest
# first: they start first, so under xdist they go to the workers one by one at the start and
# the short tests fill in around them, instead of one of them starting last and running alone.
LONGEST_FIRST = (
    "test_manifest.py::test_an_interleaved_250k_row_manifest_plans_in_bounded_memory",
    "test_runner.py::test_more_large_files_than_uploads_at_once_hold_no_file_in_memory",
    "test_resume.py::test_sigkill_at_random_moments_then_rerun_creates_each_order_once",
    "test_ledger.py::test_four_overlapping_processes_six_times_each_image_in_one_order",
    "test_shared_ledger.py::test_four_overlapping_workers_on_postgres_order_each_image_once",
    "test_run_faults.py::test_refused_urls_odd_retry_afters_and_a_redirect_cost_only_their_files",
    "test_library.py::test_a_stream_nobody_reads_holds_the_run_back",
    "test_exit_codes.py::test_an_api_that_cannot_be_reached_is_one_line_and_exit_4",
    "test_input_hardening.py::test_a_reader_that_goes_away_ends_the_output_quietly",
    "test_readme.py::test_readme_library_example_runs",
    "test_order_backpressure.py::test_order_tasks_stay_bounded_with_one_image_per_order",
    "test_metrics.py::test_an_api_that_cannot_be_reached_still_ends_the_file_as_failed",
    "test_sandbox_command.py::test_sandbox_command_serves_and_stops_cleanly",
    "test_html_report.py::test_the_review_page_in_a_real_browser",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank: dict[str, int] = {}
    for item in items:
        module = Path(str(item.path)).name
        name = f"{module}::{getattr(item, 'originalname', item.name)}"
        if module in SERIAL_MODULES or name in SERIAL_TESTS:
            item.add_marker(pytest.mark.serial)
            item.add_marker(pytest.mark.xdist_group("timing"))
        if name in LONGEST_FIRST:
            rank[item.nodeid] = LONGEST_FIRST.index(name)
    # A stable sort: every other test keeps its place (and xdist's workers, which each sort
    # the same collection, agree on the order).
    items.sort(key=lambda item: rank.get(item.nodeid, len(LONGEST_FIRST)))


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
