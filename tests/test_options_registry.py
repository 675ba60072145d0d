"""The one option registry: ``Settings``, the runner's flags, the job file and the README's
table all agree with it, so a setting added in one place and not the others fails here."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from styldod_batch.cli import build_parser
from styldod_batch.errors import ConfigurationError
from styldod_batch.jobfile import load_job_file
from styldod_batch.option_registry import (
    BY_NAME,
    NOT_SETTINGS,
    README_BEGIN,
    README_END,
    SETTINGS,
    boolean,
    job_keys,
    readme_table,
)
from styldod_batch.settings import Settings, from_environment
from tests.helpers import REPO
from tests.runner_inprocess import run_main

# Settings fields that are objects, not settings a user spells (the contract, the retry bounds).
NOT_IN_REGISTRY = {"contract", "retry"}

# A TOML value of each kind, and the value the job file gives for it.
SAMPLES: dict[str, tuple[str, Any]] = {
    "text": ('"https://api.example.com"', "https://api.example.com"),
    "bool": ("true", True),
    "count": ("7", 7),
    "rate": ("2.5", 2.5),
    "seconds": ("9", 9.0),
    "host_port": ('"127.0.0.1:9000"', ("127.0.0.1", 9000)),
    "path": ('"out"', Path("out")),
    "verbosity": ("2", 2),
    "bytes_rate": ('"10M"', 10 << 20),
}


def upload_parser() -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = commands.choices["upload"]
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


def test_settings_fields_and_defaults_are_the_registrys() -> None:
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    described = {s.name for s in SETTINGS if s.in_settings}

    assert set(fields) - NOT_IN_REGISTRY == described
    defaults = Settings()
    for name in described:
        assert getattr(defaults, name) == BY_NAME[name].default, name


def test_every_flag_of_upload_is_a_setting_of_the_registry_and_back() -> None:
    parser = upload_parser()
    by_dest: dict[str, set[str]] = {}
    for action in parser._actions:
        by_dest.setdefault(action.dest, set()).update(action.option_strings)

    unknown = set(by_dest) - set(BY_NAME) - NOT_SETTINGS
    assert not unknown, f"flags that are not in option_registry: {unknown}"
    for setting in SETTINGS:
        if setting.flag is None:
            assert setting.name not in by_dest, setting.name
            continue
        assert by_dest.get(setting.name) == {setting.flag, *setting.aliases}, setting.name


def test_every_setting_a_flag_sets_can_go_in_a_job_file(tmp_path: Path) -> None:
    secrets = {"api_key", "api_secret"}
    with_flag = {s.name for s in SETTINGS if s.flag is not None}
    assert with_flag - secrets <= set(job_keys())
    assert not secrets & set(job_keys())

    explicit = {"base_url", "state", "budget", "order_size"}
    lines = [
        f"{s.name} = {SAMPLES[s.kind][0]}"
        for s in SETTINGS
        if s.job and s.kind in SAMPLES and s.name not in explicit
    ]
    lines += [
        'base_url = "https://api.example.com"',
        'state = "ledger"',
        'budget = "process"',
        'order_by = "none"',
        'log_format = "json"',
        "order_size = 50",
        "[options]",
        "basic_editing = false",
    ]
    job = tmp_path / "job.toml"
    job.write_text("\n".join(lines) + "\n", encoding="utf-8")

    values = load_job_file(job)

    assert set(values) == set(job_keys())
    for setting in SETTINGS:
        if setting.job and setting.kind in SAMPLES and setting.name not in explicit:
            assert values[setting.name] == SAMPLES[setting.kind][1], setting.name


def test_every_setting_has_its_variable_and_the_environment_sets_it() -> None:
    env = {
        "STYLDOD_CONCURRENCY": "3",
        "STYLDOD_RPS": "7.5",
        "STYLDOD_DRY_RUN": "TRUE",
        "STYLDOD_LEDGER": "no",
        "STYLDOD_ORDER_BY": "none",
        "STYLDOD_BUDGET_URL": "process",
        "STYLDOD_LEASE_S": "12",
    }
    settings = from_environment(env)

    assert (settings.concurrency, settings.rps, settings.dry_run, settings.ledger) == (
        3,
        7.5,
        True,
        False,
    )
    assert (settings.order_by, settings.budget, settings.lease_s) == ("none", "process", 12.0)
    for setting in SETTINGS:
        if setting.in_settings and setting.kind != "options":
            assert setting.variable and setting.variable.startswith("STYLDOD_"), setting.name
    with pytest.raises(ConfigurationError, match=r"\$STYLDOD_CONCURRENCY: 'many' is not a whole"):
        from_environment({"STYLDOD_CONCURRENCY": "many"})


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *[("TRUE", True), ("True", True), ("yes", True), ("1", True), ("on", True)],
        *[("False", False), ("FALSE", False), ("no", False), ("0", False), ("off", False)],
    ],
)
def test_booleans_take_any_case(text: str, value: bool) -> None:
    assert boolean(text) is value
    assert from_environment({"STYLDOD_FOLLOW_SYMLINKS": text}).follow_symlinks is value


def test_the_readme_table_is_the_registrys() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start, end = readme.index(README_BEGIN), readme.index(README_END) + len(README_END)

    assert readme[start:end] == readme_table(), (
        "the README's option table is stale: paste `python -m styldod_batch.option_registry`"
    )
    for setting in SETTINGS:
        assert f"`{setting.name}` |" in readme_table(), setting.name
    for option in ("basic_editing", "service", "style", "notes"):
        assert f"| `{option}` |" in readme_table()


async def test_manifest_columns_and_global_config_take_any_case_and_warn_on_unknown_names(
    tmp_path: Path,
) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 50 + b"\xff\xd9")
    manifest = tmp_path / "job.csv"
    manifest.write_text(
        "path,order,basic_editing,basic_edting\na.jpg,L1,TRUE,\nb.jpg,L1,no,\nc.jpg,L1,,x\n",
        encoding="utf-8",
    )
    global_config = tmp_path / "global.json"
    global_config.write_text('{"options": {"stlye": "modern"}}', encoding="utf-8")
    args = ["upload", "--manifest", str(manifest), "--dry-run", "--json"]

    planned = await run_main(*args, "--global-config", str(global_config))
    strict = await run_main(*args, "--strict-options")

    assert planned.returncode == 0, planned.stderr
    options = {i["client_image_id"]: i["options"] for i in planned.json()["plan"][0]["images"]}
    assert options["a.jpg"]["basic_editing"] is True
    assert options["b.jpg"]["basic_editing"] is False
    assert "unknown option 'basic_edting' (did you mean 'basic_editing'?)" in planned.stderr
    assert "global.json (global configuration): unknown option 'stlye'" in planned.stderr
    assert "did you mean 'style'?" in planned.stderr
    assert strict.returncode == 2
    assert "unknown option 'basic_edting'" in strict.stderr
