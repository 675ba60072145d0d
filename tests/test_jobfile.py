"""The job file: house defaults in TOML, checked key by key, under the command line's flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from styldod_batch.errors import ConfigurationError
from styldod_batch.jobfile import load_job_file, merge_settings
from styldod_batch.settings import Settings

VALID = """
base_url = "https://uat-orderapi.styldod.com"
api_version = "2024-09-11"
rps = 10
upload_rps = 0
concurrency = 8
order_by = "none"
order_size = 50
webhook_url = "https://hooks.example.com/styldod"

[options]
basic_editing = true
service = "virtual_staging"
house_style = "warm"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_valid_job_file_gives_settings_keyword_arguments(tmp_path: Path) -> None:
    values = load_job_file(write(tmp_path, VALID))

    assert values == {
        "base_url": "https://uat-orderapi.styldod.com",
        "api_version": "2024-09-11",
        "rps": 10.0,
        "upload_rps": 0.0,
        "concurrency": 8,
        "order_by": "none",
        "order_size": 50,
        "webhook_url": "https://hooks.example.com/styldod",
        "options": {"basic_editing": True, "service": "virtual_staging", "house_style": "warm"},
    }
    assert isinstance(values["rps"], float)
    settings = Settings(**values)
    assert (settings.rps, settings.order_size, settings.order_by) == (10.0, 50, "none")


def test_an_empty_job_file_sets_nothing(tmp_path: Path) -> None:
    assert load_job_file(write(tmp_path, "# nothing yet\n")) == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'colour = "blue"\n',
            r"job\.toml: unknown key 'colour'; accepted: .*api_version, base_url",
        ),
        ("order-size = 20\n", r"job\.toml: unknown key 'order-size' \(did you mean 'order_size'"),
        ("[grouping]\norder_size = 20\n", r"job\.toml: unknown key 'grouping'"),
    ],
)
def test_an_unknown_key_is_refused_naming_file_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        load_job_file(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('rps = "fast"\n', r"job\.toml: rps must be a number, not the string 'fast'"),
        ("rps = true\n", r"job\.toml: rps must be a number, not a boolean"),
        ("order_size = 1.5\n", r"job\.toml: order_size must be an integer, not 1\.5"),
        ("concurrency = [4]\n", r"job\.toml: concurrency must be an integer, not an array"),
        ("webhook_url = 3\n", r"job\.toml: webhook_url must be a string, not 3"),
        ('options = "basic"\n', r"job\.toml: options must be a table"),
        ('[options]\nbasic_editing = "maybe"\n', r"job\.toml: options\.basic_editing: must be a b"),
        ('wait = "maybe"\n', r"job\.toml: wait must be a boolean, not the string 'maybe'"),
        ("max_images = 0\n", r"job\.toml: max_images must be at least 1, not 0"),
        ('log_format = "xml"\n', r"job\.toml: log_format must be 'text' or 'json', not 'xml'"),
        ('[options]\nservice = "painting"\n', r"options\.service: unknown service 'painting'"),
        ("[options]\nimage_urls = []\n", r"options\.image_urls: set by the uploader"),
        ("order_size = 500\n", r"job\.toml: order_size must be between 1 and 100"),
        ("rps = 0\n", r"job\.toml: rps must be a positive"),
        ('order_by = "colour"\n', r"job\.toml: order_by must be 'folder' or 'none'"),
        ('base_url = "http://example.com"\n', r"job\.toml: base URL .* plain http"),
    ],
)
def test_a_wrong_type_or_value_is_refused_naming_file_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        load_job_file(write(tmp_path, text))


@pytest.mark.parametrize("key", ["api_key", "api-key", "API_SECRET", "secret", "options.apikey"])
def test_an_api_key_in_the_job_file_is_refused_without_echoing_it(tmp_path: Path, key: str) -> None:
    table, _, name = key.rpartition(".")
    text = (f"[{table}]\n" if table else "") + f'{name} = "sk_live_do_not_print"\n'
    with pytest.raises(ConfigurationError) as caught:
        load_job_file(write(tmp_path, text))

    message = str(caught.value)
    assert f"job.toml: {key}: an API key or secret does not belong in a job file" in message
    assert "STYLDOD_API_KEY" in message
    assert "sk_live_do_not_print" not in message


