"""predict-cohort against the real server on the tiny cohort: rows equal per-patient predict, a corrupt slide
fails only its patient, a rerun sends only what is not done, and Ray tasks give the same rows."""
from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from tests.triton.conftest import ENTRY
from triton_repo.client import SlideClient, main, patient_inputs
from triton_repo.cohort import ClientOptions, cohort_patients, predict_cohort

SPLIT = "test"


def _rows(path):
    with open(path, newline="") as handle:
        return {row["patient_id"]: row for row in csv.DictReader(handle)}


def _probabilities(row):
    return np.array([float(v) for k, v in row.items() if k.startswith("p_")])


@pytest.fixture(scope="module")
def cohort_csv(server, tiny_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort") / "predictions.csv"
    options = ClientOptions(server.grpc_url, ENTRY, chunk_size=16,
                            tiling_dir=str(tmp_path_factory.mktemp("tiles")))
    result = predict_cohort(tiny_cohort, out, options, split=SPLIT, workers=2, progress=False)
    assert result.failed == [] and result.predicted == result.total == 4
    return out


def test_cohort_rows_equal_per_patient_predict(server, tiny_cohort, cohort_csv, tmp_path):
    rows = _rows(cohort_csv)
    patients = cohort_patients(tiny_cohort, SPLIT)
    assert list(rows) == [p.patient_id for p in patients]
    with SlideClient(server.grpc_url, ENTRY, chunk_size=16, tiling_dir=tmp_path) as client:
        for patient in patients:
            row = rows[patient.patient_id]
            pred = client.predict(**patient_inputs(patient.patient_id, tiny_cohort, client.manifest))
            np.testing.assert_allclose(_probabilities(row), pred.probabilities, atol=1e-5)
            assert row["predicted_class"] == pred.predicted_class and row["error"] == ""
            assert int(row["n_patches"]) == (0 if pred.coords is None else len(pred.coords))
            assert row["label"] == str(patient.label) and row["split"] == SPLIT and row["model"] == ENTRY


def test_a_corrupt_slide_fails_its_patient_and_a_rerun_sends_only_it(server, tiny_cohort, cohort_csv, tmp_path,
                                                                     capsys):
    copy = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, copy, ignore=shutil.ignore_patterns("wsi_patches", "mri_processed", "features"))
    good = _rows(cohort_csv)
    bad = next(p.patient_id for p in cohort_patients(copy, SPLIT) if list((copy / "wsi_raw").glob(f"{p.patient_id}-*")))
    slide = sorted((copy / "wsi_raw").glob(f"{bad}-*.svs"))[0]
    original = slide.read_bytes()
    slide.write_bytes(b"not a slide" * 100)
    out = tmp_path / "predictions.csv"
    args = ["predict-cohort", "--data-dir", str(copy), "--split", SPLIT, "--url", server.grpc_url, "--model", ENTRY,
            "--workers", "2", "--output", str(out), "--chunk-size", "16", "--tiling-dir", str(tmp_path / "tiles")]
    assert main(args) == 1
    rows = _rows(out)
    assert slide.name in rows[bad]["error"] and rows[bad]["predicted_class"] == ""
    for pid, row in rows.items():
        if pid != bad:
            assert row["error"] == ""
            np.testing.assert_allclose(_probabilities(row), _probabilities(good[pid]), atol=1e-5)
    assert f"patient {bad}" in capsys.readouterr().err

    # A rerun leaves the done rows alone and sends only the failed patient (fixed now).
    slide.write_bytes(original)
    sent = []
    options = ClientOptions(server.grpc_url, ENTRY, chunk_size=16, tiling_dir=str(tmp_path / "t"))
    result = predict_cohort(copy, out, options, split=SPLIT, workers=2, progress=False, on_row=sent.append)
    assert [r["patient_id"] for r in sent] == [bad] and result.skipped == 3 and result.failed == []
    rows = _rows(out)
    assert rows[bad]["error"] == ""
    np.testing.assert_allclose(_probabilities(rows[bad]), _probabilities(good[bad]), atol=1e-5)
    assert main(args) == 0  # nothing left to send
    assert '"predicted": 0' in capsys.readouterr().out


def test_ray_tasks_give_the_same_rows(server, tiny_cohort, cohort_csv, tmp_path):
    ray = pytest.importorskip("ray")
    out = tmp_path / "predictions.csv"
    try:
        # The manifest comes from the server in every task: the workers need no model repository.
        result = predict_cohort(tiny_cohort, out, ClientOptions(server.grpc_url, ENTRY, chunk_size=16,
                                                                tiling_dir=str(tmp_path / "tiles")),
                                split=SPLIT, workers=2, use_ray=True, progress=False)
    finally:
        ray.shutdown()
    assert result.failed == [] and result.predicted == 4
    rows, expected = _rows(out), _rows(cohort_csv)
    assert list(rows) == list(expected)
    for pid in rows:
        np.testing.assert_allclose(_probabilities(rows[pid]), _probabilities(expected[pid]), atol=1e-5)
