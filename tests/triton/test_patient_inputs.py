"""Which files the clients send for a patient: its slides as training assigns them, in any slide format."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from triton_repo.client import patient_inputs
from triton_repo.connection import ClientError
from zoo.data.tile import patient_slides, slide_patient

MANIFEST = SimpleNamespace(modalities=("pathology", "mri", "clinical"), preprocessing={"mri": {"sequences": ["T1"]}})


@pytest.fixture
def cohort(tmp_path):
    raw = tmp_path / "wsi_raw"
    raw.mkdir()
    for name in ("P1-1.svs", "P1-2.tif", "P1-x-1.svs", "P2-1.ndpi", "P3-1.txt"):
        (raw / name).write_bytes(b"")
    (tmp_path / "train_clinical.csv").write_text("patient_id,age\nP1,50\nP1-x,60\n")
    return tmp_path


def test_a_patient_gets_its_own_slides_in_any_format(cohort):
    assert slide_patient("P1-x-1") == "P1-x" and slide_patient("BRCA-00001-2") == "BRCA-00001"
    assert [p.name for p in patient_slides(cohort / "wsi_raw", "P1")] == ["P1-1.svs", "P1-2.tif"]
    assert [p.name for p in patient_slides(cohort / "wsi_raw", "P1-x")] == ["P1-x-1.svs"]
    assert patient_slides(cohort / "missing", "P1") == []
    found = patient_inputs("P1", cohort, MANIFEST)
    assert [p.name for p in found["slides"]] == ["P1-1.svs", "P1-2.tif"] and found["clinical"]["age"] == 50
    assert [p.name for p in patient_inputs("P2", cohort, MANIFEST)["slides"]] == ["P2-1.ndpi"]
    with pytest.raises(ClientError, match="'P3': no slide, MRI or clinical row"):  # .txt is not a slide
        patient_inputs("P3", cohort, MANIFEST)
