"""How big each workload is and how often it runs: the full run, and the quick one for CI."""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Plan:
    mode: str
    concurrency: int
    runs: int
    # (a) many small files
    a_files: int
    a_size: int
    # (b) a few large files
    b_files: int
    b_size: int
    # (c) the rate-limited job
    c_files: int
    c_folders: int
    c_size: int
    c_runs: int
    c_rps: int
    # (d) planning (dry run)
    d_files: int
    d_folders: int
    # (e) very large files through the full engine
    e_files: int
    e_size: int
    e_runs: int
    # One contender run longer than this is stopped and counted as failed (a hang).
    timeout_s: float

    @classmethod
    def full(cls, concurrency: int = 16) -> Plan:
        return cls(
            mode="full",
            concurrency=concurrency,
            runs=3,
            a_files=2000,
            a_size=64 * KIB,
            b_files=16,
            b_size=64 * MIB,
            c_files=1000,
            c_folders=20,
            c_size=64 * KIB,
            c_runs=3,
            c_rps=20,
            d_files=100_000,
            d_folders=100,
            e_files=20,
            e_size=200 * MIB,
            e_runs=3,
            timeout_s=900.0,
        )

    @classmethod
    def quick(cls, concurrency: int = 16) -> Plan:
        return cls(
            mode="quick",
            concurrency=concurrency,
            runs=1,
            a_files=300,
            a_size=64 * KIB,
            b_files=4,
            b_size=16 * MIB,
            c_files=80,
            c_folders=4,
            c_size=64 * KIB,
            c_runs=1,
            c_rps=20,
            d_files=10_000,
            d_folders=20,
            e_files=4,
            e_size=128 * MIB,
            e_runs=1,
            timeout_s=300.0,
        )
