"""Memory of the data pipeline: 300,000 synthetic rows (CSV, Kaggle layout) through loading, cleaning,
leakage removal and subsetting; reports the process's peak RSS before and after, and the time.

    python benchmarks/data_memory.py [--rows 300000]
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

from _common import args, machine


def main():
    from peftsum.config import load_config
    from peftsum.data.demo import generate
    from peftsum.data.prepare import prepare_splits
    from peftsum.data.sources import load_raw
    from peftsum.utils import peak_rss_bytes, reset_peak_rss

    a = args(__doc__.splitlines()[0], rows=300_000)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        sizes = {"train": a.rows, "validation": a.rows // 20, "test": a.rows // 20}
        for i, (split, n) in enumerate(sizes.items()):
            with open(d / f"{split}.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["id", "article", "highlights"])
                w.writeheader()
                for start in range(0, n, 10_000):  # written in chunks: the generator's lists stay small
                    w.writerows(generate(min(10_000, n - start), seed=1_000_000 * i + start))
        mb = sum(p.stat().st_size for p in d.iterdir()) / 2**20
        reset_peak_rss()
        base = peak_rss_bytes()
        cfg = load_config("assignment", overrides=[("data.source", str(d))]).data
        t0 = time.perf_counter()
        dd, report = prepare_splits(load_raw(cfg), cfg)
        secs = time.perf_counter() - t0
        peak = peak_rss_bytes()
    print(f"machine: {machine()}")
    print(f"{sum(sizes.values()):,} rows, {mb:.0f} MiB of CSV -> {len(dd['train'])}/{len(dd['validation'])}/"
          f"{len(dd['test'])} kept in {secs:.0f}s")
    print(f"peak RSS: {base / 2**20:.0f} MiB before, {peak / 2**20:.0f} MiB after (+{(peak - base) / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
