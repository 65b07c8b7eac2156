"""Zero-shot tagging with a text/audio model (built-in MuLan or CLAP): the clip's audio embedding
(the L2-normalized mean of its 10 s windows, as `tokenize` pools them) against the text embedding
of each label; probabilities = softmax(cosine / temperature) over the labels (kld.zero_shot_probs).
The label text is the label itself (no prompt template)."""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from tokenmill.eval import EvalError
from tokenmill.eval.classifiers import Classifier
from tokenmill.eval.embedders.mulan_tower import load_mulan_model
from tokenmill.eval.kld import zero_shot_probs


def clip_embedding(model, wave: np.ndarray) -> np.ndarray:
    """float32 [D]: L2-normalized mean of the clip's window embeddings."""
    w = model.embed_audio_windows(wave).astype(np.float64).mean(axis=0)
    return (w / max(np.linalg.norm(w), 1e-12)).astype(np.float32)


class ZeroShotClassifier(Classifier):
    needs_vocabulary = True

    def __init__(self, model, labels: list[str] | None, temperature: float) -> None:
        if not labels:
            raise EvalError(f"zero-shot classifier {model.name}: needs a label vocabulary: give --captions "
                            "(a MusicCaps-format CSV whose aspect_list gives the most frequent aspects) or "
                            "--labels FILE (one label per line), or --classifier none to skip KLD")
        if not temperature > 0:
            raise EvalError(f"--kld_temperature must be > 0, got {temperature}")
        self.model = model
        self.name = f"zero-shot-{model.name}"
        self.sample_rate_hz = int(model.sample_rate_hz)
        self.labels = tuple(labels)
        self.temperature = float(temperature)
        self.weights_sha256 = model.weights_sha256
        self.label_embeddings = model.embed_text(list(self.labels))  # float32 [L, D]

    def _probs(self, wave: np.ndarray) -> np.ndarray:
        return zero_shot_probs(clip_embedding(self.model, wave), self.label_embeddings, self.temperature)

    def config_dict(self) -> dict[str, Any]:
        digest = hashlib.sha256("\n".join(self.labels).encode()).hexdigest()[:12]
        return {"model": self.model.describe(), "labels_sha12": digest,
                "probabilities": "softmax(cos(audio, label text) / temperature) over the labels"}


def build_mulan(path: Any = None, labels=None, temperature: float = 0.1, device: str = "cpu",
                **options: Any) -> ZeroShotClassifier:
    return ZeroShotClassifier(load_mulan_model("mulan", path, device, **options), labels, temperature)


def build_clap(path: Any = None, labels=None, temperature: float = 0.1, device: str = "cpu",
               **options: Any) -> ZeroShotClassifier:
    if path is None:
        raise EvalError("classifier clap needs its directory: --classifier clap=DIR")
    return ZeroShotClassifier(load_mulan_model("clap", path, device, **options), labels, temperature)
