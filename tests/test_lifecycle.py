"""Following orders to their end (webhooks or polling) and fetching the outputs."""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from pathlib import Path

import aiohttp
from aiohttp import web

from styldod_batch.ledger import SQLiteLedger
from styldod_batch.sandbox import Sandbox
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from styldod_batch.webhooks import WebhookReceiver
from tests.helpers import image_bytes, json_report, make_tree, run_cli


class FlakyForwarder:
    """Between the service and the receiver: the first delivery of each event gets 500,
    and every later one reaches the receiver twice (a duplicate)."""

    def __init__(self, target_base: str) -> None:
        self.target_base = target_base
        self.seen: collections.Counter[bytes] = collections.Counter()
        self.refused = 0
        self.forwarded = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen[body] += 1
        if self.seen[body] == 1:
            self.refused += 1
            return web.Response(status=500)
        async with aiohttp.ClientSession() as session:
            status = 0
            for _ in range(2):
                async with session.post(
                    self.target_base + request.path,
                    data=body,
                    headers={"Content-Type": "application/json"},
                ) as r:
                    status = r.status
                    self.forwarded += 1
        return web.Response(status=status)

    async def __aenter__(self) -> FlakyForwarder:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def events_per_order(journal: Path) -> dict[str, list[str]]:
    with sqlite3.connect(journal) as db:
        rows = db.execute("SELECT order_id, event FROM events ORDER BY received_at").fetchall()
    result: dict[str, list[str]] = collections.defaultdict(list)
    for order_id, event in rows:
        result[order_id].append(event)
    return dict(result)


def outputs_match_inputs(download: Path, inputs: Path) -> int:
    """Every downloaded output equals the file it was made from (the sandbox's "edit")."""
    count = 0
    for output in download.rglob("*.jpg"):
        relative = output.relative_to(download)
        # DIR/<listing>/<client_image_id>: the input's folder and file names
        original = inputs / relative
        assert output.read_bytes() == original.read_bytes(), output
        count += 1
    return count


