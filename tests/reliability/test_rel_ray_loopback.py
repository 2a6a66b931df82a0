"""Every local Ray cluster the project starts binds 127.0.0.1 (Ray's endpoints have no authentication)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[2]

STARTS = {
    "predict-cohort --ray": "from triton_repo.cohort import _start_ray; _start_ray(1)",
    "extract --ray": "from zoo.training.ray_extract import connect; connect(None, num_cpus=1)",
}


@pytest.mark.parametrize("ray_first", [False, True], ids=["fresh", "ray-imported-before"])
@pytest.mark.parametrize("start", list(STARTS))
def test_local_ray_cluster_binds_loopback(start, ray_first):
    code = "\n".join([
        "import json, ray" if ray_first else "import json",
        STARTS[start],
        "import ray",
        "print(json.dumps({'gcs': ray.get_runtime_context().gcs_address,",
        "                  'nodes': [n['NodeManagerAddress'] for n in ray.nodes()]}))",
        "ray.shutdown()",
    ])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["gcs"].startswith("127.0.0.1:") and seen["nodes"] == ["127.0.0.1"], seen
