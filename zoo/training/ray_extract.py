"""`python -m zoo.features extract --ray [ADDRESS]`: the per-slide unit of zoo.training.extract as a Ray Data pipeline.

    slides (one row each) --flat_map, CPU tasks--> lock + tile + read coords + read patches, one row per batch
        --map, actor pool (one per GPU, num_gpus=1; CPU actors without GPUs)--> features of each batch
        --> the driver: a slide's batches joined in order, written atomically (write_slide), its lock released

Ray Data's streaming executor gives the backpressure: the patch batches in flight are bounded by an object-store
budget (a few batches per actor), so memory stays flat however many slides there are. Locks are taken by the
tasks in the driver's name (host, pid, run token), so a dead driver's locks are reclaimed like a dead process's and
a retried task of the same run takes its own lock again. A killed actor is restarted by Ray and its batch retried;
a batch that still fails marks its slide failed (no file written), and the next run does only the missing slides.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from zoo.data.feature_files import read_coords_file
from zoo.hashing import sha256_file
from zoo.locks import (
    DEFAULT_LOCK_TIMEOUT_S,
    Heartbeat,
    SlideLock,
    heartbeat_interval,
    lock_path,
    owner_record,
    remove_empty_locks_dir,
)
from zoo.ray_loopback import LOOPBACK_IP, loopback_after_import, loopback_environment
from zoo.training.extract import (
    ExtractReport,
    ExtractSettings,
    Prepared,
    SlideUnit,
    iter_slide_batches,
    make_settings,
    plan_units,
    prepare_slide,
    write_slide,
)
from zoo.training.feature_cache import concat_features, encode_batch, patch_bar

REPO_ROOT = str(Path(__file__).resolve().parents[2])
BATCHES_PER_ACTOR_IN_FLIGHT = 4  # object-store budget: patch batches queued per encoder actor


def _read_slide(row: dict[str, Any], settings: ExtractSettings, owner: dict[str, Any]):
    """CPU task: the unit's first half (lock, tile, coords) and its patches, one output row per batch; a slide
    that is done, locked elsewhere or bad gives one status row instead."""
    unit = SlideUnit(row["slide_id"], Path(row["slide_path"]) if row["slide_path"] else None,
                     Path(row["coords_path"]) if row["coords_path"] else None)
    reclaimed: list[str] = []
    status, prepared = prepare_slide(unit, settings, owner, reclaimed.append)
    base = {"slide_id": unit.slide_id, "chunk": -1, "n_chunks": 0, "patches": b"", "shape": [0, 0, 0, 0],
            "coords_path": "", "coords_sha": "", "message": "\n".join(reclaimed)}
    if status != "ready":
        yield {**base, "status": status, "message": "\n".join([*reclaimed, str(prepared)]).strip()}
        return
    assert isinstance(prepared, Prepared)
    base.update(coords_path=str(prepared.coords_path), coords_sha=prepared.coords_sha)
    n_chunks = -(-len(prepared.coords) // settings.batch_size)
    if n_chunks == 0:
        yield {**base, "status": "encode", "chunk": 0, "n_chunks": 1}
        return
    try:
        for i, (_, patches) in enumerate(iter_slide_batches(prepared.slide_path, prepared.coords, prepared.attrs,
                                                            settings.batch_size, reader_threads=0)):
            yield {**base, "status": "encode", "chunk": i, "n_chunks": n_chunks, "patches": patches.tobytes(),
                   "shape": list(patches.shape)}
            base["message"] = ""
    except Exception as exc:  # noqa: BLE001 - the slide fails, the others go on
        yield {**base, "status": "failed", "message": f"{type(exc).__name__}: {exc}"}


class EncoderActor:
    """One encoder per actor, built from the driver's state_dict (identical weights everywhere, hash checked)."""

    def __init__(self, encoder_ref, weights_sha: str, device: str, threads: int):
        import ray

        from zoo.training.feature_cache import weights_hash

        torch.set_num_threads(max(1, threads))
        encoder = ray.get(encoder_ref[0]) if isinstance(encoder_ref, list) else encoder_ref
        if weights_hash(encoder) != weights_sha:
            raise RuntimeError("the encoder the actor received differs from the driver's")
        self.device = torch.device(device)
        self.encoder = encoder.eval().to(self.device)
        self.out_dim = int(getattr(encoder, "out_dim", 0))

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {k: row[k] for k in ("slide_id", "chunk", "n_chunks", "status", "message", "coords_path",
                                   "coords_sha")}
        out.update(features=b"", dim=self.out_dim, pid=os.getpid())
        if row["status"] != "encode" or not row["patches"]:
            return out
        try:
            patches = np.frombuffer(row["patches"], np.uint8).reshape([int(s) for s in row["shape"]])
            out["features"] = encode_batch(self.encoder, patches, self.device).astype(np.float32).tobytes()
        except Exception as exc:  # noqa: BLE001
            out.update(status="failed", message=f"{type(exc).__name__}: {exc}")
        return out