def all_files(paths: list[str]) -> bool:
    return all(Path(p).is_file() for p in paths)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_webhooks_with_duplicates_and_failing_first_answers(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "job", folders=10, files=4, size=3000)
    box = await sandbox_factory(rps=1000)
    journal, out = tmp_path / "j.sqlite", tmp_path / "out"
    port = free_port()
    async with FlakyForwarder(f"http://127.0.0.1:{port}") as flaky:
        completed = await asyncio.to_thread(
            run_cli,
            "upload",
            str(tmp_path / "job"),
            "--journal",
            str(journal),
            "--json",
            "--listen",
            f"127.0.0.1:{port}",
            "--public-url",
            f"http://127.0.0.1:{flaky.port}",
            "--download",
            str(out),
            "--wait-timeout",
            "120",
            "--upload-rps",
            "0",
            "--rps",
            "100",
            env={"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url},
        )
    assert completed.returncode == 0, completed.stderr
    report = json_report(completed)
    assert len(report["orders"]) == 10
    assert all(o["status"] == "completed" for o in report["orders"])
    assert flaky.refused == 40 and flaky.forwarded >= 80, "each event refused once, then twice"
    retried = [e for e in box.log.select(kind="webhook") if e.status == 500]
    assert len(retried) == 40, "the sandbox retried each refused delivery"
    events = events_per_order(journal)
    assert len(events) == 10
    assert all(
        sorted(e)
        == sorted(
            [
                "order.pre_processing",
                "order.expert_assigned",
                "order.post_processing",
                "order.completed",
            ]
        )
        for e in events.values()
    ), "each event recorded exactly once"
    with sqlite3.connect(journal) as db:
        statuses = [row[0] for row in db.execute("SELECT status FROM orders")]
    assert statuses == ["completed"] * 10
    assert report["outputs"] == {"downloaded": 40}
    assert outputs_match_inputs(out, tmp_path / "job") == 40


async def test_polling_reaches_the_same_end_within_the_rate_budget(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "job", folders=10, files=4, size=3000)
    box = await sandbox_factory(rps=20, order_step_s=0.3)
    journal, out = tmp_path / "j.sqlite", tmp_path / "out"
    completed = await asyncio.to_thread(
        run_cli,
        "upload",
        str(tmp_path / "job"),
        "--journal",
        str(journal),
        "--json",
        "--wait",
        "--download",
        str(out),
        "--wait-timeout",
        "120",
        env={"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url},
    )
    assert completed.returncode == 0, completed.stderr
    report = json_report(completed)
    assert all(o["status"] == "completed" for o in report["orders"])
    polls = box.log.select(kind="api", method="GET")
    assert polls, "the orders were polled"
    assert box.log.select(status=429) == []
    assert box.log.max_in_window("api") <= 20
    assert box.log.select(kind="webhook") == []
    assert outputs_match_inputs(out, tmp_path / "job") == 40
    with sqlite3.connect(journal) as db:
        assert [r[0] for r in db.execute("SELECT status FROM orders")] == ["completed"] * 10

    # Downloading again fetches nothing: every output is complete.
    again = await asyncio.to_thread(
        run_cli, "download", str(out), "--journal", str(journal), "--json"
    )
    assert again.returncode == 0, again.stderr
    assert json_report(again)["outputs"] == {"already": 40}

    status = await asyncio.to_thread(run_cli, "status", "--journal", str(journal), "--json")
    shown = json_report(status)["orders"]
    assert all(len(o["outputs"]) == 4 for o in shown)
    assert all(i["image_status"] == "completed" for o in shown for i in o["outputs"])
    assert all_files([i["downloaded_to"] for o in shown for i in o["outputs"]])


async def test_receiver_refuses_wrong_token_and_malformed_bodies(tmp_path: Path) -> None:
    journal = await SQLiteLedger.open(tmp_path / "j.sqlite", base_url="http://x", api_key="k")
    try:
        async with WebhookReceiver(token="right-token", on_event=journal.record_event) as hooks:
            good = {
                "event": "order.completed",
                "orderID": "42",
                "data": {
                    "image_list": [{"client_image_id": "a", "image_status": "completed"}],
                    "order_status": "completed",
                    "updatedAt": "t1",
                },
            }
            base = f"http://127.0.0.1:{hooks.port}/hooks/"
            async with aiohttp.ClientSession() as http:
                async with http.post(base + "wrong-token", json=good) as r:
                    assert r.status == 404
                for bad in (
                    b"not json",
                    b"[]",
                    b'{"event": "order.nope", "orderID": "1"}',
                    b'{"event": "order.completed", "orderID": "1", "data": {}}',
                ):
                    async with http.post(base + "right-token", data=bad) as r:
                        assert r.status == 400
                await journal.flush()
                with sqlite3.connect(journal.path) as db:
                    assert db.execute("SELECT COUNT(*) FROM events").fetchone() == (0,)
                for _ in range(3):  # the same event, delivered three times
                    async with http.post(base + "right-token", json=good) as r:
                        assert r.status == 200
            with sqlite3.connect(journal.path) as db:
                assert db.execute("SELECT COUNT(*) FROM events").fetchone() == (1,)
            assert hooks.duplicates == 2
    finally:
        await journal.close()


async def test_an_image_marked_as_error_is_reported_with_exit_status_1(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path / "job", folders=1, files=3, size=1000)
    (tmp_path / "job" / "listing-01" / "error-kitchen.jpg").write_bytes(image_bytes(500))
    box: Sandbox = await sandbox_factory(rps=1000)
    completed = await asyncio.to_thread(
        run_cli,
        "upload",
        str(tmp_path / "job"),
        "--no-journal",
        "--json",
        "--wait",
        "--wait-timeout",
        "60",
        env={"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url},
    )
    assert completed.returncode == 1, completed.stderr
    report = json_report(completed)
    assert report["images"]["uploaded"] == 4 and report["images"]["failed"] == 0
    (order,) = report["orders"]
    assert order["status"] == "error"
    assert report["processing_failed"] == 1
    (failure,) = report["failures"]
    assert failure["path"] == "listing-01/error-kitchen.jpg"
    assert "marked this image as an error" in failure["error"]
