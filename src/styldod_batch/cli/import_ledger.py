"""``styldod-batch import-ledger``: carry an account's record into the ledger a run now uses.

Three moves keep the history, and with it the promise never to order an image twice:

* **to a shared ledger:** ``import-ledger ~/.local/state/styldod-batch/<id>.sqlite --state
  postgresql://...`` before the first run of several machines;
* **to a rotated key:** with the new key in ``STYLDOD_API_KEY``, ``import-ledger --from-key
  FINGERPRINT`` (the old key's fingerprint, as ``status`` shows it), or the old ledger's path;
* **to the right spelling of the service:** ``import-ledger PATH`` with the base URL to keep.

The copy is idempotent (run it twice: nothing is added the second time) and verified: the
counts of both sides are printed, and every listing, image and order of the source is looked
up in the target. A local ledger carried to another key or base URL is marked, so a run that
opens it again by mistake is told where its record went.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from pathlib import Path

import orjson

from styldod_batch.cli.common import (
    EXIT_LEDGER,
    EXIT_OK,
    add_connection_args,
    add_state_args,
)
from styldod_batch.errors import ConfigurationError, LedgerError
from styldod_batch.identity import account_id_of, key_fingerprint
from styldod_batch.ledger import is_postgres_url, open_ledger
from styldod_batch.ledger.core import SQLLedger
from styldod_batch.ledger.location import ledger_file
from styldod_batch.ledger.sqlite import SQLiteLedger
from styldod_batch.ledger.transfer import TransferReport, copy_account, move_account
from styldod_batch.runtime import run_async
from styldod_batch.settings import Settings, from_environment


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "import-ledger",
        help="carry an account's ledger into this one (a shared ledger, a rotated key)",
        description="Copy what a ledger records (listings, images, orders, outputs) into the "
        "ledger that --state, STYLDOD_BASE_URL and STYLDOD_API_KEY choose: before moving to a "
        "shared PostgreSQL ledger, after rotating a key, or to keep one spelling of the "
        "service. Idempotent and verified: the counts of both sides are printed. Sends "
        "nothing to the API.",
    )
    p.add_argument("source", nargs="?", metavar="LEDGER_FILE", help="the ledger to carry over")
    p.add_argument(
        "--from-key",
        metavar="FINGERPRINT",
        help="the rotated key's ledger in the same --state (its fingerprint, from status)",
    )
    add_state_args(p)
    add_connection_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = from_environment(
        state=args.state, base_url=getattr(args, "base_url", None), api_key=args.api_key
    )
    if not settings.api_key:
        raise ConfigurationError("import-ledger needs the account's key: set STYLDOD_API_KEY")
    if (args.source is None) == (args.from_key is None):
        raise ConfigurationError("import-ledger takes a LEDGER_FILE or --from-key, one of them")
    report, where = run_async(_import(settings, args.source, args.from_key))
    _print(report, where, as_json=args.json)
    return EXIT_OK if report.verified else EXIT_LEDGER


async def _import(
    settings: Settings, source: str | None, from_key: str | None
) -> tuple[TransferReport, str]:
    target = await open_ledger(settings.with_changes(separate_ledger=True))
    if not isinstance(target, SQLLedger):
        raise ConfigurationError("import-ledger needs a ledger to import into (not --no-ledger)")
    try:
        if from_key is not None and is_postgres_url(settings.state):
            old = account_id_of(settings.base_url, from_key.strip().lower())
            moved = await move_account(target.db, old, str(target.db.account))
            report = await copy_account(target.db, target.db)  # the counts, and a check
            if not moved and not report.target["listings"]:
                raise LedgerError(f"{target.location} holds nothing for the key {from_key}")
            return report, target.location
        path = Path(source) if source else _rotated_file(settings, from_key or "")
        if not path.is_file():
            raise ConfigurationError(f"{path}: no such ledger file")
        old_ledger = await SQLiteLedger.open(
            path, base_url=settings.base_url, api_key=None, force=True, read_only=True
        )
        try:
            report = await copy_account(old_ledger.db, target.db)
        finally:
            await old_ledger.close()
        if report.verified:
            await asyncio.to_thread(_mark_carried, path, settings, target.location)
        return report, target.location
    finally:
        await target.close()


def _rotated_file(settings: Settings, fingerprint: str) -> Path:
    folder = ledger_file(settings.state, settings.base_url, settings.api_key)[0].parent
    return folder / f"{account_id_of(settings.base_url, fingerprint.strip().lower())}.sqlite"


def _mark_carried(path: Path, settings: Settings, target: str) -> None:
    """A local ledger carried to another key or service says so to whoever opens it next."""
    connection = sqlite3.connect(path)
    try:
        meta = dict(connection.execute("SELECT name, value FROM meta").fetchall())
        new_key = key_fingerprint(settings.api_key)
        if meta.get("key") == new_key and meta.get("base_url") == settings.base_url:
            return  # the same account moving home (a shared ledger): both stay usable
        with connection:
            connection.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('carried_to', ?)",
                (f"{new_key} for {settings.base_url} ({target})",),
            )
    finally:
        connection.close()


def _print(report: TransferReport, where: str, *, as_json: bool) -> None:
    if as_json:
        body = {
            "ledger": where,
            "source": report.source,
            "target": report.target,
            "added": report.added,
            "verified": report.verified,
            "missing": report.missing[:100],
            "outcome_unknown": report.unknown_outcome,
        }
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    print(f"Imported into {where}:")
    print(f"  {'':14} {'source':>8} {'target':>8} {'added':>8}")
    for name, count in report.source.items():
        added = report.added.get(name, "")
        print(f"  {name:14} {count:>8} {report.target.get(name, 0):>8} {added:>8}")
    if report.verified:
        print("Verified: every listing, image and order of the source is in the target.")
    else:
        print(f"NOT verified: {len(report.missing)} rows of the source are missing, e.g.:")
        for missing in report.missing[:10]:
            print(f"  {missing}")
    if report.unknown_outcome:
        print(
            f"Note: {report.unknown_outcome} orders have an unknown outcome; the next run "
            "asks again with their own Idempotency-Key."
        )
