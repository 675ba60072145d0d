"""``python -I -S spawn.py OUT CMD...``: run CMD and write its wall time and rusage to OUT.

Why a launcher: Linux folds the memory high-water mark of the image a process replaces at
``exec`` into its peak RSS, and a child forked from the benchmark process (a Python holding
botocore, ~90 MB) would report at least that much, whatever it really used. Forked from
this small interpreter instead (no site, standard library only, ~5 MB), the figure is the
contender's own. OUT gets one line: wall seconds, user seconds, system seconds, peak RSS in
kilobytes, and the exit status; this process then exits with CMD's status.
"""

import os
import signal
import sys
import time


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    began = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        # Python ignores SIGPIPE and SIGXFSZ; the command gets the defaults back.
        for name in ("SIGPIPE", "SIGXFSZ"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        try:
            os.execvp(argv[0], argv)  # noqa: S606 (our own argv, deliberately no shell)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - began
    code = os.waitstatus_to_exitcode(status)
    with open(out, "w") as handle:
        handle.write(f"{wall} {usage.ru_utime} {usage.ru_stime} {usage.ru_maxrss} {code}\n")
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
