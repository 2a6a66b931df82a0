"""Many slides, many processes: shards of a job array, plain processes racing on one output under per-slide locks,
stale locks reclaimed, and the Ray Data pipeline on a real local Ray cluster (skipped without ray)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.processes import dead_pid
from tests.ray_head import local_ray_head
from zoo.data.shards import parse_shard, shard_items

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# Guards against a hung child only, not a speed check: on 2 shared cores under load, two children importing torch
# side by side took over 120 s once (speed is measured in bench/).
HANG_TIMEOUT = 600


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """8 patients, ~18 slides of 256 px, tiled at 32 px (~300 patches in all)."""
    from zoo.data.synthetic import generate_cohort
    from zoo.data.tile import find_slides, tile_slides

    root = tmp_path_factory.mktemp("many_slides")
    generate_cohort(root, workers=2, progress=False, num_samples=8, seed=0, slide_size=256, missing_mri=0.0,
                    missing_wsi=0.0)
    tile_slides(find_slides(root / "wsi_raw"), root / "tiles", patch_size=32, workers=2, progress=False)
    return root


def extract_cmd(cohort, out, *extra):
    return [PY, "-m", "zoo.features", "extract", "--encoder", "cnn_tiny", "--slides", str(cohort / "wsi_raw"),
            "--coords", str(cohort / "tiles"), "--output", str(out), "--input-size", "32", "--batch-size", "8",
            "--threads", "1", *map(str, extra)]


def counts(stdout: str) -> tuple[int, int, int, int]:
    m = re.search(r"(\d+) extracted, (\d+) already done, (\d+) being done by another process, (\d+) failed", stdout)
    assert m, stdout
    return tuple(int(g) for g in m.groups())


def visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.h5") if not p.name.startswith("."))


def all_slides(cohort) -> list[str]:
    return sorted(p.stem for p in (cohort / "tiles").glob("*.h5"))


def assert_complete(directory: Path, cohort) -> None:
    assert visible(directory) == [f"{s}.h5" for s in all_slides(cohort)]
    for name in visible(directory):
        with h5py.File(directory / name, "r") as fh, h5py.File(cohort / "tiles" / name, "r") as tiles:
            assert fh["features"].shape[0] == tiles["coords"].shape[0] > 0
            assert np.array_equal(fh["coords"][:], tiles["coords"][:])
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []  # no temp, no lock left


def test_shard_arguments_and_split():
    assert parse_shard("0/1") == (0, 1) and parse_shard(" 3/4 ") == (3, 4)
    for bad in ("4/4", "-1/2", "1/0", "a/b", "1", "1/2/3"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    items = [f"s{i:02d}" for i in range(11)][::-1]
    shards = [shard_items(items, (i, 3)) for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(items) and shards[0][:2] == ["s00", "s03"]


def test_cli_errors_for_bad_shard_and_listed_slide_missing(cohort, tmp_path, capsys):
    from zoo.data.tile import main as tile_main
    from zoo.training.extract import main as extract_main

    listing = tmp_path / "list.txt"
    listing.write_text("# two slides\nNOPE-0.svs\n\n" + all_slides(cohort)[0] + "\n")
    tile = ["--input-dir", str(cohort / "wsi_raw"), "--output-dir", str(tmp_path / "t")]
    extract = extract_cmd(cohort, tmp_path / "o")[3:]
    for main, args, message in ((tile_main, tile + ["--shard", "2/2"], "I must be in 0..1"),
                                (tile_main, tile + ["--slides-list", str(listing)], "NOPE-0.svs"),
                                (extract_main, extract + ["--shard", "x"], "--shard must be I/N"),
                                (extract_main, extract + ["--slides-list", str(listing)], "NOPE-0.svs")):
        try:
            rc = main(args)
        except SystemExit as exc:  # argparse's p.error
            rc = exc.code
        assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "t").exists() and not (tmp_path / "o").exists()


def test_two_shards_side_by_side_give_the_full_set_once(cohort, tmp_path):
    """Tiling and extraction as a 2-task job array on one output folder."""
    tiles = tmp_path / "tiles"
    tile = [[PY, "-m", "zoo.data.tile", "--input-dir", str(cohort / "wsi_raw"), "--output-dir", str(tiles),
             "--patch-size", "32", "--workers", "1", "--shard", f"{i}/2"] for i in range(2)]
    out = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True, env=ENV) for c in tile]
    tiled = [int(re.search(r"(\d+) tiled", p.communicate(timeout=HANG_TIMEOUT)[0]).group(1)) for p in out]
    total = len(all_slides(cohort))
    assert sum(tiled) == total and sorted(p.stem for p in tiles.glob("*.h5")) == all_slides(cohort)
    features = tmp_path / "features"
    procs = [subprocess.Popen(extract_cmd(cohort, features, "--shard", f"{i}/2"), stdout=subprocess.PIPE, text=True,
                              env=ENV) for i in range(2)]
    results = [counts(p.communicate(timeout=HANG_TIMEOUT)[0]) for p in procs]
    assert [r[0] for r in results] == [len(shard_items(all_slides(cohort), (i, 2))) for i in range(2)]
    assert all(r[1:] == (0, 0, 0) for r in results)
    assert_complete(features / "features_cnn_tiny", cohort)


def test_two_processes_racing_do_each_slide_once(cohort, tmp_path):
    out = tmp_path / "race"
    procs = [subprocess.Popen(extract_cmd(cohort, out), stdout=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
    results = [counts(p.communicate(timeout=HANG_TIMEOUT)[0]) for p in procs]
    total = len(all_slides(cohort))
    assert sum(r[0] for r in results) == total, results  # each slide extracted by exactly one of them
    assert all(r[3] == 0 and sum(r) == total for r in results), results
    assert_complete(out / "features_cnn_tiny", cohort)
    rerun = subprocess.run(extract_cmd(cohort, out), capture_output=True, text=True, env=ENV, timeout=HANG_TIMEOUT)
    assert counts(rerun.stdout) == (0, total, 0, 0)


def test_stale_locks_are_reclaimed_and_live_ones_respected(cohort, tmp_path, capsys):
    from zoo.training.extract import main

    slides = all_slides(cohort)
    locks = tmp_path / "out" / "features_cnn_tiny" / ".locks"
    locks.mkdir(parents=True)
    dead = dead_pid()
    records = {slides[0]: {"host": socket.gethostname(), "pid": dead, "started": time.time(), "token": "a"},
               slides[1]: {"host": "elsewhere", "pid": 1, "started": time.time() - 7200, "token": "b"},
               slides[2]: {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "token": "c"}}
    for slide, record in records.items():
        (locks / f"{slide}.lock").write_text(json.dumps(record))
    old = time.time() - 7200
    os.utime(locks / f"{slides[1]}.lock", (old, old))
    left = tmp_path / "out" / "features_cnn_tiny" / f".{slides[0]}.h5.pid{dead}.dead.tmp.h5"
    left.write_bytes(b"partial")  # a killed writer's temp of a locked slide
    args = ["extract", "--encoder", "cnn_tiny", "--slides", str(cohort / "wsi_raw"), "--coords", str(cohort / "tiles"),
            "--output", str(tmp_path / "out"), "--input-size", "32", "--lock-timeout", "3600"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert counts(out) == (len(slides) - 1, 0, 1, 0)
    assert f"owner pid {dead} on {socket.gethostname()} is gone" in out
    assert "not touched for 7200 s (> lock timeout 3600 s); owner elsewhere:1" in out
    assert not left.exists() and (locks / f"{slides[2]}.lock").exists()
    assert f"{slides[2]}.h5" not in visible(tmp_path / "out" / "features_cnn_tiny")


# ----------------------------------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A real Ray head on 127.0.0.1 with 2 CPUs, no dashboard; stopped (its process group only) after."""
    pytest.importorskip("ray.data", reason="ray[data] is not installed (uv sync --extra ray)")
    with local_ray_head(ENV, "t") as head:
        yield head.address, head.env


