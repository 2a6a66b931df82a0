"""A local Ray cluster stays on 127.0.0.1.

Ray turns a loopback node IP into the host's outward one unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its single-host
mode), and its endpoints have no authentication: every local `ray.init` of the project goes through here. Workers
run this interpreter with this checkout on PYTHONPATH, not a `uv run` environment re-created per worker.
"""
from __future__ import annotations

import os

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
LOOPBACK_IP = "127.0.0.1"


def loopback_environment(address: str | None) -> None:
    """Before `import ray`: a local cluster (address None) or one at a loopback address stays on 127.0.0.1."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if address is None or address.rsplit(":", 1)[0] in LOOPBACK_HOSTS:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def loopback_after_import() -> None:
    """The same switches for a process that imported ray before `loopback_environment` ran (Ray reads them at import
    and again when it picks the node IP)."""
    from ray._private import ray_constants

    ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False
    ray_constants.ENABLE_RAY_CLUSTER = False
