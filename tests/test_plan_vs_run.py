"""The dry run is the run's own route decision, without sending: for each scenario the plan
(``upload --dry-run --json``, in this process) is taken, then the real run on the same inputs
and the same ledger, and the two are compared order name for order name and image for image:
which images go in which named order (as the sandbox received them), which are reported
already ordered, changed or late, and which earlier orders are named as done."""

from __future__ import annotations

import asyncio
import collections
import datetime
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from styldod_batch.sandbox import Sandbox
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from tests.helpers import REPO, image_bytes, make_tree
from tests.runner_inprocess import run_main

# An order's content: (client_image_id, sequence) for each of its images, sorted.
Orders = dict[str, list[tuple[str, int | None]]]


@dataclass(slots=True)
class Outcome:
    """What a plan or a run says, in the terms both share."""

    orders: Orders  # the orders it places (or would): name -> images
    follow_ups: set[str]  # which of them it calls follow-ups
    earlier: dict[str, int]  # orders of earlier runs it names as done: name -> images
    changed: list[tuple[str, str, str]]  # (path, client_image_id, order it is in)
    late: list[tuple[str, str, str]]  # (path, client_image_id, listing)
    counts: dict[str, int]  # the report's image counts both have
    routes: dict[str, str] = field(default_factory=dict)  # path -> ordered, already_done...


@dataclass(slots=True)
class Job:
    """One scenario's account: the sandbox, its ledger, and how to call the runner on it."""

    box: Sandbox
    state: Path
    flags: list[str]

    @property
    def env(self) -> dict[str, str]:
        return {"STYLDOD_API_KEY": self.box.api_key, "STYLDOD_BASE_URL": self.box.base_url}

    def argv(self, inputs: list[str], *extra: str) -> list[str]:
        return ["upload", *inputs, "--state", str(self.state), "--json", *self.flags, *extra]

    async def earlier_run(self, inputs: list[str]) -> None:
        """A real run whose only purpose is the ledger state it leaves."""
        done = await run_main(*self.argv(inputs), env=self.env)
        assert done.returncode == 0, done.stderr
        assert done.json()["orders"], "the earlier run placed orders"

    async def plan(self, inputs: list[str]) -> Outcome:
        sent_before = len(self.box.log)
        dry = await run_main(*self.argv(inputs, "--dry-run"), env=self.env)
        assert dry.returncode == 0, dry.stderr
        assert len(self.box.log) == sent_before, "a dry run sends nothing"
        return plan_outcome(dry.json(), images_of(inputs))

    async def run(self, inputs: list[str]) -> Outcome:
        before = set(self.sandbox_orders())
        done = await run_main(*self.argv(inputs, *VERBOSE), env=self.env)
        assert done.returncode == 0, done.stderr
        new = new_orders(self.sandbox_orders(), before)
        return run_outcome(done.json(), done.stderr, new)

    def sandbox_orders(self) -> dict[str, tuple[str, list[tuple[str, int | None]]]]:
        """Every order the sandbox holds, by ID: its name and its images."""
        assert self.box.api is not None
        return {
            order_id: (
                order.order_name or "",
                sorted((i.client_image_id, i.sequence) for i in order.images),
            )
            for order_id, order in self.box.api.orders.items()
        }


# Each file's outcome in the run's log (event ``file`` at debug, ``file_changed``/``file_late``).
VERBOSE = ("-vv", "--log-format", "json")


def new_orders(
    held: dict[str, tuple[str, list[tuple[str, int | None]]]], before: set[str]
) -> Orders:
    """The sandbox's orders placed since ``before`` (IDs), by name: a name given twice fails."""
    orders: Orders = {}
    for order_id, (name, images) in held.items():
        if order_id in before:
            continue
        assert name not in orders, f"the sandbox received two orders named {name}"
        orders[name] = images
    return orders


def images_of(inputs: list[str]) -> set[str]:
    """The image paths of a run's inputs: folders' files, or a manifest's rows."""
    if inputs[0] == "--manifest":
        manifest = Path(inputs[1])
        rows = manifest.read_text().splitlines()[1:]
        return {str(manifest.parent / row.split(",")[0]) for row in rows if row}
    return {str(p) for folder in inputs for p in Path(folder).rglob("*.jpg")}


