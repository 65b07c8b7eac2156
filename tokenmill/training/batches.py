"""Stage batches from shards: ShardReader → StageCropper → StageLayout.crop_sequence → [B, L] ids.

``StageBatches(reader, cropper, layout, batch_size)`` is an endless iterator of int64 arrays
[batch_size, layout.sequence_length]: epochs follow each other (the reader starts the next one
when one is exhausted) until the trainer stops asking. Everything is a function of the reader's
deterministic order and of (seed, epoch, index): no clock, no pid, no global RNG.

Crop index. The cropper draws the crop start from (seed, epoch, index). A record's index is
``k · world_size + rank`` where k is its position among the records this rank's reader yielded in
the epoch (the reader's own ``yielded`` count), so indices are unique across ranks within an
epoch, and a restored reader (its ``yielded`` comes back with it) gives the same indices again.

State: the reader's ``state_dict()`` is the whole state (the crop index is derived from it), so a
checkpoint taken between batches resumes to the exact same stream. Skipped records (short tracks
under the "skip" policy) are counted in ``cropper.counts`` (``counts`` is a copy) and logged by the
trainer; an epoch that yields no crop at all raises instead of looping forever. ``progress()`` /
``restore_progress()`` snapshot and restore those counters and ``epochs_started`` (the number of
times the stream (re)entered an epoch; a restore counts as one): prefetch.py hands them over with
each batch so the trainer never reads counters a background thread is updating.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tokenmill.training.crops import CropError, StageCropper
from tokenmill.training.data import ShardReader
from tokenmill.training.stages import StageLayout


class StageBatches:
    def __init__(self, reader: ShardReader, cropper: StageCropper, layout: StageLayout, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 sequences, got {batch_size}")
        if cropper.stage != layout.stage:
            raise CropError(f"cropper is for the {cropper.stage} stage but the layout for {layout.stage}")
        self.reader, self.cropper, self.layout, self.batch_size = reader, cropper, layout, int(batch_size)
        self.rank, self.world_size = reader.rank, reader.world_size
        self._records: Iterator[tuple[int, int, object]] | None = None
        self.epochs_started = 0

    def _stream(self) -> Iterator[tuple[int, int, object]]:
        """(epoch, index, record) forever, epoch after epoch."""
        while True:
            st = self.reader.state_dict()  # before iterating: the buffer is references only
            epoch, k = int(st["epoch"]), int(st["yielded"])
            fresh = k == 0
            self.epochs_started += 1
            crops_before = self.cropper.counts["cropped"] + self.cropper.counts["padded"]
            for record in self.reader:
                yield epoch, k * self.world_size + self.rank, record
                k += 1
            if fresh and self.cropper.counts["cropped"] + self.cropper.counts["padded"] == crops_before:
                raise CropError(f"epoch {epoch} of rank {self.rank} gave no {self.layout.stage} crop from its {k} "
                                "records" + (": all were skipped as shorter than the crop (short_tracks="
                                             "'skip'); use short_tracks='pad' or a shorter crop" if k else
                                             "; its shards are empty: check --splits and the dataset"))

    def __iter__(self) -> StageBatches:
        return self

    def __next__(self) -> np.ndarray:
        """int64 [batch_size, sequence_length]."""
        if self._records is None:
            self._records = self._stream()
        seqs: list[np.ndarray] = []
        while len(seqs) < self.batch_size:
            epoch, index, record = next(self._records)
            crop = self.cropper(record, epoch=epoch, index=index)
            if crop is not None:
                seqs.append(self.layout.crop_sequence(crop))
        return np.stack(seqs)

    def state_dict(self) -> dict:
        return self.reader.state_dict()

    @property
    def counts(self) -> dict[str, int]:
        """The cropper's counts (records, cropped, padded, skipped) so far, a copy."""
        return dict(self.cropper.counts)

    def progress(self) -> dict:
        return {"counts": dict(self.cropper.counts), "epochs_started": self.epochs_started}

    def restore_progress(self, progress: dict) -> None:
        self.cropper.counts.clear()
        self.cropper.counts.update(progress["counts"])
        self.epochs_started = int(progress["epochs_started"])

    def load_state_dict(self, state: dict) -> None:
        self.reader.load_state_dict(state)
        self._records = None
