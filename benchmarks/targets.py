"""The servers the contenders send to, all on 127.0.0.1, and how to check what they stored.

* ``SeaweedTarget``: a SeaweedFS of our own. PUT URLs are pre-signed straight against its S3
  port, so the engine's uploader, curl and the plain script PUT the very same URLs s5cmd and
  rclone reach with the credentials: one server for every contender.
* ``NginxSink``: nginx's DAV module on tmpfs, a sink that drains as fast as a server can, so
  what is left is the client's own cost.
* ``SandboxProcess``: ``styldod-batch sandbox`` as a separate process, for the full engine
  (Order API + storage gateway + its own SeaweedFS) and the rate-limited job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import botocore.config
import botocore.session
import orjson

from benchmarks.proc import Service, children_of, clean_env, stop_if_same
from styldod_batch.sandbox.presign import Presigner
from styldod_batch.sandbox.seaweed import SeaweedS3, free_port

# The key the benchmarks' sandbox accepts (its command would otherwise make up one).
SANDBOX_API_KEY = "sandbox-key"

URL_TTL_S = 6 * 3600
READY_TIMEOUT_S = 90.0


class Target(Protocol):
    """Somewhere files can be PUT to pre-signed (or plain) URLs, then checked and cleared."""

    name: str

    def urls(self, prefix: str, names: list[str], content_type: str) -> list[str]: ...

    def stored(self, prefix: str) -> dict[str, int]: ...

    def clear(self, prefix: str) -> None: ...


def wait_for_port(port: int, deadline_s: float, alive: Any = None) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if alive is not None and not alive():
            raise RuntimeError(f"the server for port {port} exited while starting")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answered on 127.0.0.1:{port} within {deadline_s} s")
        time.sleep(0.05)


class SeaweedTarget:
    name = "seaweedfs"
    bucket = "bench"

    def __init__(self) -> None:
        self.s3 = SeaweedS3("127.0.0.1")
        self._presigner: Presigner | None = None
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        return self.s3.endpoint

    @property
    def access_key(self) -> str:
        return self.s3.credentials.access_key

    @property
    def secret_key(self) -> str:
        return self.s3.credentials.secret_key

    def start(self) -> None:
        asyncio.run(self.s3.start())
        self._presigner = Presigner(
            self.s3.credentials,
            public_endpoint=self.endpoint,
            direct_endpoint=self.endpoint,
            bucket=self.bucket,
        )
        asyncio.run(self._presigner.create_bucket())
        self._client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.s3.credentials.region,
            config=botocore.config.Config(
                signature_version="s3v4", s3={"addressing_style": "path"}
            ),
        )

    def stop(self) -> None:
        self.s3.stop()

    def warm_up(self) -> None:
        """SeaweedFS grows its volumes on the first writes: let no contender pay for that."""
        for index in range(48):
            size = 16 * 1024 * 1024 if index % 12 == 0 else 1024 * 1024
            self._client.put_object(Bucket=self.bucket, Key=f"warm-up/{index}", Body=b"w" * size)
        self.clear("warm-up")

    def urls(self, prefix: str, names: list[str], content_type: str) -> list[str]:
        assert self._presigner is not None
        sign = self._presigner.upload_url
        return [sign(f"{prefix}/{name}", content_type, URL_TTL_S) for name in names]

    def stored(self, prefix: str) -> dict[str, int]:
        found: dict[str, int] = {}
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix + "/"):
            for obj in page.get("Contents", []):
                found[obj["Key"][len(prefix) + 1 :]] = int(obj["Size"])
        return found

    def clear(self, prefix: str) -> None:
        keys = [f"{prefix}/{name}" for name in self.stored(prefix)]
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            self._client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True},
            )


NGINX_CONF = """\
{user}
worker_processes 2;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 100000;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        client_max_body_size 0;
        client_body_buffer_size 1m;
        location /put/ {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw;
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


class NginxSink:
    """nginx from Debian with ``dav_methods PUT``; request bodies land on tmpfs."""

    name = "sink"

    def __init__(self, binary: str) -> None:
        self.binary = binary
        base = "/dev/shm" if Path("/dev/shm").is_dir() else None
        self.root = Path(tempfile.mkdtemp(prefix="styldod-bench-nginx-", dir=base))
        self.port = free_port()
        self._service: Service | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        (self.root / "www" / "put").mkdir(parents=True)
        # Workers run as "nobody" unless told otherwise; the sink folder is ours (root's).
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self.root / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, root=self.root, port=self.port))
        self._service = Service.start(
            "nginx",
            [self.binary, "-c", str(conf), "-g", "daemon off;"],
            env=clean_env(),
            log_path=self.root / "stderr.log",
        )
        wait_for_port(self.port, 15.0, self._service.alive)

    def stop(self) -> None:
        if self._service is not None:
            self._service.stop(grace_s=5.0)
            self._service = None
        shutil.rmtree(self.root, ignore_errors=True)

    def urls(self, prefix: str, names: list[str], content_type: str) -> list[str]:
        return [f"{self.base_url}/put/{prefix}/{name}" for name in names]

    def stored(self, prefix: str) -> dict[str, int]:
        folder = self.root / "www" / "put" / prefix
        if not folder.is_dir():
            return {}
        return {
            path.relative_to(folder).as_posix(): path.stat().st_size
            for path in folder.rglob("*")
            if path.is_file()
        }

    def clear(self, prefix: str) -> None:
        shutil.rmtree(self.root / "www" / "put" / prefix, ignore_errors=True)


