"""A manifest job end to end: what the dry run plans is what the service applies."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson

from styldod_batch.sandbox import KeyConfig
from styldod_batch.sandbox.pytest_plugin import SandboxFactory
from tests.helpers import image_bytes, json_report, run_cli

GLOBAL = {"basic_editing": True, "notes": "house default", "style": "classic"}


def write_manifest(root: Path) -> Path:
    rows = ["path,client_image_id,order,sequence,basic_editing,service,style"]
    for house in ("north", "south"):
        for index in range(1, 6):
            name = f"{house}/img{index}.jpg"
            (root / house).mkdir(exist_ok=True)
            (root / name).write_bytes(image_bytes(700))
            basic = {1: "false", 2: "true"}.get(index, "")
            service = "day_to_dusk" if index == 3 else ""
            style = "modern" if house == "south" and index > 3 else ""
            sequence = 6 - index
            rows.append(
                f"{name},{house}-{index},house-{house},{sequence},{basic},{service},{style}"
            )
    manifest = root / "job.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


async def test_dry_run_plan_equals_the_options_the_service_applies(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path)
    global_config = tmp_path / "global.json"
    global_config.write_bytes(orjson.dumps({"options": GLOBAL}))
    box = await sandbox_factory(rps=1000, keys={"sandbox-key": KeyConfig(options=GLOBAL)})
    env = {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url}
    common = [
        "upload",
        "--manifest",
        str(manifest),
        "--json",
        "--option",
        "basic_editing=false",
        "--option",
        "notes=listing batch",
    ]

    dry = await asyncio.to_thread(
        run_cli, *common, "--dry-run", "--global-config", str(global_config), env=env
    )
    assert dry.returncode == 0, dry.stderr
    plan = {order["order"]: order["images"] for order in orjson.loads(dry.stdout)["plan"]}
    assert len(box.log) == 0, "a dry run sends nothing"
    assert sorted(plan) == ["house-north", "house-south"]

    real = await asyncio.to_thread(run_cli, *common, "--no-journal", env=env)
    assert real.returncode == 0, real.stderr
    report = json_report(real)
    async with aiohttp.ClientSession(headers={"api-key": box.api_key}) as http:
        for order in report["orders"]:
            async with http.get(f"{box.base_url}/v2/orders/{order['orderID']}") as resp:
                served = await resp.json()
            applied = {
                i["client_image_id"]: (i["sequence"], i["options"]) for i in served["image_list"]
            }
            planned = {
                i["client_image_id"]: (i["sequence"], i["options"]) for i in plan[order["key"]]
            }
            assert applied == planned
    # The seed's rule, visible in the plan: image > apply_to_all > global.
    north = {i["client_image_id"]: i["options"] for i in plan["house-north"]}
    assert north["north-2"]["basic_editing"] is True
    assert north["north-4"] == {
        "basic_editing": False,
        "notes": "listing batch",
        "style": "classic",
    }


async def test_an_invalid_manifest_sends_nothing_unless_skip_invalid(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    (tmp_path / "a.jpg").write_bytes(image_bytes(100))
    manifest = tmp_path / "bad.csv"
    manifest.write_text("path,order,basic_editing\na.jpg,o1,nah\nmissing.jpg,o1,\na.jpg,o2,true\n")
    box = await sandbox_factory(rps=1000)
    env = {"STYLDOD_API_KEY": box.api_key, "STYLDOD_BASE_URL": box.base_url}
    refused = await asyncio.to_thread(
        run_cli, "upload", "--manifest", str(manifest), "--no-journal", env=env
    )
    assert refused.returncode == 2
    assert f"{manifest}:2: basic_editing:" in refused.stderr
    assert f"{manifest}:3: path:" in refused.stderr
    assert len(box.log) == 0
    skipped = await asyncio.to_thread(
        run_cli,
        "upload",
        "--manifest",
        str(manifest),
        "--no-journal",
        "--skip-invalid",
        "--json",
        env=env,
    )
    assert skipped.returncode == 1
    report = json_report(skipped)
    assert report["images"]["uploaded"] == 1 and report["images"]["failed"] == 2
    assert [o["key"] for o in report["orders"]] == ["o2"]


async def test_job_file_defaults_and_flags_over_them(tmp_path: Path) -> None:
    for index in range(1, 8):
        (tmp_path / "photos").mkdir(exist_ok=True)
        (tmp_path / "photos" / f"p{index}.jpg").write_bytes(image_bytes(10))
    job = tmp_path / "house.toml"
    job.write_text(
        'order_by = "none"\norder_size = 3\n[options]\nbasic_editing = true\n'
        'style = "scandinavian"\n'
    )
    dry = await asyncio.to_thread(
        run_cli,
        "upload",
        str(tmp_path / "photos"),
        "--job",
        str(job),
        "--dry-run",
        "--json",
        "--option",
        "style=modern",
    )
    assert dry.returncode == 0, dry.stderr
    plan = orjson.loads(dry.stdout)["plan"]
    assert [len(order["images"]) for order in plan] == [3, 3, 1]
    assert all(
        i["options"] == {"basic_editing": True, "style": "modern"}
        for order in plan
        for i in order["images"]
    )
    secret = tmp_path / "secret.toml"
    secret.write_text('api_key = "sk-live-should-not-be-here"\n')
    refused = await asyncio.to_thread(
        run_cli, "upload", str(tmp_path / "photos"), "--job", str(secret), "--dry-run"
    )
    assert refused.returncode == 2
    assert "sk-live-should-not-be-here" not in refused.stderr + refused.stdout
