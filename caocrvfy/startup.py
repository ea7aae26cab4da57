"""TensorFlow's native start-up lines, kept off the terminal unless asked for.

TensorFlow's C++ code writes lines such as "oneDNN custom operations are on" when it is
imported and "failed call to cuInit" on every machine without a GPU when devices are first
listed, straight to file descriptor 2, whatever TF_CPP_MIN_LOG_LEVEL says. `captured_native_stderr`
catches them at that level; the commands print them with `--verbose`, and the caught text is
replayed at once if the code inside raises, so a failure is never hidden. Training's first step
writes one more ("oneDNN supports DT_BOOL only on platforms with AVX-512", on this project's
AVX2 machines) when its graph first runs: `training.callbacks.FirstStepLines` catches that one.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# What was caught so far, in order: `caocrvfy ... --verbose` prints it.
CAUGHT: list[str] = []
NATIVE_LINE = re.compile(r"[IWEF]\d{4} ")  # the prefix of TensorFlow's native log lines: severity, month, day


@contextlib.contextmanager
def captured_native_stderr(pass_on: bool = False):
    """Redirects file descriptor 2 to a temporary file for the block; its lines go to CAUGHT.
    `pass_on`: only TensorFlow's native lines do; the others (Python's own logging, written
    meanwhile) are written to stderr when the block ends."""
    try:
        stderr_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (a notebook, a captured test)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(stderr_fd)
    failed = False
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), stderr_fd)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, stderr_fd)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", errors="replace")
            lines = text.splitlines()
            CAUGHT.extend(line for line in lines if not pass_on or NATIVE_LINE.match(line))
            others = [line for line in lines if pass_on and not NATIVE_LINE.match(line)]
            if failed and text:
                sys.stderr.write(text)
            elif others:
                sys.stderr.write("\n".join(others) + "\n")
                sys.stderr.flush()


def list_devices_quietly() -> list[str]:
    """Keras's device list (this is when TensorFlow looks for a GPU and may complain that
    there is none), with the native lines caught."""
    import keras

    with captured_native_stderr():
        return keras.distribution.list_devices()