class SandboxProcess:
    """``styldod-batch sandbox --port 0 --rps R --log FILE`` in its own process."""

    def __init__(self, cli: Path, workdir: Path, *, rps: int = 20) -> None:
        self.cli = cli
        self.workdir = workdir
        self.rps = rps
        self.log_path = workdir / "sandbox-requests.jsonl"
        self.base_url = ""
        self.storage_url = ""
        self.s3_endpoint = ""
        self._service: Service | None = None
        self._helpers: list[tuple[int, str]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()

    def launch(self) -> None:
        """Start it; ``wait_ready`` later, so our own SeaweedFS can start meanwhile."""
        self._service = Service.start(
            "sandbox",
            [
                str(self.cli),
                "sandbox",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--rps",
                str(self.rps),
                "--api-key",
                SANDBOX_API_KEY,
                "--log",
                str(self.log_path),
            ],
            env=clean_env(),
            log_path=self.workdir / "sandbox-stderr.log",
            stdout_pipe=True,
        )
        threading.Thread(target=self._drain, daemon=True, name="sandbox-stdout").start()

    def _drain(self) -> None:
        assert self._service is not None and self._service.process.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for raw in self._service.process.stdout:
                self._lines.put(raw.decode(errors="replace").rstrip("\n"))
        self._lines.put(None)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (self.base_url and self.storage_url):
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(0.01, remaining))
            except queue.Empty:
                raise TimeoutError(f"the sandbox was not ready in {READY_TIMEOUT_S} s") from None
            if line is None:
                raise RuntimeError(
                    "the sandbox exited while starting: "
                    + (self.workdir / "sandbox-stderr.log").read_text()[-2000:]
                )
            if line.startswith("Order API: "):
                self.base_url = line.split(": ", 1)[1].strip()
            elif line.startswith("Storage: "):
                # "Storage: http://127.0.0.1:GW (SeaweedFS S3 at http://127.0.0.1:S3PORT)"
                rest = line.split(": ", 1)[1]
                self.storage_url = rest.split(" ", 1)[0]
                self.s3_endpoint = rest.rsplit(" ", 1)[-1].rstrip(")")
        assert self._service is not None
        # Its SeaweedFS runs in a session of its own: remember it, to be sure it goes too.
        self._helpers = children_of(self._service.pid)

    def stop(self) -> None:
        if self._service is not None:
            self._service.stop(grace_s=15.0)
            self._service = None
        for pid, started in self._helpers:
            stop_if_same(pid, started)
        self._helpers = []

    def log_mark(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, mark: int) -> list[dict[str, Any]]:
        with self.log_path.open("rb") as handle:
            handle.seek(mark)
            return [orjson.loads(line) for line in handle if line.strip()]
