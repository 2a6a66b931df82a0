"""Per-unit lock files, so several processes or hosts sharing a filesystem never do the same unit of work.

A lock is ``<dir>/.locks/<name>.lock``, created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and on NFSv3+)
and holding JSON ``{"host", "pid", "started", "token"}``. Its owner touches it (mtime) while it works. A lock is
stale, and reclaimed (with a log line naming the dead owner), when its owner is on this host and its pid is gone, or
when it was last touched more than ``timeout`` seconds ago (owner on another host that died, or a hung process).
Reclaiming renames the stale file away and checks the renamed file is the one judged stale before deleting it, so
two processes reclaiming at once cannot delete a lock a third one just took.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from zoo.atomic import _pid_alive

LOCKS_DIRNAME = ".locks"
DEFAULT_LOCK_TIMEOUT_S = 2 * 3600.0
log = logging.getLogger(__name__)


def host_name() -> str:
    return socket.gethostname()


def owner_record(token: str | None = None, pid: int | None = None, host: str | None = None) -> dict[str, Any]:
    """The JSON a lock holds: this process (or the given pid/host, e.g. a Ray driver's) and a token naming the run."""
    return {"host": host or host_name(), "pid": int(os.getpid() if pid is None else pid), "started": time.time(),
            "token": token or secrets.token_hex(8)}


def lock_path(directory: str | os.PathLike, name: str) -> Path:
    return Path(directory) / LOCKS_DIRNAME / f"{name}.lock"


def _read(path: Path) -> dict[str, Any] | None:
    """The lock's record; {} for an unreadable/half-written one; None when there is no lock."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def stale_reason(path: Path, record: dict[str, Any], timeout: float, now: float | None = None) -> str | None:
    """Why the lock at `path` (holding `record`) is stale, or None when its owner may still be working."""
    now = time.time() if now is None else now
    try:
        touched = path.stat().st_mtime
    except FileNotFoundError:
        return None
    age = now - max(touched, float(record.get("started", 0) or 0))
    if record.get("host") == host_name() and isinstance(record.get("pid"), int) and not _pid_alive(record["pid"]):
        return f"owner pid {record['pid']} on {record['host']} is gone"
    if age > timeout:
        return (f"not touched for {age:.0f} s (> lock timeout {timeout:.0f} s); "
                f"owner {record.get('host')}:{record.get('pid')}")
    if not record and age > 60:  # a lock whose writer died between create and write
        return f"empty or unreadable for {age:.0f} s"
    return None


@dataclass
class SlideLock:
    path: Path
    record: dict[str, Any]
    reclaimed: str | None = None  # why an earlier owner's lock was taken over, when it was

    def touch(self) -> None:
        try:
            os.utime(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        """Remove the lock if it is still ours (a reclaimed-from-under-us lock belongs to someone else)."""
        current = _read(self.path)
        if current is not None and current.get("token") == self.record["token"]:
            self.path.unlink(missing_ok=True)


def try_lock(path: str | os.PathLike, owner: dict[str, Any] | None = None, timeout: float = DEFAULT_LOCK_TIMEOUT_S,
             on_reclaim: Callable[[str], None] | None = None) -> SlideLock | None:
    """Take the lock at `path` for `owner` (default: this process), or None when a live owner holds it.

    A lock holding `owner`'s own token is taken again (a retried task of the same run). A stale one is reclaimed
    and `on_reclaim` (default: the module's logger, warning) gets a line saying whose it was and why."""
    path = Path(path)
    owner = owner or owner_record()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = (json.dumps(owner, sort_keys=True) + "\n").encode()
    reclaimed = None
    for _ in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:  # another run removed the empty locks folder meanwhile
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        except FileExistsError:
            record = _read(path)
            if record is None:
                continue  # released meanwhile: try again
            if record.get("token") == owner["token"]:
                return SlideLock(path, owner)
            reason = stale_reason(path, record, timeout)
            if reason is None:
                return None
            if _remove_stale(path, record):
                reclaimed = f"reclaimed stale lock {path} ({reason})"
                (on_reclaim or log.warning)(reclaimed)
            continue
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        return SlideLock(path, owner, reclaimed)
    return None


def _remove_stale(path: Path, record: dict[str, Any]) -> bool:
    """Move the stale lock aside and delete it; put it back (if nothing took its place) when the file moved was
    not the one judged stale (another process reclaimed and re-locked in between)."""
    aside = path.with_name(f".{path.name}.stale.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    moved = _read(aside)
    if moved == record or (not record and not moved):
        aside.unlink(missing_ok=True)
        return True
    try:  # a live lock: restore it unless a new one already exists
        os.link(aside, path)
    except FileExistsError:
        pass
    aside.unlink(missing_ok=True)
    return False


@dataclass
class Heartbeat:
    """Touches the locks it holds every `interval` s in a daemon thread, so their age measures silence, not run
    time (a long slide on a live host is never taken over)."""
    interval: float = 60.0
    locks: dict[str, SlideLock] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lock-heartbeat")
        self._thread.start()

    def add(self, name: str, lock: SlideLock) -> None:
        with self._mutex:
            self.locks[name] = lock

    def release(self, name: str) -> None:
        with self._mutex:
            lock = self.locks.pop(name, None)
        if lock is not None:
            lock.release()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._mutex:
                held = list(self.locks.values())
            for lock in held:
                lock.touch()

    def close(self) -> None:
        """Stop touching and release every lock still held."""
        self._stop.set()
        with self._mutex:
            names = list(self.locks)
        for name in names:
            self.release(name)


def remove_empty_locks_dir(directory: str | os.PathLike) -> None:
    """Remove ``<directory>/.locks`` when no lock is left in it, so a finished output folder holds only outputs."""
    try:
        (Path(directory) / LOCKS_DIRNAME).rmdir()
    except OSError:  # not there, or another run's locks are in it
        pass


def heartbeat_interval(timeout: float) -> float:
    return max(0.05, min(60.0, timeout / 4))
