"""The budget of one machine: every process of a key shares it through a small state file
(JSON), read and rewritten under ``flock`` in a thread, never on the event loop. The steps
are ``step``'s; the worker's side is ``SharedBudget``.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pwd
import stat
import threading
import time
from pathlib import Path

import orjson

from styldod_batch.budget.core import WINDOW_MARGIN_S
from styldod_batch.budget.shared import SharedBudget, log
from styldod_batch.budget.step import Reply, SharedState, step
from styldod_batch.errors import ConfigurationError
from styldod_batch.identity import budget_scope


def _boot_id() -> str:
    """Changes at every boot: CLOCK_MONOTONIC times in the file mean nothing after one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "no-boot-id"


BUDGET_DIR_ENV = "STYLDOD_BUDGET_DIR"


def default_budget_folder() -> Path:
    """One folder per user of the machine, whatever started the process: the user's home as
    the password database has it, never ``$XDG_RUNTIME_DIR`` or ``$HOME``, which a cron job
    and a login session set differently (two folders would be two budgets of one key).
    ``$STYLDOD_BUDGET_DIR`` moves it, on purpose only (tests keep theirs apart)."""
    chosen = os.environ.get(BUDGET_DIR_ENV, "").strip()
    if chosen:
        return Path(chosen)
    try:
        home = Path(pwd.getpwuid(os.geteuid()).pw_dir)
    except KeyError:  # a user without an entry (some containers)
        home = Path.home()
    return home / ".cache" / "styldod-batch" / "budgets"


# A step holds the file's lock for microseconds: a lock held this long means its holder
# stopped (SIGSTOP, a debugger) while holding it. Others take the file over after this.
STUCK_AFTER_S = 2.0


def _lock_holder(inode: int) -> str:
    """Who holds a lock on the file ``inode`` (from ``/proc/locks``), for the message."""
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
                    pid = fields[4]
                    return f"process {pid} ({_process_state(pid)})"
    except OSError:
        pass
    return "another process"


