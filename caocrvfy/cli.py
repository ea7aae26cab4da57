"""The `caocrvfy` command: generate, train, predict, evaluate, export, serve, label.

    caocrvfy generate --count 2000 --out data/test-6x62
    caocrvfy generate --colour-key red,blue --length 4 --width 200 --height 60 --count 2000
    caocrvfy train --train-size 20000 --time-limit 20
    caocrvfy predict --model models/captcha-6x62 some.png folder/
    caocrvfy evaluate --model models/captcha-6x62 --data data/test-6x62 --json
    caocrvfy evaluate --model models/captcha-6x62 --data data/test-6x62 --report reports/captcha-6x62
    caocrvfy export --model models/captcha-6x62 --format onnx --out exports/model.onnx
    caocrvfy serve --model models/captcha-6x62 --host 127.0.0.1 --port 8000
    caocrvfy label data/site-captchas --port 8600
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("caocrvfy")

READER_HELP = ("run folder or model file (default: the shipped 6x62 model in its int8 TFLite form, "
               "models/captcha-6x62/model-int8.tflite, or its model.keras where that file is missing)")


def _generate(args) -> int:
    from caocrvfy.data.colour_keys import parse_pair
    from caocrvfy.data.synthetic import CaptchaSpec, generate
    from caocrvfy.errors import DataError

    charset = charset_option(args.charset, "--charset")
    colour_key = None
    if args.colour_key:  # CaptchaSpec refuses it with --style varied or --arithmetic
        try:
            colour_key = ",".join(map(str, parse_pair(args.colour_key)))  # as written in the manifest: red,blue
        except DataError as exc:
            raise DataError(f"--colour-key: {exc}") from exc
    spec = CaptchaSpec(charset, args.length, args.width, args.height, style=args.style, colour_key=colour_key)
    if args.arithmetic:
        from caocrvfy.data.expressions import ExpressionSpec

        try:
            low, _, high = args.operands.partition("-")
            expressions = ExpressionSpec(int(low), int(high), args.operators, args.ask)
        except ValueError as exc:
            raise DataError(f"--arithmetic: {exc}") from exc
        shortest, longest = expressions.lengths
        spec = CaptchaSpec(expressions.charset, longest, args.width, args.height, style=args.style,
                           min_length=shortest, arithmetic=expressions.text(), colour_key=colour_key)
    kind = "arithmetic" if args.arithmetic else f"captcha-{spec.length}x{len(spec.charset)}"
    if spec.colour_key:  # colour-red-blue-4x62; a #RRGGBB:TOL colour loses its # and :
        colours = "".join(c for c in spec.colour_key.replace(",", "-") if c.isalnum() or c == "-")
        kind = f"colour-{colours}-{spec.length}x{len(spec.charset)}"
    out = args.out or Path("data") / f"{kind}-{spec.width}x{spec.height}"
    folder = generate(out, args.count, spec, workers=args.workers)
    print(folder)
    return 0


def _predict(args) -> int:
    from caocrvfy.inference import Predictor, expand_inputs
    from caocrvfy.inference.arithmetic import answer_or_error

    reader = Predictor.load(args.model, keep_colour=args.keep_colour)
    constraint = constraint_of(args, reader)
    paths = expand_inputs(args.inputs)
    if not paths:
        log.error("no image files found in the inputs given: name image files or folders of them.")
        return 2
    failures = 0
    readings = []
    for path, prediction, error in reader.predict_files(paths, batch_size=args.batch_size, constraint=constraint):
        if prediction is not None:
            readings.append((path, prediction))
        if error:
            failures += 1
            log.error(f"{path}: {error}; skipped")
            if args.json:
                print(json.dumps({"file": str(path), "error": error}))
            continue
        line = {"file": str(path), "text": prediction.text}
        if args.solve:
            line |= answer_or_error(prediction.text)
            if "error" in line:  # this image only: the batch goes on
                failures += 1
                log.error(f"{path}: {line['error']}")
        line["confidence"] = round(prediction.confidence, 6)
        if args.json:
            print(json.dumps(line))
        else:
            answer = [line.get("answer", "")] if args.solve else []
            print("\t".join([str(path), prediction.text, *answer, f"{prediction.confidence:.4f}"]))
    if args.labels_csv:
        write_labels_csv(readings, Path(args.labels_csv))
    if failures:
        log.error(f"{failures} of {len(paths)} file(s) could not be read{' or solved' if args.solve else ''} "
                  "(listed above); the others were read")
    return 1 if failures else 0


def write_labels_csv(readings: list, out: Path) -> None:
    """The readings as a labels.csv (file,label,confidence), most doubtful first, for a person to
    correct and train on; file names are relative to the CSV's folder where they can be."""
    from caocrvfy.data import folders

    def name(path: Path) -> str:
        try:
            return str(path.resolve().relative_to(out.resolve().parent))
        except ValueError:
            return str(path.resolve())

    rows = [(name(path), prediction.text, f"{prediction.confidence:.4f}")
            for path, prediction in sorted(readings, key=lambda item: item[1].confidence)]
    folders.write_labels_csv(rows, out)
    log.info(f"wrote {len(readings)} readings to {out}, most doubtful first: correct them, then train with --data")


