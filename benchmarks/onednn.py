"""Training speed with TensorFlow's oneDNN CPU kernels on and off, in alternating processes.

    python benchmarks/onednn.py                                  # default and stride-4 models
    python benchmarks/onednn.py --variants column-stride-4 --repeats 4

TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when it loads, so each setting needs its own
process: this runs `throughput.py` with the setting off, then on, --repeats times, and reports
each setting's median over all its timed epochs (and the best epoch) per variant. On CPUs
without AVX-512 VNNI/BF16 or AMX TensorFlow leaves oneDNN off unless told; caocrvfy turns it on.
The table is printed and the rows written to benchmarks/results/onednn-DATE.json (each
throughput.py process writes its own result into a temporary folder, read back here).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common

HERE = Path(__file__).resolve().parent


def run(setting: str, args) -> list[dict]:
    """One throughput.py process with TF_ENABLE_ONEDNN_OPTS=setting: its rows."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryDirectory(prefix="caocrvfy-onednn-") as tmp:
        subprocess.run([sys.executable, str(HERE / "throughput.py"), "--variants", args.variants,
                        "--rounds", str(args.rounds), "--images", str(args.images), "--results-dir", tmp],
                       env=env, check=True, capture_output=True, text=True)
        (written,) = Path(tmp).glob("*.json")
        return common.read_results(written)["variants"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="default,column-stride-4", help="throughput.py variants (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="processes per setting, alternating (default 3)")
    p.add_argument("--rounds", type=int, default=4, help="epochs per variant and process, the first not counted")
    p.add_argument("--images", type=int, default=1536, help="images per epoch (default 1536)")
    common.add_results_option(p)
    args = p.parse_args()
    rows: dict[tuple[str, str], list[dict]] = {}  # (variant, setting): one throughput.py row per process
    for _ in range(args.repeats):
        for setting in ("0", "1"):
            for row in run(setting, args):
                rows.setdefault((row["variant"], setting), []).append(row)
    print(f"{args.repeats} processes per setting, alternating; {args.rounds - 1} timed epochs of {args.images} each")
    print("| variant | oneDNN | train images/s, median of each process | best epoch | on / off (medians) |")
    print("| --- | --- | --- | ---: | ---: |")
    table = []
    for variant in args.variants.split(","):
        off = statistics.median(r["train_images_per_s_median"] for r in rows[(variant, "0")])
        for setting in ("0", "1"):
            m = [r["train_images_per_s_median"] for r in rows[(variant, setting)]]
            best = max(r["train_images_per_s"] for r in rows[(variant, setting)])
            ratio = statistics.median(m) / off
            print(f"| {variant} | {'on' if setting == '1' else 'off'} | {', '.join(f'{v:.0f}' for v in m)} | "
                  f"{best:.0f} | {f'{ratio:.2f}x' if setting == '1' else ''} |")
            table.append({"variant": variant, "oneDNN": setting == "1", "process_medians": m, "best_epoch": best,
                          "median_vs_off": ratio})
    common.write_result("onednn", {"repeats": args.repeats, "rounds": args.rounds, "images": args.images,
                                   "rows": table}, args.results_dir)


if __name__ == "__main__":
    main()
