"""Benchmarks: `uv run pytest bench --benchmark-only` (see bench/README.md). Nothing imports this package."""
