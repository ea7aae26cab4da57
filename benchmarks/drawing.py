"""Drawing synthetic captchas for training: cached as PNG files and read back, or drawn into memory.

    python benchmarks/drawing.py --count 4000 --rounds 3

The two ways take turns in one process, `--rounds` times each, on all cores, so that the machine's
drifting speed touches both alike. Each round draws `--count` default captchas (6 of 0-9a-zA-Z,
160 x 60): the cache way writes them with `generate` into a new folder and reads them back as
training does (`caocrvfy train --synthetic cache`); the memory way is `draw_arrays`
(`caocrvfy train --synthetic memory`). The figures are printed and written to
benchmarks/results/drawing-DATE.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import common
from caocrvfy.data.folders import load_images, read_folder
from caocrvfy.data.synthetic import CaptchaSpec, draw_arrays, generate


def cached(count: int, spec: CaptchaSpec) -> float:
    folder = Path(tempfile.mkdtemp(prefix="caocrvfy-drawing-"))
    try:
        start = time.perf_counter()
        generate(folder, count, spec)
        images, _, _ = load_images(read_folder(folder, charset=spec.charset, length=spec.length),
                                   spec.height, spec.width, 1, dedupe=False)
        assert images.shape == (count, spec.height, spec.width, 1)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def in_memory(count: int, spec: CaptchaSpec) -> float:
    start = time.perf_counter()
    images, labels = draw_arrays(count, spec)
    assert images.shape == (count, spec.height, spec.width, 1) and len(labels) == count
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=4000, help="captchas per round (default 4000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each way, taking turns (default 3)")
    common.add_results_option(p)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    spec = CaptchaSpec()
    seconds: dict[str, list[float]] = {"png cache, read back": [], "in memory": []}
    for _ in range(args.rounds):
        seconds["png cache, read back"].append(cached(args.count, spec))
        seconds["in memory"].append(in_memory(args.count, spec))
    rates = {way: args.count / min(s) for way, s in seconds.items()}
    result = {"count": args.count, "rounds": args.rounds, "seconds": seconds,
              "best_captchas_per_second": {k: round(v, 1) for k, v in rates.items()},
              "memory_vs_cache": round(rates["in memory"] / rates["png cache, read back"], 2)}
    print(json.dumps(result, indent=2))
    common.write_result("drawing", result, args.results_dir)


if __name__ == "__main__":
    main()
