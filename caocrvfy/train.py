"""Train a captcha reader.

    python caocrvfy/train.py --train-size 20000 --time-limit 20      # synthetic 6 x 0-9a-zA-Z
    python caocrvfy/train.py --data path/to/labelled/folder          # your own captchas
    python caocrvfy/train.py --resume models/runs/20261123-031500    # carry on after a stop

Several GPUs are used together (tf.distribute.MirroredStrategy) when TensorFlow sees more than
one; several machines train together (MultiWorkerMirroredStrategy) when TF_CONFIG names a
cluster: start the same command on each, with its own task index (docs/distributed.md).

Writes model.keras (best by validation full-match), config.json, history.csv, curves.png and
metrics.json into --out (default: a new folder under models/runs/), and checkpoint/ after every
epoch for --resume. The pieces live in caocrvfy/training/; this file is the entry point.

Ctrl-C and SIGTERM (what a scheduler or `docker stop` sends) end a training alike: the epoch in
progress is dropped, the best model is scored and kept, the last finished epoch's checkpoint is
left for --resume. Exit status: 0 done, 2 a problem with the data or settings (one sentence
says which), 130 after Ctrl-C, 143 after SIGTERM (128 + the signal's number, as a shell reports it).
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a plain script path: make the package importable
    import sys
    from pathlib import Path as _Path

    sys.path.insert(0, str(_Path(__file__).resolve().parent.parent))

import logging
import signal
import sys

log = logging.getLogger("caocrvfy.train")


def main(argv: list[str] | None = None) -> int:
    from caocrvfy.errors import DataError
    from caocrvfy.training.config import config_from_args
    from caocrvfy.training.interrupts import Terminated, signals_as_interrupts
    from caocrvfy.training.trainer import train

    cfg = config_from_args(argv)  # --help and bad options end here, before any work
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        with signals_as_interrupts():
            train(cfg)
    except DataError as exc:
        log.error(str(exc))
        return 2
    except Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