def connect(address: str | None, num_cpus: int | None = None):
    """ray.init: to the cluster at `address`, or a new local one bound to 127.0.0.1 (no dashboard). Workers find
    this checkout through PYTHONPATH (a shared filesystem, as the slides need)."""
    import ray

    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
        p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)}}
    if ray.is_initialized():
        return False
    if address is None:
        loopback_after_import()
        ray.init(_node_ip_address=LOOPBACK_IP, include_dashboard=False, num_cpus=num_cpus, runtime_env=runtime_env,
                 log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, configure_logging=False)
    return True


def plan_resources(cluster: dict[str, float], workers: int | None, device: str) -> dict[str, Any]:
    """Actor count and per-actor / per-task resources: one actor per GPU (num_gpus=1) where there are GPUs;
    otherwise CPU actors sharing the CPUs with the reading tasks (fractional CPUs, so neither starves)."""
    gpus, cpus = int(cluster.get("GPU", 0)), float(cluster.get("CPU", 1))
    if gpus and device != "cpu":
        actors = workers or gpus
        return {"actors": actors, "actor_cpus": 1.0, "actor_gpus": 1.0, "task_cpus": 1.0, "device": "cuda",
                "threads": 1}
    actors = workers or max(1, int(cpus) // 2)
    # different amounts also keep Ray Data from fusing the reading tasks into the actors
    task_cpus = min(1.0, 0.5 * cpus / (actors + 1))
    actor_cpus = min(1.0, (cpus - task_cpus) / actors)
    return {"actors": actors, "actor_cpus": actor_cpus, "actor_gpus": 0.0, "task_cpus": task_cpus, "device": "cpu",
            "threads": max(1, int(cpus // max(actors, 1)) if workers is None else 1)}


def extract_features_ray(encoder: nn.Module, encoder_name: str, slides_dir: str | Path, coords_dir: str | Path,
                         output_dir: str | Path, *, address: str | None = None, workers: int | None = None,
                         device: str = "cpu", threads: int | None = None, batch_size: int = 64,
                         slides_list=None, shard=None, tile: dict[str, Any] | None = None,
                         lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S, reader_threads: int | None = None,
                         progress: bool = True, num_cpus: int | None = None) -> ExtractReport:
    """extract_features on Ray (module docstring); the same files and report. `address` None: a local cluster."""
    loopback_environment(address)
    try:
        import ray
        from ray.data import ActorPoolStrategy, DataContext
        from ray.data._internal.execution.interfaces import ExecutionResources
    except ImportError as exc:
        raise ImportError(f"--ray needs Ray Data: uv sync --extra ray ({exc})") from exc

    units = plan_units(slides_dir, coords_dir, tile=tile is not None, slides_list=slides_list, shard=shard)
    settings = make_settings(encoder, encoder_name, output_dir, coords_dir, batch_size=batch_size,
                             reader_threads=reader_threads, tile=tile, lock_timeout=lock_timeout)
    settings.directory.mkdir(parents=True, exist_ok=True)
    report = ExtractReport(settings.directory)
    owner = owner_record()  # the driver owns the run's locks
    started = connect(address, num_cpus)
    heartbeat = Heartbeat(heartbeat_interval(settings.lock_timeout))
    try:
        res = plan_resources(ray.cluster_resources(), workers, device)
        if threads is not None:
            res["threads"] = threads
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        patch_bytes = 3 * 1024 * 1024  # a 1024 px patch bound; the budget below is in batches
        rows = [{"slide_id": u.slide_id, "slide_path": str(u.slide_path or ""), "coords_path": str(u.coords_path or "")}
                for u in units]
        if rows:
            budget = max(256 * 1024 ** 2, BATCHES_PER_ACTOR_IN_FLIGHT * res["actors"] * batch_size * patch_bytes // 8)
            ctx.execution_options.resource_limits = ExecutionResources(object_store_memory=budget)
            encoder_ref = [ray.put(encoder.cpu().eval())]
            ds = ray.data.from_items(rows, override_num_blocks=len(rows))
            ds = ds.flat_map(_read_slide, fn_kwargs={"settings": settings, "owner": owner}, num_cpus=res["task_cpus"])
            ds = ds.map(EncoderActor, fn_constructor_kwargs={"encoder_ref": encoder_ref,
                                                             "weights_sha": settings.weights_sha,
                                                             "device": res["device"], "threads": res["threads"]},
                        compute=ActorPoolStrategy(size=res["actors"]), num_cpus=res["actor_cpus"],
                        num_gpus=res["actor_gpus"] or None)
            _collect(ds, units, settings, owner, heartbeat, report, progress)
    finally:
        heartbeat.close()
        for unit in units:  # locks the run still holds (slides that failed or were cut short)
            SlideLock(lock_path(settings.directory, unit.slide_id), owner).release()
        remove_empty_locks_dir(settings.directory)
        if started:
            ray.shutdown()
    return report


def _collect(ds, units: list[SlideUnit], settings: ExtractSettings, owner: dict[str, Any], heartbeat: Heartbeat,
             report: ExtractReport, progress: bool) -> None:
    """Join each slide's feature batches as they arrive, write the slide, release its lock."""
    pending: dict[str, dict[int, np.ndarray]] = {}
    failed: set[str] = set()
    bar = tqdm(total=len(units), desc=f"features {settings.encoder_name} (ray)", unit="slide", disable=not progress,
               dynamic_ncols=True)
    patches = patch_bar(progress)
    by_id = {u.slide_id: u for u in units}
    try:
        for row in ds.iter_rows():
            slide_id, status = row["slide_id"], row["status"]
            for line in filter(None, str(row.get("message", "")).splitlines()):
                if line.startswith("reclaimed stale lock"):
                    report.reclaimed.append(line)
            if slide_id in failed or slide_id in report.computed:
                continue
            if status != "encode":
                message = "\n".join(line for line in str(row["message"]).splitlines()
                                    if not line.startswith("reclaimed stale lock"))
                report.add(slide_id, status, message)
                if status == "failed":
                    failed.add(slide_id)
                    pending.pop(slide_id, None)
                    heartbeat.release(slide_id)
                bar.update(1)
                continue
            chunks = pending.setdefault(slide_id, {})
            if not chunks:
                heartbeat.add(slide_id, SlideLock(lock_path(settings.directory, slide_id), owner))
            dim = int(row["dim"])
            chunk = np.frombuffer(row["features"], np.float32).reshape(-1, dim) \
                if row["features"] else np.zeros((0, dim), np.float32)
            if int(row["chunk"]) not in chunks:  # a batch delivered twice (a retried actor task) counts once
                patches.update(len(chunk))
            chunks[int(row["chunk"])] = chunk
            if len(chunks) < int(row["n_chunks"]):
                continue
            features = concat_features([chunks[i] for i in sorted(chunks)], dim)
            del pending[slide_id]
            try:
                coords, attrs = read_coords_file(row["coords_path"])
                if sha256_file(row["coords_path"]) != row["coords_sha"]:
                    raise RuntimeError(f"{row['coords_path']} changed while its slide was encoded")
                unit = by_id[slide_id]
                prepared = Prepared(unit, unit.slide_path, Path(row["coords_path"]), coords, attrs, row["coords_sha"])
                write_slide(prepared, features, settings)
                report.add(slide_id, "extracted")
            except Exception as exc:  # noqa: BLE001
                report.add(slide_id, "failed", f"{type(exc).__name__}: {exc}")
            heartbeat.release(slide_id)
            bar.update(1)
    except Exception as exc:  # noqa: BLE001 - the pipeline itself failed: what is not written is failed
        for unit in units:
            if unit.slide_id not in report.computed + report.skipped + report.busy and unit.slide_id not in \
                    report.failed:
                report.failed[unit.slide_id] = f"Ray pipeline stopped: {type(exc).__name__}: {str(exc)[:300]}"
    finally:
        patches.close()
        bar.close()
    for slide_id in pending:  # batches that never all arrived
        report.failed.setdefault(slide_id, "not every patch batch came back from the encoder actors")
