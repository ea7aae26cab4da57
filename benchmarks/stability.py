"""Why validation full-match falls from one epoch to the next, measured inside one run.

    python benchmarks/stability.py ../shared/datasets/captcha-images-v2 --epochs 40
    python benchmarks/stability.py DIR --epochs 40 --train-option=--bn-statistics=moving

The user's `caocrvfy train --data LABELLED` (every label outside the test fifth, the
learning-curve split of `benchmarks/learning_curve.py`), run in this process with one extra
callback. After every epoch the model being trained reads the test fifth (case-folded) in
several ways, side by side:
- raw: the model as it is, read as `caocrvfy predict` reads (a fixed-length model's CTC reads
  held to its length); raw-greedy: read greedily, with no length held, as Keras's compiled
  metric reads; val-read and val-greedy: the same two on the run's validation images (the
  run's early stopping follows val-read, `caocrvfy.training.validation`; the val_full_match
  column is the compiled metric's, as this callback sees it before the run's own);
- raw+bn: the same weights with every BatchNorm layer's moving mean and variance recomputed
  from `--bn-images` clean labelled images (no augmentation, no dropout; the cumulative average
  over batches of 64, as `torch.optim.swa_utils.update_bn` does): if the falls vanish here,
  the statistics cause them;
- raw+bn-augmented: recomputed the same way from the same images seen through the training's
  augmentation: if this one falls and raw+bn does not, the statistics are wrong because
  augmented images are not the clean ones; if neither falls, because they lag behind the
  weights (a moving average over about 100 steps of weights that move);
- ema-M (and ema-M+bn): an exponential moving average of the weights with momentum M, updated
  after every step as Keras's `use_ema` optimizers do: if they vanish here, the last steps'
  noise in the weights causes them.

Prints and writes (benchmarks/results/stability-NAME-DATE.json) each way's per-epoch test
full-match and its largest fall from one epoch to the next after first passing 90% (`common.largest_fall`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import common
import numpy as np
from learning_curve import test_side
from own_captchas import make_side


def diagnostics_callback(run_dir: Path, test_dir: Path, labelled_dir: Path, momenta: tuple[float, ...],
                         bn_images: int, out: Path):
    import keras

    from caocrvfy.data.charset import fold_case
    from caocrvfy.data.folders import is_validation, read_folder
    from caocrvfy.inference import Predictor
    from caocrvfy.inference.decoding import decode_outputs
    from caocrvfy.model_config import read_config
    from caocrvfy.training.batch_stats import NOISE_LAYERS, recompute_statistics
    from caocrvfy.training.config import TrainConfig

    def copy_without(kinds):
        """A clone_function: a fresh copy of each layer, Identity for the layers of `kinds`."""
        def clone(layer):
            if isinstance(layer, kinds):
                return keras.layers.Identity(name=layer.name)
            return layer.__class__.from_config(layer.get_config())
        return clone

    class Diagnostics(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            config = read_config(run_dir / "config.json")
            self.predictor = Predictor(self.model, config)
            # clean: no augmentation, no dropout; augmented: the training's augmentation, no dropout
            self.clean = keras.models.clone_model(self.model, clone_function=copy_without(NOISE_LAYERS))
            self.augmented = keras.models.clone_model(self.model, clone_function=copy_without(keras.layers.Dropout))
            self.clean_predictor = Predictor(self.clean, config)
            test = read_folder(test_dir)
            self.truth = [fold_case(label) for label in test.labels]
            self.test = np.stack([self.predictor.prepare(p) for p in test.paths])
            found = read_folder(labelled_dir)
            labelled = np.stack([self.predictor.prepare(p) for p in found.paths])
            is_val = np.array([is_validation(p.name, TrainConfig().val_fraction) for p in found.paths])
            self.val, self.val_truth = labelled[is_val], [fold_case(t) for t, v in zip(found.labels, is_val) if v]
            self.bn_images = labelled[np.random.default_rng(0).permutation(len(labelled))[:bn_images]]
            self.ema = {m: None for m in momenta}
            self.rows = []

        def on_train_batch_end(self, batch, logs=None):
            weights = [v.numpy() for v in self.model.trainable_variables]
            for m, ema in self.ema.items():
                self.ema[m] = weights if ema is None else [m * a + (1 - m) * w for a, w in zip(ema, weights)]

        def score(self, predictor, images=None, truth=None, greedy: bool = False) -> float:
            """Full-match on the test files (or `images`), read as `predict` reads (or greedily,
            as the validation metric does: no length held)."""
            images, truth = (self.test, self.truth) if images is None else (images, truth)
            outputs = predictor.outputs(images)
            c = predictor.model_config
            read = decode_outputs(outputs, c.head, c.charset) if greedy else predictor.decode(outputs)
            return float(np.mean([fold_case(p.text) == t for p, t in zip(read, truth)]))

        def load(self, clone, trainable=None) -> None:
            """The model's weights and statistics into `clone`, the trainable ones from `trainable` if given."""
            for layer in clone.layers:
                if layer.weights:
                    layer.set_weights(self.model.get_layer(layer.name).get_weights())
            if trainable is not None:
                for var, value in zip(clone.trainable_variables, trainable, strict=True):
                    var.assign(value)

        def bn_from(self, source) -> None:
            """Recomputes the statistics in `source`, then copies them into the clean clone."""
            recompute_statistics(source, self.bn_images)
            for layer in self.clean.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.set_weights(source.get_layer(layer.name).get_weights())

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            row = {"epoch": epoch + 1, "val_full_match": logs.get("val_full_match"), "loss": logs.get("loss"),
                   "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
                   "raw": self.score(self.predictor), "raw-greedy": self.score(self.predictor, greedy=True),
                   "val-read": self.score(self.predictor, self.val, self.val_truth),
                   "val-greedy": self.score(self.predictor, self.val, self.val_truth, greedy=True)}
            self.load(self.clean)
            if epoch == 0:  # the clone reads as the model does before anything is recomputed
                assert abs(self.score(self.clean_predictor) - row["raw"]) < 1e-9, "the clean clone differs"
            recompute_statistics(self.clean, self.bn_images)
            row["raw+bn"] = self.score(self.clean_predictor)
            self.load(self.augmented)
            self.load(self.clean)
            self.bn_from(self.augmented)
            row["raw+bn-augmented"] = self.score(self.clean_predictor)
            for m, ema in self.ema.items():
                self.load(self.clean, ema)
                row[f"ema-{m:g}"] = self.score(self.clean_predictor)
                recompute_statistics(self.clean, self.bn_images)
                row[f"ema-{m:g}+bn"] = self.score(self.clean_predictor)
            self.rows.append(row)
            print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                  flush=True)
            out.write_text(json.dumps(self.rows, indent=1))

    return Diagnostics()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=40, help="epochs of the run (default 40)")
    p.add_argument("--momenta", default="0.99", help="EMA momenta to follow (default 0.99)")
    p.add_argument("--bn-images", type=int, default=256, help="labelled images the statistics are recomputed from (default 256)")
    common.add_run_options(p)
    args, root, started, work = common.start_run(p, "caocrvfy-stability-")
    from caocrvfy.training.config import config_from_args
    from caocrvfy.training.trainer import train

    test_dir, test, rest = test_side(root, work)
    labelled = make_side(root, work / "labelled", rest)
    run_dir = work / "run"
    cfg = config_from_args(["--data", str(labelled), "--epochs", str(args.epochs), "--out", str(run_dir),
                            *args.train_option])
    momenta = tuple(float(m) for m in args.momenta.split(","))
    partial = work / "stability-rows.json"
    callback = diagnostics_callback(run_dir, test_dir, labelled, momenta, args.bn_images, partial)
    train(cfg, callbacks=(callback,))
    rows = callback.rows
    ways = [k for k in rows[0] if k.startswith(("raw", "ema", "val-"))] + ["val_full_match"]
    summary = {w: common.largest_fall([r[w] for r in rows]) for w in ways}
    print(f"\n{root.name}: {len(rest)} labels, {len(test)} test files, {len(rows)} epochs")
    print("| way | largest fall after 90% | last epoch | best epoch |\n| --- | ---: | ---: | ---: |")
    for w in ways:
        fall = summary[w]
        series = [r[w] for r in rows]
        print(f"| {w} | {'never 90%' if fall is None else f'{fall * 100:.1f} points'} | {series[-1] * 100:.2f}% "
              f"| {max(series) * 100:.2f}% |")
    common.write_result(f"stability-{common.slug(root.name)}",
                        {"labels": len(rest), "test_files": len(test), "largest_fall": summary, "epochs": rows,
                         "train_options": args.train_option}, args.results_dir, started)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