def charset_option(text: str, option: str) -> str:
    """A character-set option's characters (ranges expanded), or DataError naming the option."""
    from caocrvfy.data.charset import parse_charset
    from caocrvfy.errors import DataError

    try:
        return parse_charset(text)
    except ValueError as exc:
        raise DataError(f"{option}: {exc}") from exc


def constraint_of(args, reader):
    """The --length, --min-length, --max-length and --allowed options as a Constraint (or None),
    checked against the model before any image is read; with --solve a CTC model reads the best
    expression (a reading `solve` answers) where its free reading is none."""
    from caocrvfy.inference.decoding import Constraint

    allowed = charset_option(args.allowed, "--allowed") if args.allowed is not None else None
    constraint = Constraint.of(args.length, args.min_length, args.max_length, allowed,
                               expression=getattr(args, "solve", False))
    if constraint is not None:
        reader.check(constraint)
    return constraint


def _evaluate(args) -> int:
    from caocrvfy.evaluation import evaluate_folder
    from caocrvfy.inference import Predictor

    reader = Predictor.load(args.model, keep_colour=args.keep_colour)
    if args.solve:
        return _evaluate_answers(reader, args)
    if args.report:
        return _evaluate_report(reader, args)
    result = evaluate_folder(reader, args.data, ignore_case=args.ignore_case, constraint=constraint_of(args, reader))
    for item in result["skipped"]:
        log.warning(f"skipped {item['file']}: {item['reason']}")
    if args.json:
        print(json.dumps({k: result[k] for k in ("full_match", "char_accuracy", "count")}))
    else:
        print(f"full-match {result['full_match']:.4f}  char accuracy {result['char_accuracy']:.4f}  "
              f"on {result['count']} images ({len(result['skipped'])} skipped)")
    return 0


def _evaluate_answers(reader, args) -> int:
    """evaluate --solve: the share of images whose reading solves to the label's answer (a label
    is the expression or the answer itself)."""
    from caocrvfy.errors import DataError
    from caocrvfy.evaluation.labelled import read_labelled_folder
    from caocrvfy.evaluation.scores import answers

    records, paths, skipped = read_labelled_folder(reader, args.data, ignore_case=args.ignore_case,
                                                   constraint=constraint_of(args, reader))
    right, unsolved, bad_labels = answers(records)
    skipped += [(paths[i].name, f"the label {why}: neither an expression nor an answer") for i, why in bad_labels]
    scored = len(records) - len(bad_labels)
    for name, reason in skipped:
        log.warning(f"skipped {name}: {reason}")
    if not scored:
        raise DataError(f"{args.data} has no label that is an expression or an answer: label arithmetic captchas "
                        "with the expression (14+27=?) or the answer (41).")
    figures = {"answer_accuracy": right / scored, "count": scored, "not_expressions": unsolved}
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"answers right {figures['answer_accuracy']:.4f} on {scored} images ({unsolved} readings not "
              f"expressions, {len(skipped)} skipped)")
    return 0


