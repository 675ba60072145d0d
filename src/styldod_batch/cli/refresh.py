"""``styldod-batch refresh``: ask the API about every open order of the account."""

from __future__ import annotations

import argparse
import sys

import orjson

from styldod_batch.cli.common import add_connection_args, add_state_args, existing_ledger
from styldod_batch.runtime import run_async
from styldod_batch.workflow import refresh_open_orders


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "refresh",
        help="ask the API about every open order of the account (no inputs needed)",
        description="Ask the Order API, at low priority in the key's rate budget, about every "
        "order of the account's ledger that is not final yet, and record what it answers: "
        "what an upload without --wait leaves for the morning. `download` does this first "
        "by itself.",
    )
    add_state_args(p)
    add_connection_args(p)
    p.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = existing_ledger(args)
    asked, states = run_async(refresh_open_orders(settings))
    if args.json:
        sys.stdout.write(orjson.dumps({"asked": asked, "orders": states}).decode() + "\n")
    else:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none"
        print(f"Asked about {asked} open orders. Orders now: {counts}.")
    return 0
