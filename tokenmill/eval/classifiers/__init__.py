"""KLD classifiers: the interface and the table of implementations (one file each).

A classifier turns a mono float32 wave at its `sample_rate_hz` into a probability distribution
over its `labels` (float64 [L], sums to 1).

    CLASSIFIERS row  spec              what
    mulan            mulan[=WEIGHTS]   zero-shot tagging with the built-in MuLan over a label vocabulary
    clap             clap=DIR          zero-shot tagging with a transformers CLAP checkpoint
    hf               hf=DIR            a transformers AutoModelForAudioClassification (AST, ...): its
                                       own labels (config.id2label), softmax of logits / temperature
"""
from __future__ import annotations

import abc
from typing import Any

import numpy as np

from tokenmill.eval import EvalError
from tokenmill.eval import plugins
from tokenmill.plugins import TABLE

CLASSIFIERS: dict[str, str] = TABLE["classifier"]   # the rows live in the one plug-in table


class Classifier(abc.ABC):
    name: str
    sample_rate_hz: int
    labels: tuple[str, ...]
    temperature: float
    weights_sha256: str | None = None
    needs_vocabulary: bool = False  # zero-shot: labels come from the caller (the aspect vocabulary)

    @abc.abstractmethod
    def _probs(self, wave: np.ndarray) -> np.ndarray:
        """float32 [n] → float64 [L]."""

    def probs(self, wave: np.ndarray) -> np.ndarray:
        wave = np.asarray(wave)
        if wave.ndim != 1 or wave.size == 0 or not np.issubdtype(wave.dtype, np.floating):
            raise EvalError(f"{self.name}: expected a non-empty mono float wave [n], got {wave.dtype} {wave.shape}")
        p = np.asarray(self._probs(np.ascontiguousarray(wave, np.float32)), np.float64)
        if p.shape != (len(self.labels),) or not np.isfinite(p).all() or abs(p.sum() - 1) > 1e-6:
            raise EvalError(f"{self.name}: gave no probability distribution over its {len(self.labels)} labels")
        return p

    def config_dict(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config_dict(), "weights_sha256": self.weights_sha256,
                "sample_rate_hz": self.sample_rate_hz, "n_labels": len(self.labels),
                "temperature": self.temperature}


def register_classifier(name: str, target: str) -> None:
    plugins.register(CLASSIFIERS, name, target)


def build_classifier(spec: str | plugins.Spec, *, labels: list[str] | None, temperature: float | None = None,
                     device: str = "cpu") -> Classifier:
    """Build by spec. Zero-shot classifiers need `labels`; trained ones bring their own.
    `temperature` None: the classifier's default (zero-shot 0.1, trained 1.0)."""
    s = spec if isinstance(spec, plugins.Spec) else plugins.parse_spec(spec, "--classifier")
    factory = plugins.resolve(CLASSIFIERS, s.name, "classifier")
    try:
        extra = {} if temperature is None else {"temperature": temperature}
        clf = factory(labels=labels, device=device, **extra, **s.kwargs)
    except TypeError as e:
        raise EvalError(f"classifier {s}: {e}") from e
    if not isinstance(clf, Classifier):
        raise EvalError(f"classifier {s.name!r}: its factory returned {type(clf).__name__}, not a Classifier")
    return clf
