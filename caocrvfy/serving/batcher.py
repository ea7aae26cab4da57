"""Server-side batching: the images of concurrent requests read in one model call."""

import concurrent.futures
import queue
import threading
import time

import numpy as np

from caocrvfy.inference.predictor import PREDICT_BATCH


class MicroBatcher:
    """Runs the model for many requests at once: one thread takes the images of every request
    waiting (up to `max_batch`, and for up to `window_s` after the first), reads them in one
    model call and hands each request its share. With `window_s` 0 nothing waits on purpose:
    requests that arrive while the model is busy are read together in its next call.

    Each future gets `timing` before its result: (seconds it waited in the queue, seconds the
    model call took, images in that call), which the server sends back as Server-Timing.
    """

    def __init__(self, predict_arrays, max_batch: int = PREDICT_BATCH, window_s: float = 0.0):
        self.predict_arrays, self.max_batch, self.window_s = predict_arrays, max_batch, window_s
        self.jobs: queue.Queue = queue.Queue()
        self.calls = self.images = 0  # model calls and images read, for /model and tests
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="caocrvfy-batcher", daemon=True)
        self.thread.start()

    def submit(self, arrays: list[np.ndarray]) -> concurrent.futures.Future:
        if self.closed:
            raise RuntimeError("the server is shutting down")
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.submitted = time.perf_counter()
        self.jobs.put((arrays, future))
        return future

    def close(self) -> None:
        self.closed = True
        self.jobs.put(None)
        self.thread.join(timeout=10)

    def _take(self) -> list | None:
        first = self.jobs.get()
        if first is None:
            return None
        taken, size = [first], len(first[0])
        deadline = time.monotonic() + self.window_s
        while size < self.max_batch:
            try:
                job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic())) if self.window_s \
                    else self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)  # stop after this batch
                break
            taken.append(job)
            size += len(job[0])
        return taken

    def _loop(self) -> None:
        while (taken := self._take()) is not None:
            # A request that went away (its future cancelled) is not read.
            taken = [(arrays, future) for arrays, future in taken if future.set_running_or_notify_cancel()]
            if not taken:
                continue
            arrays = [a for job_arrays, _ in taken for a in job_arrays]
            started = time.perf_counter()
            try:
                results = self.predict_arrays(np.stack(arrays))
            except Exception as exc:  # every waiting request gets the error; the thread goes on
                for _, future in taken:
                    future.set_exception(exc)
                continue
            took = time.perf_counter() - started
            self.calls, self.images = self.calls + 1, self.images + len(arrays)
            start = 0
            for job_arrays, future in taken:
                future.timing = (started - future.submitted, took, len(arrays))
                future.set_result(results[start : start + len(job_arrays)])
                start += len(job_arrays)
