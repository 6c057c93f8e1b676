"""One fedsim process per run directory: an OS lock on ``RUN_DIR/fedsim.lock``.

The lock is ``fcntl.flock`` (exclusive, never waited for) on that file, held
while the run is open. The operating system releases it when its process ends,
however it ends (SIGKILL included), so a dead run never leaves a stale lock and
a lock that is held always means a live process. The file holds the holder's
pid, for the refusal's message; it stays in the directory (empty of meaning
once unlocked).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_FILE = "fedsim.lock"


class RunDirectoryInUse(Exception):
    """Another process holds the run directory's lock; ``str()`` is one line."""

    def __init__(self, run_dir: Path, pid: str) -> None:
        super().__init__(
            f"run directory {run_dir} is in use by another fedsim process (pid {pid or '?'})"
        )


class RunLock:
    """The held lock of one run directory; :meth:`release` (or the process's end)
    lets another process open the run."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Lock ``run_dir`` (an existing directory) for this process.

        Raises:
            RunDirectoryInUse: another process holds it.
            OSError: the lock file cannot be opened.
        """
        file = (run_dir / LOCK_FILE).open("a+", encoding="utf-8")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip()
            file.close()
            raise RunDirectoryInUse(run_dir, holder) from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        return cls(file)

    def release(self) -> None:
        """Unlock (closing the file unlocks it); releasing twice is harmless."""
        self._file.close()
