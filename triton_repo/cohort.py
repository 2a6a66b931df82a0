"""Cohort-wide inference: every patient of a cohort directory through one Triton server, into one CSV.

    python -m triton_repo.client predict-cohort --data-dir D [--split test] [--url HOST:8001] [--workers N] [--ray]
        [--output predictions.csv] [--model ENTRY] [--repository R] [--skip-unreadable-slides]

Each patient goes the way of `predict --patient-id P --data-dir D` (its slides, MRI and clinical row), with at
most N patients in flight: a thread pool of N workers (one SlideClient each), or with --ray N Ray tasks at a time
against the same server (a local Ray instance, or the cluster RAY_ADDRESS names; the workers must import this
project). The CSV is rewritten atomically (zoo.atomic) after every finished patient; a rerun keeps the rows that
succeeded and sends only the others. A patient that fails is recorded with its error and the rest go on; the
command exits non-zero when any patient failed.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm import tqdm

from triton_repo import manifest as mf
from triton_repo.connection import ClientError
from zoo import spec
from zoo.atomic import atomic_write_text

PROBABILITY_PREFIX = "p_"  # as in training's test_predictions.csv (zoo.spec.PREDICTIONS_FILE): p_<class name>
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Patient:
    patient_id: str
    split: str
    label: int | None  # index into the class names; None when the table has no label


@dataclass(frozen=True)
class ClientOptions:
    """What every worker's SlideClient is built with (plain values: they travel to Ray workers)."""
    url: str
    model: str | None = None
    repository: str | None = None  # None: the manifest comes from the server
    chunk_size: int = 256
    in_flight: int = 4
    shared_memory: bool = False
    retries: int = 0
    tiling_dir: str | None = None
    reader_threads: int | None = None
    unreadable_slides: str = "error"

    def client(self, manifest: mf.ExportManifest | None = None):
        from triton_repo.client import SlideClient
        return SlideClient(self.url, self.model, manifest if manifest is not None else self.repository,
                           self.chunk_size, self.in_flight, self.shared_memory, self.retries,
                           tiling_dir=self.tiling_dir, reader_threads=self.reader_threads,
                           unreadable_slides=self.unreadable_slides)


def cohort_patients(data_dir: str | Path, split: str | None = None) -> list[Patient]:
    """Patients of `{split}_clinical.csv` (every split's table when None), in table order."""
    import pandas as pd

    data_dir = Path(data_dir)
    splits = [split] if split else [s for s in spec.SPLITS if (data_dir / f"{s}_clinical.csv").is_file()]
    if split and split not in spec.SPLITS:
        raise ValueError(f"--split must be one of {list(spec.SPLITS)}, not {split!r}")
    tables = [(s, data_dir / f"{s}_clinical.csv") for s in splits]
    missing = [str(t) for _, t in tables if not t.is_file()]
    if missing or not tables:
        raise FileNotFoundError(f"{', '.join(missing) or data_dir}: no clinical table "
                                f"({'/'.join(spec.SPLITS)}_clinical.csv) listing the cohort's patients")
    patients, seen = [], set()
    for name, table in tables:
        frame = pd.read_csv(table)
        if spec.CLINICAL_ID not in frame.columns:
            raise ValueError(f"{table}: no {spec.CLINICAL_ID!r} column")
        for _, row in frame.iterrows():
            pid = str(row[spec.CLINICAL_ID])
            if pid in seen:
                continue
            seen.add(pid)
            value = row.get(spec.CLINICAL_LABEL)
            label = None if value is None or pd.isna(value) else int(value)
            patients.append(Patient(pid, name, label))
    return patients


def columns(class_names: tuple[str, ...]) -> list[str]:
    return ["patient_id", "split", "model", "label", "predicted_class",
            *(f"{PROBABILITY_PREFIX}{c}" for c in class_names), "n_patches", "skipped_slides", "error"]


def predict_patient(client, patient: Patient, data_dir: str | Path) -> dict[str, Any]:
    """One CSV row: the prediction of `predict --patient-id`, or the error that stopped it."""
    from triton_repo.client import patient_inputs

    row: dict[str, Any] = {"patient_id": patient.patient_id, "split": patient.split, "model": client.entry,
                           "label": "" if patient.label is None else patient.label}
    try:
        prediction = client.predict(**patient_inputs(patient.patient_id, data_dir, client.manifest))
    except Exception as err:  # noqa: BLE001 - one failing patient is recorded, the others go on
        return {**row, "error": f"{type(err).__name__}: {err}".replace("\n", " ")}
    row["predicted_class"] = prediction.predicted_class
    for name, p in zip(prediction.class_names, prediction.probabilities):
        row[f"{PROBABILITY_PREFIX}{name}"] = repr(float(p))
    row["n_patches"] = 0 if prediction.coords is None else int(len(prediction.coords))
    row["skipped_slides"] = " | ".join(client.skipped_slides)
    row["error"] = ""
    return row


@dataclass
class PredictionsFile:
    """The cohort's CSV: rows by patient, rewritten atomically (temp file + os.replace) on every `record`."""
    path: Path
    header: list[str]
    model: str
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: dict[str, int] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path, header: list[str], model: str, order: list[str]) -> "PredictionsFile":
        path = Path(path)
        self = cls(path, header, model, order={pid: i for i, pid in enumerate(order)})
        if not path.is_file():
            return self
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames != header:
                raise ClientError(f"{path}: columns {reader.fieldnames} are not the ones this model writes ({header});"
                                  " pass another --output")
            for row in reader:
                if row["model"] != model:
                    raise ClientError(f"{path}: holds predictions of model {row['model']!r}, not {model!r}; "
                                      "pass another --output")
                self.rows[row["patient_id"]] = row
        return self

    def done(self) -> set[str]:
        return {pid for pid, row in self.rows.items() if not row.get("error") and row.get("predicted_class")}

    def record(self, row: dict[str, Any]) -> None:
        self.rows[str(row["patient_id"])] = row
        self.write()

    def write(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.header, restval="", lineterminator="\n")
        writer.writeheader()
        last = len(self.order)
        for pid in sorted(self.rows, key=lambda p: (self.order.get(p, last), p)):
            writer.writerow({k: self.rows[pid].get(k, "") for k in self.header})
        atomic_write_text(self.path, buffer.getvalue())


