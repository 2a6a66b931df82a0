"""Process helpers for tests of pid-tagged temps and locks."""
from __future__ import annotations

import subprocess
import sys


def dead_pid() -> int:
    """The pid of a process that has exited (reaped): no live process of this host holds it, for now."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
