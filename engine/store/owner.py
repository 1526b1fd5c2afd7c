"""One store, one owner: the exclusive lock a SQLite store's runner process holds while it runs.

Why an OS file lock (``fcntl.flock``) on a sidecar file, and not an owner row with a heartbeat:

- The kernel releases the lock when the process dies, however it dies (SIGKILL, OOM, power loss of a
  container): a restarted runner takes over at once, with no stale owner to expire and no takeover
  delay to tune. An owner row would need a timeout, and a second runner started within it (or a paused
  first one resuming after it) would be a race to get right.
- It writes nothing to the database: no heartbeat traffic, and it keeps working when the disk is full
  (when a heartbeat write would fail and let a second runner in).
- SQLite in WAL mode already requires a local filesystem (its shared memory file does not work over a
  network filesystem), where ``flock`` is reliable.

The sidecar (``<database>.lock``) rather than the database file itself, because SQLite takes POSIX
record locks on the database, and a process that closes any descriptor of a file loses all its POSIX
locks on it; ``flock`` locks on a file of their own never interfere. The lock file holds the owner's pid,
for the error message only: the lock, not the file's content, decides.

PostgreSQL keeps several runner processes by design (leases with ``SKIP LOCKED``) and takes no such lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from engine.errors import StoreInUse

__all__ = ["OwnerLock", "lock_path"]


def lock_path(database: Path) -> Path:
    """The sidecar lock file of a SQLite database file."""
    return database.with_name(database.name + ".lock")


class OwnerLock:
    """An exclusive, non-blocking ``flock`` on the sidecar of a SQLite file, held until :meth:`release`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def __repr__(self) -> str:
        return f"<OwnerLock {self.path} {'held' if self._fd is not None else 'released'}>"

    @classmethod
    def acquire(cls, database: Path) -> OwnerLock:
        """Take the lock now or raise :class:`StoreInUse` naming the holder (never waits)."""
        path = lock_path(database)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise StoreInUse(
                f"{database} is already in use by {who} running the engine (lock {path}); "
                "one SQLite store has one runner: stop the other one first, or use PostgreSQL to run several"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Give the lock back (idempotent). The file stays: removing it would race a new owner's open."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip() or "0") or None
    return None
