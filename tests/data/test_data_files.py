import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from zoo.data.files import ordered_results


def test_ordered_results_keep_order_and_stay_a_bounded_window_ahead():
    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        return i * i

    with ThreadPoolExecutor(3) as pool:
        results = ordered_results(pool, work, range(20), ahead=4)
        first = next(results)
        assert first == (0, 0) and max(started) <= 4  # 4 submitted up front, one more after the first result
        assert list(results) == [(i, i * i) for i in range(1, 20)]


def test_ordered_results_raise_in_order_and_cancel_what_is_queued():
    gate, started = threading.Event(), []

    def work(i: int) -> int:
        started.append(i)
        if i == 1:
            raise ValueError("item 1 is bad")
        if i == 2:
            gate.wait(10)  # keeps the single worker busy while item 3 waits in the queue
        return i

    with ThreadPoolExecutor(1) as pool:
        results = ordered_results(pool, work, range(10), ahead=3)
        assert next(results) == (0, 0)
        with pytest.raises(ValueError, match="item 1"):
            next(results)
        gate.set()
    assert list(results) == [] and 3 not in started  # item 3 was cancelled, never run


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_writers_give_the_usual_permissions(tmp_path, umask, mode):
    """Not mkstemp's 0600: a Triton server or a colleague under another uid must be able to read an output."""
    import os
    import stat

    from zoo.atomic import atomic_path, atomic_write, atomic_write_json, atomic_write_text

    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
        atomic_write_json(tmp_path / "metrics.json", {"a": 1})
        atomic_write(tmp_path / "best.pt", lambda tmp: tmp.write_bytes(b"x"))
        with atomic_path(tmp_path / "volume.nii.gz") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["config.yaml", "metrics.json", "best.pt", "volume.nii.gz"], mode)


def test_staging_dirs_get_the_usual_permissions_and_pid_tagged_names(tmp_path):
    import os
    import stat

    from zoo.atomic import make_temp_dir, remove_orphaned_temps

    previous = os.umask(0o022)
    try:
        staging = make_temp_dir(tmp_path, "entry.partial")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(staging.stat().st_mode) == 0o755
    assert staging.name.startswith(f".entry.partial.pid{os.getpid()}@")
    assert remove_orphaned_temps(tmp_path) == [] and staging.is_dir()  # its writer (this process) is alive


def test_orphaned_temps_are_judged_by_pid_on_this_host_and_by_age_from_another(tmp_path):
    import os
    import time

    from tests.processes import dead_pid
    from zoo.atomic import _HOST, OTHER_HOST_STALE_S, remove_orphaned_temps, temp_prefix

    dead = dead_pid()
    other = "elsewhere" if _HOST != "elsewhere" else "elsewhere2"
    files = {
        "mine_live": f"{temp_prefix('a.h5')}x.tmp.h5",
        "mine_dead": f".b.h5.pid{dead}@{_HOST}.x.tmp.h5",
        "old_format_dead": f".c.h5.pid{dead}.x.tmp.h5",           # written before hosts were recorded
        "other_host_live": f".d.h5.pid{os.getpid()}@{other}.x.tmp.h5",
        "other_host_dead_pid_fresh": f".e.h5.pid{dead}@{other}.x.tmp.h5",  # its pid means nothing here
        "other_host_stale": f".f.h5.pid{dead}@{other}.x.tmp.h5",
    }
    for name in files.values():
        (tmp_path / name).write_bytes(b"partial")
    old = time.time() - OTHER_HOST_STALE_S - 60
    os.utime(tmp_path / files["other_host_stale"], (old, old))
    removed = {p.name for p in remove_orphaned_temps(tmp_path)}
    assert removed == {files["mine_dead"], files["old_format_dead"], files["other_host_stale"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        files[k] for k in ("mine_live", "other_host_live", "other_host_dead_pid_fresh"))
    left = set(os.listdir(tmp_path))
    assert {p.name for p in remove_orphaned_temps(tmp_path, any_pid=True)} == left  # the lock holder takes all


def _square_or_die(x: int) -> int:
    import os
    import signal

    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a segfault in a native reader would
    if x == 7:
        raise ValueError("seven")
    return x * x


def test_a_worker_that_dies_fails_its_item_only():
    from zoo.data.files import WORKER_DIED, map_in_processes

    ticks = []
    items = [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
    out = map_in_processes(_square_or_die, items, 3, on_crash=lambda x, why: f"{x}: {why}",
                           advance=lambda: ticks.append(1))
    assert out == [x * x if x != 5 else f"5: {WORKER_DIED}" for x in items]
    assert len(ticks) == len(items)
    with pytest.raises(ValueError, match="seven"):  # the function's own errors are not swallowed
        map_in_processes(_square_or_die, [1, 7], 2, on_crash=lambda x, why: None)


def _record_syncs_and_replaces(monkeypatch):
    """Wrap (not replace) os.fsync and os.replace so the test sees which path was synced when."""
    import os

    from zoo import atomic

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    return events


def test_atomic_writes_reach_the_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    from zoo.atomic import atomic_write_text

    events = _record_syncs_and_replaces(monkeypatch)
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    temp = events[1][1]
    assert events[0][1] == temp and events[1][2] == str(target)  # the temp file's content, then the rename
    assert events[2][1] == str(tmp_path)  # the directory entry


def test_a_staged_directory_is_synced_file_by_file_before_it_moves_in(tmp_path, monkeypatch):
    from zoo.atomic import durable_replace, make_temp_dir

    staging = make_temp_dir(tmp_path, "artifact")
    (staging / "sub").mkdir()
    (staging / "model.safetensors").write_bytes(b"w" * 10)
    (staging / "sub" / "provenance.json").write_text("{}")
    (staging / "link").symlink_to("/nonexistent")  # a link is moved, not followed
    events = _record_syncs_and_replaces(monkeypatch)
    durable_replace(staging, tmp_path / "artifact")
    at = next(i for i, e in enumerate(events) if e[0] == "replace")
    synced_before = {e[1] for e in events[:at]}
    assert {str(staging / "model.safetensors"), str(staging / "sub" / "provenance.json"), str(staging),
            str(staging / "sub")} <= synced_before
    assert events[at + 1:] == [("fsync", str(tmp_path))]
    assert (tmp_path / "artifact" / "sub" / "provenance.json").read_text() == "{}"


def test_a_write_that_cannot_be_synced_fails_and_keeps_the_old_file(tmp_path, monkeypatch):
    from zoo import atomic

    target = tmp_path / "last.pt"
    target.write_text("old")

    def eio(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", eio)
    with pytest.raises(OSError, match="Input/output"):
        atomic.atomic_write_text(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_directory_that_cannot_be_synced_does_not_fail_a_write_that_landed(tmp_path, monkeypatch):
    import os

    from zoo import atomic

    real_open = os.open

    def no_directories(path, flags, *args):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(atomic.os, "open", no_directories)
    atomic.atomic_write_text(tmp_path / "metrics.json", "{}\n")
    assert (tmp_path / "metrics.json").read_text() == "{}\n"
