"""RunInference handlers shared by the window streams (MuLan and melody): each segment's fixed-length
windows are embedded by the stream's model, checked, and (in `tokenize`) stored as float16 beside
the RVQ tokens of the stored windows. The streams differ only in the model's batch embed method,
the window rule their check uses, the field names and the token rule; pipelines/mulan.py and
pipelines/melody.py supply those.

The windows of every segment in a RunInference batch share the model's forward passes (a 10 s
clip has one MuLan window: one segment per call would run passes of one row). The passes have a
fixed shape, `batch_size` rows with zero rows filling the last one (tokenizers/windowing.py), so a
window's float bits, and hence the fitted RVQ, the float16 windows and the tokens, do not depend
on which segments the runner's bundles put together (tests/test_batch_invariance.py,
tests/test_distributed.py). If the batch call raises, the segments are retried one by one, so
only the failing one becomes a dead letter.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from tokenmill.pipelines.handlers import Failed, per_element
from tokenmill.pipelines.ingest import SegmentInput


class WindowHandler(ModelHandler):
    """SegmentInput → float32 [W, D] window embeddings per segment (or Failed)."""

    def __init__(self, cfg):
        super().__init__(min_batch_size=1, max_batch_size=cfg.batch_size)
        self.cfg = cfg

    def embed_batch(self, model) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
        """The model's [wave] → [float32 [W_i, D]] method (windows of all waves share passes)."""
        raise NotImplementedError

    def check(self, windows: np.ndarray, seg: SegmentInput, model) -> np.ndarray:
        """The windows, or raise naming the segment (count by the stream's window rule, finite)."""
        raise NotImplementedError

    def windows(self, model, batch: Sequence[SegmentInput]) -> list:
        embed = self.embed_batch(model)
        waves = [s.waves[model.sample_rate_hz] for s in batch]
        out = []
        for s, w in zip(batch, per_element(embed, lambda x: embed([x])[0], waves)):
            if not isinstance(w, Failed):
                try:
                    w = self.check(w, s, model)
                except Exception as e:  # noqa: BLE001 — becomes this segment's dead letter
                    w = Failed(e)
            out.append(w)
        return out

    def run_inference(self, batch, model, inference_args=None):
        return [PredictionResult(s, w) for s, w in zip(batch, self.windows(model, batch))]

    def get_num_bytes(self, batch: Sequence[SegmentInput]) -> int:
        return sum(w.nbytes for s in batch for w in s.waves.values())


class WindowTokenHandler(WindowHandler):
    """SegmentInput → {WINDOWS_FIELD: float16 [W, D], TOKENS_FIELD: tokens of the stored windows}.
    The loaded model is a tokenizer with `.model` and `.rvq`."""

    WINDOWS_FIELD = TOKENS_FIELD = ""

    def tokens(self, windows16: np.ndarray, rvq) -> np.ndarray:
        raise NotImplementedError

    def run_inference(self, batch, model, inference_args=None):
        out = []
        for s, w in zip(batch, self.windows(model.model, batch)):
            if not isinstance(w, Failed):
                try:
                    w16 = w.astype(np.float16)
                    w = {self.WINDOWS_FIELD: w16, self.TOKENS_FIELD: self.tokens(w16, model.rvq)}
                except Exception as e:  # noqa: BLE001
                    w = Failed(e)
            out.append(PredictionResult(s, w))
        return out
