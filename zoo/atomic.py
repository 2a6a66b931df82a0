"""Atomic file writes: write a temp file in the destination's directory, then os.replace.

A reader (or a process killed mid-write) sees either the old file or the complete new one, never a partial file.
The new content is fsynced before the rename and the directory after it (`durable_replace`), so a power loss or a
node crash right after a write leaves the complete file too, not an empty one under the final name.
Temp files and dirs are created with the usual permissions (0666 / 0777 & ~umask, as open() and mkdir() give),
not mkstemp's 0600, so a served output stays readable by a Triton server or a colleague under another uid.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

# Temp names carry the writer's pid and host (".<name>.pid<pid>@<host>.<random>..."), so a later run can tell the
# leftovers of a writer that was killed (SIGKILL, OOM killer, power loss: no cleanup ran) from files a live writer
# still owns. A pid says nothing about another host's processes: another host's temp counts as orphaned only once
# it has not been touched for OTHER_HOST_STALE_S (names without a host, written before hosts were recorded, are
# judged as this host's).
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"
_ORPHAN_NAME = re.compile(r"^\.(.+?)\.pid(\d+)(?:@([A-Za-z0-9-]+))?\.")
OTHER_HOST_STALE_S = 24 * 3600


def temp_prefix(name: str) -> str:
    """Prefix for a temp file or dir standing in for `name`, tagged with this process's pid and this host."""
    return f".{name}.pid{os.getpid()}@{_HOST}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _orphaned(item: Path, pid: int, host: str | None) -> bool:
    if host is not None and host != _HOST:
        try:
            return time.time() - item.lstat().st_mtime > OTHER_HOST_STALE_S
        except FileNotFoundError:
            return False
    return not _pid_alive(pid)


def remove_orphaned_temps(directory: str | os.PathLike, names: Iterable[str] | None = None,
                          any_pid: bool = False) -> list[Path]:
    """Delete temp files/dirs in `directory` whose writer process no longer exists; returns what was removed.

    This host's temps are judged by their writer's pid; another host's (a directory shared by several nodes) only
    once untouched for OTHER_HOST_STALE_S, so a live writer elsewhere keeps its temp. `names` limits it to the
    temps standing in for those file names; `any_pid` removes them whatever their writer, for a caller that holds
    the lock every writer of those names takes (zoo.locks).
    """
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    wanted = None if names is None else set(names)
    for item in directory.iterdir():
        match = _ORPHAN_NAME.match(item.name)
        if match is None or (wanted is not None and match.group(1) not in wanted):
            continue
        if not any_pid and not _orphaned(item, int(match.group(2)), match.group(3)):
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
        removed.append(item)
    return removed


def _new_temp(parent: Path, name: str, suffix: str, directory: bool) -> Path:
    """Create a fresh pid-tagged temp file (0666 & ~umask) or dir (0777 & ~umask) in `parent`."""
    for _ in range(100):
        candidate = parent / f"{temp_prefix(name)}{secrets.token_hex(4)}{suffix}"
        try:
            if directory:
                os.mkdir(candidate, 0o777)
            else:
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temp name for {name!r} in {parent}")


def make_temp_dir(parent: str | os.PathLike, name: str) -> Path:
    """A pid-tagged staging dir for `name` in `parent`, with the mode mkdir gives (moved into place when done)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    return _new_temp(parent, name, "", directory=True)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync `path`: a file, or a directory with every file and directory under it (links are not followed)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        for root, _dirs, files in os.walk(path):
            for name in files:
                if not os.path.islink(os.path.join(root, name)):
                    _fsync_file(os.path.join(root, name))
            fsync_directory(root)
    elif not path.is_symlink():
        _fsync_file(path)


def _fsync_file(path: str | os.PathLike) -> None:
    """A file that cannot be synced is an error: its write may not be on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: str | os.PathLike) -> None:
    """Best effort: some platforms and filesystems cannot open or fsync a directory, and by then the rename it
    records has happened; failing the write for it would report a write that landed as lost."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def durable_replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """os.replace(src, dst) with src's content (a file or a whole staged directory) on disk before the rename and
    the rename itself on disk after it (best effort)."""
    fsync_tree(src)
    os.replace(src, dst)
    fsync_directory(Path(dst).parent)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path next to `path`; on success it replaces `path`, on error it is removed.

    The temp name ends with `.tmp` + `suffix` (default: `path`'s own suffixes, e.g. `.nii.gz`), so writers that
    dispatch on the extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ending = ".tmp" + ("".join(path.suffixes) if suffix is None else suffix)
    tmp_path = _new_temp(path.parent, path.name, ending, directory=False)
    try:
        yield tmp_path
        durable_replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], suffix: str | None = None) -> Path:
    """Call `write(tmp_path)` and move the result onto `path` atomically."""
    with atomic_path(path, suffix=suffix) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
