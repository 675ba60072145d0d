from collections.abc import Iterator

import pytest

pytest_plugins = ["styldod_batch.sandbox.pytest_plugin"]


@pytest.fixture(autouse=True)
def _own_ledgers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each test keeps its ledgers (the default state folder) to itself, runner children
    included: they inherit the environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
        patch.delenv("STYLDOD_STATE", raising=False)
        yield