def _evaluate_report(reader, args) -> int:
    from caocrvfy.evaluation.labelled import read_labelled_folder
    from caocrvfy.evaluation.report import write_report

    records, paths, skipped = read_labelled_folder(reader, args.data, ignore_case=args.ignore_case, progress=True,
                                                   constraint=constraint_of(args, reader))
    for name, reason in skipped:
        log.warning(f"skipped {name}: {reason}")
    about = [f"Model `{reader.path}` on `{args.data}`: {len(records)} captchas"
             f"{f', {len(skipped)} skipped' if skipped else ''}"
             f"{', compared case-folded' if args.ignore_case or reader.ignore_case else ''}."]
    figures = write_report(records, paths, args.report, title=f"What {Path(reader.path).parent.name} gets wrong",
                           about=about, charset=reader.charset)
    figures["skipped"] = [{"file": n, "reason": r} for n, r in skipped]
    if args.json:
        print(json.dumps(figures))
    else:
        best = figures["coverage"]["recommended"]
        advice = (f"answer when confidence >= {best['threshold']:.6g} ({best['coverage']:.1%} answered)"
                  if best else f"no threshold reaches {figures['coverage']['target']:.0%}")
        print(f"full-match {figures['full_match']:.4f}  char accuracy {figures['char_accuracy']:.4f}  "
              f"ECE {figures['calibration']['ece']:.4f}  {advice}  on {len(records)} images "
              f"({len(skipped)} skipped); report: {figures['report']}")
    return 0


def _export(args) -> int:
    from caocrvfy.inference.export import export_model

    print(export_model(args.model, args.format, args.out, int8=args.int8))
    return 0


def _serve(args) -> int:
    import os
    from dataclasses import fields

    try:
        from caocrvfy.serving.app import run
        from caocrvfy.serving.requests import API_KEY_ENV, Limits
    except ImportError as exc:
        log.error(f"caocrvfy serve needs FastAPI and uvicorn ({exc}): pip install 'caocrvfy[serve]'")
        return 2
    from caocrvfy.inference import Predictor

    limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})  # one option per field
    window = None if args.no_batching else args.batch_window_ms
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    run(Predictor.load(args.model, keep_colour=args.keep_colour), args.host, args.port, limits, args.log_level, window, api_key)
    return 0


def _label(args) -> int:
    try:
        from caocrvfy.labelling.page import Labeller, print_next, run
    except ImportError as exc:
        log.error(f"caocrvfy label needs FastAPI and uvicorn ({exc}): pip install 'caocrvfy[serve]'")
        return 2
    from caocrvfy.labelling.store import LabelStore

    charset = charset_option(args.charset, "--charset") if args.charset else None
    labeller = Labeller(LabelStore(args.folder, charset), args.model, args.train_minutes)
    if args.print_next is not None:
        lines = print_next(labeller, args.print_next)
        for line in lines:
            print(line)
        if not lines:
            log.info(f"{args.folder}: every image is labelled")
        return 0
    run(labeller, args.host, args.port)
    return 0


def at_least(kind: type, low: float, what: str, strict: bool = False):
    """An argparse type: a `kind` (int or float) of at least `low` (above it when `strict`), else
    one message naming the bound."""
    bound = f"above {low:g}" if strict else f"{low:g} or more" if low == 0 else f"at least {low:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"give {what}, not {text!r}") from None
        if not (value > low if strict else value >= low):  # NaN is neither
            raise argparse.ArgumentTypeError(f"must be {bound}, not {value:g}")
        return value

    return parse