def plan_outcome(body: dict[str, Any], inputs: set[str]) -> Outcome:
    orders: Orders = {}
    follow_ups = set()
    routes: dict[str, str] = {}
    for order in body["plan"]:
        name = order["order"]
        assert name not in orders, f"the plan names {name} twice"
        orders[name] = sorted((i["client_image_id"], i["sequence"]) for i in order["images"])
        if order["follow_up"]:
            follow_ups.add(name)
        routes.update((i["path"], "ordered") for i in order["images"])
    # The report's own orders list agrees with the plan it printed.
    planned = {o["key"]: o["images"] for o in body["orders"] if not o["already_done"]}
    assert planned == {name: len(images) for name, images in orders.items()}
    assert body["images"]["planned"] == len(routes)
    outcome = common_outcome(body, orders, follow_ups)
    routes.update((path, "changed") for path, _id, _order in outcome.changed)
    routes.update((path, "late") for path, _id, _listing in outcome.late)
    # The plan counts what is already done; which images those are is the rest.
    routes.update((path, "already_done") for path in inputs - set(routes))
    assert len(inputs) == body["images"]["total"], "every input image is in the plan's report"
    outcome.routes = routes
    return outcome


def run_outcome(body: dict[str, Any], log: str, orders: Orders) -> Outcome:
    reported = {o["key"]: o for o in body["orders"] if not o["already_done"]}
    assert {k: o["images"] for k, o in reported.items()} == {
        name: len(images) for name, images in orders.items()
    }, "the run's report names the orders the sandbox received"
    follow_ups = {k for k, o in reported.items() if o["follow_up"]}
    outcome = common_outcome(body, orders, follow_ups)
    outcome.routes = file_routes(log)
    return outcome


def file_routes(log: str) -> dict[str, str]:
    """Each file's outcome, as the run logged it: path -> ordered, already_done, changed..."""
    names = {"uploaded": "ordered", "already_done": "already_done"}
    routes: dict[str, str] = {}
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        event = orjson.loads(line)
        if event.get("event") == "file":
            route = names.get(event["outcome"], event["outcome"])
        elif event.get("event") in ("file_changed", "file_late"):
            route = event["event"].removeprefix("file_")
        else:
            continue
        assert event["path"] not in routes, f"{event['path']} logged twice"
        routes[event["path"]] = route
    return routes


def common_outcome(body: dict[str, Any], orders: Orders, follow_ups: set[str]) -> Outcome:
    images = body["images"]
    return Outcome(
        orders=orders,
        follow_ups=follow_ups,
        earlier={o["key"]: o["images"] for o in body["orders"] if o["already_done"]},
        changed=sorted((c["path"], c["client_image_id"], c["order"]) for c in body["changed"]),
        late=sorted((c["path"], c["client_image_id"], c["listing"]) for c in body["late"]),
        counts={k: images[k] for k in ("total", "already_done", "changed", "late", "failed")},
    )


def assert_run_follows_plan(plan: Outcome, run: Outcome) -> None:
    assert plan.orders == run.orders, diff(plan.orders, run.orders)
    assert plan.routes == run.routes, diff(plan.routes, run.routes)
    assert plan.follow_ups == run.follow_ups, (plan.follow_ups, run.follow_ups)
    assert plan.changed == run.changed, (plan.changed, run.changed)
    assert plan.late == run.late, (plan.late, run.late)
    assert plan.earlier == run.earlier, (plan.earlier, run.earlier)
    assert plan.counts == run.counts, (plan.counts, run.counts)


def diff(plan: dict[str, Any], run: dict[str, Any]) -> str:
    """Where a plan and a run differ, key by key (an order name, or an image's path)."""
    lines = ["plan != run:"]
    for key in sorted(set(plan) | set(run)):
        if plan.get(key) != run.get(key):
            lines.append(f"  {key}: plan {plan.get(key)} / run {run.get(key)}")
    return "\n".join(lines)


def photo(folder: Path, name: str, size: int = 600) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(image_bytes(size))
    return path


# -- scenarios --------------------------------------------------------------------------------
# Each prepares its inputs (and the ledger state of earlier runs), and returns the inputs of
# the plan and of the run, and what the plan must hold (so that a comparison of two empty
# outcomes cannot pass) and the names the run must give.


@dataclass(slots=True)
class Expect:
    orders: list[str] = field(default_factory=list)  # the names the run must give, sorted
    changed: int = 0
    late: int = 0
    already_done: int = 0


Scenario = Callable[[Job, Path], Awaitable[tuple[list[str], Expect]]]


async def folders(job: Job, root: Path) -> tuple[list[str], Expect]:
    """Several listings, two of them larger than the order size (3): split in parts; one
    listing was ordered by an earlier run of it alone."""
    photos = root / "photos"
    for name, count in (("alpha", 2), ("bravo", 4), ("charlie", 7), ("delta", 3)):
        for index in range(1, count + 1):
            photo(photos / name, f"img{index}.jpg")
    await job.earlier_run([str(photos / "delta")])
    names = ["alpha", "bravo-1", "bravo-2", "charlie-1", "charlie-2", "charlie-3"]
    return [str(photos)], Expect(orders=names, already_done=3)


