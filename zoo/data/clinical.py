"""Clinical table: validated CSV loading and the feature encoder that travels with models.

Encoding (``ClinicalPreprocessor``): each feature standardised with the training split's mean/std, missing values
imputed with the training mean (0 after standardisation), followed by one missing-value indicator per feature,
so F features give 2F float32 values.

Caveat: ER/PR/HER2 status largely *defines* the IHC surrogate subtypes, so clinical inputs with receptors leak the
label; ``spec.CLINICAL_FEATURES_NO_RECEPTORS`` is the leakage-free subset.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from zoo import spec

from .files import InvalidIdentifierError, validate_identifier

ENCODER_VERSION = 1


class ClinicalDataError(ValueError):
    """Invalid clinical table; the message names the file, row and column."""


def load_clinical_csv(
    path: str | os.PathLike,
    features: Sequence[str] = spec.CLINICAL_FEATURES,
    require_label: bool = True,
) -> pd.DataFrame:
    """Read and validate a clinical CSV; rows keep file order, index is reset.

    Row numbers in errors are file line numbers (header = line 1).
    """
    path = Path(path)
    if not path.is_file():
        raise ClinicalDataError(f"{path}: clinical table not found")
    try:
        df = pd.read_csv(path, dtype={spec.CLINICAL_ID: str}, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ClinicalDataError(f"{path}: not a readable CSV ({e})") from e
    required = [spec.CLINICAL_ID, *features] + ([spec.CLINICAL_LABEL] if require_label else [])
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ClinicalDataError(f"{path}: missing column(s) {missing}; expected at least {required}")

    def line(i: int) -> int:
        return int(i) + 2

    ids = df[spec.CLINICAL_ID]
    for i, pid in ids.items():
        if pd.isna(pid):
            raise ClinicalDataError(f"{path}: row {line(i)}, column '{spec.CLINICAL_ID}': empty patient id")
        try:
            validate_identifier(pid)
        except InvalidIdentifierError as e:
            raise ClinicalDataError(f"{path}: row {line(i)}, column '{spec.CLINICAL_ID}': {e}") from e
    dup = ids[ids.duplicated(keep="first")]
    if len(dup):
        i = dup.index[0]
        first = ids[ids == dup.iloc[0]].index[0]
        raise ClinicalDataError(f"{path}: row {line(i)}, column '{spec.CLINICAL_ID}': duplicate patient id "
                                f"{dup.iloc[0]!r} (first on row {line(first)}); each patient must appear once")
    for col in features:
        numeric = pd.to_numeric(df[col], errors="coerce")
        bad = numeric.isna() & df[col].notna()
        if bad.any():
            i = bad[bad].index[0]
            raise ClinicalDataError(f"{path}: row {line(i)}, column '{col}': {df.at[i, col]!r} is not a number "
                                    "(leave the cell empty for a missing value)")
        df[col] = numeric.astype(float)
    if require_label:
        label = pd.to_numeric(df[spec.CLINICAL_LABEL], errors="coerce")
        valid = label.isin(range(spec.NUM_CLASSES))
        if not valid.all():
            i = valid[~valid].index[0]
            raise ClinicalDataError(
                f"{path}: row {line(i)}, column '{spec.CLINICAL_LABEL}': unknown subtype label "
                f"{df.at[i, spec.CLINICAL_LABEL]!r}; expected an integer 0..{spec.NUM_CLASSES - 1} = "
                f"{', '.join(f'{k}: {n}' for k, n in enumerate(spec.CLASS_NAMES))}")
        df[spec.CLINICAL_LABEL] = label.astype(np.int64)
    return df.reset_index(drop=True)


class ClinicalPreprocessor:
    """Standardise + impute + missing indicators; fit on the training split only."""

    def __init__(self, features: Sequence[str] = spec.CLINICAL_FEATURES):
        if not features:
            raise ValueError("ClinicalPreprocessor needs at least one feature")
        self.features: tuple[str, ...] = tuple(features)
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    @property
    def output_dim(self) -> int:
        return 2 * len(self.features)

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    def fit(self, train_df: pd.DataFrame) -> "ClinicalPreprocessor":
        missing = [f for f in self.features if f not in train_df.columns]
        if missing:
            raise ClinicalDataError(f"training table lacks feature column(s) {missing}")
        values = train_df[list(self.features)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(values, axis=0) if len(values) else np.full(len(self.features), np.nan)
            std = np.nanstd(values, axis=0) if len(values) else np.full(len(self.features), np.nan)
        self.mean = np.nan_to_num(mean, nan=0.0)
        self.std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
        return self

    def _matrix(self, data: pd.DataFrame | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> np.ndarray:
        if isinstance(data, pd.DataFrame):
            rows = data.reindex(columns=list(self.features)).to_dict("records")
        elif isinstance(data, Mapping):
            rows = [data]
        else:
            rows = list(data)
        out = np.empty((len(rows), len(self.features)), np.float64)
        for r, row in enumerate(rows):
            for c, name in enumerate(self.features):
                value = row.get(name)
                if value is None or (isinstance(value, str) and value.strip() == ""):
                    out[r, c] = np.nan
                    continue
                try:
                    out[r, c] = float(value)
                except (TypeError, ValueError) as e:
                    raise ClinicalDataError(f"clinical field '{name}' (record {r}): {value!r} is not a number; "
                                            "use null/NaN for a missing value") from e
        return out

    def transform(self, data: pd.DataFrame | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> np.ndarray:
        """float32 [N, 2F] for a table or list of records, [2F] for one mapping; absent keys count as missing."""
        if not self.fitted:
            raise RuntimeError("ClinicalPreprocessor.transform called before fit()/from_dict()")
        values = self._matrix(data)
        missing = ~np.isfinite(values)
        z = (values - self.mean) / self.std
        z[missing] = 0.0
        out = np.concatenate([z, missing.astype(np.float64)], axis=1).astype(np.float32)
        return out[0] if isinstance(data, Mapping) else out

    def to_dict(self) -> dict[str, Any]:
        if not self.fitted:
            raise RuntimeError("ClinicalPreprocessor.to_dict called before fit()")
        return {"type": "clinical_standardize_impute_indicators", "version": ENCODER_VERSION,
                "features": list(self.features), "mean": [float(v) for v in self.mean],
                "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClinicalPreprocessor":
        try:
            features = list(d["features"])
            mean = np.asarray(d["mean"], np.float64)
            std = np.asarray(d["std"], np.float64)
        except (KeyError, TypeError) as e:
            raise ValueError(f"invalid clinical preprocessor dict (needs features, mean, std): {e}") from e
        if d.get("version", ENCODER_VERSION) != ENCODER_VERSION:
            raise ValueError(f"clinical preprocessor version {d.get('version')} is not supported "
                             f"(expected {ENCODER_VERSION})")
        if not (len(features) == len(mean) == len(std)) or not np.all(np.isfinite(mean)) or not np.all(std > 0):
            raise ValueError("invalid clinical preprocessor dict: features/mean/std lengths differ or values are "
                             "not finite")
        p = cls(features)
        p.mean, p.std = mean, std
        return p

    def __repr__(self) -> str:
        return f"ClinicalPreprocessor(features={list(self.features)}, fitted={self.fitted})"

