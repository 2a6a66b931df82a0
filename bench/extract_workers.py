"""A pre-started feature-extraction worker for bench/test_extract_scaling.py: ``python -m bench.extract_workers``
imports zoo, builds the bench encoder, says it is ready, then runs one job per JSON line read on stdin through the
library entry points (zoo.training.extract.extract_features, zoo.training.ray_extract.extract_features_ray) and
answers one line each. Started before the clock, it lets the bench time extraction without process start-up."""
from __future__ import annotations

import json
import resource
import sys
import time

REPLY = "@@extract-worker "  # reply lines carry this prefix; anything else a library prints is ignored
ENCODER = "resnet18"         # heavier than the cpu recipe's cnn_ssl (bench/test_extract_scaling.py says why)
INPUT_SIZE = 112
BATCH_SIZE = 32


def reply(payload: dict) -> None:
    sys.stdout.write(REPLY + json.dumps(payload) + "\n")
    sys.stdout.flush()


def main() -> int:
    import os

    import torch

    from zoo.training.extract import build_encoder, extract_features

    default_threads = torch.get_num_threads()
    encoder = build_encoder(ENCODER, "random", INPUT_SIZE)
    reply({"ready": True, "pid": os.getpid(), "default_threads": default_threads})
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        torch.set_num_threads(int(job.get("threads") or default_threads))
        common = dict(batch_size=BATCH_SIZE, progress=False)
        start = time.perf_counter()
        if job.get("ray"):
            from zoo.training.ray_extract import extract_features_ray

            report = extract_features_ray(encoder, ENCODER, job["slides"], job["coords"], job["output"],
                                          address=job["ray"], workers=int(job["workers"]), **common)
        else:
            shard = tuple(job["shard"]) if job.get("shard") else None
            report = extract_features(encoder, ENCODER, job["slides"], job["coords"], job["output"], shard=shard,
                                      **common)
        reply({"seconds": time.perf_counter() - start, "extracted": len(report.computed),
               "skipped": len(report.skipped), "busy": len(report.busy), "failed": report.failed,
               "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