async def late_photos(job: Job, root: Path) -> tuple[list[str], Expect]:
    """A listing ordered, then four new photos in it (and a new listing beside it)."""
    photos = root / "photos"
    make_tree(photos, folders=2, files=2, size=600)
    await job.earlier_run([str(photos)])
    for index in range(3, 7):
        photo(photos / "listing-01", f"photo-{index}.jpg")
    photo(photos / "listing-03", "photo-1.jpg")
    follow_ups = "--no-follow-up" not in job.flags
    if follow_ups:  # the follow-up of listing-01, in two parts
        return [str(photos)], Expect(
            orders=["listing-01 (2)-1", "listing-01 (2)-2", "listing-03"], already_done=4
        )
    return [str(photos)], Expect(orders=["listing-03"], late=4, already_done=4)


async def changed_images(job: Job, root: Path) -> tuple[list[str], Expect]:
    """Two listings ordered, then one image's content changed in each."""
    photos = root / "photos"
    files = make_tree(photos, folders=2, files=3, size=600)
    await job.earlier_run([str(photos)])
    files[1].write_bytes(image_bytes(700))
    files[4].write_bytes(image_bytes(800))
    reorder = "--reorder-changed" in job.flags
    if reorder:
        return [str(photos)], Expect(orders=["listing-01 (2)", "listing-02 (2)"], already_done=4)
    return [str(photos)], Expect(changed=2, already_done=4)


async def fixed_size_batches(job: Job, root: Path) -> tuple[list[str], Expect]:
    """``--order-by none --order-size 3`` on an account with two earlier batches: the next
    set's batches take the ledger's next numbers."""
    make_tree(root / "first", folders=2, files=3, size=600)  # 6 images: batch-1, batch-2
    await job.earlier_run([str(root / "first")])
    make_tree(root / "second", folders=2, files=4, size=600, prefix="house")  # 8: 3 batches
    return [str(root / "second")], Expect(orders=["batch-3", "batch-4", "batch-5"])


async def interleaved_manifest(job: Job, root: Path) -> tuple[list[str], Expect]:
    """A CSV manifest whose rows interleave two named orders and a folder listing, one of
    them larger than the order size; an earlier run ordered part of it."""
    data = root / "data"
    rows = ["path,client_image_id,order,sequence"]
    plan = [
        ("north/a.jpg", "north-a", "house-north"),
        ("south/a.jpg", "south-a", "house-south"),
        ("loose/x1.jpg", "", ""),
        ("north/b.jpg", "north-b", "house-north"),
        ("south/b.jpg", "south-b", "house-south"),
        ("north/c.jpg", "north-c", "house-north"),
        ("loose/x2.jpg", "", ""),
        ("north/d.jpg", "north-d", "house-north"),
        ("south/c.jpg", "south-c", "house-south"),
        ("north/e.jpg", "north-e", "house-north"),
    ]
    for path, image_id, order in plan:
        photo(data / Path(path).parent, Path(path).name)
        rows.append(f"{path},{image_id},{order},")
    earlier = data / "earlier.csv"
    earlier.write_text("\n".join([rows[0], rows[2], rows[5], rows[9]]) + "\n")
    await job.earlier_run(["--manifest", str(earlier)])  # house-south: south-a, south-b, south-c
    manifest = data / "job.csv"
    manifest.write_text("\n".join(rows) + "\n")
    names = ["house-north-1", "house-north-2", "loose"]
    return ["--manifest", str(manifest)], Expect(orders=names, already_done=3)


async def same_named_listings(job: Job, root: Path) -> tuple[list[str], Expect]:
    """``alice/Unit-1`` and ``bob/Unit-1``: two orders whose names say which is which (the
    second is told apart by its parent folder), in the plan as in the run."""
    for owner in ("alice", "bob"):
        for index in (1, 2):
            photo(root / "photos" / owner / "Unit-1", f"img{index}.jpg")
    return [str(root / "photos")], Expect(orders=["Unit-1", "Unit-1 (bob)"])


async def named_by_template(job: Job, root: Path) -> tuple[list[str], Expect]:
    """``--order-name '{job}-{listing}'``, and fixed-size batches named by the day."""
    make_tree(root / "photos", folders=2, files=3, size=600)
    if "none" in job.flags:
        today = datetime.date.today().isoformat()
        return [str(root / "photos")], Expect(orders=[f"{today}-batch-1", f"{today}-batch-2"])
    return [str(root / "photos")], Expect(orders=["nightly-listing-01", "nightly-listing-02"])