def test_an_unreadable_or_invalid_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"missing\.toml: cannot read the job file"):
        load_job_file(tmp_path / "missing.toml")
    with pytest.raises(ConfigurationError, match=r"job\.toml: not valid TOML: .*line 1"):
        load_job_file(write(tmp_path, "rps = = 3\n"))


def test_a_flag_given_overrides_the_job_file_and_an_absent_flag_does_not() -> None:
    job = {"rps": 10.0, "concurrency": 8, "order_by": "none", "webhook_url": "https://a.example"}
    flags = {"rps": 5.0, "concurrency": None, "order_by": "folder", "order_size": 20}

    assert merge_settings(job, flags) == {
        "rps": 5.0,
        "concurrency": 8,
        "order_by": "folder",
        "order_size": 20,
        "webhook_url": "https://a.example",
    }
    assert job["rps"] == 10.0, "the job file's values are not modified"


def test_options_merge_name_by_name_with_the_flags_on_top(tmp_path: Path) -> None:
    job = load_job_file(write(tmp_path, VALID))
    flags = {"options": {"basic_editing": False, "style": "modern"}}

    merged = merge_settings(job, flags)

    assert merged["options"] == {
        "basic_editing": False,
        "service": "virtual_staging",
        "house_style": "warm",
        "style": "modern",
    }
    assert merge_settings({}, flags)["options"] == flags["options"]
    assert merge_settings(job, {"options": None})["options"] == job["options"]


def test_booleans_in_a_job_file_take_any_case_yes_no_and_1_0(tmp_path: Path) -> None:
    text = """
dry_run = "TRUE"
follow_symlinks = "yes"
reorder_changed = 1
ledger = "False"
wait = "no"

[options]
basic_editing = "TRUE"
"""
    values = load_job_file(write(tmp_path, text))

    assert values == {
        "dry_run": True,
        "follow_symlinks": True,
        "reorder_changed": True,
        "ledger": False,
        "wait": False,
        "options": {"basic_editing": True},
    }
    assert load_job_file(write(tmp_path, '[options]\nbasic_editing = "no"\n'))["options"] == {
        "basic_editing": False
    }


def test_the_runners_own_settings_are_job_file_keys(tmp_path: Path) -> None:
    text = """
max_images = 500
wait = true
wait_timeout = 60
download = "edited"
listen = "127.0.0.1:8080"
strict_options = true
"""
    values = load_job_file(write(tmp_path, text))

    assert values == {
        "max_images": 500,
        "wait": True,
        "wait_timeout": 60.0,
        "download": Path("edited"),
        "listen": ("127.0.0.1", 8080),
        "strict_options": True,
    }


def test_an_unknown_option_name_warns_with_the_nearest_and_strict_refuses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, '[options]\nbasic_edting = true\nx_house_code = "warm"\n')

    with caplog.at_level("WARNING", logger="styldod_batch"):
        values = load_job_file(path)

    assert values["options"] == {"basic_edting": True, "x_house_code": "warm"}
    warnings = [r.getMessage() for r in caplog.records]
    assert any(
        "[options]: unknown option 'basic_edting' (did you mean 'basic_editing'?)" in w
        for w in warnings
    ), warnings
    assert any("unknown option 'x_house_code' (known: basic_editing" in w for w in warnings)
    with pytest.raises(ConfigurationError, match=r"unknown option 'basic_edting'.*strict"):
        load_job_file(path, strict_options=True)
    strict_in_file = write(tmp_path, "strict_options = true\n[options]\nbasic_edting = true\n")
    with pytest.raises(ConfigurationError, match=r"did you mean 'basic_editing'"):
        load_job_file(strict_in_file)
