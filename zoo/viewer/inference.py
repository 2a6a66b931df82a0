"""Per-patient predictions and attention for the viewer, computed once and cached.

A backend computes one patient's record (class probabilities, fusion attention per modality, presence, and per
slide the level-0 coords and attention of every tiled patch): `CheckpointBackend` from a checkpoint in-process,
`zoo.viewer.triton_backend.TritonBackend` through a running Triton server. `Predictions` caches records in memory
and on disk (`<cache_dir>/<backend key>/<cohort identity>/<patient_id>.json`, written with zoo.atomic; the backend
key is the checkpoint's sha256), so a page view never re-encodes patches; a record is recomputed when one of the
patient's slide files changed (size or mtime) since it was written. Slides that fail to open are left out of the
computation and listed in the record's `skipped_slides`.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from zoo.atomic import atomic_write_json
from zoo.viewer.cohort import Cohort, Patient
from zoo.viewer.slides import SlideStore

RECORD_VERSION = 1


class PredictionError(RuntimeError):
    """A patient's prediction could not be computed; the message says why."""


class Backend(Protocol):
    kind: str
    entry: str
    key: str                      # identifies the weights: part of the disk cache's path
    modalities: tuple[str, ...]
    class_names: tuple[str, ...]

    def describe(self) -> dict[str, Any]: ...

    def compute(self, patient: Patient, unreadable: dict[str, str]) -> dict[str, Any]: ...


def grid_step(coords: np.ndarray) -> int | None:
    """The patch grid's step in level-0 px (the smallest positive gap between patch x or y positions)."""
    steps = [np.diff(np.unique(np.asarray(coords)[:, axis])) for axis in (0, 1)] if len(coords) else []
    positive = [int(s[s > 0].min()) for s in steps if (s > 0).any()]
    return min(positive) if positive else None


def record(patient_id: str, probabilities: np.ndarray, class_names, modalities, fusion_attention, presence,
           slides: dict[str, dict[str, Any]], skipped: dict[str, str]) -> dict[str, Any]:
    probabilities = np.asarray(probabilities, np.float64).reshape(-1)
    return {
        "version": RECORD_VERSION,
        "patient_id": patient_id,
        "probabilities": dict(zip(class_names, map(float, probabilities))),
        "predicted": class_names[int(np.argmax(probabilities))],
        "modalities": list(modalities),
        "fusion_attention": (None if fusion_attention is None
                             else dict(zip(modalities, map(float, np.asarray(fusion_attention).reshape(-1))))),
        "presence": dict(zip(modalities, map(bool, presence))),
        "slides": slides,
        "skipped_slides": skipped,
        "num_patches": int(sum(len(s["coords"]) for s in slides.values())),
    }


