"""Downloads against a hostile output server on 127.0.0.1: one bad output fails only itself,
outputs are saved exactly as sent, no signature reaches a message, and the output host
policy refuses loopback (unless the API is on loopback), link-local, private and
unspecified addresses before any connection, also after a redirect (issue 18, point 10).
Nothing here connects anywhere but 127.0.0.1: a refused address is refused before a
request starts, and host names resolve through a resolver the test gives."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.abc import AbstractResolver, ResolveResult

from styldod_batch.download import DownloadResult, OutputDownloader
from styldod_batch.output_policy import OutputHostPolicy, OutputRefused
from styldod_batch.settings import RetryPolicy, Settings
from tests.hostile_outputs import BOMB, HostileOutputs, body_for, gzipped

ONE_ATTEMPT = RetryPolicy(max_attempts=1)
ORDER = "listing-01"
# The API on loopback (the sandbox): outputs on loopback are allowed.
SANDBOX_POLICY = OutputHostPolicy(allow_loopback=True)


@pytest_asyncio.fixture(loop_scope="session")
async def outputs() -> AsyncIterator[HostileOutputs]:
    async with HostileOutputs() as server:
        yield server


def completed(client_image_id: str, url: str) -> dict[str, Any]:
    return {"client_image_id": client_image_id, "image_status": "completed", "output_url": url}


def downloader(session: aiohttp.ClientSession, directory: Path, **kwargs: Any) -> OutputDownloader:
    return OutputDownloader(
        session,
        directory,
        budget=None,
        ledger=None,
        retry=kwargs.pop("retry", ONE_ATTEMPT),
        concurrency=4,
        policy=kwargs.pop("policy", SANDBOX_POLICY),
        **kwargs,
    )


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".")]


def by_id(results: list[DownloadResult]) -> dict[str, DownloadResult]:
    return {r.client_image_id: r for r in results}


LONG_OK = "a" * 246 + ".jpg"  # 250 bytes: fits, but ".NAME.part-xxxxxxxx" would not
TOO_LONG = "b" * 296 + ".jpg"  # 300 bytes: no file system here takes it


@pytest.mark.parametrize(
    ("bad_id", "bad_path", "named"),
    [
        pytest.param("nul\0.jpg", "/ok/nul", "NUL", id="nul-in-id"),
        pytest.param(TOO_LONG, "/ok/long", "255 bytes", id="300-byte-id"),
        pytest.param("", "/ok/empty", "names no file", id="empty-id"),
        pytest.param("f.jpg", "file:///etc/passwd", "not an http(s) URL", id="file-url"),
        pytest.param("n.jpg", "not a url", "not an http(s) URL", id="not-a-url"),
        pytest.param(
            "r.jpg", "/redirect?to=file:///etc/passwd", "not an http(s) URL", id="redirect-to-file"
        ),
    ],
)
async def test_a_bad_output_fails_only_itself(
    outputs: HostileOutputs, tmp_path: Path, bad_id: str, bad_path: str, named: str
) -> None:
    bad_url = outputs.url(bad_path) if bad_path.startswith("/") else bad_path
    images = [
        completed("first.jpg", outputs.url("/ok/first")),
        completed(bad_id, bad_url),
        completed("sub/last.jpg", outputs.url("/ok/last")),
    ]
    other_order = [completed("other.jpg", outputs.url("/ok/other"))]
    async with aiohttp.ClientSession() as session:
        fetch = downloader(session, tmp_path)
        results, others = await asyncio.gather(
            fetch.fetch_order(ORDER, "1", images), fetch.fetch_order("listing-02", "2", other_order)
        )
    outcome = by_id(results)
    assert outcome["first.jpg"].status == "downloaded"
    assert outcome["sub/last.jpg"].status == "downloaded"
    assert (tmp_path / ORDER / "first.jpg").read_bytes() == body_for("first")
    assert (tmp_path / ORDER / "sub" / "last.jpg").read_bytes() == body_for("last")
    assert [r.status for r in others] == ["downloaded"]
    assert (tmp_path / "listing-02" / "other.jpg").read_bytes() == body_for("other")

    failed = outcome[bad_id]
    assert failed.status == "failed"
    assert failed.error is not None
    assert repr(bad_id) in failed.error, "the reason names the image"
    assert named in failed.error
    assert temporaries(tmp_path) == []


async def test_a_250_byte_id_downloads(outputs: HostileOutputs, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        (result,) = await downloader(session, tmp_path).fetch_order(
            ORDER, "1", [completed(LONG_OK, outputs.url("/ok/long"))]
        )
    assert result.status == "downloaded", result.error
    assert (tmp_path / ORDER / LONG_OK).read_bytes() == body_for("long")


async def test_a_file_and_a_folder_of_one_name_in_one_order(
    outputs: HostileOutputs, tmp_path: Path
) -> None:
    images = [
        completed("x", outputs.url("/ok/x")),
        completed("x/y", outputs.url("/ok/xy")),
        completed("z/y", outputs.url("/ok/zy")),
        completed("z", outputs.url("/ok/z")),
        completed("kept.jpg", outputs.url("/ok/kept")),
    ]
    async with aiohttp.ClientSession() as session:
        outcome = by_id(await downloader(session, tmp_path).fetch_order(ORDER, "1", images))
    assert {k: r.status for k, r in outcome.items()} == {
        "x": "downloaded",
        "x/y": "failed",
        "z/y": "downloaded",
        "z": "failed",
        "kept.jpg": "downloaded",
    }
    assert "'x/y'" in (outcome["x/y"].error or "")
    assert "'z'" in (outcome["z"].error or "")
    assert (tmp_path / ORDER / "x").read_bytes() == body_for("x")
    assert (tmp_path / ORDER / "z" / "y").read_bytes() == body_for("zy")


async def test_outputs_are_saved_exactly_as_sent(outputs: HostileOutputs, tmp_path: Path) -> None:
    images = [
        completed("photo.jpg", outputs.url("/gzip/photo")),
        completed("bomb.jpg", outputs.url("/bomb")),
    ]
    # A session that decompresses by default: the downloader must not let it.
    async with aiohttp.ClientSession() as session:
        results = await downloader(session, tmp_path).fetch_order(ORDER, "1", images)
    assert [r.status for r in results] == ["downloaded", "downloaded"]
    assert (tmp_path / ORDER / "photo.jpg").read_bytes() == gzipped("photo")
    assert (tmp_path / ORDER / "bomb.jpg").stat().st_size == len(BOMB)
    asked = {r.headers.get("Accept-Encoding") for r in outputs.requests}
    assert asked == {"identity"}


async def test_the_download_session_keeps_bytes_and_has_no_total_cap(
    outputs: HostileOutputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from styldod_batch.download import open_download_session

    # The session trusts the environment's proxies: keep this test's traffic on loopback.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "WS_PROXY", "WSS_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)

    async with open_download_session() as session:
        assert session.auto_decompress is False
        assert session.trust_env is True
        assert session.timeout.total is None
        assert session.timeout.sock_read and session.timeout.connect
        (result,) = await downloader(session, tmp_path).fetch_order(
            ORDER, "1", [completed("photo.jpg", outputs.url("/gzip/photo"))]
        )
    assert result.status == "downloaded"
    assert (tmp_path / ORDER / "photo.jpg").read_bytes() == gzipped("photo")


async def test_a_download_still_progressing_is_not_cut_by_a_total_cap(
    outputs: HostileOutputs, tmp_path: Path
) -> None:
    # The session's total cap (aiohttp's default is 300 s) is shorter than the transfer,
    # which never pauses longer than the idle timeout.
    capped = aiohttp.ClientTimeout(total=outputs.pause_s * 2)
    async with aiohttp.ClientSession(timeout=capped) as session:
        (result,) = await downloader(session, tmp_path).fetch_order(
            ORDER, "1", [completed("slow.jpg", outputs.url("/trickle/slow"))]
        )
    assert result.status == "downloaded", result.error
    assert (tmp_path / ORDER / "slow.jpg").read_bytes() == body_for("slow")


async def test_a_stalled_download_fails_after_the_idle_timeout(
    outputs: HostileOutputs, tmp_path: Path
) -> None:
    images = [
        completed("stalled.jpg", outputs.url("/stall?X-Amz-Signature=SECRET-STALL")),
        completed("fine.jpg", outputs.url("/ok/fine")),
    ]
    async with aiohttp.ClientSession() as session:
        fetch = downloader(session, tmp_path, idle_timeout_s=0.5)
        outcome = by_id(await fetch.fetch_order(ORDER, "1", images))
    assert outcome["fine.jpg"].status == "downloaded"
    stalled = outcome["stalled.jpg"]
    assert stalled.status == "failed"
    assert "'stalled.jpg'" in (stalled.error or "")
    assert "Timeout" in (stalled.error or "")
    assert "SECRET" not in (stalled.error or "")
    assert not (tmp_path / ORDER / "stalled.jpg").exists()
    assert temporaries(tmp_path) == []


async def test_failure_messages_show_urls_without_their_query(
    outputs: HostileOutputs, tmp_path: Path
) -> None:
    images = [
        completed("forbidden.jpg", outputs.url("/status/403?X-Amz-Signature=SECRET-403")),
        completed("gone.jpg", outputs.url("/status/500?X-Amz-Signature=SECRET-500")),
        completed(
            "away.jpg", outputs.url("/redirect?to=file:///x%3FX-Amz-Signature%3DSECRET-REDIRECT")
        ),
        completed("odd.jpg", "ftp://127.0.0.1/x?X-Amz-Signature=SECRET-FTP"),
    ]
    async with aiohttp.ClientSession() as session:
        results = await downloader(session, tmp_path).fetch_order(ORDER, "1", images)
    assert [r.status for r in results] == ["failed"] * 4
    for result in results:
        assert result.error is not None
        assert "SECRET" not in result.error, result.error
        assert repr(result.client_image_id) in result.error
    assert "/status/403" in (results[0].error or "")
    assert "403" in (results[0].error or "")


async def test_the_download_folder_is_checked_up_front(tmp_path: Path) -> None:
    from styldod_batch.download import check_download_folder
    from styldod_batch.errors import ConfigurationError

    fresh = tmp_path / "made" / "for" / "outputs"
    check_download_folder(fresh)
    assert fresh.is_dir()
    assert list(fresh.iterdir()) == [], "the probe file is removed"

    (tmp_path / "a-file").write_bytes(b"x")
    blocked = tmp_path / "a-file" / "outputs"
    with pytest.raises(ConfigurationError, match=str(blocked)):
        check_download_folder(blocked)


# -- the output host policy ------------------------------------------------------------------


def resolver(table: dict[str, list[str]]) -> Any:
    """A resolver that answers from ``table`` and nothing else (no DNS in tests)."""

    async def resolve(host: str, _port: int) -> list[str]:
        return table[host]

    return resolve


NAMES = {
    "cdn.example.com": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    "metadata.example.com": ["169.254.169.254"],
    "mixed.example.com": ["93.184.215.14", "10.1.2.3"],
    "v6-private.example.com": ["fd00::1"],
}


@pytest.mark.parametrize(
    ("url", "refused_as"),
    [
        pytest.param("http://169.254.169.254/latest/meta-data/", "link-local", id="metadata"),
        pytest.param("https://169.254.169.254/x", "link-local", id="metadata-https"),
        pytest.param("https://10.0.0.8/x", "private", id="private-10"),
        pytest.param("https://192.168.1.1/x", "private", id="private-192"),
        pytest.param("https://0.0.0.0/x", "unspecified", id="unspecified"),
        pytest.param("https://[::]/x", "unspecified", id="unspecified-v6"),
        pytest.param("https://[fe80::1]/x", "link-local", id="link-local-v6"),
        pytest.param("https://127.0.0.1/x", "loopback", id="loopback"),
        pytest.param("https://[::ffff:127.0.0.1]/x", "loopback", id="mapped-loopback"),
        pytest.param("https://localhost/x", "loopback", id="localhost"),
        pytest.param("https://metadata.example.com/x", "link-local", id="name-to-link-local"),
        pytest.param("https://mixed.example.com/x", "private", id="one-address-private"),
        pytest.param("https://v6-private.example.com/x", "private", id="name-to-ula"),
        pytest.param("http://cdn.example.com/x", "plain http", id="plain-http-public"),
    ],
)
async def test_the_policy_refuses(url: str, refused_as: str) -> None:
    from yarl import URL

    strict = OutputHostPolicy(resolver=resolver(NAMES))
    with pytest.raises(OutputRefused, match=refused_as):
        await strict.check(URL(url))


async def test_the_policy_allows_public_https_and_what_the_flag_or_the_sandbox_allows() -> None:
    from yarl import URL

    strict = OutputHostPolicy(resolver=resolver(NAMES))
    await strict.check(URL("https://cdn.example.com/out.jpg?X-Amz-Signature=s"))
    await strict.check(URL("https://93.184.215.14/out.jpg"))

    sandbox = OutputHostPolicy(allow_loopback=True, resolver=resolver(NAMES))
    await sandbox.check(URL("http://127.0.0.1:8080/out.jpg"))
    await sandbox.check(URL("http://localhost:8080/out.jpg"))
    with pytest.raises(OutputRefused, match="link-local"):
        await sandbox.check(URL("http://169.254.169.254/"))

    flagged = OutputHostPolicy(allow_private=True, resolver=resolver(NAMES))
    for allowed in ("http://10.0.0.8/x", "https://metadata.example.com/x", "http://127.0.0.1/"):
        await flagged.check(URL(allowed))
    with pytest.raises(OutputRefused, match="plain http"):
        await flagged.check(URL("http://cdn.example.com/x"))


def test_the_policy_follows_where_the_api_is() -> None:
    on_loopback = OutputHostPolicy.for_settings(
        Settings(base_url="http://127.0.0.1:8000", api_key="k")
    )
    assert on_loopback.allow_loopback and not on_loopback.allow_private
    real = OutputHostPolicy.for_settings(Settings(api_key="k"))
    assert not real.allow_loopback and not real.allow_private
    flagged = OutputHostPolicy.for_settings(Settings(api_key="k", allow_private_outputs=True))
    assert flagged.allow_private


def counting_session() -> tuple[aiohttp.ClientSession, list[str]]:
    """A session that notes every request it starts (before any connection is made)."""
    started: list[str] = []

    async def on_start(_s: object, _ctx: object, params: aiohttp.TraceRequestStartParams) -> None:
        started.append(str(params.url))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    return aiohttp.ClientSession(trace_configs=[trace]), started


async def test_a_refused_output_is_never_requested(outputs: HostileOutputs, tmp_path: Path) -> None:
    """The API is not on loopback: outputs on loopback, link-local or private addresses fail
    alone, before any request starts; the others download."""
    strict = OutputHostPolicy(resolver=resolver(NAMES))
    images = [
        completed("loop.jpg", outputs.url("/ok/loop")),
        completed("meta.jpg", "http://169.254.169.254/latest/meta-data/iam"),
        completed("named.jpg", "https://metadata.example.com/x?X-Amz-Signature=SECRET"),
        completed("lan.jpg", "https://10.0.0.8/x"),
    ]
    session, started = counting_session()
    async with session:
        results = await downloader(session, tmp_path, policy=strict).fetch_order(ORDER, "1", images)
    assert started == [], "no request was started for a refused output"
    assert outputs.requests == []
    outcome = by_id(results)
    assert {k: r.status for k, r in outcome.items()} == dict.fromkeys(outcome, "failed")
    assert "loopback" in (outcome["loop.jpg"].error or "")
    assert "link-local" in (outcome["meta.jpg"].error or "")
    assert "link-local" in (outcome["named.jpg"].error or "")
    assert "SECRET" not in (outcome["named.jpg"].error or "")
    assert "private" in (outcome["lan.jpg"].error or "")
    assert "--allow-private-outputs" in (outcome["lan.jpg"].error or "")
    assert not (tmp_path / ORDER).exists()


@pytest.mark.parametrize(
    ("target", "refused_as"),
    [
        pytest.param("http://169.254.169.254/latest/meta-data/", "link-local", id="metadata"),
        pytest.param("http://10.0.0.8/x", "private", id="private"),
        pytest.param("http://0.0.0.0:80/x", "unspecified", id="unspecified"),
    ],
)
async def test_a_redirect_is_checked_before_it_is_followed(
    outputs: HostileOutputs, tmp_path: Path, target: str, refused_as: str
) -> None:
    from urllib.parse import quote

    session, started = counting_session()
    first = outputs.url("/redirect?to=" + quote(target, safe=""))
    async with session:
        (result,) = await downloader(session, tmp_path).fetch_order(
            ORDER, "1", [completed("moved.jpg", first)]
        )
    assert result.status == "failed"
    assert refused_as in (result.error or "")
    assert len(started) == 1 and "/redirect" in started[0], "only the first hop was requested"
    assert not (tmp_path / ORDER / "moved.jpg").exists()


async def test_a_redirect_to_a_mapped_link_local_address_is_refused(
    outputs: HostileOutputs, tmp_path: Path
) -> None:
    from urllib.parse import quote

    hop = outputs.url("/redirect?to=" + quote("https://[::ffff:169.254.169.254]/x", safe=""))
    session, started = counting_session()
    async with session:
        (result,) = await downloader(session, tmp_path).fetch_order(
            ORDER, "1", [completed("x.jpg", hop)]
        )
    assert result.status == "failed" and "link-local" in (result.error or "")
    assert len(started) == 1 and "/redirect" in started[0]


class FixedResolver(AbstractResolver):
    """What the download session's connector is told a name resolves to."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        address = self.table[host]
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


async def test_a_name_that_rebinds_to_a_private_address_is_refused_when_connecting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check saw a public address; when connecting, the name resolves to the metadata
    service (DNS rebinding): the session's resolver refuses it, before any connection."""
    from styldod_batch.download import open_download_session

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    check = OutputHostPolicy(resolver=resolver({"rebind.example.com": ["93.184.215.14"]}))
    at_connect = FixedResolver({"rebind.example.com": "169.254.169.254"})
    async with open_download_session(policy=check, resolver=at_connect) as session:
        (result,) = await downloader(session, tmp_path, policy=check).fetch_order(
            ORDER, "1", [completed("r.jpg", "https://rebind.example.com/x?X-Amz-Signature=S")]
        )
    assert at_connect.asked == ["rebind.example.com"]
    assert result.status == "failed"
    assert "now resolves to 169.254.169.254" in (result.error or ""), result.error
    assert "X-Amz-Signature" not in (result.error or "")