def test_ray_pipeline_equals_the_single_process_run(cohort, ray_cluster, tmp_path):
    address, env = ray_cluster
    single = subprocess.run(extract_cmd(cohort, tmp_path / "single"), capture_output=True, text=True, env=ENV,
                            timeout=HANG_TIMEOUT)
    assert single.returncode == 0, single.stderr[-2000:]
    done = subprocess.run(extract_cmd(cohort, tmp_path / "ray", "--ray", address, "--workers", 2), capture_output=True,
                          text=True, env=env, timeout=HANG_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    total = len(all_slides(cohort))
    assert counts(done.stdout) == (total, 0, 0, 0)
    a, b = tmp_path / "single" / "features_cnn_tiny", tmp_path / "ray" / "features_cnn_tiny"
    assert_complete(b, cohort)
    assert visible(a) == visible(b)
    for name in visible(a):
        with h5py.File(a / name, "r") as x, h5py.File(b / name, "r") as y:
            np.testing.assert_allclose(x["features"][:], y["features"][:], rtol=1e-5, atol=1e-6)
            assert np.array_equal(x["coords"][:], y["coords"][:])
            for key in ("encoder", "weights_sha256", "coords_sha256", "slide_path", "coords_path"):
                assert x["features"].attrs[key] == y["features"].attrs[key]


def test_ray_encoder_actor_killed_then_rerun_finishes_the_rest(cohort, ray_cluster, tmp_path):
    import psutil

    address, env = ray_cluster
    out = tmp_path / "killed" / "features_cnn_tiny"
    cmd = extract_cmd(cohort, tmp_path / "killed", "--ray", address, "--workers", 2)
    cmd[cmd.index("--batch-size") + 1] = "1"  # many small batches: the actors are busy for a while
    started = time.time()
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    victim, deadline = None, time.time() + 240
    while victim is None and driver.poll() is None and time.time() < deadline:
        for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
            line = " ".join(proc.info["cmdline"] or [])
            # this run's actor (an earlier run's may still be exiting), busy encoding (its title names the call)
            if "ray::" in line and "EncoderActor" in line and (proc.info["create_time"] or 0) >= started - 1:
                try:
                    proc.send_signal(signal.SIGKILL)  # kill -9 of the real worker process
                except psutil.NoSuchProcess:
                    continue
                victim = proc
                break
        time.sleep(0.2)
    assert victim is not None, "no Ray worker running the encoder actor was found"
    stdout, stderr = driver.communicate(timeout=HANG_TIMEOUT)
    assert driver.returncode in (0, 1), stderr[-3000:]
    first = visible(out)
    for name in first:  # whatever is visible is complete
        with h5py.File(out / name, "r") as fh, h5py.File(cohort / "tiles" / name, "r") as tiles:
            assert fh["features"].shape[0] == tiles["coords"].shape[0]
    before = {n: (out / n).stat().st_mtime_ns for n in first}
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=HANG_TIMEOUT)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    total = len(all_slides(cohort))
    assert counts(rerun.stdout) == (total - len(first), len(first), 0, 0)
    assert {n: (out / n).stat().st_mtime_ns for n in first} == before  # finished slides not redone
    assert_complete(out, cohort)
