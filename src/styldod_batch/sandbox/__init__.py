"""A local, faithful Order API on real S3 storage (SeaweedFS) for the demo, tests, benchmarks."""

from styldod_batch.sandbox.config import Faults, KeyConfig, SandboxConfig, load_global_config
from styldod_batch.sandbox.requestlog import LogEntry, RequestLog
from styldod_batch.sandbox.seaweed import SeaweedS3
from styldod_batch.sandbox.server import Sandbox, serve_until_signalled

__all__ = [
    "Faults",
    "KeyConfig",
    "LogEntry",
    "RequestLog",
    "Sandbox",
    "SandboxConfig",
    "SeaweedS3",
    "load_global_config",
    "serve_until_signalled",
]