def _process_state(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            code = stat_file.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"
    return {"T": "stopped", "t": "stopped by a debugger", "D": "waiting on a disk"}.get(
        code, "running"
    )


class FileBudget(SharedBudget):
    """One machine, no server: the processes of one key share a budget through a small file
    (JSON state), read and rewritten under ``flock`` in a thread, never on the event loop.

    Times are ``CLOCK_MONOTONIC``, one clock for every process of the machine; the boot id in
    the file tells a state from before a reboot. The file is 0600 in a 0700 folder that no
    other user may write (another user could otherwise replace it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        rate: float,
        *,
        window_s: float = 1.0,
        margin_s: float = WINDOW_MARGIN_S,
        recovery_s: float = 10.0,
        tolerance_s: float | None = None,
        name: str = "budget",
    ) -> None:
        # One machine loses no state behind the workers' backs: no pause at first use.
        super().__init__(
            rate,
            window_s=window_s,
            margin_s=margin_s,
            recovery_s=recovery_s,
            tolerance_s=tolerance_s,
            cold_pause=False,
            name=name,
        )
        self.path = Path(path)
        self._fd: int | None = None
        self._fd_lock = threading.Lock()
        self._retired: list[int] = []  # descriptors of files taken over, closed at close()
        self._boot = _boot_id()
        self._size = 0

    @classmethod
    def for_key(
        cls,
        api_key: str | None,
        rate: float,
        *,
        name: str = "api",
        folder: str | os.PathLike[str] | None = None,
        margin_s: float = WINDOW_MARGIN_S,
    ) -> FileBudget:
        """The budget file of one key and kind of request, in ``folder`` (default:
        ``default_budget_folder()``); named by fingerprint, never by the key."""
        where = Path(folder) if folder is not None else default_budget_folder()
        path = where / f"{budget_scope(api_key, name)}.budget"
        return cls(path, rate, name=name, margin_s=margin_s)

    def describe(self) -> str:
        return f"budget file {self.path}"

    async def _connect(self) -> None:
        self._fd = await asyncio.to_thread(self._open_file)

    def _open_file(self) -> int:
        folder = self.path.parent
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = folder.stat()
        except OSError as exc:
            raise ConfigurationError(f"cannot create the budget folder {folder}: {exc}") from exc
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or info.st_uid not in (0, os.geteuid()):
            raise ConfigurationError(
                f"the budget folder {folder} is writable by others or not yours: use a private "
                "folder (mode 0700)"
            )
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            try:
                fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
                created = True
            except FileExistsError:
                fd = os.open(self.path, flags)
                created = False
        except OSError as exc:
            raise ConfigurationError(f"cannot open the budget file {self.path}: {exc}") from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            os.close(fd)
            raise ConfigurationError(f"the budget file {self.path} is not a file of yours")
        if info.st_mode & 0o077:
            os.fchmod(fd, 0o600)
        if created:
            # Only the process that made the file may call it new ("nothing granted yet"); an
            # empty file found later was emptied, and reads as unknown (``_read``).
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size == 0:
                    os.pwrite(fd, SharedState(boot=self._boot).to_json(), 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        return fd

    async def _disconnect(self) -> None:
        with self._fd_lock:
            fd, self._fd = self._fd, None
            retired, self._retired = self._retired, []
        for old in [*retired, *([] if fd is None else [fd])]:
            os.close(old)

    async def _call(
        self,
        op: str,
        member: str,
        *,
        epoch: int = 0,
        low: bool = False,
        others_waiting: bool = False,
        retry_after_us: int = 0,
    ) -> Reply:
        return await asyncio.to_thread(
            self._locked_step, op, member, epoch, low, others_waiting, retry_after_us
        )

    def _locked_step(
        self,
        op: str,
        member: str,
        epoch: int,
        low: bool,
        others_waiting: bool,
        retry_after_us: int,
    ) -> Reply:
        while True:
            fd = self._current_fd()
            if not self._lock_file(fd):
                if not self._is_current(fd):
                    continue  # replaced while we waited: lock the new one
                fd = self._take_over(fd)
            try:
                if not self._is_current(fd):
                    continue  # replaced between the open and the lock
                now = time.monotonic_ns() // 1000
                state = self._read(fd, now)
                reply = step(
                    state,
                    now,
                    self._boot,
                    self.params,
                    op,
                    worker=self.worker,
                    member=member,
                    epoch=epoch,
                    low=low,
                    others_waiting=others_waiting,
                    retry_after_us=retry_after_us,
                )
                self._write(fd, state.to_json())
                if not self._is_current(fd):
                    # Taken over while this step was held up (this process was stopped): the
                    # answer went to a file nobody reads, so nothing was granted.
                    raise OSError("the budget file was taken over while this step was held up")
                return reply
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    # -- a holder that stopped ------------------------------------------------------------------

    def _current_fd(self) -> int:
        """The descriptor of the file now at ``path`` (reopened after a take-over; old ones
        stay open until ``close``, another thread may still be using one)."""
        with self._fd_lock:
            fd = self._fd
            if fd is None:
                raise OSError("the budget file is closed")
            if not self._is_current(fd):
                self._retired.append(fd)
                fd = self._fd = self._open_file()
            return fd

    def _is_current(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _lock_file(self, fd: int) -> bool:
        """Lock ``fd``; False when it stays locked for ``STUCK_AFTER_S`` (a step holds it for
        microseconds, so its holder has stopped) or the file was replaced meanwhile."""
        deadline = time.monotonic() + STUCK_AFTER_S
        pause = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline or not self._is_current(fd):
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 0.01)

    def _take_over(self, stuck: int) -> int:
        """The holder of ``stuck``'s lock has not let go for seconds: carry the state over to
        a new file and rename it to ``path``, locked. One process does it: the new file's name
        comes from the stuck file's inode and is made with ``O_EXCL`` (others retry, and lock
        the new file once it is in place). The stuck holder, when it goes on, finds its file
        replaced and grants nothing from its step (``_locked_step``). Raises ``OSError`` (the
        budget waits and retries) when another process is taking over."""
        inode = os.fstat(stuck).st_ino
        spare = self.path.with_name(f".{self.path.name}.takeover-{inode}")
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(spare, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            try:
                fd = os.open(spare, flags)
            except FileNotFoundError:
                raise OSError("the budget file was just taken over") from None
            try:  # free only when its maker died before renaming it: finish its work
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OSError("another process is taking the budget file over") from None
        else:
            fcntl.flock(fd, fcntl.LOCK_EX)
        if not self._is_current(stuck):  # renamed into place meanwhile: it is the file now
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise OSError("the budget file was just taken over")
        log.warning(
            "%s budget: %s has been locked for %.0f s by %s; taking it over",
            self.name,
            self.describe(),
            STUCK_AFTER_S,
            _lock_holder(inode),
        )
        data = os.pread(stuck, os.fstat(stuck).st_size, 0)
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.replace(spare, self.path)
        with self._fd_lock:
            self._retired.append(stuck)
            self._fd = fd
        return fd

    def _read(self, fd: int, now: int) -> SharedState:
        size = os.fstat(fd).st_size
        self._size = size
        data = os.pread(fd, size, 0) if size else b""
        try:
            return SharedState.from_json(data)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            # Emptied or unreadable (a new file is written by its maker at once): what was
            # granted is unknown, so wait one window, as for a restarted Redis.
            log.warning(
                "%s budget: %s was empty or unreadable; waiting one window",
                self.name,
                self.describe(),
            )
            return SharedState(boot=self._boot, epoch=now, paused=now + self.params.window_us)

    def _write(self, fd: int, data: bytes) -> None:
        # One pwrite, padded with spaces (valid JSON) over the old content: a process killed
        # here leaves the old state or the new one, never a mix.
        if len(data) < self._size:
            data += b" " * (self._size - len(data))
        os.pwrite(fd, data, 0)
        stripped = len(data.rstrip(b" "))
        if self._size > 4096 and stripped < self._size // 2:
            os.ftruncate(fd, stripped)
