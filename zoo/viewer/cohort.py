"""The cohort's ids and files, resolved only through its own tables: a request names a patient or slide id and
gets the file the cohort lists for it, or UnknownId; no path is ever built from a request.

Patients: the rows of DIR/{train,val,test}_clinical.csv. Slides: DIR/wsi_raw/<patient_id>-<k>.<slide suffix> of a
listed patient. Tumour masks: DIR/wsi_masks/<slide_id>.png + .json. MRI: DIR/mri_raw/<patient_id>/<seq>.nii.gz.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from zoo.data.files import InvalidIdentifierError, validate_identifier
from zoo.data.tile import SLIDE_SUFFIXES, slide_patient
from zoo.spec import CLASS_NAMES, CLINICAL_ID, CLINICAL_LABEL, SPLITS

MRI_SUFFIX = ".nii.gz"


class UnknownId(LookupError):
    """An id the cohort does not list (or one that could never be a file name); the message says which."""


@dataclass
class Slide:
    slide_id: str
    patient_id: str
    path: Path
    mask_png: Path | None = None
    mask_json: Path | None = None


@dataclass
class Patient:
    patient_id: str
    split: str
    label: int | None
    clinical: dict[str, Any]
    slides: list[str] = field(default_factory=list)
    mri: dict[str, Path] = field(default_factory=dict)

    @property
    def label_name(self) -> str | None:
        return CLASS_NAMES[self.label] if self.label is not None and 0 <= self.label < len(CLASS_NAMES) else None


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        value = value.item()
        return None if isinstance(value, float) and math.isnan(value) else value
    return value


def check_id(value: str, what: str) -> str:
    """`value` if it could be an id at all, else UnknownId (a `..`, `/` or other character never reaches a lookup)."""
    try:
        return validate_identifier(value, what)
    except InvalidIdentifierError as exc:
        raise UnknownId(str(exc)) from None


class Cohort:
    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir).resolve()
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"cohort directory {self.data_dir} does not exist")
        self.patients: dict[str, Patient] = {}
        self.slides: dict[str, Slide] = {}
        self.tables: list[Path] = []
        for split in SPLITS:
            table = self.data_dir / f"{split}_clinical.csv"
            if not table.is_file():
                continue
            self.tables.append(table)
            frame = pd.read_csv(table)
            for row in frame.to_dict(orient="records"):
                try:
                    pid = validate_identifier(row[CLINICAL_ID])
                except InvalidIdentifierError as exc:
                    warnings.warn(f"{table}: {exc}; row skipped", stacklevel=2)
                    continue
                label = _plain(row.get(CLINICAL_LABEL))
                clinical = {str(k): _plain(v) for k, v in row.items() if k not in (CLINICAL_ID, CLINICAL_LABEL)}
                self.patients[pid] = Patient(pid, split, None if label is None else int(label), clinical)
        if not self.patients:
            raise FileNotFoundError(f"{self.data_dir}: no {{train,val,test}}_clinical.csv with patients; is this a "
                                    "cohort directory (docs/ARCHITECTURE.md)?")
        raw = self.data_dir / "wsi_raw"
        masks = self.data_dir / "wsi_masks"
        for path in sorted(raw.iterdir()) if raw.is_dir() else []:
            if path.suffix.lower() not in SLIDE_SUFFIXES or path.name.startswith(".") or not path.is_file():
                continue
            slide_id, pid = path.stem, slide_patient(path.stem)
            if pid not in self.patients or slide_id in self.slides:
                continue
            png, meta = masks / f"{slide_id}.png", masks / f"{slide_id}.json"
            has_mask = png.is_file() and meta.is_file()
            self.slides[slide_id] = Slide(slide_id, pid, path, png if has_mask else None, meta if has_mask else None)
            self.patients[pid].slides.append(slide_id)
        mri_root = self.data_dir / "mri_raw"
        for pid, patient in self.patients.items():
            folder = mri_root / pid
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    if path.name.endswith(MRI_SUFFIX) and path.is_file():
                        patient.mri[path.name[: -len(MRI_SUFFIX)]] = path

    def patient(self, patient_id: str) -> Patient:
        pid = check_id(patient_id, "patient id")
        if pid not in self.patients:
            raise UnknownId(f"unknown patient {pid!r}: not in {self.data_dir}/{{train,val,test}}_clinical.csv")
        return self.patients[pid]

    def slide(self, slide_id: str) -> Slide:
        sid = check_id(slide_id, "slide id")
        if sid not in self.slides:
            raise UnknownId(f"unknown slide {sid!r}: no such slide of a listed patient in {self.data_dir}/wsi_raw")
        return self.slides[sid]

    def mri(self, patient_id: str, sequence: str) -> Path:
        patient = self.patient(patient_id)
        seq = check_id(sequence, "MRI sequence")
        if seq not in patient.mri:
            raise UnknownId(f"patient {patient.patient_id!r} has no MRI sequence {seq!r} "
                            f"(has: {sorted(patient.mri) or 'none'})")
        return patient.mri[seq]

    def identity(self) -> str:
        """Changes when the cohort's tables are rewritten: part of the on-disk prediction cache's key."""
        parts = [str(self.data_dir)] + [f"{t.name}:{t.stat().st_size}:{t.stat().st_mtime_ns}" for t in self.tables]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