positive_int = at_least(int, 1, "a whole number")
positive_seconds = at_least(float, 0, "a number of seconds", strict=True)
positive_minutes = at_least(float, 0, "a number of minutes", strict=True)
non_negative_ms = at_least(float, 0, "a number of milliseconds")


def port(text: str) -> int:
    value = int(text) if text.isdigit() else -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 0 to 65535, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from caocrvfy.data.charset import DEFAULT_CHARSET_SPEC
    from caocrvfy.data.colour_keys import NAMED_HUES
    from caocrvfy.data.expressions import ASKS, DEFAULT_ASK, DEFAULT_OPERANDS, DEFAULT_OPERATORS, OPERATORS
    from caocrvfy.data.synthetic import CaptchaSpec
    from caocrvfy.data.varied import STYLES
    from caocrvfy.inference.export import FORMATS
    from caocrvfy.inference.predictor import FROM_MODEL, PREDICT_BATCH
    from caocrvfy.serving.requests import Limits

    spec, limits = CaptchaSpec(), Limits()
    p = argparse.ArgumentParser(prog="caocrvfy", description="Train and use captcha readers.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="also print TensorFlow's start-up lines (default: off)")
    sub = p.add_subparsers(dest="command", required=True)
    reading = argparse.ArgumentParser(add_help=False)
    g = reading.add_argument_group("what a reading may be (CTC models read the best path that meets it)")
    g.add_argument("--length", type=at_least(int, 0, "a whole number"), metavar="N",
                   help="exactly N characters (default: any)")
    g.add_argument("--min-length", type=at_least(int, 0, "a whole number"), metavar="N", help="at least N characters")
    g.add_argument("--max-length", type=at_least(int, 0, "a whole number"), metavar="N", help="at most N characters")
    g.add_argument("--allowed", metavar="CHARS",
                   help="only these characters, ranges allowed, e.g. 0-9 (default: the model's whole set)")
    keyed = argparse.ArgumentParser(add_help=False)
    keyed.add_argument("--keep-colour", default=FROM_MODEL, metavar="COLOUR",
                       help=f"read only the characters of this colour: {', '.join(NAMED_HUES)}, black, or "
                            "#RRGGBB[:TOLERANCE]; none reads every pixel (default: the colour the model was trained "
                            "with, if any; docs/colour-keys.md)")

    g = sub.add_parser("generate", parents=[common], help="make labelled captchas with the captcha library")
    g.add_argument("--charset", default=DEFAULT_CHARSET_SPEC,
                   help=f"characters, ranges allowed (default {DEFAULT_CHARSET_SPEC})")
    g.add_argument("--length", type=positive_int, default=spec.length, help=f"characters per captcha (default {spec.length})")
    g.add_argument("--width", type=positive_int, default=spec.width, help=f"(default {spec.width})")
    g.add_argument("--height", type=positive_int, default=spec.height, help=f"(default {spec.height})")
    g.add_argument("--style", choices=STYLES, default=spec.style,
                   help=f"the captcha library's look, or varied fonts, colours and noise (default {spec.style})")
    g.add_argument("--arithmetic", action="store_true",
                   help="draw expressions such as 14+27=? (INDEX.png, labels in labels.csv); --charset and --length "
                        "follow from the options below")
    g.add_argument("--operands", default=f"{DEFAULT_OPERANDS[0]}-{DEFAULT_OPERANDS[1]}", metavar="LOW-HIGH",
                   help=f"with --arithmetic: the numbers' range (default {DEFAULT_OPERANDS[0]}-{DEFAULT_OPERANDS[1]})")
    g.add_argument("--operators", default=DEFAULT_OPERATORS,
                   help=f"with --arithmetic: some of {OPERATORS} (default {DEFAULT_OPERATORS}); subtractions stay "
                        "at or above 0, divisions are exact")
    g.add_argument("--ask", default=DEFAULT_ASK, choices=ASKS,
                   help=f"with --arithmetic: what follows the expression (default {DEFAULT_ASK!r})")
    g.add_argument("--count", type=positive_int, default=1000, help="images wanted in the folder (default 1000)")
    g.add_argument("--colour-key", metavar="KEEP,DECOY",
                   help="two-colour captchas, e.g. red,blue: --length characters in KEEP (the label) and 1 to "
                        "--length decoys in DECOY, at --width x --height (200x60 fits 4 and 4); colours: "
                        f"{', '.join(NAMED_HUES)}, black, #RRGGBB[:TOLERANCE] (default: none)")
    g.add_argument("--out", help="folder (default data/captcha-LxN-WxH, data/colour-KEEP-DECOY-LxN-WxH); an existing "
                                 "one is topped up")
    g.add_argument("--workers", type=positive_int, help="processes (default: every CPU core)")
    g.set_defaults(func=_generate)

    sub.add_parser("train", help="train a model (see `caocrvfy train --help`)", add_help=False)

    g = sub.add_parser("predict", parents=[common, reading, keyed], help="read captchas with a saved model",
                       description="Reads every file; exits 0 when all were read, 1 when any could not be read "
                                   "(each is listed, the others are still read), 2 for a mistake such as a bad model.")
    g.add_argument("inputs", nargs="+", help="image files or folders")
    g.add_argument("--model", help=READER_HELP)
    g.add_argument("--json", action="store_true", help="one JSON object per line")
    g.add_argument("--batch-size", type=positive_int, default=PREDICT_BATCH,
                   help=f"images per model call (default {PREDICT_BATCH})")
    g.add_argument("--solve", action="store_true",
                   help="arithmetic captchas: also print the answer of each reading (14+27=? -> 41); a CTC model "
                        "reads the most probable expression where its free reading is none; a reading that is "
                        "still not an expression gets an error on its line and the others go on")
    g.add_argument("--labels-csv", metavar="OUT",
                   help="also write the readings as a labels.csv (file,label,confidence), most doubtful first, "
                        "to correct by hand and train on with --data")
    g.set_defaults(func=_predict)

    g = sub.add_parser("evaluate", parents=[common, reading, keyed], help="accuracy on a labelled folder")
    g.add_argument("--model", help=READER_HELP)
    g.add_argument("--data", required=True, help="labelled folder")
    g.add_argument("--ignore-case", action="store_true", help="compare case-folded")
    g.add_argument("--json", action="store_true",
                   help="print full_match, char_accuracy and count as JSON (with --report: every report figure)")
    g.add_argument("--report", metavar="OUT", help="write OUT/report.md with figures on what the model gets wrong")
    g.add_argument("--solve", action="store_true",
                   help="arithmetic captchas: score the answers of the readings (read as with predict --solve) "
                        "against each label's answer (a label is the expression, 14+27=?, or the answer, 41)")
    g.set_defaults(func=_evaluate)

    g = sub.add_parser("export", parents=[common], help="export a model as SavedModel, ONNX or TFLite (see docs/export.md)")
    g.add_argument("--model", help="run folder or model.keras (default: the shipped 6x62 model)")
    g.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    g.add_argument("--out", help="file or folder (default: model.onnx, model.tflite or savedmodel/ beside the model)")
    g.add_argument("--int8", action="store_true",
                   help="TFLite only: 8-bit integer weights, a third of the size and faster single images at the "
                        "same accuracy (see docs/export.md)")
    g.set_defaults(func=_export)

    g = sub.add_parser("serve", parents=[common, keyed], help="read captchas over HTTP (POST /predict; see docs/serving.md)")
    g.add_argument("--model", help=READER_HELP)
    g.add_argument("--host", default="127.0.0.1", help="(default 127.0.0.1)")
    g.add_argument("--port", type=port, default=8000, help="(default 8000)")
    g.add_argument("--max-body-bytes", type=positive_int, default=limits.max_body_bytes,
                   help=f"larger requests get 413 (default {limits.max_body_bytes})")
    g.add_argument("--max-images", type=positive_int, default=limits.max_images,
                   help=f"images per request (default {limits.max_images})")
    g.add_argument("--max-pixels", type=positive_int, default=limits.max_pixels,
                   help=f"width x height per image, checked before decoding (default {limits.max_pixels})")
    g.add_argument("--header-timeout", type=positive_seconds, default=limits.header_timeout, metavar="S",
                   help="close a connection whose request header is not complete S seconds after it opened or "
                        f"after the first byte of its next request (default {limits.header_timeout:g})")
    g.add_argument("--body-timeout", type=positive_seconds, default=limits.body_timeout, metavar="S",
                   help=f"answer 408 when the body is not complete S seconds after the header (default "
                        f"{limits.body_timeout:g})")
    g.add_argument("--keep-alive-timeout", type=positive_seconds, default=limits.keep_alive_timeout, metavar="S",
                   help=f"close an idle connection S seconds after an answer (default {limits.keep_alive_timeout:g})")
    g.add_argument("--max-connections", type=positive_int, default=limits.max_connections, metavar="N",
                   help=f"open connections served at once; a request on one more gets 503 (default "
                        f"{limits.max_connections})")
    g.add_argument("--api-key", metavar="KEY",
                   help="require `Authorization: Bearer KEY` or `X-API-Key: KEY` on every endpoint but /healthz "
                        "(default: $CAOCRVFY_API_KEY, else no key; the variable keeps the key out of `ps`)")
    g.add_argument("--batch-window-ms", type=non_negative_ms, default=0.0,
                   help="how long the model waits to gather concurrent requests into one batch; 0 reads together "
                        "only what arrived while it was busy (default 0)")
    g.add_argument("--no-batching", action="store_true", help="read one request at a time (see BENCHMARKS.md)")
    g.add_argument("--log-level", default="info", help="uvicorn's log level (default info)")
    g.set_defaults(func=_serve)

    from caocrvfy.labelling.jobs import TRAIN_MINUTES

    g = sub.add_parser("label", parents=[common], help="label a folder in the browser, the model's reading filled in "
                                                       "(see docs/labelling.md)",
                       description="Serves a local page that shows the folder's unlabelled images least confident "
                                   "first, with the model's reading filled in; each answer goes into DIR/labels.csv "
                                   "at once, and 'train now' trains on them.")
    g.add_argument("folder", help="folder of captcha images; answers go to its labels.csv")
    g.add_argument("--model", help="model whose readings are suggested (default: the last one the page trained on "
                                   "this folder, else the base reader)")
    g.add_argument("--charset", help="characters a label may hold, ranges allowed (default: any printable character)")
    g.add_argument("--host", default="127.0.0.1", help="(default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=port, default=8600, help="(default 8600)")
    g.add_argument("--train-minutes", type=positive_minutes, default=TRAIN_MINUTES, metavar="M",
                   help=f"--time-limit of 'train now' (default {TRAIN_MINUTES:g})")
    g.add_argument("--print-next", type=at_least(int, 0, "a whole number"), metavar="N",
                   help="print the next N images to label (file, suggestion, confidence), least confident first, "
                        "instead of serving the page")
    g.set_defaults(func=_label)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train":
        from caocrvfy.train import main as train_main

        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from caocrvfy.startup import CAUGHT, list_devices_quietly

    if args.verbose:
        print("\n".join(CAUGHT), file=sys.stderr, flush=True)
    else:
        list_devices_quietly()  # TensorFlow looks for a GPU here and may complain that there is none
    from caocrvfy.errors import DataError

    try:
        return args.func(args)
    except DataError as exc:
        log.error(str(exc))
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGINT, e.g. ending `serve` or `label`: no traceback
        log.info("stopped")
        return 130
