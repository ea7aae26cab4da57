"""How much of a reader's error is glyphs that the fonts draw alike?

    python benchmarks/lookalikes.py --model C/grey --data C/test

Two measurements:
- fonts: every font the varied generator draws from (`font_files` of `0-9a-zA-Z`) draws each
  pair of `PAIRS`, compared as `caocrvfy.data.fonts` compares glyphs (cut to the ink, stretched
  to one square). Printed: in how many fonts the two shapes overlap by more than SAME_SHAPE
  (intersection over union), and the height ratio of the first to the second (a lower-case
  letter drawn as its capital at about 0.75 of the height is told apart by scale alone). The
  colour-key generator draws only from the fonts where no pair is alike (`distinct_fonts`).
- readings (with --model and --data): the reader's full-match on the labelled folder exactly,
  and with look-alikes merged in steps (`MERGES`): what is left after the last step is error
  that no font explains.

Prints both and writes benchmarks/results/lookalikes-DATE.json.
"""

from __future__ import annotations

import argparse
import sys

import common
import numpy as np

from caocrvfy.data.charset import DEFAULT_CHARSET_SPEC, parse_charset
from caocrvfy.data.fonts import FONT_SIZE, SAME_SHAPE, distinct_fonts, font_files, ink, load_font, shape_overlap

PAIRS = ("Il", "O0", "1l", "cC", "oO", "sS", "vV", "wW", "xX", "zZ")
CASE_ALIKE = "cosvwxzpuk"  # lower-case letters whose capital is the same shape in most fonts
MERGES = (  # (name, translation): each step merges what the step before it did, and more
    ("I=l", str.maketrans({"l": "I"})),
    ("I=l=1, O=0", str.maketrans({"l": "I", "1": "I", "0": "O"})),
    ("and the case of " + CASE_ALIKE, str.maketrans({"l": "I", "1": "I", "0": "O",
                                                     **{c: c.upper() for c in CASE_ALIKE}})),
)


def font_pairs(charset: str) -> list[dict]:
    fonts = font_files(charset)
    rows = []
    for first, second in PAIRS:
        overlaps, heights = [], []
        for path in fonts:
            font = load_font(path, FONT_SIZE)
            a, b = ink(first, font), ink(second, font)
            overlaps.append(shape_overlap(a, b))
            heights.append(a.shape[0] / b.shape[0])
        rows.append({"pair": first + second, "fonts": len(fonts),
                     "same_shape": int(sum(o > SAME_SHAPE for o in overlaps)),
                     "median_overlap": round(float(np.median(overlaps)), 3),
                     "median_height_ratio": round(float(np.median(heights)), 3),
                     "height_ratio_range": [round(min(heights), 3), round(max(heights), 3)]})
    return rows


def merged_readings(model: str, folder: str) -> dict:
    from caocrvfy.evaluation.labelled import read_labelled_folder
    from caocrvfy.inference import Predictor
    from caocrvfy.startup import list_devices_quietly

    list_devices_quietly()  # TensorFlow's look for a GPU, with its complaint that there is none caught
    records, _, skipped = read_labelled_folder(Predictor.load(model), folder)
    result = {"model": model, "data": folder, "count": len(records), "skipped": len(skipped),
              "exact": sum(t == r for t, r, _ in records) / len(records)}
    for name, table in MERGES:
        result[name] = sum(t.translate(table) == r.translate(table) for t, r, _ in records) / len(records)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a reader to score with look-alikes merged (needs --data)")
    parser.add_argument("--data", help="its labelled folder")
    common.add_results_option(parser)
    args = parser.parse_args(argv)
    if bool(args.model) != bool(args.data):
        parser.error("--model and --data go together")
    charset = parse_charset(DEFAULT_CHARSET_SPEC)
    results = {"fonts": font_pairs(charset), "font_files": len(font_files(charset)),
               "distinct_fonts": len(distinct_fonts(charset))}
    print(f"| pair | same shape (IoU > {SAME_SHAPE}) | median IoU | median height ratio |")
    print("| --- | ---: | ---: | ---: |")
    for row in results["fonts"]:
        print(f"| {row['pair']} | {row['same_shape']} of {row['fonts']} | {row['median_overlap']:.2f} | "
              f"{row['median_height_ratio']:.2f} |")
    print(f"\n{results['distinct_fonts']} of {results['font_files']} fonts draw no two characters alike "
          "(the colour-key generator's fonts)")
    if args.model:
        results["readings"] = readings = merged_readings(args.model, args.data)
        print(f"\n{args.model} on {args.data} ({readings['count']} images): exact {readings['exact']:.2%}"
              + "".join(f"; {name} {readings[name]:.2%}" for name, _ in MERGES))
    common.write_result("lookalikes", results, args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
