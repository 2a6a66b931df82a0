"""2-process DDP training, a sweep's leaderboard and charts, and the attention views."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from zoo.analysis.sweep import leaderboard, run_sweep
from zoo.analysis.viz import main as viz_main
from zoo.registry import get_entry
from zoo.spec import METRICS_FILE
from zoo.training.pipeline import run_training

ROOT = Path(__file__).resolve().parents[2]
QUIET = dict(progress=False, log=lambda _m: None)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_torchrun_two_cpu_processes(easy_cohort, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "zoo.train", "attention-path_clin", "--recipe", "tiny", "--data-dir", str(easy_cohort),
           "--output-dir", str(out), "training.epochs=1", "data.modalities.pathology.max_patches=4"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1
    # every test patient evaluated exactly once across the two ranks
    assert metrics["test"]["num_samples"] == len(pd.read_csv(easy_cohort / "test_clinical.csv"))
    assert proc.stdout.count("test split (best checkpoint)") == 1  # only rank 0 reports


def test_modality_labels_tell_the_receptor_free_clinical_entry_apart():
    from zoo.analysis.sweep import modality_label
    from zoo.registry import get_entry

    labels = {name: modality_label(get_entry(name).modalities, get_entry(name).clinical_features)
              for name in ("clinical_only", "clinical_norec_only", "attention", "gated-path_mri")}
    assert labels == {"clinical_only": "clin", "clinical_norec_only": "clin-norec", "attention": "path+mri+clin",
                      "gated-path_mri": "path+mri"}


def test_sweep_writes_leaderboard_and_charts_and_survives_a_failed_entry(easy_cohort, tmp_path):
    def train_or_fail(name, **kwargs):
        if name == "mri_only":
            raise RuntimeError("injected failure")
        return run_training(name, **kwargs, **QUIET)

    table = run_sweep(["concatenate", "clinical_only", "mri_only"], seeds=[0], recipe="tiny",
                      data_dir=easy_cohort, output_root=tmp_path, name="t", overrides=["training.epochs=1"],
                      train_fn=train_or_fail, log=lambda _m: None)
    out = tmp_path / "sweeps" / "t"
    assert sorted(table["entry"]) == ["clinical_only", "concatenate"]
    assert (table["seeds"] == 1).all() and table["params"].gt(0).all()
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 3 and (runs["status"] == "failed").sum() == 1
    board = pd.read_csv(out / "leaderboard.csv")
    assert {"test_f1_mean", "test_f1_std", "val_auc_mean", "train_time_s_mean"} <= set(board.columns)
    md = (out / "leaderboard.md").read_text()
    assert "concatenate" in md and "injected failure" in md and "±" in md
    assert_png(out / "fusion_comparison.png")
    assert_png(out / "modality_ablation.png")
    # --report redraws the same leaderboard from runs.csv alone, without training
    (out / "leaderboard.csv").unlink()
    (out / "modality_ablation.png").unlink()
    from zoo.analysis.sweep import main as sweep_main

    assert sweep_main(["--report", str(out)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "leaderboard.csv"), board)
    assert_png(out / "modality_ablation.png")
    # --resume keeps the finished runs (read from their metrics.json) and trains only what did not finish
    trained = []
    resumed = run_sweep(["concatenate", "clinical_only", "mri_only"], seeds=[0], recipe="tiny", data_dir=easy_cohort,
                        output_root=tmp_path, name="t", overrides=["training.epochs=1"], resume=True,
                        train_fn=lambda name, **kw: trained.append(name) or train_or_fail(name, **kw),
                        log=lambda _m: None)
    assert trained == ["mri_only"]
    pd.testing.assert_frame_equal(resumed.reset_index(drop=True), table.reset_index(drop=True))
    # a run finished at another entry version is not mixed into the table: it is trained again
    finished = out / "runs" / "clinical_only" / "seed0" / METRICS_FILE
    assert json.loads(finished.read_text())["version"] == get_entry("clinical_only").version
    finished.write_text(json.dumps({**json.loads(finished.read_text()), "version": "0.9"}))
    trained.clear()
    run_sweep(["concatenate", "clinical_only"], seeds=[0], recipe="tiny", data_dir=easy_cohort, output_root=tmp_path,
              name="t", overrides=["training.epochs=1"], resume=True,
              train_fn=lambda name, **kw: trained.append(name) or train_or_fail(name, **kw), log=lambda _m: None)
    assert trained == ["clinical_only"]
    # a damaged metrics.json is named in the log and its run trained again; the other runs are kept
    finished.write_text('{"version": ')
    trained.clear()
    messages = []
    run_sweep(["concatenate", "clinical_only"], seeds=[0], recipe="tiny", data_dir=easy_cohort, output_root=tmp_path,
              name="t", overrides=["training.epochs=1"], resume=True,
              train_fn=lambda name, **kw: trained.append(name) or train_or_fail(name, **kw), log=messages.append)
    assert trained == ["clinical_only"]
    assert any(str(finished) in m and "unreadable" in m for m in messages)


def test_leaderboard_aggregates_seeds_and_skips_failures():
    rows = [{"entry": "a", "seed": s, "modalities": "clin", "fusion": "none", "status": "ok", "val_f1": f,
             "val_auc": 0.5, "test_f1": f, "test_auc": 0.6, "test_accuracy": 0.5, "params": 10, "train_time_s": 1.0,
             "error": ""} for s, f in ((0, 0.4), (1, 0.6))]
    rows.append({**rows[0], "seed": 2, "status": "failed", "test_f1": float("nan"), "error": "boom"})
    rows.append({**rows[0], "entry": "b", "test_f1": 0.9})
    table = leaderboard(pd.DataFrame(rows))
    assert table["entry"].tolist() == ["b", "a"]  # sorted by mean test F1
    a = table.set_index("entry").loc["a"]
    assert a["seeds"] == 2 and a["test_f1_mean"] == pytest.approx(0.5) and a["test_f1_std"] == pytest.approx(0.1)


@pytest.fixture(scope="module")
def checkpoint(attention_run):
    return attention_run[0] / "best.pt"


def first_patient_with_slides(data_dir: Path) -> str:
    slides = {p.stem.rsplit("-", 1)[0] for p in (data_dir / "wsi_raw").glob("*.svs")}
    ids = pd.read_csv(data_dir / "test_clinical.csv")["patient_id"].astype(str)
    return next(pid for pid in ids if pid in slides)


def test_viz_mil_writes_top_k_and_heatmaps(checkpoint, easy_cohort):
    patient = first_patient_with_slides(easy_cohort)
    assert viz_main(["mil", "--checkpoint", str(checkpoint), "--patient-id", patient, "--top-k", "4"]) == 0
    figures = checkpoint.parent / "figures"
    assert_png(figures / f"mil_attention_{patient}.png")
    heatmaps = list(figures.glob(f"mil_heatmap_{patient}-*.png"))
    assert heatmaps
    for path in heatmaps:
        assert_png(path)


def test_viz_fusion_and_attention_score(checkpoint, easy_cohort, capsys):
    patient = first_patient_with_slides(easy_cohort)
    assert viz_main(["fusion", "--checkpoint", str(checkpoint), "--patient-id", patient]) == 0
    figures = checkpoint.parent / "figures"
    assert_png(figures / f"fusion_attention_{patient}.png")
    assert_png(figures / "fusion_attention_by_class_test.png")
    assert viz_main(["attention-score", "--checkpoint", str(checkpoint), "--split", "test"]) == 0
    summary = json.loads((checkpoint.parent / "attention_score_test.json").read_text())
    assert summary["num_slides"] > 0 and summary["num_slides_scored"] > 0
    scored = [s["auroc"] for s in summary["slides"] if s["auroc"] == s["auroc"]]  # NaN: all-tumour or all-normal
    assert len(scored) == summary["num_slides_scored"] and len(summary["slides"]) == summary["num_slides"]
    assert summary["mean_auroc"] == pytest.approx(sum(scored) / len(scored)) and 0.0 <= summary["mean_auroc"] <= 1.0
    out = capsys.readouterr().out
    assert f"mean {summary['mean_auroc']:.3f} over {len(scored)} of {len(summary['slides'])}" in out


def test_viz_bad_input_is_a_clear_error(checkpoint, tmp_path, capsys):
    assert viz_main(["mil", "--checkpoint", str(checkpoint), "--patient-id", "NOPE"]) == 2
    assert "NOPE" in capsys.readouterr().err
    assert viz_main(["fusion", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_leaderboard_reports_each_entrys_fraction_of_the_bayes_ceiling(tmp_path):
    from zoo.analysis.sweep import leaderboard_markdown, read_ceilings, write_ceilings
    from zoo.data.synthetic.cohort import COHORT_MANIFEST
    from zoo.registry import get_entry

    entries = [get_entry("attention"), get_entry("clinical_norec_only")]
    assert write_ceilings(tmp_path, tmp_path, entries) == {}  # not a synthetic cohort: no ceiling, no file
    (tmp_path / COHORT_MANIFEST).write_text(json.dumps({"params": {
        "signals": {"pathology": 1.4, "mri": 1.3, "clinical": 0.8}, "missing_mri": 0.04, "missing_wsi": 0.04}}))
    found = write_ceilings(tmp_path, tmp_path, entries)
    assert found == read_ceilings(tmp_path) and set(found) == {"path+mri+clin", "clin-norec"}
    assert found["path+mri+clin"] > 0.85 > 0.45 > found["clin-norec"]
    rows = [{"entry": e.name, "seed": 0, "modalities": label, "fusion": "x", "status": "ok", "val_f1": 0.5,
             "val_auc": 0.5, "test_f1": 0.3, "test_auc": 0.6, "test_accuracy": 0.5, "params": 10,
             "train_time_s": 1.0, "error": ""} for e, label in zip(entries, ("path+mri+clin", "clin-norec"))]
    table = leaderboard(pd.DataFrame(rows), found).set_index("entry")
    assert table.loc["attention", "of_ceiling"] == pytest.approx(0.3 / found["path+mri+clin"])
    assert "test F1 / ceiling" in leaderboard_markdown(table.reset_index(), pd.DataFrame())


def test_late_fusion_rows_get_the_ceiling_of_their_members_union(tmp_path):
    from zoo.analysis.sweep import write_ceilings
    from zoo.data.synthetic.cohort import COHORT_MANIFEST
    from zoo.registry import get_entry

    (tmp_path / COHORT_MANIFEST).write_text(json.dumps({"params": {
        "signals": {"pathology": 1.4, "mri": 1.3, "clinical": 0.8}, "missing_mri": 0.04, "missing_wsi": 0.04}}))
    entries = [get_entry(n) for n in ("pathology_only", "clinical_only", "clinical_norec_only")]
    found = write_ceilings(tmp_path, tmp_path, entries)
    # No path+clin entry, but the late fusion of pathology_only and clinical_only is scored as path+clin; the
    # leakage control (clinical without receptors) is never a late-fusion member.
    assert set(found) == {"path", "clin", "clin-norec", "path+clin"}
    assert found["path+clin"] > found["path"] > found["clin"] > found["clin-norec"]
