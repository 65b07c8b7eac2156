"""Background prefetch of stage batches: one thread keeps the next `depth` batches ready.

``PrefetchedBatches(StageBatches(...), depth=2)`` yields exactly the batches of the wrapped stream,
in the same order, while a daemon thread forms the next ones (shard reads, decoding, cropping,
layout) during the trainer's step. Once started, that thread alone touches the wrapped stream
(its reader and cropper).

State. With each batch the thread hands over the stream's ``state_dict()`` and ``progress()``
(cropper counts, epochs started), taken right after forming that batch. So ``state_dict()``,
``counts`` and ``epochs_started`` describe the batches the caller has CONSUMED, never the ones
waiting in the queue: a checkpoint resumes where the trainer stopped, as without prefetching.

Errors. An exception raised while forming batch k (CropError, a shard checksum mismatch, an HTTP
failure, ...) is re-raised, the same object, by the k-th ``next()``, after batches 0..k-1. Every
later ``next()`` raises it again, until ``load_state_dict()``.

Lifetime. The thread starts at the first ``next()``. ``close()`` stops it and drops the queued
batches; a later ``next()`` rewinds the wrapped stream to the last consumed batch and starts a new
thread. ``load_state_dict()`` stops the thread before loading, so no batch prefetched from the old
position survives. The thread is a daemon and holds no reference to the wrapper: a wrapper that
is garbage collected without ``close()`` stops its thread too.
"""
from __future__ import annotations

import copy
import queue
import threading
import weakref

import numpy as np

from tokenmill.training.batches import StageBatches

_BATCH, _END, _ERROR = "batch", "end", "error"
_POLL_S = 0.05  # how often a producer blocked on a full queue checks for stop


def _produce(source: StageBatches, out: queue.Queue, stop: threading.Event) -> None:
    """The producer loop. A function, not a method: the thread must not keep the wrapper alive."""
    while not stop.is_set():
        try:
            batch = next(source)
            item = (_BATCH, batch, copy.deepcopy(source.state_dict()), source.progress())
        except StopIteration:
            item = (_END, None, None, None)
        except BaseException as e:  # noqa: BLE001 - handed over, re-raised in the consumer's thread
            item = (_ERROR, e, None, None)
        while not stop.is_set():
            try:
                out.put(item, timeout=_POLL_S)
                break
            except queue.Full:
                continue
        if item[0] != _BATCH:
            return


class PrefetchedBatches:
    """`source`'s batches, formed `depth` ahead by a background thread; see the module docstring."""

    def __init__(self, source: StageBatches, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1 batches, got {depth}; iterate the StageBatches itself "
                             "for no prefetching (the trainer's --prefetch 0)")
        self.source, self.depth = source, int(depth)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue | None = None
        self._finalizer: weakref.finalize | None = None
        # of the last consumed batch; None while no thread has run since construction / load_state_dict
        self._state: dict | None = None
        self._progress: dict | None = None
        self._error: BaseException | None = None
        self._ended = False

    def __iter__(self) -> PrefetchedBatches:
        return self

    def __next__(self) -> np.ndarray:
        if self._error is not None:
            raise self._error
        if self._ended:
            raise StopIteration
        if self._thread is None or self._stop.is_set():
            self._start()
        kind, value, state, progress = self._get()
        if kind == _BATCH:
            self._state, self._progress = state, progress
            return value
        self.close()  # the thread has returned
        if kind == _END:
            self._ended = True
            raise StopIteration
        self._error = value
        raise value

    def _start(self) -> None:
        self.close()  # waits for a thread still finishing a batch after close(timeout)
        if self._state is None:
            self._state, self._progress = copy.deepcopy(self.source.state_dict()), self.source.progress()
        else:  # the previous thread ran ahead of the consumer: back to the last consumed batch
            self.source.load_state_dict(copy.deepcopy(self._state))
            self.source.restore_progress(self._progress)
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=_produce, args=(self.source, self._queue, self._stop),
                                        name="tokenmill-prefetch", daemon=True)
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, self._stop.set)
        self._thread.start()

    def _get(self) -> tuple:
        while True:
            try:
                return self._queue.get(timeout=0.5)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the prefetch thread ended without handing over a batch or an error; "
                                       "rerun with --prefetch 0 to form batches in the training thread") from None

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread and drop the batches it prefetched (idempotent). Waits up to `timeout`
        seconds (None: as long as it takes) for the batch it is forming; a thread still inside a
        slow shard read after that exits at its next check, and the next ``next()`` or
        ``load_state_dict()`` waits for it."""
        if self._thread is None:
            return
        self._stop.set()
        self._queue = None
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._thread = None

    @property
    def alive(self) -> bool:
        """Whether the producer thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def state_dict(self) -> dict:
        """The wrapped stream's state right after the last batch consumed from this iterator."""
        return copy.deepcopy(self._state) if self._state is not None else self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.close()
        if self._progress is not None:  # counters as of the last consumed batch, as without prefetching
            self.source.restore_progress(self._progress)
        self.source.load_state_dict(state)
        self._state = self._progress = None
        self._error, self._ended = None, False

    def progress(self) -> dict:
        return copy.deepcopy(self._progress) if self._progress is not None else self.source.progress()

    @property
    def counts(self) -> dict[str, int]:
        """The cropper's counts as of the last consumed batch, a copy."""
        return self.progress()["counts"]

    @property
    def epochs_started(self) -> int:
        return self.progress()["epochs_started"]
