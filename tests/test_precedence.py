"""Option precedence (image > apply_to_all > the key's global configuration): the client's
``effective_options`` against the sandbox's server-side rule, as functions and over HTTP.
And the settings' precedence (defaults < job file < environment < flags), through the
runner."""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from styldod_batch.cli import upload as cli_upload
from styldod_batch.contract import SERVICES
from styldod_batch.option_registry import BY_NAME
from styldod_batch.orders import effective_options
from styldod_batch.sandbox import KeyConfig
from styldod_batch.sandbox.api import resolve_options
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from styldod_batch.settings import Settings
from tests.helpers import make_tree
from tests.runner_inprocess import run_main, run_main_sync

KNOWN = ("basic_editing", "service", "style", "notes")
UNKNOWN = ("lighting", "sky_replacement", "x_house_code")

# The seed's own example ("Global Configuration and Options Precedence").
SEED_GLOBAL = {"basic_editing": True}
SEED_APPLY_TO_ALL = {"basic_editing": False}

Options = dict[str, Any]


def first_set(name: str, *levels: Mapping[str, Any]) -> Any:
    """The seed's rule spelled out for one option: the first level, highest first, that sets
    it (a null sets nothing)."""
    for level in levels:
        if level.get(name) is not None:
            return level[name]
    return None


def expected_options(global_: Options, apply_to_all: Options, image: Options) -> Options:
    names = {*global_, *apply_to_all, *image}
    chosen = {name: first_set(name, image, apply_to_all, global_) for name in names}
    return {name: value for name, value in chosen.items() if value is not None}


level = st.dictionaries(
    st.sampled_from(KNOWN + UNKNOWN),
    # A small alphabet: Hypothesis's full Unicode tables cost seconds to load on a fresh machine.
    st.one_of(st.booleans(), st.text(alphabet="ab é-", max_size=6), st.none()),
    max_size=len(KNOWN + UNKNOWN),
)


# Generation is slow only when other test processes take the CPU: not a property of the test.
@hypothesis_settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(level, level, level)
def test_client_and_server_resolve_every_option_set_alike(
    global_: Options, apply_to_all: Options, image: Options
) -> None:
    client = effective_options(global_, apply_to_all, image)
    server = resolve_options(global_, apply_to_all, image)

    assert client == server
    assert client == expected_options(global_, apply_to_all, image)


def test_the_seeds_example() -> None:
    for resolve in (effective_options, resolve_options):
        # The image that sets it keeps its own value; the others get apply_to_all's.
        assert resolve(SEED_GLOBAL, SEED_APPLY_TO_ALL, {"basic_editing": True}) == {
            "basic_editing": True
        }
        assert resolve(SEED_GLOBAL, SEED_APPLY_TO_ALL, {}) == {"basic_editing": False}
        # Neither the image nor apply_to_all sets it: the global configuration's value.
        assert resolve(SEED_GLOBAL, {}, {}) == {"basic_editing": True}
        assert resolve(SEED_GLOBAL, {"basic_editing": None}, {"basic_editing": None}) == {
            "basic_editing": True
        }


# -- over HTTP ---------------------------------------------------------------------------------

# An order with its levels: the key's global options, apply_to_all, and three images' options.
Case = tuple[Options, Options, list[Options]]

SEED_CASES: list[Case] = [
    (SEED_GLOBAL, SEED_APPLY_TO_ALL, [{"basic_editing": True}, {}, {"style": "modern"}]),
    (SEED_GLOBAL, {}, [{}, {"basic_editing": False}, {"basic_editing": None}]),
]


def random_level(rng: random.Random) -> Options:
    """Options the API accepts (known names with their types), some null, some unknown."""
    candidates: dict[str, list[Any]] = {
        "basic_editing": [True, False, None],
        "service": [*sorted(SERVICES), None],
        "style": ["modern", "scandinavian", "", None],
        "notes": ["keep the lamp", None],
        **{name: [True, False, "on", "", None] for name in UNKNOWN},
    }
    return {name: rng.choice(values) for name, values in candidates.items() if rng.random() < 0.45}


def random_cases(count: int, seed: int) -> list[Case]:
    rng = random.Random(seed)
    return [
        (random_level(rng), random_level(rng), [random_level(rng) for _ in range(3)])
        for _ in range(count)
    ]


async def place_order(
    http: aiohttp.ClientSession, base_url: str, key: str, name: str, case: Case
) -> dict[str, Any]:
    """Upload three tiny images, order them with the case's options, and read the order."""
    _, apply_to_all, images = case
    headers = {"api-key": key}
    bodies = [f"{name}-{n}".encode() * (n + 1) for n in range(len(images))]
    files = [
        {"file_name": f"{name}-{n}.jpg", "content_type": "image/jpeg", "content_length": len(b)}
        for n, b in enumerate(bodies)
    ]
    async with http.post(f"{base_url}/v2/upload-urls", json={"files": files}, headers=headers) as r:
        assert r.status == 200, await r.text()
        targets = (await r.json())["upload_urls"]
    for target, body in zip(targets, bodies, strict=True):
        put_headers = {"Content-Type": "image/jpeg"}
        async with http.put(target["upload_url"], data=body, headers=put_headers) as r:
            assert r.status == 200, await r.text()
    image_list = [
        {"client_image_id": f"img-{n}", "image_urls": [t["image_url"]], "sequence": n + 1, **opts}
        for n, (t, opts) in enumerate(zip(targets, images, strict=True))
    ]
    order: dict[str, Any] = {"order_name": name, "image_list": image_list}
    if apply_to_all:
        order["apply_to_all"] = apply_to_all
    async with http.post(f"{base_url}/v2/orders", json=order, headers=headers) as r:
        assert r.status == 200, await r.text()
        order_id = (await r.json())["orderID"]
    async with http.get(f"{base_url}/v2/orders/{order_id}", headers=headers) as r:
        assert r.status == 200, await r.text()
        view: dict[str, Any] = await r.json()
    return view