@dataclass(frozen=True)
class CohortResult:
    path: Path
    total: int
    skipped: int      # done in an earlier run
    predicted: int
    failed: list[str]  # patient ids


def _threaded(todo: list[Patient], data_dir: Path, options: ClientOptions, manifest: mf.ExportManifest,
              workers: int) -> Iterator[dict[str, Any]]:
    local = threading.local()
    clients, lock = [], threading.Lock()

    def work(patient: Patient) -> dict[str, Any]:
        if not hasattr(local, "client"):
            local.client = options.client(manifest)
            with lock:
                clients.append(local.client)
        return predict_patient(local.client, patient, data_dir)

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cohort") as pool:
            futures = [pool.submit(work, p) for p in todo]
            for future in as_completed(futures):
                yield future.result()
    finally:
        for client in clients:
            client.close()


def _ray_patient(options: ClientOptions, patient: Patient, data_dir: str) -> dict[str, Any]:
    """A Ray task: its own client (manifest from the server, or --repository), one patient."""
    try:
        client = options.client()
    except Exception as err:  # noqa: BLE001 - recorded like any other failure of this patient
        return {"patient_id": patient.patient_id, "split": patient.split, "model": options.model or "",
                "label": "" if patient.label is None else patient.label, "error": f"{type(err).__name__}: {err}"}
    with client:
        return predict_patient(client, patient, data_dir)


def _start_ray(workers: int) -> None:
    """Join the cluster RAY_ADDRESS names, or start a local instance with `workers` CPUs.

    Locally the workers run this interpreter with this checkout on PYTHONPATH. Ray's `uv run` hook is switched off
    for that: started under `uv run`, it would rebuild the project environment inside a copy of the working
    directory for every worker (minutes, and without the optional `ray` extra, so the workers fail to start).
    """
    from zoo.ray_loopback import LOOPBACK_IP, loopback_after_import, loopback_environment

    address = os.environ.get("RAY_ADDRESS") or None
    loopback_environment(address)  # read when ray is first imported ...
    import ray

    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    runtime_env = {"env_vars": {"PYTHONPATH": path}}
    if address:
        ray.init(runtime_env=runtime_env, log_to_driver=False)
        return
    loopback_after_import()  # ... and here in case ray was imported before
    ray.init(_node_ip_address=LOOPBACK_IP, num_cpus=workers, include_dashboard=False,
             runtime_env={**runtime_env, "py_executable": sys.executable}, log_to_driver=False)


def _ray(todo: list[Patient], data_dir: Path, options: ClientOptions, workers: int) -> Iterator[dict[str, Any]]:
    import ray

    if not ray.is_initialized():
        _start_ray(workers)
    task = ray.remote(num_cpus=1, max_retries=0)(_ray_patient)
    pending: dict[Any, Patient] = {}
    queue = list(todo)
    while queue or pending:
        while queue and len(pending) < workers:
            patient = queue.pop(0)
            pending[task.remote(options, patient, str(data_dir))] = patient
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            patient = pending.pop(ref)
            try:
                yield ray.get(ref)
            except ray.exceptions.RayError as err:  # the task's worker died (OOM, node lost): this patient failed
                yield {"patient_id": patient.patient_id, "split": patient.split, "model": options.model or "",
                       "label": "" if patient.label is None else patient.label,
                       "error": f"{type(err).__name__}: {err}".replace("\n", " ")}


def predict_cohort(data_dir: str | Path, output: str | Path, options: ClientOptions, split: str | None = None,
                   workers: int = 4, use_ray: bool = False, progress: bool = True,
                   on_row: Callable[[dict[str, Any]], None] | None = None) -> CohortResult:
    """Predict every patient not yet done in `output`; returns counts and the failed patient ids."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, not {workers}")
    data_dir = Path(data_dir)
    patients = cohort_patients(data_dir, split)
    with options.client() as probe:  # the manifest once, for the header; threads reuse it
        manifest = probe.manifest
    options = dataclasses.replace(options, model=manifest.entry)
    table = PredictionsFile.open(output, columns(manifest.class_names), manifest.entry,
                                 [p.patient_id for p in patients])
    done = table.done()
    todo = [p for p in patients if p.patient_id not in done]
    rows = _ray(todo, data_dir, options, workers) if use_ray else _threaded(todo, data_dir, options, manifest,
                                                                            workers)
    failed = []
    with tqdm(total=len(todo), desc="patients", unit="patient", disable=not progress) as bar:
        for row in rows:
            table.record(row)
            if row.get("error"):
                failed.append(str(row["patient_id"]))
                tqdm.write(f"error: patient {row['patient_id']}: {row['error']}", file=sys.stderr)
            if on_row is not None:
                on_row(row)
            bar.update()
    if not table.path.is_file():
        table.write()  # an empty cohort still gets its header
    return CohortResult(table.path, len(patients), len(patients) - len(todo), len(todo) - len(failed),
                        sorted(failed))

