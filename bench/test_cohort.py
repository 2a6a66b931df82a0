"""Cohort inference (`python -m triton_repo.client predict-cohort`) against one Triton server: patients/s with
1, 2 and 4 workers, as ratios taken in interleaved rounds of one run (bench.timing.interleaved).

The bench cohort: PATIENTS patients, each one synthetic slide (its own seed, about `patches_per_slide` tissue
patches) and a clinical row. The bench model was saved without a fitted clinical preprocessor, so the client is
given a copy of its export (`--repository`) whose manifest holds one fitted on the bench cohort's table; tensor
names and the served models are the server's own.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from bench.conftest import ENTRY, benchmarks_disabled
from bench.slides import bench_slide_path, side_for_patches, write_bench_slide
from bench.timing import interleaved
from triton_repo.cohort import ClientOptions, predict_cohort
from zoo import spec

WORKERS = (1, 2, 4)


@pytest.fixture(scope="module")
def bench_cohort(request, bench_model, slide_cache, workdir, tiling):
    from zoo.data.clinical import ClinicalPreprocessor
    from zoo.registry import get_entry

    ci = benchmarks_disabled(request.config)
    patients, patches = (4, 16) if ci else (8, 64)
    root = workdir / "bench_cohort"
    (root / "wsi_raw").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    features = get_entry(ENTRY).clinical_features
    rows = []
    for i in range(patients):
        seed = 100 + i
        side = side_for_patches(patches, tiling.patch_size, seed)
        slide = write_bench_slide(bench_slide_path(slide_cache, side, seed), side, seed=seed)
        target = root / "wsi_raw" / f"B{i:03d}-0.svs"
        if not target.exists():
            shutil.copyfile(slide, target)
        rows.append({spec.CLINICAL_ID: f"B{i:03d}", **{f: float(rng.normal()) for f in features},
                     spec.CLINICAL_LABEL: int(rng.integers(len(spec.CLASS_NAMES)))})
    table = pd.DataFrame(rows)
    table.to_csv(root / "test_clinical.csv", index=False)
    export = workdir / "bench_cohort_export"
    shutil.copytree(bench_model.exports["onnx"], export, dirs_exist_ok=True)
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["preprocessing"]["clinical"] = ClinicalPreprocessor(features).fit(table).to_dict()
    (export / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root, export, patients


def test_cohort_patients_per_second_vs_workers(benchmark, triton_server, bench_cohort, workdir, tiling, profile):
    root, export, patients = bench_cohort
    counter = iter(range(10**6))

    def run(workers: int):
        def once():
            # A fresh CSV every round (else the rerun skips every patient); tilings cached after the first round.
            out = workdir / "cohort_runs" / f"w{workers}_{next(counter)}.csv"
            options = ClientOptions(triton_server.grpc_url, ENTRY, str(export), chunk_size=tiling.batch_size,
                                    in_flight=2, tiling_dir=str(workdir / "cohort_tiles"), reader_threads=1)
            result = predict_cohort(root, out, options, split="test", workers=workers, progress=False)
            assert result.failed == [] and result.predicted == patients, result
        return once

    for workers in WORKERS:  # warm-up: tile every slide once and load the models
        run(workers)()
    interleaved(benchmark, run(1), {f"workers_{w}": run(w) for w in WORKERS[1:]}, max(1, profile.rounds),
                "cohort inference (patients/s vs workers)", engine="triton_grpc", patients=patients,
                workers=list(WORKERS), cpu_cores=__import__("os").cpu_count())
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        median = stats.stats.median
        benchmark.extra_info["patients_per_s_workers_1"] = round(patients / median, 3)
        for w in WORKERS[1:]:
            benchmark.extra_info[f"patients_per_s_workers_{w}"] = round(
                patients / median * benchmark.extra_info[f"speedup_workers_{w}"], 3)
