"""RunInference handlers shared by the window streams (MuLan and melody): each segment's fixed-length
windows are embedded by the stream's model, checked, and (in `tokenize`) stored as float16 beside
the RVQ tokens of the stored windows. The streams differ only in the model's embed method, the
window rule their check uses, the field names and the token rule; pipelines/mulan.py and
pipelines/melody.py supply those.

One segment's windows per model call (chunked by the model's batch size), never the whole
RunInference batch: a conv's float results change in the last bits with the batch's composition,
and which segments share a RunInference batch depends on the runner's bundles, so the fitted RVQ
(and the float16 windows) would differ between runners (tests/test_distributed.py).
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

    def embed(self, model) -> Callable[[np.ndarray], np.ndarray]:
        """The model's wave → float32 [W, D] method."""
        raise NotImplementedError

    def check(self, windows: np.ndarray, seg: SegmentInput, model) -> np.ndarray:
        """The windows, or raise naming the segment (count by the stream's window rule, finite)."""
        raise NotImplementedError

    def windows(self, model, batch: Sequence[SegmentInput]) -> list:
        embed = self.embed(model)
        waves = [s.waves[model.sample_rate_hz] for s in batch]
        out = []
        for s, w in zip(batch, per_element(lambda ws: [embed(x) for x in ws], embed, waves)):
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
