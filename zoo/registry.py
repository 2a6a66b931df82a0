"""The zoo: one Entry per fusion strategy x modality subset, declared from tables.

Names: `<fusion>` (all three modalities), `<fusion>-path_mri`, `<fusion>-path_clin`, `<fusion>-mri_clin`;
single-modality `pathology_only`, `mri_only`, `clinical_only` (fusion is moot with one modality, so there is one
shared entry each, using identity fusion); and `clinical_norec_only`, clinical features without ER/PR/HER2 --
the label-leakage control (receptor status largely defines the IHC surrogate subtypes).

An entry's config = base YAML <- configs/families/<family>.yaml <- the entry's own settings (modalities enabled,
fusion type, clinical features) <- configs/recipes/<recipe>.yaml <- overrides, validated at every layer.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Iterable

from zoo import spec
from zoo.config import CONFIG_DIR, ConfigError, override_tree, read_yaml, resolve_config
from zoo.lookup import did_you_mean

FAMILY_DIR = CONFIG_DIR / "families"
RECIPE_DIR = CONFIG_DIR / "recipes"
RECIPES = spec.RECIPES  # configs/recipes/<recipe>.yaml; named once in zoo.spec
FUSION_STRATEGIES: tuple[str, ...] = ("concatenate", "gated", "attention", "cross_attention", "bilinear")
# Entry families with more than one modality: the learned strategies and `late` (no fused term: the product of the
# per-modality heads, each trained on its own loss; zoo.models.fusion.FusionHead.heads_only)
MULTIMODAL_FAMILIES: tuple[str, ...] = (*FUSION_STRATEGIES, spec.LATE_FUSION_TYPE)
# 1.1: MIL input standardisation buffers; 1.2: cpu recipe = cnn_ssl, MRI T1+T2 with tail statistics, auxiliary heads;
# 1.3: cpu recipe learning rate 5e-4 -> 2e-3 (the heads were undertrained in 30 epochs);
# 1.4: cpu recipe MRI GroupNorm + gated network features, unimodal warm start of the fusion entries
ZOO_VERSION = "1.4"
# Families whose entries changed since: 1.5 attention fusion concatenates its weighted tokens instead of summing
# them (zoo.models.fusion.AttentionFusion; before, its fused term averaged the modalities into one token)
FAMILY_VERSIONS: dict[str, str] = {"attention": "1.5"}

# Recipe keys a family does not use, reset after the recipe (a user's override still wins, and the trainer says it
# is ignored): a `late` model has no fused term, so no warm start before it, no auxiliary weight beside it and no
# late residual under it; its resolved config.yaml then says what training does.
NOT_APPLICABLE: dict[str, dict[str, Any]] = {
    spec.LATE_FUSION_TYPE: {
        "training": {"warm_start_epochs": 0, "loss": {"auxiliary_weight": 0.0}},
        "model": {"fusion": {"late_residual": False}},
    },
}

# name suffix -> modality subset (multimodal); "" = all three
MULTIMODAL_SUBSETS: dict[str, tuple[str, ...]] = {
    "": spec.MODALITIES,
    "-path_mri": ("pathology", "mri"),
    "-path_clin": ("pathology", "clinical"),
    "-mri_clin": ("mri", "clinical"),
}
# name -> (modality, clinical features)
UNIMODAL_ENTRIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "pathology_only": ("pathology", spec.CLINICAL_FEATURES),
    "mri_only": ("mri", spec.CLINICAL_FEATURES),
    "clinical_only": ("clinical", spec.CLINICAL_FEATURES),
    "clinical_norec_only": ("clinical", spec.CLINICAL_FEATURES_NO_RECEPTORS),
}


@dataclass(frozen=True)
class Entry:
    name: str
    modalities: tuple[str, ...]
    fusion: str  # "identity" for single-modality entries
    family: str  # configs/families/<family>.yaml
    description: str
    version: str = ZOO_VERSION
    clinical_features: tuple[str, ...] = spec.CLINICAL_FEATURES
    recipes: tuple[str, ...] = field(default=RECIPES)

    @property
    def family_config(self):
        return FAMILY_DIR / f"{self.family}.yaml"

    def own_config(self) -> dict:
        """What the entry itself fixes: enabled modalities, fusion type, clinical features."""
        return {
            "data": {
                "modalities": {
                    **{m: {"enabled": m in self.modalities} for m in spec.MODALITIES},
                    "clinical": {"enabled": "clinical" in self.modalities, "features": list(self.clinical_features)},
                },
            },
            "model": {"fusion": {"type": self.fusion}},
            "logging": {"output_dir": f"outputs/{self.name}"},
        }

    def config(self, recipe: str = "cpu", overrides: Iterable[Any] = ()) -> dict:
        """The full resolved, validated config for this entry under `recipe` (gpu | cpu | tiny)."""
        if recipe not in self.recipes:
            raise ConfigError(f"unknown recipe {recipe!r} for entry {self.name!r}; valid: {', '.join(self.recipes)}."
                              f"{did_you_mean(recipe, self.recipes)}")
        recipe_path = RECIPE_DIR / f"{recipe}.yaml"
        return resolve_config([
            (str(self.family_config), read_yaml(self.family_config)),
            (f"entry {self.name}", self.own_config()),
            (str(recipe_path), read_yaml(recipe_path)),
            (f"family {self.family}: recipe keys that do not apply", NOT_APPLICABLE.get(self.family, {})),
            ("overrides", override_tree(overrides)),
        ])

    def build_model(self, recipe: str = "cpu", overrides: Iterable[Any] = ()):
        from zoo.models.builder import build_model_from_config

        return build_model_from_config(self.config(recipe, overrides)["model"])


_SHORT = {"pathology": "pathology", "mri": "MRI", "clinical": "clinical"}


def _declare() -> dict[str, Entry]:
    multimodal = [
        Entry(name=f"{fusion}{suffix}", modalities=modalities, fusion=fusion, family=fusion,
              version=FAMILY_VERSIONS.get(fusion, ZOO_VERSION),
              description=f"{fusion} fusion of {' + '.join(_SHORT[m] for m in modalities)}")
        for fusion in MULTIMODAL_FAMILIES for suffix, modalities in MULTIMODAL_SUBSETS.items()
    ]
    unimodal = [
        Entry(name=name, modalities=(modality,), fusion="identity", family="unimodal", clinical_features=features,
              description=f"{_SHORT[modality]} only"
              + (" (no ER/PR/HER2: label-leakage control)" if features != spec.CLINICAL_FEATURES else ""))
        for name, (modality, features) in UNIMODAL_ENTRIES.items()
    ]
    entries: dict[str, Entry] = {}
    for entry in multimodal + unimodal:
        register(entry, entries)
    return entries


def register(entry: Entry, table: dict[str, Entry] | None = None) -> Entry:
    """Add `entry` to the registry (or `table`); a duplicate name is an error."""
    table = ENTRIES if table is None else table
    if entry.name in table:
        raise ValueError(f"zoo entry {entry.name!r} is already registered")
    table[entry.name] = entry
    return entry


ENTRIES: dict[str, Entry] = _declare()


def _as_patterns(patterns: str | Iterable[str] | None) -> list[str]:
    return [patterns] if isinstance(patterns, str) else list(patterns or [])


def list_entries(include: str | Iterable[str] | None = None, exclude: str | Iterable[str] | None = None) -> list[str]:
    """Entry names matching any fnmatch `include` pattern (all if None) and no `exclude` pattern, sorted."""
    inc, exc = _as_patterns(include), _as_patterns(exclude)
    return sorted(
        name for name in ENTRIES
        if (not inc or any(fnmatch.fnmatchcase(name, p) for p in inc))
        and not any(fnmatch.fnmatchcase(name, p) for p in exc)
    )


def get_entry(name: str) -> Entry:
    try:
        return ENTRIES[name]
    except KeyError:
        raise KeyError(f"unknown zoo entry {name!r}.{did_you_mean(name, ENTRIES, n=5)} "
                       f"List them with `python -m zoo`.") from None


def _kwarg_overrides(overrides: dict[str, Any]) -> list[tuple[str, Any]]:
    # Python keywords cannot hold dots: model__fusion__hidden_dim=32 means model.fusion.hidden_dim=32.
    return [(key.replace("__", "."), value) for key, value in overrides.items()]


def build_model(name: str, recipe: str = "cpu", **overrides):
    """Build the entry's model; overrides as {'model.fusion.hidden_dim': 32} or model__fusion__hidden_dim=32."""
    return get_entry(name).build_model(recipe, _kwarg_overrides(overrides))