class CheckpointBackend:
    """A checkpoint's model run in this process; frozen-encoder models read (and complete) the cohort's feature
    cache, as `zoo.viz` does, instead of encoding every patch again."""

    kind = "checkpoint"

    def __init__(self, checkpoint: str | Path, cohort: Cohort, device: str = "cpu", version: str | None = None):
        import torch

        from zoo.analysis.viz import view_config
        from zoo.checkpoint import load_model
        from zoo.hashing import sha256_file

        self.checkpoint = Path(checkpoint)
        self.cohort, self.device = cohort, torch.device(device)
        self.model, self.payload = load_model(self.checkpoint, version=version)
        self.model.eval().to(self.device)
        self.key = sha256_file(self.checkpoint)
        self.entry = str(self.payload.get("entry", "?"))
        self.modalities = tuple(self.model.modalities)
        self.class_names = tuple(self.payload["class_names"])
        self.config = view_config(self.payload, cohort.data_dir)
        self._datasets: dict[str, Any] = {}
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "entry": self.entry, "version": self.payload.get("version"),
                "checkpoint": str(self.checkpoint), "sha256": self.key, "modalities": list(self.modalities),
                "class_names": list(self.class_names)}

    def _uses_cache(self) -> bool:
        from zoo.training.pipeline import uses_feature_cache

        return getattr(self.model, "patch_encoder", None) is not None and uses_feature_cache(self.config)

    def _dataset(self, split: str, with_pathology: bool = False):
        """The split's dataset for MRI, clinical values and the label (pathology is read here, slide by slide,
        so that a slide that fails to open is left out instead of failing the patient)."""
        from zoo.data import BreastCancerMultiModalDataset

        key = f"{split}:{with_pathology}"
        if key not in self._datasets:
            if with_pathology:
                from zoo.analysis.viz import make_dataset

                self._datasets[key] = make_dataset(self.config, split, self.model)
            else:
                self._datasets[key] = BreastCancerMultiModalDataset.from_config(
                    self.config, split, data_dir=self.cohort.data_dir, use_pathology=False, training=False)
        return self._datasets[key]

    def _slide_features(self, slide_id: str, tiling: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | str:
        """(features [N,D], coords [N,2], tiling attrs) of one slide, or the reason it has none."""
        from zoo.data.tile import load_coords
        from zoo.training.feature_cache import encode_slide, ensure_features, load_features

        path = tiling / f"{slide_id}.h5"
        if not path.is_file():
            return (f"not tiled at this checkpoint's setting ({tiling.name}); run python -m zoo.data.tile "
                    f"--output-dir {tiling}")
        coords, attrs = load_coords(path)
        if len(coords) == 0:
            return "no tissue patches in its tiling"
        if self._uses_cache():
            try:
                report = ensure_features(self.cohort.data_dir, self.model.patch_encoder, tiling_dir=tiling,
                                         slide_ids=[slide_id], device=self.device, progress=False)
            except ValueError as exc:
                return f"patch features could not be computed ({exc})"
            features, coords = load_features(report.directory / f"{slide_id}.h5")
            return features, coords, attrs
        slide_path = str(self.cohort.slide(slide_id).path)
        features = encode_slide(self.model.patch_encoder, coords, {**attrs, "slide_path": slide_path}, self.device)
        return features, coords, attrs

    def compute(self, patient: Patient, unreadable: dict[str, str]) -> dict[str, Any]:
        import torch

        from zoo.analysis.viz import forward, patient_index, slide_attention, tiling_info
        from zoo.data import collate_multimodal
        from zoo.spec import (
            AUX_FUSION_ATTENTION,
            AUX_PATHOLOGY_ATTENTION,
            KEY_PATHOLOGY_COORDS,
            KEY_PATHOLOGY_FEATURES,
            KEY_PATHOLOGY_MASK,
            KEY_PRESENCE,
            KEY_SLIDE_IDS,
            MODALITIES,
        )
        from zoo.training.pipeline import cohort_tiling_dir, uses_stored_features

        pid = patient.patient_id
        with self._lock:
            has_pathology = "pathology" in self.modalities
            skipped: dict[str, str] = {}
            if has_pathology and uses_stored_features(self.config):
                # stored TRIDENT/CLAM features: the dataset reads bags and coords from those files
                dataset = self._dataset(patient.split, with_pathology=True)
                index = patient_index(dataset, pid)
                batch = collate_multimodal([dataset[index]])
                probs, aux = forward(self.model, batch)
                slides = {}
                for sid, coords, weights in slide_attention(batch, aux[AUX_PATHOLOGY_ATTENTION]):
                    info = tiling_info(self.config, sid, dataset, pid)
                    slides[sid] = {"coords": coords.tolist(), "attention": weights.tolist(),
                                   "patch_size_level0": int(info["patch_size_level0"])}
            else:
                dataset = self._dataset(patient.split)
                index = patient_index(dataset, pid)
                batch = collate_multimodal([dataset[index]])
                slides_used: list[tuple[str, np.ndarray, int]] = []
                if has_pathology:
                    tiling = cohort_tiling_dir(self.config)
                    feats, coords = [], []
                    for sid in patient.slides:
                        if sid in unreadable:
                            skipped[sid] = unreadable[sid]
                            continue
                        got = self._slide_features(sid, tiling)
                        if isinstance(got, str):
                            skipped[sid] = got
                            continue
                        f, xy, attrs = got
                        size0 = int(attrs.get("patch_size_level0") or grid_step(xy) or attrs["patch_size"])
                        coords.append(np.column_stack([np.full(len(xy), len(slides_used)), xy]))
                        feats.append(f)
                        slides_used.append((sid, xy, size0))
                    dim = int(getattr(self.model.patch_encoder, "out_dim", 0) or (feats[0].shape[1] if feats else 0))
                    n = sum(len(f) for f in feats)
                    features = np.concatenate(feats) if feats else np.zeros((1, dim), np.float32)
                    xyz = np.concatenate(coords).astype(np.int64) if coords else np.zeros((1, 3), np.int64)
                    batch[KEY_PATHOLOGY_FEATURES] = torch.from_numpy(features.astype(np.float32))[None]
                    batch[KEY_PATHOLOGY_MASK] = torch.full((1, max(n, 1)), n > 0, dtype=torch.bool)
                    batch[KEY_PATHOLOGY_COORDS] = torch.from_numpy(xyz)[None]
                    batch[KEY_SLIDE_IDS] = [[s for s, _, _ in slides_used]]
                    presence = batch[KEY_PRESENCE].clone()
                    presence[0, MODALITIES.index("pathology")] = n > 0
                    batch[KEY_PRESENCE] = presence
                batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
                probs, aux = forward(self.model, batch)
                slides = {}
                if has_pathology and slides_used:
                    weights = aux[AUX_PATHOLOGY_ATTENTION][0].float().cpu().numpy()
                    offset = 0
                    for sid, xy, size0 in slides_used:
                        slides[sid] = {"coords": xy.tolist(), "attention": weights[offset:offset + len(xy)].tolist(),
                                       "patch_size_level0": size0}
                        offset += len(xy)
            presence_all = batch[KEY_PRESENCE][0].cpu().numpy().astype(bool)
            presence = [bool(presence_all[MODALITIES.index(m)]) for m in self.modalities]
            fusion = aux.get(AUX_FUSION_ATTENTION)
            fusion = None if fusion is None else fusion[0].float().cpu().numpy()
            return record(pid, probs[0].float().cpu().numpy(), self.class_names, self.modalities, fusion, presence,
                          slides, skipped)


class Predictions:
    """Records per patient, computed once: memory, then disk, then the backend."""

    def __init__(self, backend: Backend, cohort: Cohort, slides: SlideStore, cache_dir: str | Path | None):
        self.backend, self.cohort, self.slides = backend, cohort, slides
        self.cache_dir = (Path(cache_dir) / backend.key[:32] / cohort.identity()) if cache_dir else None
        self._memory: dict[str, dict[str, Any]] = {}
        self._errors: dict[str, str] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.computed = 0   # records computed by the backend (not read from a cache) since start
        self._warm_thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _stamps(self, patient: Patient) -> dict[str, list[int]]:
        out = {}
        for sid in patient.slides:
            try:
                st = self.cohort.slides[sid].path.stat()
                out[sid] = [int(st.st_size), int(st.st_mtime_ns)]
            except OSError:
                out[sid] = [-1, -1]
        return out

    def peek(self, patient_id: str) -> dict[str, Any] | None:
        return self._memory.get(patient_id)

    def error(self, patient_id: str) -> str | None:
        return self._errors.get(patient_id)

    def get(self, patient_id: str) -> dict[str, Any]:
        patient = self.cohort.patient(patient_id)
        pid = patient.patient_id
        if pid in self._memory:
            return self._memory[pid]
        with self._guard:
            lock = self._locks.setdefault(pid, threading.Lock())
        with lock:
            if pid in self._memory:
                return self._memory[pid]
            stamps = self._stamps(patient)
            path = self.cache_dir / f"{pid}.json" if self.cache_dir else None
            if path is not None and path.is_file():
                try:
                    stored = json.loads(path.read_text())
                    if stored.get("version") == RECORD_VERSION and stored.get("slide_stamps") == stamps:
                        self._memory[pid] = stored
                        return stored
                except (OSError, ValueError):
                    pass  # a damaged cache file is recomputed
            unreadable = {sid: reason for sid in patient.slides if (reason := self.slides.check(sid))}
            start = time.perf_counter()
            try:
                result = self.backend.compute(patient, unreadable)
            except Exception as exc:
                message = f"prediction for {pid} failed: {type(exc).__name__}: {exc}"
                self._errors[pid] = message
                raise PredictionError(message) from exc
            result["slide_stamps"] = stamps
            result["compute_s"] = round(time.perf_counter() - start, 4)
            result["backend"] = self.backend.kind
            if path is not None:
                atomic_write_json(path, result)
            self._errors.pop(pid, None)
            self._memory[pid] = result
            self.computed += 1
            return result

    def warm(self, patient_ids: list[str]) -> None:
        """Compute every patient's record in a background thread (the patient list fills in as it goes)."""
        def run():
            for pid in patient_ids:
                if self._stop.is_set():
                    return
                try:
                    self.get(pid)
                except Exception:  # noqa: BLE001 - remembered in self._errors and shown on the page
                    pass

        self._warm_thread = threading.Thread(target=run, name="viewer-warm", daemon=True)
        self._warm_thread.start()

    def stop(self) -> None:
        self._stop.set()
