import sys

import pandas as pd

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from pathlib import Path

from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from zoo.data.synthetic.difficulty import _fill, mri_features

data = Path(sys.argv[1])
t = pd.concat([pd.read_csv(data / f"{s}_clinical.csv", dtype={"patient_id": str}) for s in ("train", "val", "test")])
X = _fill([mri_features(data, p) for p in t.patient_id])
y = t.molecular_subtype.to_numpy()
m = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5, class_weight="balanced"))
print(
    "mri probe all patients",
    round(
        f1_score(y, cross_val_predict(m, X, y, cv=StratifiedKFold(5, shuffle=True, random_state=0)), average="macro"), 3
    ),
)
has = ~X[:, -1].astype(bool)
print(
    "mri probe with MRI",
    round(
        f1_score(
            y[has],
            cross_val_predict(m, X[has], y[has], cv=StratifiedKFold(5, shuffle=True, random_state=0)),
            average="macro",
        ),
        3,
    ),
)
