"""Ctrl-C and SIGTERM as interrupts of a training that cannot be lost.

Python runs a signal handler in the main thread between two bytecodes, wherever that thread is.
When it is inside a finalizer (an object's `__del__`, a weakref callback: TensorFlow and the
zip writer of a `.keras` save run many), the exception the handler raises is printed as
"Exception ignored in ..." and dropped, and the training would go on as if no signal had come.
So the handler also records the signal, and `raise_pending` raises it again at a safe point
(the training loop calls it before each step and after each epoch's save). Library code can also
turn the interrupt into another error as it unwinds: a SIGTERM while TensorFlow traces a function
leaves its graph stack out of order, and "AssertionError: Nesting violated ..." comes out in the
interrupt's place. `unmasked` raises such an error as the interrupt it hides.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that both end a training alike."""


_pending: list[type[KeyboardInterrupt]] = []  # the signals received and not yet raised where they count


def _record_and_raise(signum, frame):
    interrupt = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    _pending.append(interrupt)
    raise interrupt


def raise_pending() -> None:
    """Raises the interrupt of a signal whose first raise was dropped, if any; once."""
    if _pending:
        interrupt = _pending[0]
        _pending.clear()
        raise interrupt


def clear_pending() -> None:
    """Forgets received signals: the interrupt reached the code that handles it."""
    _pending.clear()


@contextlib.contextmanager
def unmasked():
    """Within the block, an error raised while a signal's interrupt is pending is raised as that
    interrupt (the error its cause): the signal is why the block ended."""
    try:
        yield
    except Exception as exc:
        if not _pending:
            raise
        interrupt = _pending[0]
        _pending.clear()
        raise interrupt from exc


@contextlib.contextmanager
def signals_as_interrupts():
    """While the block runs, SIGTERM raises Terminated and Ctrl-C KeyboardInterrupt, each also
    recorded for `raise_pending` and `unmasked`; the handlers that were there before are put back afterwards.
    Ctrl-C's is replaced only where it is Python's default (a caller's own handler is kept)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    signals = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signals.append(signal.SIGINT)
    before = {signum: signal.signal(signum, _record_and_raise) for signum in signals}
    clear_pending()
    try:
        with unmasked():
            yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        clear_pending()
