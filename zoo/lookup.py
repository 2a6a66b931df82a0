"""Name lookups with helpful errors: name -> factory tables, dotted config keys, did-you-mean suggestions.

Torch-free and used by every layer (zoo.config, zoo.registry, zoo.models, export, triton_repo).
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Mapping, TypeVar

T = TypeVar("T")
_REQUIRED = object()


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3, prefer: Iterable[str] = ()) -> str:
    """' Did you mean: a, b?' for `prefer` then the closest candidates (at most `n`), or '' when none is close."""
    close = difflib.get_close_matches(str(name), list(candidates), n=n, cutoff=0.5)
    picks = list(dict.fromkeys([*prefer, *close]))[:n]
    return f" Did you mean: {', '.join(picks)}?" if picks else ""


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """table[name], or a ValueError naming `what`, the valid choices and the closest ones."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown {what} {name!r}; valid: {', '.join(sorted(table))}.{did_you_mean(name, table)}"
        ) from None


def dotted_get(tree: Mapping[str, Any], dotted: str, default: Any = _REQUIRED) -> Any:
    """`tree['a']['b']` for 'a.b'; a missing key gives `default`, or KeyError(dotted) when no default is given."""
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            if default is _REQUIRED:
                raise KeyError(dotted)
            return default
        node = node[key]
    return node
