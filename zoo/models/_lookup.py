"""Name -> factory tables with helpful errors (no if/elif dispatch chains)."""
from __future__ import annotations

import difflib
from typing import Iterable, Mapping, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """' Did you mean: a, b?' for the closest candidates, or '' when none is close."""
    close = difflib.get_close_matches(str(name), list(candidates), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """table[name], or a ValueError naming `what`, the valid choices and the closest ones."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown {what} {name!r}; valid: {', '.join(sorted(table))}.{did_you_mean(name, table)}"
        ) from None
