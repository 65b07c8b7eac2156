"""A trained audio classifier: any transformers AutoModelForAudioClassification (AST, wav2vec 2.0 /
HuBERT heads, ...) from a save_pretrained directory with its feature extractor. Labels are the
model's config.id2label; probabilities = softmax(logits / temperature) over them (AudioSet models
are trained multi-label with sigmoids; the softmax makes one distribution per clip for the KL, as
the common reimplementations do). Given labels are ignored: the model brings its own."""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from tokenmill.eval import EvalError
from tokenmill.eval.classifiers import Classifier
from tokenmill.eval.embedders.hidden_states import checkpoint_dir
from tokenmill.eval.kld import softmax


class AudioClassifier(Classifier):
    name = "hf-classifier"

    def __init__(self, path: Any = None, temperature: float = 1.0, device: str = "cpu",
                 trust_remote_code: bool = False, **unknown: Any) -> None:
        import torch
        import transformers

        from tokenmill.tokenizers.codec import resolve_device, sha256_of_files

        if unknown:
            raise EvalError(f"hf classifier: unknown option(s) {', '.join(sorted(unknown))}")
        if not temperature > 0:
            raise EvalError(f"--kld_temperature must be > 0, got {temperature}")
        d, config, weights = checkpoint_dir("hf classifier", path)
        self.device = resolve_device("hf classifier", device, EvalError)
        try:
            self.feature_extractor = transformers.AutoFeatureExtractor.from_pretrained(
                str(d), trust_remote_code=trust_remote_code)
            model = transformers.AutoModelForAudioClassification.from_pretrained(
                str(d), dtype=torch.float32, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
            raise EvalError(f"hf classifier: loading {d} with AutoModelForAudioClassification failed: {e}") from e
        self.model = model.to(self.device).eval()
        id2label = model.config.id2label
        self.labels = tuple(str(id2label[i]) for i in range(int(model.config.num_labels)))
        self.temperature = float(temperature)
        self.sample_rate_hz = int(self.feature_extractor.sampling_rate)
        self.weights_sha256 = sha256_of_files(weights)
        self.model_type = model.config.model_type
        self._accepts = set(inspect.signature(self.model.forward).parameters)

    def _probs(self, wave: np.ndarray) -> np.ndarray:
        import torch

        x = self.feature_extractor(wave, sampling_rate=self.sample_rate_hz, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in x.items() if k in self._accepts}
        with torch.inference_mode():
            logits = self.model(**inputs).logits[0].float().cpu().numpy()
        return softmax(logits, self.temperature)

    def config_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "probabilities": "softmax(logits / temperature)"}


def build(path: Any = None, labels=None, temperature: float = 1.0, device: str = "cpu",
          **options: Any) -> AudioClassifier:
    return AudioClassifier(path=path, temperature=temperature, device=device, **options)