SCENARIOS: dict[str, tuple[Scenario, list[str]]] = {
    "same-named-listings": (same_named_listings, []),
    "order-name-template": (
        named_by_template,
        ["--order-name", "{job}-{listing}", "--job-name", "nightly"],
    ),
    "order-name-date-batches": (
        named_by_template,
        ["--order-by", "none", "--order-size", "3", "--order-name", "{date}-{listing}"],
    ),
    "folders-split": (folders, ["--order-size", "3"]),
    "late-follow-up": (late_photos, ["--order-size", "3"]),
    "late-no-follow-up": (late_photos, ["--order-size", "3", "--no-follow-up"]),
    "changed": (changed_images, []),
    "changed-reorder": (changed_images, ["--reorder-changed"]),
    "fixed-size-batches": (fixed_size_batches, ["--order-by", "none", "--order-size", "3"]),
    "interleaved-manifest": (interleaved_manifest, ["--order-size", "3"]),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_the_run_places_what_its_dry_run_planned(
    sandbox_factory: SandboxFactory, tmp_path: Path, name: str
) -> None:
    scenario, flags = SCENARIOS[name]
    box = await sandbox_factory(rps=1000)
    job = Job(box, tmp_path / "ledger.sqlite", flags)
    inputs, expect = await scenario(job, tmp_path)

    plan = await job.plan(inputs)
    # The plan is not empty where the scenario says it is not: the comparison means something.
    assert len(plan.orders) == len(expect.orders), plan.orders
    assert len(plan.changed) == expect.changed, plan.changed
    assert len(plan.late) == expect.late, plan.late
    assert plan.counts["already_done"] == expect.already_done, plan.counts
    assert plan.orders or plan.changed or plan.late

    run = await job.run(inputs)

    assert_run_follows_plan(plan, run)
    assert sorted(run.orders) == expect.orders, run.orders
    # Once run, nothing is left: the plan of a re-run is empty (the ledger agrees).
    again = await job.plan(inputs)
    assert again.orders == {}, again.orders


# -- several processes at once --------------------------------------------------------------


def worker(job: Job, *inputs: str) -> subprocess.Popen[str]:
    """The runner as a process of its own, on the job's ledger (as tests/test_shared_ledger.py
    starts its workers; here the ledger is one SQLite file on this machine)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STYLDOD_") or k == "STYLDOD_BUDGET_DIR"
    }
    env.update(job.env)
    return subprocess.Popen(
        [sys.executable, "-m", "styldod_batch", *job.argv(list(inputs), *VERBOSE)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


async def test_two_processes_at_once_do_together_what_the_plan_said(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """Two runs at once on overlapping inputs, one ledger: the union of what they did is
    the plan taken before them, order for order and image for image."""
    photos = tmp_path / "photos"
    make_tree(photos, folders=4, files=4, size=600)
    box = await sandbox_factory(rps=1000)
    job = Job(box, tmp_path / "ledger.sqlite", ["--order-size", "3"])
    await job.earlier_run([str(photos / "listing-04")])
    photo(photos / "listing-04", "photo-5.jpg")  # late: a follow-up order
    listings = sorted(str(p) for p in photos.iterdir())

    plan = await job.plan([str(photos)])
    # listing-01..03 in two parts each, and listing-04 (2)
    assert len(plan.orders) == 7 and plan.counts["already_done"] == 4, plan
    before = set(job.sandbox_orders())

    workers = [worker(job, str(photos)), worker(job, *listings[1:])]
    results = [await asyncio.to_thread(w.communicate, timeout=120) for w in workers]

    for process, (_out, err) in zip(workers, results, strict=True):
        assert process.returncode == 0, err
    union = new_orders(job.sandbox_orders(), before)
    assert union == plan.orders, diff(plan.orders, union)
    reported = collections.Counter(
        o["key"]
        for out, _err in results
        for o in orjson.loads(out)["orders"]
        if not o["already_done"]
    )
    assert reported == collections.Counter(plan.orders.keys()), "each order reported once"
    # Image for image: each image the plan would order was uploaded by exactly one of them.
    uploaded = collections.Counter(
        path
        for _out, err in results
        for path, route in file_routes(err).items()
        if route == "ordered"
    )
    would = {path for path, route in plan.routes.items() if route == "ordered"}
    assert uploaded == collections.Counter(would), diff(dict.fromkeys(would, 1), dict(uploaded))
