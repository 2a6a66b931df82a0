"""Config loading and validation against the seed schema.

The schema is configs/breast_cancer_config.yaml itself: every key there is valid, its value's type is the
expected type, and its value is the default. A config file only needs the keys it changes. Unknown keys and
wrong types are errors naming the dotted key (and the closest valid key).

Derived rules: `data.modalities.<m>.enabled: false` also removes `<m>` from `model.modalities`, so the data
section selects the model's modalities; the model keys in DERIVED (clinical input_dim, MRI input_channels)
follow the data keys they depend on (setting them to anything else is an error).
"""
from __future__ import annotations

import copy
import fnmatch
import functools
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from zoo.lookup import did_you_mean, dotted_get

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
BASE_CONFIG_PATH = CONFIG_DIR / "breast_cancer_config.yaml"

# Keys whose valid types differ from their default's type (dotted fnmatch pattern -> accepted types).
TYPE_EXCEPTIONS: dict[str, tuple[type, ...]] = {
    "model.modalities.*.pretrained": (bool, str),
    "model.modalities.pathology.weights": (str, type(None)),
    "data.augmentation.pathology.stain_normalization": (str, type(None)),
    "data.modalities.pathology.target_magnification": (float, int, type(None)),
    "data.modalities.pathology.target_mpp": (float, int, type(None)),
    "data.modalities.pathology.assume_magnification": (float, int, type(None)),
    "data.modalities.pathology.features_dir": (str, type(None)),
    "data.modalities.pathology.features_encoder": (str, type(None)),
}

class ConfigError(ValueError):
    """A config key or value is invalid; the message names the dotted key and how to fix it."""


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(tree).__name__}")
    return tree


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    return read_yaml(BASE_CONFIG_PATH)


def base_config() -> dict:
    """A fresh copy of the full default config (the schema)."""
    return copy.deepcopy(_schema())


