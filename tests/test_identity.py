"""Identity in one place: how a base URL is spelled never changes the account, its ledger or
its budget; the key's fingerprint is one function."""

from __future__ import annotations

import pytest

from styldod_batch.identity import (
    account_id,
    budget_scope,
    canonical_base_url,
    key_fingerprint,
    key_label,
)
from styldod_batch.ledger import ledger_path
from styldod_batch.settings import Settings

SPELLINGS = [
    "https://orderapi.styldod.com",
    "https://orderapi.styldod.com/",
    "HTTPS://OrderAPI.Styldod.COM",
    "https://orderapi.styldod.com:443",
    "https://orderapi.styldod.com/.",
    "https://orderapi.styldod.com/v2/..",
    "https://orderapi.styldod.com//",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_of_a_base_url_is_one_account(spelling: str) -> None:
    assert canonical_base_url(spelling) == "https://orderapi.styldod.com"
    assert account_id(spelling, "sk-1") == account_id(SPELLINGS[0], "sk-1")
    settings = Settings(base_url=spelling, api_key="sk-1")
    assert settings.base_url == "https://orderapi.styldod.com"
    assert ledger_path(settings) == ledger_path(Settings(base_url=SPELLINGS[0], api_key="sk-1"))


def test_what_does_change_the_account() -> None:
    base = canonical_base_url("https://orderapi.styldod.com/v2/")
    assert base == "https://orderapi.styldod.com/v2"
    assert canonical_base_url("https://orderapi.styldod.com:8443") != canonical_base_url(
        "https://orderapi.styldod.com"
    )
    assert canonical_base_url("http://127.0.0.1:80/") == "http://127.0.0.1"
    assert canonical_base_url("http://[::1]:8700/a/%7euser/") == "http://[::1]:8700/a/~user"
    assert canonical_base_url("https://h/a%2fb") == "https://h/a%2Fb"  # reserved stays escaped
    assert account_id("https://uat.styldod.com", "sk-1") != account_id(SPELLINGS[0], "sk-1")
    assert account_id(SPELLINGS[0], "sk-2") != account_id(SPELLINGS[0], "sk-1")
    with pytest.raises(ValueError, match="absolute"):
        canonical_base_url("orderapi.styldod.com")


def test_one_fingerprint_and_the_budget_belongs_to_the_key_alone() -> None:
    assert key_fingerprint("") == "" and key_fingerprint(None) == ""
    assert key_label(None) == "anonymous"
    assert key_label("sk-1") == key_fingerprint("sk-1") != "sk-1"
    assert "sk-1" not in budget_scope("sk-1", "api")
    # No base URL in a budget's name: every spelling, every service of the key, one budget.
    assert budget_scope("sk-1", "api") == f"{key_fingerprint('sk-1')}-api"
