"""Reliability tests: bad inputs, SIGKILL fault injection, security checks. Helpers live in faultkit.py."""
from __future__ import annotations

import sys
from pathlib import Path

# The project is not an installed package, and faultkit is imported by name: make both importable.
for path in (Path(__file__).resolve().parents[2], Path(__file__).resolve().parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