async def test_the_sandbox_applies_the_same_precedence_over_http(
    sandbox_factory: SandboxFactory,
) -> None:
    cases = SEED_CASES + random_cases(10, seed=20240911)
    # One key per case, each with that case's global configuration; "sandbox-key" is the seed's.
    keys = {"sandbox-key" if n == 0 else f"case-{n}-key": case for n, case in enumerate(cases)}
    sandbox = await sandbox_factory(
        rps=1000, keys={key: KeyConfig(options=case[0]) for key, case in keys.items()}
    )

    async with aiohttp.ClientSession() as http:
        for n, (key, case) in enumerate(keys.items()):
            global_, apply_to_all, images = case
            view = await place_order(http, sandbox.base_url, key, f"case-{n}", case)
            got = {image["client_image_id"]: image["options"] for image in view["image_list"]}
            want = {
                f"img-{i}": effective_options(global_, apply_to_all, opts)
                for i, opts in enumerate(images)
            }
            assert got == want, f"case {n}: {case}"

            if n == 0:  # The seed's example, stated in its own words.
                assert got == {
                    "img-0": {"basic_editing": True},
                    "img-1": {"basic_editing": False},
                    "img-2": {"basic_editing": False, "style": "modern"},
                }
            elif n == 1:
                assert [o["basic_editing"] for o in got.values()] == [True, False, True]


# -- settings: defaults < job file < environment < flags, through the runner ------------------


async def test_a_job_files_base_url_never_beats_the_environments(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """A shared job file naming its own host must not receive the user's key (issue 18.9)."""
    make_tree(tmp_path / "photos", folders=1, files=2, size=100)
    users = await sandbox_factory(rps=1000)
    elsewhere = await sandbox_factory(rps=1000)
    job = tmp_path / "shared.toml"
    job.write_text(f'base_url = "{elsewhere.base_url}"\nrps = 200\n', encoding="utf-8")
    env = {"STYLDOD_BASE_URL": users.base_url, "STYLDOD_API_KEY": users.api_key}

    done = await run_main("upload", str(tmp_path / "photos"), "--job", str(job), "--json", env=env)

    assert done.returncode == 0, done.stderr
    assert done.json()["images"]["uploaded"] == 2
    assert len(elsewhere.log) == 0, "the job file's host got a request (and the key)"
    assert users.log.select(kind="api", method="POST", path_prefix="/v2/orders")

    # A flag still beats the environment.
    flagged = await run_main(
        "upload",
        str(tmp_path / "photos"),
        "--base-url",
        elsewhere.base_url,
        "--dry-run",
        "--json",
        env={"STYLDOD_BASE_URL": "https://never.example.com"},
    )
    assert flagged.returncode == 0, flagged.stderr


# name: (job file TOML value, environment text, flag arguments, the value each level gives)
LAYERS: dict[str, tuple[str, str, list[str], tuple[Any, Any, Any, Any]]] = {
    "base_url": (
        '"https://job.example.com"',
        "https://env.example.com",
        ["--base-url", "https://flag.example.com"],
        (
            "https://orderapi.styldod.com",
            "https://job.example.com",
            "https://env.example.com",
            "https://flag.example.com",
        ),
    ),
    "rps": ("10", "7", ["--rps", "5"], (20.0, 10.0, 7.0, 5.0)),
    "concurrency": ("8", "4", ["--concurrency", "2"], (16, 8, 4, 2)),
    "order_size": ("50", "40", ["--order-size", "30"], (100, 50, 40, 30)),
    "lease_s": ("20", "15", ["--lease", "9"], (30.0, 20.0, 15.0, 9.0)),
    "budget": (
        '"process"',
        "file:",
        ["--budget", "redis://127.0.0.1:1/0"],
        (None, "process", "file:", "redis://127.0.0.1:1/0"),
    ),
    "follow_symlinks": ('"TRUE"', "False", ["--follow-symlinks"], (False, True, False, True)),
    "ledger": ("false", "yes", ["--no-journal"], (True, False, True, False)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_each_level_overrides_the_one_below(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_value, env_value, flag_args, expected = LAYERS[name]
    variable = BY_NAME[name].variable
    assert variable is not None
    job = tmp_path / "job.toml"
    job.write_text(f"{name} = {job_value}\n", encoding="utf-8")
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 64 + b"\xff\xd9")
    seen: list[Settings] = []

    def capture(args: Any, settings: Settings, source: Any) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(cli_upload, "_upload", capture)
    base = ["upload", str(tmp_path / "a.jpg"), "--dry-run"]
    key = {"STYLDOD_API_KEY": "k"}
    runs = [
        run_main_sync(*base, env=key),
        run_main_sync(*base, "--job", str(job), env=key),
        run_main_sync(*base, "--job", str(job), env={**key, variable: env_value}),
        run_main_sync(*base, "--job", str(job), *flag_args, env={**key, variable: env_value}),
    ]

    assert [r.returncode for r in runs] == [0, 0, 0, 0], [r.stderr for r in runs]
    assert tuple(getattr(s, name) for s in seen) == expected
