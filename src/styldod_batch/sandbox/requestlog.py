"""What arrived at the sandbox: one entry per request, readable by tests and benchmarks."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson


@dataclass(slots=True)
class LogEntry:
    # Wall-clock arrival time (seconds since the epoch) and a monotonic one for windows.
    at: float
    mono: float
    # api | storage | output | webhook (outgoing deliveries) | control
    kind: str
    method: str
    path: str
    status: int = 0
    bytes_in: int = 0
    # Headers that matter; never the API key.
    headers: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    replayed: bool = False
    error_code: str | None = None
    # Set for an API call: a short fingerprint of the key it authenticated with.
    key_fingerprint: str | None = None
    fault: str | None = None
    order_id: str | None = None
    event: str | None = None
    duration_ms: float = 0.0

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))


class RequestLog:
    """In memory, and optionally appended to a JSON-lines file as each request ends."""

    def __init__(self, path: Path | None = None) -> None:
        self.entries: list[LogEntry] = []
        self._file: IO[bytes] | None = path.open("ab") if path else None

    def start(self, kind: str, method: str, path: str) -> LogEntry:
        entry = LogEntry(at=time.time(), mono=time.monotonic(), kind=kind, method=method, path=path)
        self.entries.append(entry)
        return entry

    def finish(self, entry: LogEntry) -> None:
        entry.duration_ms = round((time.monotonic() - entry.mono) * 1000, 3)
        if self._file is not None:
            self._file.write(entry.to_json() + b"\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __iter__(self) -> Iterator[LogEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def select(
        self,
        kind: str | None = None,
        method: str | None = None,
        status: int | None = None,
        path_prefix: str | None = None,
    ) -> list[LogEntry]:
        return [
            e
            for e in self.entries
            if (kind is None or e.kind == kind)
            and (method is None or e.method == method)
            and (status is None or e.status == status)
            and (path_prefix is None or e.path.startswith(path_prefix))
        ]

    def as_dicts(self) -> list[dict[str, Any]]:
        return [asdict(e) for e in self.entries]

    def max_in_window(self, kind: str | tuple[str, ...] = "api", window_s: float = 1.0) -> int:
        """The most arrivals of ``kind`` (one, or several together) seen in any sliding window
        of ``window_s`` seconds."""
        kinds = (kind,) if isinstance(kind, str) else kind
        return most_in_window([e.mono for e in self.entries if e.kind in kinds], window_s)


def busiest_window(times: Sequence[float], window_s: float = 1.0) -> list[float]:
    """The most of ``times`` that fall in one sliding window of ``window_s`` seconds
    (the earliest such window), in order."""
    times = sorted(times)
    start = 0
    first, end = 0, 0
    for last, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        if last + 1 - start > end - first:
            first, end = start, last + 1
    return times[first:end]


def most_in_window(times: Sequence[float], window_s: float = 1.0) -> int:
    """How many of ``times`` fall in the busiest sliding window of ``window_s`` seconds."""
    return len(busiest_window(times, window_s))
