"""One driver per ledger: an exclusive lock held for the whole campaign run.

The lock is an ``fcntl.flock`` on ``<ledger>.lock`` next to the ledger. The operating system
drops it when the holder exits in any way (SIGKILL included), so a killed driver never leaves
a stale lock behind. The file holds the holder's host, pid and start time for the message
shown to a second driver.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
from pathlib import Path

__all__ = ["CampaignLocked", "LedgerLock"]


class CampaignLocked(RuntimeError):
    """Another driver holds the ledger; the message says which process."""


class LedgerLock:
    """Exclusive, non-blocking lock on a ledger file (a context manager).

    Args:
        ledger_path: The ledger the lock protects; the lock file is ``<ledger_path>.lock``.

    Raises:
        CampaignLocked: On entering, when another process holds it.
    """

    def __init__(self, ledger_path: str | os.PathLike):
        self.ledger_path = Path(ledger_path)
        self.path = self.ledger_path.with_name(self.ledger_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 512).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise CampaignLocked(
                f"{self.ledger_path.parent}: another eqv2calc campaign driver is running on "
                f"this output folder ({holder or 'holder unknown'}); wait for it to finish or "
                "stop it, then rerun the same command to continue"
            ) from None
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LedgerLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
