"""The viewer's predictions through a running Triton server (`python -m zoo.viewer --triton HOST:PORT --model E`).

The one module of `zoo` that imports `triton_repo` (docs/ARCHITECTURE.md, "Imports flow one way"; the exemption is
in tests/test_architecture.py), and only inside `TritonBackend`, so `import zoo.viewer...` never loads the gRPC
client. The patient's files are found and prepared exactly as `python -m triton_repo.client predict --patient-id`
does (`triton_repo.client.patient_inputs`, the client's tiling and MRI/clinical preprocessing from the manifest).
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np

from zoo.hashing import sha256_file
from zoo.viewer.cohort import Cohort, Patient
from zoo.viewer.inference import grid_step, record


class TritonBackend:
    kind = "triton"

    def __init__(self, url: str, model: str | None, repository: str | Path | None, cohort: Cohort,
                 tiling_dir: str | Path | None = None, client: Any = None):
        from triton_repo.client import SlideClient

        self.url, self.cohort = url, cohort
        # One SlideClient serves every patient, and its `skipped_slides` belong to its last `predict`: the app's
        # warm-up thread and page requests compute patients at the same time, so one predict runs at a time
        # (as CheckpointBackend runs one forward at a time), else a patient's skipped slides are lost or mixed.
        self._lock = threading.Lock()
        self.client = client if client is not None else SlideClient(url, model, repository, tiling_dir=tiling_dir)
        manifest = self.client.manifest
        self.manifest = manifest
        self.entry = str(self.client.entry)
        self.modalities = tuple(manifest.modalities)
        self.class_names = tuple(manifest.class_names)
        manifest_file = Path(manifest.export_dir) / "manifest.json"
        # the served weights are identified by their export manifest (every part's file, tensors, preprocessing);
        # read from the server it has no file here: its parsed form is hashed instead
        self.key = (sha256_file(manifest_file) if manifest_file.is_file()
                    else hashlib.sha256(repr(manifest).encode()).hexdigest())

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "entry": self.entry, "version": self.manifest.version, "url": self.url,
                "sha256": self.key, "modalities": list(self.modalities), "class_names": list(self.class_names)}

    def compute(self, patient: Patient, unreadable: dict[str, str]) -> dict[str, Any]:
        from triton_repo.client import patient_inputs

        pid = patient.patient_id
        inputs = patient_inputs(pid, self.cohort.data_dir, self.manifest)
        skipped = {sid: reason for sid, reason in unreadable.items()}
        if "slides" in inputs:
            inputs["slides"] = [p for p in inputs["slides"] if Path(p).stem not in unreadable]
            if not inputs["slides"]:
                inputs.pop("slides")
        with self._lock:
            prediction = self.client.predict(**inputs)
            messages = list(getattr(self.client, "skipped_slides", None) or [])
        for message in messages:  # the client's reasons name the slide (the longest id: P-1 is in P-10.svs too)
            sid = max((s for s in patient.slides if s in str(message)), key=len, default=None)
            if sid is not None:
                skipped.setdefault(sid, str(message))
        pathology = self.manifest.preprocessing.get("pathology") or {}
        slides: dict[str, dict[str, Any]] = {}
        if prediction.patch_attention is not None and prediction.coords is not None:
            for index, sid in enumerate(prediction.slide_ids):
                rows = prediction.coords[:, 0] == index
                xy = prediction.coords[rows, 1:]
                size0 = grid_step(xy) or int(pathology.get("patch_size", 256))
                slides[str(sid)] = {"coords": xy.tolist(), "attention": prediction.patch_attention[rows].tolist(),
                                    "patch_size_level0": int(size0)}
        return record(pid, np.asarray(prediction.probabilities), self.class_names, self.modalities,
                      prediction.fusion_attention, np.asarray(prediction.presence, bool), slides, skipped)

    def close(self) -> None:
        self.client.close()
