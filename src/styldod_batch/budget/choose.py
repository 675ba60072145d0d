"""Which budget a run takes: this process's, the machine's (a file), or every machine's
(Redis); one per key and kind of request (``identity.budget_scope``)."""

from __future__ import annotations

from typing import Any

from styldod_batch.budget.core import Budget
from styldod_batch.budget.memory import SHARED_MAX_RATE, local_budget
from styldod_batch.errors import ConfigurationError


async def open_budget(
    choice: str | None,
    rate: float,
    *,
    name: str,
    api_key: str | None,
    margin_s: float,
    max_pause_s: float,
) -> Budget:
    """The budget ``choice`` names, open: "process" (this process alone), "file:[DIR]" (every
    process of this machine; DIR defaults to the machine's budget folder,
    ``on_file.default_budget_folder``), "redis://..." (every machine). None means "file:"."""
    if choice is None:
        choice = "file:"
    if choice == "process" or rate > SHARED_MAX_RATE:
        return local_budget(rate, name=name, margin_s=margin_s, max_pause_s=max_pause_s)
    if choice.startswith("file:"):
        from styldod_batch.budget.on_file import FileBudget

        shared: Any = FileBudget.for_key(
            api_key,
            rate,
            name=name,
            folder=choice.removeprefix("file:") or None,
            margin_s=margin_s,
        )
    else:
        try:
            from styldod_batch.budget.on_redis import RedisBudget
        except ImportError as exc:  # the optional extra
            raise ConfigurationError(
                "--budget redis://... needs redis: pip install 'styldod-batch[shared]'"
            ) from exc
        shared = RedisBudget(choice, rate, api_key=api_key, name=name, margin_s=margin_s)
    shared.max_pause_s = max_pause_s
    await shared.open()
    budget: Budget = shared
    return budget
