"""The sandbox's settings: keys and their global configuration, speed, faults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from styldod_batch.contract import DEFAULT_CONTRACT, Contract
from styldod_batch.errors import ConfigurationError


@dataclass(slots=True)
class Faults:
    """Fault injection per endpoint class. Probabilities are in [0, 1]; mutable at run time."""

    api_5xx: float = 0.0
    storage_5xx: float = 0.0
    api_429: float = 0.0
    storage_429: float = 0.0
    # A connection reset after part of the request body has arrived.
    api_reset: float = 0.0
    storage_reset: float = 0.0
    # An order is created, then its answer (a replay's too) is replaced by a 503: the client
    # cannot tell whether the order exists.
    order_answer_lost: float = 0.0
    # This share of files is refused by storage with 403 on every try (a bad URL): chosen by
    # the file's name, so the same files in every run and on a fresh URL.
    storage_403: float = 0.0
    # The next N PUTs are answered 307, to the same object on the gateway's second address
    # (as S3 answers a new bucket's first requests); the PUT there goes through.
    storage_redirects: int = 0
    # The next N API calls are answered 429 (after the key's own window, before ``api_429``'s
    # roll): a test that needs a 429 gets one.
    api_429_next: int = 0
    # The next N PUTs are answered 503 (before ``storage_5xx``'s roll): a test that needs a
    # retried PUT gets one, and no file fails for want of luck.
    storage_5xx_next: int = 0
    # The Retry-After values injected 429s carry (garbage and huge ones included, to see a
    # client cope), taken in turn: the first 429 carries the first, so a test knows it was sent.
    retry_after_values: tuple[str, ...] = ("1",)
    retry_afters_sent: int = 0
    latency_ms: float = 0.0

    def next_retry_after(self) -> str:
        value = self.retry_after_values[self.retry_afters_sent % len(self.retry_after_values)]
        self.retry_afters_sent += 1
        return value

    def take_next(self, name: str) -> bool:
        """Whether one of the next N requests of counter ``name`` (``storage_redirects``,
        ``api_429_next``, ``storage_5xx_next``) is left; takes it if so."""
        left: int = getattr(self, name)
        if left <= 0:
            return False
        setattr(self, name, left - 1)
        return True

    def validate(self) -> None:
        for name in (
            "api_5xx",
            "storage_5xx",
            "api_429",
            "storage_429",
            "api_reset",
            "storage_reset",
            "order_answer_lost",
            "storage_403",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigurationError(f"fault probability {name}={value} is not in [0, 1]")
        for name in ("storage_redirects", "api_429_next", "storage_5xx_next"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name}={getattr(self, name)} is negative")
        if not self.retry_after_values:
            raise ConfigurationError("retry_after_values needs at least one value")
        if self.latency_ms < 0:
            raise ConfigurationError(f"latency_ms={self.latency_ms} is negative")


@dataclass(slots=True)
class KeyConfig:
    """One API key and its global configuration (the seed's lowest-precedence defaults)."""

    secret: str = "sandbox-secret"  # noqa: S105 (the sandbox's documented default)
    options: dict[str, Any] = field(default_factory=dict)
    webhook_url: str | None = None
    contact: dict[str, Any] = field(default_factory=dict)
    # Orders beyond this many images in total are declined with 402 (None: unlimited).
    credit_images: int | None = None
    # A read-only key gets 403 on every POST.
    read_only: bool = False


@dataclass(slots=True)
class SandboxConfig:
    host: str = "127.0.0.1"
    port: int = 0
    storage_port: int = 0
    api_key: str = "sandbox-key"
    rps: int = 20
    url_ttl_s: int = 14400
    # Extra keys and per-key global configuration (see ``load_global_config``).
    keys: dict[str, KeyConfig] = field(default_factory=dict)
    # When set, every API call must carry the contract's version header with this value.
    required_version: str | None = None
    faults: Faults = field(default_factory=Faults)
    # Seconds between an order's lifecycle events.
    order_step_s: float = 0.5
    # Webhook retry intervals (up to 3 retries at increasing intervals).
    webhook_retry_delays_s: tuple[float, ...] = (0.5, 1.0, 2.0)
    webhook_timeout_s: float = 5.0
    # Count storage PUTs in their key's rate window too (the URL's key): over the limit, a PUT
    # gets 429 SlowDown, as an API call gets 429.
    limit_storage_per_key: bool = False
    log_path: Path | None = None
    contract: Contract = DEFAULT_CONTRACT

    def key_configs(self) -> dict[str, KeyConfig]:
        keys = dict(self.keys)
        keys.setdefault(self.api_key, KeyConfig())
        return keys


def load_global_config(path: Path) -> dict[str, KeyConfig]:
    """Read ``{"keys": {"<api key>": {"secret", "options", "webhook_url", "contact", ...}}}``."""
    try:
        raw = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read global config: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid JSON: {exc}") from exc
    keys = raw.get("keys") if isinstance(raw, dict) else None
    if not isinstance(keys, dict):
        raise ConfigurationError(f"{path}: expected an object with a 'keys' object")
    result: dict[str, KeyConfig] = {}
    allowed = set(KeyConfig.__slots__)
    for index, (key, entry) in enumerate(keys.items()):
        if not isinstance(entry, dict):
            raise ConfigurationError(f"{path}: keys entry #{index + 1} must be an object")
        unknown = set(entry) - allowed
        if unknown:
            raise ConfigurationError(
                f"{path}: keys entry #{index + 1}: unknown field(s) {', '.join(sorted(unknown))}"
            )
        if not isinstance(entry.get("options", {}), dict):
            raise ConfigurationError(
                f"{path}: keys entry #{index + 1}: 'options' must be an object"
            )
        result[str(key)] = KeyConfig(**entry)
    return result
