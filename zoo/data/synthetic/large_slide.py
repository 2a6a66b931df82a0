"""Stress check: generate and tile one large synthetic slide, report time and peak memory.

``python -m zoo.data.synthetic.large_slide --size 40000 --output-dir /tmp/large``
Each step runs in a fresh process so its peak RSS is its own.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

import numpy as np

from zoo.cli_help import HelpFormatter


def _generate(path: str, size: int, seed: int) -> None:
    from .he_render import SlideRenderer, StainStyle, TumourStyle, make_layout
    from .svs_writer import write_svs

    rng = np.random.default_rng(seed)
    layout = make_layout(rng, size, size)
    renderer = SlideRenderer(layout, TumourStyle.from_latent(np.zeros(3)), StainStyle.sample(rng), (seed,))
    write_svs(path, size, size, renderer.render)


def _tile(path: str, out: str, patch_size: int) -> None:
    from ..tile import tile_slide

    result = tile_slide(path, out, patch_size, 0, 0.5, overwrite=True)
    if not result.ok:
        raise RuntimeError(result.message)
    print(f"tiled {result.num_patches} patches")


def _run_measured(queue, target, *args) -> None:
    t0 = time.perf_counter()
    target(*args)
    queue.put({"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time(),
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _measure(target, *args) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run_measured, args=(queue, target, *args))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.data.synthetic.large_slide", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--size", type=int, default=40000)
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    a.output_dir.mkdir(parents=True, exist_ok=True)
    slide = a.output_dir / f"large-{a.size}.svs"
    report = {"generate": _measure(_generate, str(slide), a.size, a.seed),
              "tile": _measure(_tile, str(slide), str(a.output_dir / "patches"), a.patch_size),
              "size_px": a.size, "file_mib": slide.stat().st_size / 2**20}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