def _dotted_keys(tree: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


def suggest_key(dotted: str) -> str:
    """' Did you mean ...?' with valid keys sharing the leaf name (those in the same top-level section first), then
    the closest spellings."""
    valid = _dotted_keys(_schema())
    leaf = dotted.rsplit(".", 1)[-1]
    section = dotted.split(".", 1)[0]
    same_leaf = sorted((k for k in valid if k.rsplit(".", 1)[-1] == leaf), key=lambda k: k.split(".", 1)[0] != section)
    return did_you_mean(dotted, valid, prefer=same_leaf)


def _accepted_types(dotted: str, default: Any) -> tuple[type, ...]:
    for pattern, types in TYPE_EXCEPTIONS.items():
        if fnmatch.fnmatchcase(dotted, pattern):
            return types
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, float):
        return (float, int)
    return (type(default),)


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def validate_config(tree: Mapping, source: str = "config", _schema_node: Mapping | None = None,
                    _prefix: str = "") -> None:
    """Check every key of `tree` exists in the schema and has the schema's type (partial trees are fine)."""
    schema = _schema() if _schema_node is None else _schema_node
    if not isinstance(tree, Mapping):
        raise ConfigError(f"{source}: {_prefix.rstrip('.') or 'config'} must be a mapping, got {type(tree).__name__}")
    for key, value in tree.items():
        dotted = f"{_prefix}{key}"
        if key not in schema:
            raise ConfigError(f"{source}: unknown config key {dotted!r}.{suggest_key(str(dotted))}")
        default = schema[key]
        if isinstance(default, dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {dotted} must be a mapping of {sorted(default)}, got {value!r}")
            validate_config(value, source, default, dotted + ".")
            continue
        types = _accepted_types(dotted, default)
        if not _type_ok(value, types):
            raise ConfigError(f"{source}: {dotted} must be {_type_names(types)}, got {value!r} "
                              f"({type(value).__name__}); default is {default!r}")
        if isinstance(default, list) and default:
            item_types = _accepted_types(dotted + "[]", default[0])
            bad = [v for v in value if not _type_ok(v, item_types)]
            if bad:
                raise ConfigError(f"{source}: {dotted} items must be {_type_names(item_types)}, got {bad[0]!r}")


def merge(base: Mapping, update: Mapping) -> dict:
    """Deep merge: mappings merge key by key, anything else (lists included) is replaced by `update`."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) \
            else copy.deepcopy(value)
    return out


def _schema_default(dotted: str) -> Any:
    try:
        return dotted_get(_schema(), dotted)
    except KeyError:
        raise ConfigError(f"unknown config key {dotted!r}.{suggest_key(dotted)}") from None


def _coerce(dotted: str, value: Any) -> Any:
    """CLI strings YAML leaves as str (e.g. '1e-3') become numbers where the schema wants one."""
    try:
        default = _schema_default(dotted)
    except ConfigError:
        return value  # unknown keys are reported, with the layer's name, by validate_config
    if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if isinstance(default, int) and number.is_integer() else number
    return value


def override_tree(overrides: Iterable[Any]) -> dict:
    """['a.b=1', ('c.d', [1, 2]), ...] -> nested dict. String values are parsed with yaml.safe_load."""
    tree: dict = {}
    for item in overrides:
        if isinstance(item, str):
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key.sub=value (e.g. training.optimizer.lr=0.001)")
            dotted, raw = item.split("=", 1)
            dotted = dotted.strip()
            try:
                value = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError as err:
                raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from err
        else:
            dotted, value = item
        value = _coerce(dotted, value)
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


# Model keys fixed by data keys: dotted key -> (value from the merged config, how it is derived).
DERIVED: dict[str, tuple[Callable[[Mapping], Any], str]] = {
    "model.modalities.clinical.input_dim": (
        lambda c: 2 * len(dotted_get(c, "data.modalities.clinical.features")),
        "2 x len(data.modalities.clinical.features) (values + missing-value indicators)",
    ),
    "model.modalities.mri.input_channels": (
        lambda c: len(dotted_get(c, "data.modalities.mri.sequences")),
        "len(data.modalities.mri.sequences) (one channel per sequence)",
    ),
}


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree[part]
    tree[leaf] = value


def resolve_config(layers: Iterable[tuple[str, Mapping]]) -> dict:
    """Validate each (source, partial tree) layer, merge them over the defaults, and apply the derived rules."""
    merged_layers: dict = {}
    for source, layer in layers:
        validate_config(layer, source)
        merged_layers = merge(merged_layers, layer)
    config = merge(_schema(), merged_layers)
    for dotted, (derive, how) in DERIVED.items():
        expected, explicit = derive(config), dotted_get(merged_layers, dotted, None)
        if explicit is not None and explicit != expected:
            raise ConfigError(f"{dotted} = {explicit} but it must equal {how} = {expected}; "
                              f"set it to {expected} or leave it out")
        _set(config, dotted, expected)
    enabled = {m: bool(s.get("enabled", True)) for m, s in config["data"]["modalities"].items()}
    config["model"]["modalities"] = {m: s for m, s in config["model"]["modalities"].items() if enabled.get(m, True)}
    if not config["model"]["modalities"]:
        raise ConfigError("data.modalities: every modality is disabled; enable at least one")
    return config


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[Any] = ()) -> dict:
    """Defaults <- YAML file at `path` (None: defaults only) <- overrides ('key.sub=value' strings)."""
    layers = [] if path is None else [(str(path), read_yaml(path))]
    layers.append(("overrides", override_tree(overrides)))
    return resolve_config(layers)


def dump_config(config: Mapping) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None)


def save_config(config: Mapping, path: str | os.PathLike) -> Path:
    """Write `config` as YAML atomically (temp file in the same directory + os.replace)."""
    from zoo.atomic import atomic_write_text

    return atomic_write_text(path, dump_config(config))
