import json

import numpy as np
import pandas as pd
import pytest

from zoo import spec
from zoo.data.clinical import ClinicalDataError, ClinicalPreprocessor, load_clinical_csv

HEADER = "patient_id,age,tumor_size,lymph_nodes,er_status,pr_status,her2_status,molecular_subtype\n"


def _csv(tmp_path, body, header=HEADER):
    p = tmp_path / "train_clinical.csv"
    p.write_text(header + body)
    return p


def test_transform_standardises_imputes_and_flags_missing():
    train = pd.DataFrame({"age": [40.0, 60.0, np.nan], "er_status": [1.0, 0.0, 1.0]})
    pre = ClinicalPreprocessor(["age", "er_status"]).fit(train)
    out = pre.transform(pd.DataFrame({"age": [50.0, np.nan], "er_status": [1.0, np.nan]}))
    assert out.dtype == np.float32 and out.shape == (2, 4)
    np.testing.assert_allclose(out[0], [0.0, (1 - 2 / 3) / np.std([1, 0, 1]), 0, 0], atol=1e-6)
    np.testing.assert_allclose(out[1], [0, 0, 1, 1])
    single = pre.transform({"age": 60})  # absent key = missing
    assert single.shape == (4,) and single[0] == pytest.approx(1.0) and single[3] == 1
    restored = ClinicalPreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    np.testing.assert_array_equal(restored.transform({"age": 60}), single)
    with pytest.raises(ClinicalDataError, match="'age'"):
        pre.transform({"age": "old"})


def test_valid_csv_loads(tmp_path):
    df = load_clinical_csv(_csv(tmp_path, "P1,50,20,1,1,,0,0\nP2,,10,0,0,0,1,2\n"))
    assert df[spec.CLINICAL_LABEL].tolist() == [0, 2] and np.isnan(df.loc[0, "pr_status"])


@pytest.mark.parametrize("body,header,needle", [
    ("P1,50,20,1,1,1,0,0\n", HEADER.replace(",her2_status", ""), "missing column(s) ['her2_status']"),
    ("P1,50,20,1,1,1,0,0\nP2,fifty,20,1,1,1,0,0\n", HEADER, "row 3, column 'age': 'fifty' is not a number"),
    ("P1,50,20,1,1,1,0,0\nP1,51,20,1,1,1,0,1\n", HEADER, "row 3, column 'patient_id': duplicate patient id 'P1'"),
    ("P1,50,20,1,1,1,0,7\n", HEADER, "row 2, column 'molecular_subtype': unknown subtype label"),
    ("../etc,50,20,1,1,1,0,0\n", HEADER, "row 2, column 'patient_id'"),
    ("a/b,50,20,1,1,1,0,0\n", HEADER, "not allowed"),
])
def test_csv_errors_name_file_row_and_column(tmp_path, body, header, needle):
    path = _csv(tmp_path, body, header)
    with pytest.raises(ClinicalDataError) as e:
        load_clinical_csv(path)
    assert needle in str(e.value) and str(path) in str(e.value)
