"""One key, one record (issue 18, point 2; issue 20, point 3): a second spelling of the service,
a rotated key and a move to a shared ledger never start an empty ledger silently, and
``import-ledger`` carries the record over, idempotent and verified. Whole runs of the library
and the runner against an Order API and storage on 127.0.0.1, SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from styldod_batch.engine import Uploader
from styldod_batch.errors import LedgerError
from styldod_batch.identity import key_fingerprint
from styldod_batch.ledger import ledger_path
from styldod_batch.report import Report
from styldod_batch.settings import RetryPolicy, Settings
from styldod_batch.webhook_secret import webhook_secret
from tests.hostile_api import HostileOrderAPI
from tests.hostile_storage import HostileStorage
from tests.runner_inprocess import run_main
from tests.servers import PostgresServer

FAST_RETRY = RetryPolicy(base_s=0.01, cap_s=0.05)
ORDERS = "/v2/orders"


@pytest_asyncio.fixture(loop_scope="session")
async def storage() -> AsyncIterator[HostileStorage]:
    async with HostileStorage() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def api(storage: HostileStorage) -> AsyncIterator[HostileOrderAPI]:
    async with HostileOrderAPI(storage.url("")) as server:
        yield server


def photos(root: Path, listings: int = 2, files: int = 3) -> Path:
    for number in range(1, listings + 1):
        folder = root / f"listing-{number}"
        folder.mkdir(parents=True)
        for index in range(files):
            body = b"\xff\xd8\xff\xe0" + os.urandom(200) + b"\xff\xd9"
            (folder / f"{index}.jpg").write_bytes(body)
    return root


def settings(base_url: str, state: str | None, key: str = "k", **changes: Any) -> Settings:
    return Settings(
        base_url=base_url, api_key=key, rps=400.0, state=state, retry=FAST_RETRY, **changes
    )


async def run(base_url: str, state: str | None, inputs: Path, **changes: Any) -> Report:
    async with Uploader(settings(base_url, state, **changes), global_options={}) as uploader:
        return await uploader.run([inputs])


def ordered_now(report: Report) -> int:
    """Images this run put into new orders (not those earlier runs placed)."""
    return sum(o.images for o in report.orders if not o.resumed and o.order_id)


def env(base_url: str, key: str, state: str) -> dict[str, str]:
    return {"STYLDOD_BASE_URL": base_url, "STYLDOD_API_KEY": key, "STYLDOD_STATE": state}


async def test_a_second_spelling_of_the_service_is_refused_until_the_user_says_which(
    api: HostileOrderAPI, tmp_path: Path
) -> None:
    inputs, state = photos(tmp_path / "photos"), str(tmp_path / "state")
    first = await run(api.url, state, inputs)
    assert ordered_now(first) == 6
    sent = api.count("POST", ORDERS)
    spelled = api.url.replace("127.0.0.1", "localhost")

    with pytest.raises(LedgerError) as refused:
        await run(spelled, state, inputs)
    message = str(refused.value)
    assert api.url in message and "--separate-ledger" in message
    assert "styldod-batch import-ledger" in message and "k" not in message.split("key")[0]
    assert api.count("POST", ORDERS) == sent  # nothing was ordered again

    # The user says that both are one service: the record is carried to the spelling kept.
    old = settings(api.url, state)
    carried = await run_main("import-ledger", str(ledger_path(old)), env=env(spelled, "k", state))
    assert carried.returncode == 0, carried.stderr
    assert "Verified" in carried.stdout
    again = await run(spelled, state, inputs)
    assert ordered_now(again) == 0 and again.ok
    assert api.count("POST", ORDERS) == sent
    # The old spelling's ledger now says where its record went, instead of forking again.
    with pytest.raises(LedgerError, match="carried over"):
        await run(api.url, state, inputs)


async def test_another_service_for_the_same_key_takes_the_users_word(
    api: HostileOrderAPI, tmp_path: Path
) -> None:
    inputs, state = photos(tmp_path / "photos", listings=1), str(tmp_path / "state")
    await run(api.url, state, inputs)
    spelled = api.url.replace("127.0.0.1", "localhost")
    report = await run(spelled, state, inputs, separate_ledger=True)
    assert ordered_now(report) == 3  # the user said: another account, its own ledger
    # ...and from then on that ledger is the account's: no question asked again.
    assert ordered_now(await run(spelled, state, inputs)) == 0


async def test_a_rotated_key_carries_its_ledger_over_and_nothing_is_ordered_again(
    api: HostileOrderAPI, tmp_path: Path
) -> None:
    inputs, state = photos(tmp_path / "photos"), str(tmp_path / "state")
    assert ordered_now(await run(api.url, state, inputs)) == 6
    sent = api.count("POST", ORDERS)
    secret = await webhook_secret(settings(api.url, state))

    first = await run_main(
        "import-ledger", "--from-key", key_fingerprint("k"), env=env(api.url, "k2", state)
    )
    assert first.returncode == 0, first.stderr
    second = await run_main(
        "import-ledger", "--from-key", key_fingerprint("k"), "--json",
        env=env(api.url, "k2", state),
    )  # fmt: skip
    body = second.json()
    assert body["verified"] and body["source"]["orders"] == body["target"]["orders"] == 2
    assert body["added"] == {"listings": 0, "images": 0, "orders": 0, "outputs": 0}

    report = await run(api.url, state, inputs, key="k2")
    assert ordered_now(report) == 0 and report.ok
    assert api.count("POST", ORDERS) == sent
    # Orders placed under the old key carry its webhook secret: the new key keeps it.
    assert await webhook_secret(settings(api.url, state, key="k2")) == secret
    with pytest.raises(LedgerError, match="carried over"):
        await run(api.url, state, inputs)  # the old key's ledger is not used by mistake


async def test_moving_to_a_shared_ledger_keeps_the_history(
    api: HostileOrderAPI, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    inputs = photos(tmp_path / "photos")
    shared = await postgres_server.create_database("import_history")
    assert ordered_now(await run(api.url, None, inputs)) == 6  # the local ledger, by default
    sent = api.count("POST", ORDERS)
    source = str(ledger_path(settings(api.url, None)))
    secret = await webhook_secret(settings(api.url, None))

    # The shared ledger is empty for the account while the local one holds its orders.
    with pytest.raises(LedgerError) as stopped:
        await run(api.url, shared, inputs)
    assert f"styldod-batch import-ledger {source} --state" in str(stopped.value)
    assert api.count("POST", ORDERS) == sent

    imported = await run_main("import-ledger", source, "--json", env=env(api.url, "k", shared))
    assert imported.returncode == 0, imported.stderr
    body = imported.json()
    assert body["verified"] and body["added"]["orders"] == 2 and body["added"]["images"] == 6
    assert body["source"] == body["target"]
    again = await run_main("import-ledger", source, "--json", env=env(api.url, "k", shared))
    assert again.json()["added"] == {"listings": 0, "images": 0, "orders": 0, "outputs": 0}

    report = await run(api.url, shared, inputs)
    assert ordered_now(report) == 0 and report.ok
    assert api.count("POST", ORDERS) == sent
    assert await webhook_secret(settings(api.url, shared)) == secret, "carried with the rows"


async def test_a_rotated_key_in_a_shared_ledger_moves_its_rows(
    api: HostileOrderAPI, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    inputs = photos(tmp_path / "photos", listings=1)
    shared = await postgres_server.create_database("import_rotation")
    assert ordered_now(await run(api.url, shared, inputs)) == 3
    secret = await webhook_secret(settings(api.url, shared))
    moved = await run_main(
        "import-ledger", "--from-key", key_fingerprint("k"), "--json",
        env=env(api.url, "k2", shared),
    )  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    assert moved.json()["target"]["orders"] == 1
    report = await run(api.url, shared, inputs, key="k2")
    assert ordered_now(report) == 0 and report.ok
    assert await webhook_secret(settings(api.url, shared, key="k2")) == secret
